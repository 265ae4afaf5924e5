//! The per-request state (`RequestCtx`, Pingora's `CTX`): everything decided about one request
//! lives here and nowhere else, so no later request, on this connection or another, can
//! inherit a target. Created by `new_ctx`, filled by `request_filter`, read by the later hooks.

use crate::api::Reply;
use crate::auth::{Check, Principal};
use crate::decide::{Action, Decided, Plan};
use crate::error::GatewayError;
use crate::headers::Edits;
use crate::route::id::WorkspaceId;
use crate::upstream::Target;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    /// The matched route's name (logs and metrics).
    pub route: Option<Arc<str>>,
    pub workspace: Option<WorkspaceId>,
    pub is_upgrade: bool,
    /// `https` when the client came over TLS.
    pub proto: &'static str,
    /// How the caller was checked (the access log, the auth metric).
    pub check: Check,
    /// Where this request goes and what it carries; `None` until decided, and for requests
    /// edgegate answered or refused.
    pub plan: Option<Plan>,
    /// The refusal edgegate answered with, if any.
    pub refusal: Option<GatewayError>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Set when the upstream answered an upgrade with 101.
    pub ws_opened: Option<Instant>,
    /// Why the WebSocket tunnel ended: client, upstream, idle_timeout, shutdown, revoked, …
    pub ws_close_cause: Option<&'static str>,
    /// When the request's workspace was last marked active (unix s).
    pub activity_marked: u64,
    /// The one re-decision allowed after the cached backend refused a connection.
    pub refresh: Refresh,
    /// This request's place in its workspace's in-flight count (freed with the CTX).
    pub slot: Option<crate::limits::Slot>,
    /// A WebSocket tunnel took the request (and this state) into a task of its own; what
    /// Pingora still holds is an empty shell that must not be logged.
    pub detached: bool,
    /// The wake request this request's decision made (its workspace is stopped), until the
    /// proxy publishes it. Boxed: rare, and every request carries the field.
    pub wake: Option<Box<crate::lifecycle::Wake>>,
    /// This request's hold on its upstream socket, for draining when its workspace stops.
    pub hold: Option<crate::drain::Hold>,
    /// The client's address (through trusted proxies), for per-address rate limits.
    pub client: Option<std::net::IpAddr>,
    /// Background traffic (`activity.background_header`): not counted as activity.
    pub background: bool,
    /// When the upstream was first asked for (the access log's `upstream_ms`).
    pub upstream_started: Option<Instant>,
    /// The upstream's status, and how long after `upstream_started` its header came (µs).
    pub upstream_answer: Option<(u16, u64)>,
    /// The request's spans, when tracing is on.
    pub trace: Option<Box<crate::trace::RequestTrace>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    No,
    Pending,
    Done,
}

impl RequestCtx {
    pub fn new() -> Self {
        Self::with_id(new_request_id())
    }

    /// What Pingora keeps once a WebSocket tunnel has taken the request's state away.
    pub fn detached_shell() -> Self {
        Self {
            detached: true,
            ..Self::with_id(String::new())
        }
    }

    fn with_id(request_id: String) -> Self {
        Self {
            request_id,
            started: Instant::now(),
            route: None,
            workspace: None,
            is_upgrade: false,
            proto: "http",
            check: Check::NONE,
            plan: None,
            refusal: None,
            bytes_in: 0,
            bytes_out: 0,
            ws_opened: None,
            ws_close_cause: None,
            activity_marked: 0,
            refresh: Refresh::No,
            slot: None,
            detached: false,
            wake: None,
            hold: None,
            client: None,
            background: false,
            upstream_started: None,
            upstream_answer: None,
            trace: None,
        }
    }

    /// The upstream's response header arrived with `status`.
    pub fn upstream_answered(&mut self, status: u16) {
        let after = self
            .upstream_started
            .map_or(0, |t| t.elapsed().as_micros() as u64);
        self.upstream_answer = Some((status, after));
    }

