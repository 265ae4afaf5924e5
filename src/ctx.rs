//! The per-request state (`RequestCtx`, Pingora's `CTX`): everything decided about one request
//! lives here and nowhere else, so no later request, on this connection or another, can
//! inherit a target. Created by `new_ctx`, filled by `request_filter`, read by the later hooks.

use crate::auth::session::CookieStrip;
use crate::auth::Principal;
use crate::config::AuthMethod;
use crate::error::GatewayError;
use crate::route::WorkspaceId;
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
    /// Where this request goes; `None` until routing and auth have decided.
    pub target: Option<Target>,
    /// The refusal edgegate answered with, if any.
    pub refusal: Option<GatewayError>,
    /// Who the request was verified to be (`None`: not yet, or an open route).
    pub principal: Option<Principal>,
    /// How edgegate's own cookies leave the request before the upstream (workspace routes).
    pub strip_cookies: CookieStrip,
    /// Remove `Authorization` before the upstream (it carried an edgegate token).
    pub strip_authorization: bool,
    /// The credential that was tried (or used), and the decision.
    pub auth_method: Option<AuthMethod>,
    pub auth_result: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Set when the upstream answered an upgrade with 101.
    pub ws_opened: Option<Instant>,
    /// Why the WebSocket tunnel ended: client, upstream, idle_timeout, shutdown.
    pub ws_close_cause: Option<&'static str>,
    /// The record that receives this request's activity, and when it was last marked.
    pub activity_key: Option<String>,
    pub activity_marked: u64,
    /// The one re-decision allowed after the cached backend refused a connection.
    pub refresh: Refresh,
    /// This request's place in its workspace's in-flight count (freed with the CTX).
    pub slot: Option<crate::limits::Slot>,
    /// A WebSocket tunnel took the request (and this state) into a task of its own; what
    /// Pingora still holds is an empty shell that must not be logged.
    pub detached: bool,
    /// Decide without side effects (`edgegate explain`): no one-time token is spent.
    pub dry_run: bool,
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
            target: None,
            refusal: None,
            principal: None,
            strip_cookies: CookieStrip::Keep,
            strip_authorization: false,
            auth_method: None,
            auth_result: "none",
            bytes_in: 0,
            bytes_out: 0,
            ws_opened: None,
            ws_close_cause: None,
            activity_key: None,
            activity_marked: 0,
            refresh: Refresh::No,
            slot: None,
            detached: false,
            dry_run: false,
        }
    }

    /// The matched route's name, `-` before routing.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or("-")
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
