//! Drain on stop (issue #18): when the app says a workspace record changed (an invalidation
//! message) and the record is gone or no longer `running`, the requests in flight to it end
//! at once, on every instance.
//!
//! Every proxied request to a workspace holds (`Drains::hold`, from `connected_to_upstream`) its
//! upstream connection's socket digest under the record key; the hold goes with the request's
//! CTX. An invalidation of a held key re-reads the record (`Drains::check`, on the
//! Redis runtime) and shuts the held sockets down if the workspace stopped: the upstream read
//! fails, and the request ends with 503 `workspace_not_running` if its response had not
//! started, else with the connection closed. Shutting down the upstream side, not the
//! client's, works the same for HTTP/1 and HTTP/2 clients (an HTTP/2 connection carries other
//! requests that must not end). The digest, not the raw descriptor: it shuts the socket down
//! only while Pingora's stream owns it (vendored pingora-core, patch 0005), so a closed and
//! reused descriptor number is never shut down, and no request pays for a duplicate
//! descriptor (an `fcntl` and a `close` each, until that patch).
//!
//! WebSocket tunnels have their own loop and re-check there (`websocket`), closing with 1001.

use crate::metrics::Metrics;
use crate::ports::{Passed, PortRules};
use crate::route::record::RUNNING;
use crate::route::store::Records;
use crate::FastMap;
use pingora::protocols::SocketDigest;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Why a request's workspace was drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The record's status left `running`.
    Stopped,
    /// The record is gone.
    Gone,
    /// A shared port's visibility was tightened past what let the request in (`ports`).
    AccessChanged,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Stopped => "stopped",
            Cause::Gone => "gone",
            Cause::AccessChanged => "access_changed",
        }
    }

    /// The close cause of a WebSocket it ended (`edgegate_websocket_closes_total{cause}`).
    pub fn ws_close_cause(self) -> &'static str {
        match self {
            Cause::Stopped => "workspace_stopped",
            Cause::Gone => "workspace_gone",
            Cause::AccessChanged => "revoked",
        }
    }
}

const NOT_CUT: u8 = 0;

/// One request's hold on its upstream socket.
struct Held {
    sock: Arc<SocketDigest>,
    /// The route's status field (`None`: the record only drains when it is gone).
    status_field: Option<Arc<str>>,
    /// On the content site: how the request got onto its port.
    access: Option<Passed>,
    cut: AtomicU8,
}

/// The holds of the requests in flight, by record key hash.
pub struct Drains {
    held: Mutex<FastMap<u64, Vec<Arc<Held>>>>,
    metrics: Arc<Metrics>,
}

/// A request's hold, released when dropped (with the request's CTX).
pub struct Hold {
    drains: Arc<Drains>,
    key: u64,
    held: Arc<Held>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("cut", &self.cut()).finish()
    }
}

impl Hold {
    /// Why the request's workspace was drained, if it was.
    pub fn cut(&self) -> Option<Cause> {
        match self.held.cut.load(Ordering::Acquire) {
            1 => Some(Cause::Stopped),
            2 => Some(Cause::Gone),
            3 => Some(Cause::AccessChanged),
            _ => None,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.drains.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = held.get_mut(&self.key) {
            if let Some(i) = list.iter().position(|h| Arc::ptr_eq(h, &self.held)) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                held.remove(&self.key);
            }
        }
    }
}

impl Drains {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Drains> {
        Arc::new(Drains {
            held: Mutex::new(FastMap::default()),
            metrics,
        })
    }

    /// Hold the upstream socket of a request to the record `key_hash`, by the socket digest
    /// of its connection.
    pub fn hold(
        self: &Arc<Self>,
        key_hash: u64,
        sock: Arc<SocketDigest>,
        status_field: Option<Arc<str>>,
        access: Option<Passed>,
    ) -> Hold {
        let held = Arc::new(Held {
            sock,
            status_field,
            access,
            cut: AtomicU8::new(NOT_CUT),
        });
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key_hash)
            .or_default()
            .push(held.clone());
        Hold {
            drains: self.clone(),
            key: key_hash,
            held,
        }
    }

    /// Whether a request in flight holds `key_hash` (the invalidation listener asks before it
    /// spends a record read on `check`).
    pub fn holds(&self, key_hash: u64) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key_hash)
    }

    /// After an invalidation of `key`: read the record afresh and end the requests held under
    /// it whose workspace is gone or stopped, or whose port no longer lets them in. A store
    /// that does not answer drains nothing.
    pub async fn check(&self, records: &Records, ports: &PortRules, key: &str) {
        let key_hash = crate::auth::key_hash(key);
        let record = match records.get(key).await.0 {
            Ok(r) => r,
            Err(_) => return,
        };
        let list: Vec<Arc<Held>> = match self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key_hash)
        {
            Some(list) => list.clone(),
            None => return,
        };
        let mut ended = 0;
        for h in list {
            let cause = match (&record, &h.status_field) {
                (None, _) => Cause::Gone,
                (Some(rec), Some(field)) if rec.get(field).map(|s| s.trim()) != Some(RUNNING) => {
                    Cause::Stopped
                }
                (Some(rec), _) => match &h.access {
                    Some(passed) if !ports.still_passes(rec, key, passed) => Cause::AccessChanged,
                    _ => continue,
                },
            };
            let code = match cause {
                Cause::Stopped => 1,
                Cause::Gone => 2,
                Cause::AccessChanged => 3,
            };
            if h.cut
                .compare_exchange(NOT_CUT, code, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // Both directions: the upstream read fails at once, whatever Pingora waits on.
                // (`NotConnected`: the connection closed meanwhile, and the request with it.)
                let _ = h.sock.shutdown(std::net::Shutdown::Both);
                self.metrics
                    .drained
                    .with_label_values(&["http", cause.as_str()])
                    .inc();
                ended += 1;
            }
        }
        if ended > 0 {
            log::info!(
                "drained {ended} request(s) in flight to {key}: the workspace stopped or is \
                 gone, or a port's visibility was tightened"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn digest(conn: &std::net::TcpStream) -> Arc<SocketDigest> {
        Arc::new(SocketDigest::from_raw_fd(conn.as_raw_fd()))
    }

    #[test]
    fn holds_are_released_with_their_request() {
        let drains = Drains::new(Arc::new(Metrics::new().expect("metrics")));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let conn =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let a = drains.hold(7, digest(&conn), None, None);
        let b = drains.hold(7, digest(&conn), None, None);
        assert!(drains.holds(7));
        drop(a);
        assert!(drains.holds(7));
        drop(b);
        assert!(
            !drains.holds(7),
            "the map keeps nothing for a key without requests"
        );
        assert_eq!(drains.held.lock().expect("lock").len(), 0);
    }
}