    /// Keep a decision: what the log and the later hooks read. Returns what to do now: the
    /// answer edgegate gives itself, nothing (proxy the plan), or the refusal. A wake is kept
    /// in `wake` for the proxy to publish, and answered as `Starting`.
    pub fn decided(&mut self, d: Decided) -> Result<Option<Reply>, GatewayError> {
        self.route = d.route.or(self.route.take());
        self.workspace = d.workspace.or(self.workspace);
        self.check = d.check;
        match d.outcome {
            Ok(Action::Proxy(plan)) => {
                self.plan = Some(plan);
                Ok(None)
            }
            Ok(Action::Answer(reply)) => {
                self.plan = None;
                Ok(Some(reply))
            }
            Ok(Action::Wake(wake)) => {
                self.plan = None;
                self.wake = Some(Box::new(wake));
                Err(GatewayError::Starting)
            }
            Err(e) => {
                self.plan = None;
                Err(e)
            }
        }
    }

    /// The matched route's name, `-` before routing.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or("-")
    }

    pub fn target(&self) -> Option<&Target> {
        self.plan.as_ref().map(|p| &p.target)
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.plan.as_ref().and_then(|p| p.principal.as_ref())
    }

    /// The workspace record behind the request (`None` for the app API).
    pub fn record_key(&self) -> Option<&str> {
        self.plan.as_ref().and_then(|p| p.record_key.as_deref())
    }

    /// Mark the request's workspace active (at most once a second per request).
    pub fn touch(&mut self, activity: &crate::activity::Activity) {
        if self.background {
            return;
        }
        if let Some(key) = self.plan.as_ref().and_then(|p| p.record_key.as_deref()) {
            activity.touch_request(key, &mut self.activity_marked);
        }
    }

    /// After a connect failure: whether the workspace's backend may have moved, in which case
    /// its cached record is dropped and the request is to be decided again, once.
    pub fn may_have_moved(
        &mut self,
        records: &crate::route::store::Records,
        e: &pingora::Error,
    ) -> bool {
        let refused = matches!(
            e.etype(),
            pingora::ErrorType::ConnectRefused | pingora::ErrorType::ConnectNoRoute
        );
        match (self.record_key(), self.refresh) {
            (Some(key), Refresh::No) if refused => {
                records.cache().invalidate(key);
                self.refresh = Refresh::Pending;
                true
            }
            _ => false,
        }
    }

    /// What the upstream copy of the request takes from the decision.
    pub fn edits(&self) -> Edits<'_> {
        let plan = self.plan.as_ref();
        Edits {
            request_id: &self.request_id,
            workspace: self.workspace.as_ref().map(|w| w.as_str()),
            user: self
                .principal()
                .filter(|p| p.identifies())
                .map(|p| p.user.as_str()),
            strip_cookies: plan.map(|p| p.strip_cookies).unwrap_or_default(),
            strip_authorization: plan.is_some_and(|p| p.strip_authorization),
            host_header: self.target().and_then(|t| t.host_header.as_deref()),
            upstream_path: self.target().and_then(|t| t.upstream_path.as_deref()),
            h2: self.target().is_some_and(|t| t.h2c),
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// 24 hex digits: a random per-process tag and a counter, unique across instances and restarts
/// without a random draw per request.
pub(crate) fn new_request_id() -> String {
    static TAG: once_cell::sync::Lazy<u32> = once_cell::sync::Lazy::new(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // By hand, a byte at a time: `format!` costs more than the rest of the request's
    // bookkeeping.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 24];
    let bytes = TAG.to_be_bytes().into_iter().chain(n.to_be_bytes());
    for (pair, b) in hex.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xF)];
    }
    // Always ASCII.
    std::str::from_utf8(&hex).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // The counter part counts up by one.
        let (na, nb) = (
            u64::from_str_radix(&a[8..], 16).expect("hex"),
            u64::from_str_radix(&b[8..], 16).expect("hex"),
        );
        assert!(nb > na);
        assert_eq!(a[..8], b[..8]);
    }
}
