//! Whether this instance can serve (`/readyz`), and the drain that takes it out of a load
//! balancer before it stops: readiness fails first, the balancer gets `server.drain_delay_secs`
//! to notice, then the listeners close (Envoy's `/healthcheck/fail` then `/drain_listeners`).
//! Asked by the admin listener; a drain is started by `POST /drain` there or by SIGTERM
//! (`signals`).
//!
//! **The rule.** Ready when not draining, and either the route store answers or requests can
//! still be served from memory: `cache.stale_ms` > 0 and route records are cached (a Redis
//! outage then is *degraded*, not unready: pulling every instance out of the balancer at once
//! would turn a Redis blip into a full outage, though cached routes still work).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Readiness {
    draining: AtomicBool,
    /// A drain was asked for (`POST /drain`): the stop sequence follows.
    asked: tokio::sync::Notify,
    /// Whether a cached record may be served while the store is down (`cache.stale_ms` > 0).
    serves_stale: bool,
}

/// What `/readyz` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub ready: bool,
    pub draining: bool,
    pub store_up: bool,
    /// Route records in memory (cached, or kept for outages).
    pub warm: usize,
}

impl State {
    /// Ready, but the store is down: serving what is cached.
    pub fn degraded(&self) -> bool {
        self.ready && !self.store_up
    }
}

impl Readiness {
    pub fn new(config: &crate::config::Config) -> Arc<Readiness> {
        Arc::new(Readiness {
            draining: AtomicBool::new(false),
            asked: tokio::sync::Notify::new(),
            serves_stale: config.cache.stale_ms > 0,
        })
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Fail readiness from now on (the stop sequence's first step).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `POST /drain`: fail readiness, and have the stop sequence run (`signals`). `false` when
    /// a drain had already started.
    pub fn ask_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            self.asked.notify_one();
        }
        first
    }

    /// Returns once a drain was asked for over the admin listener.
    pub async fn drain_asked(&self) {
        self.asked.notified().await;
    }

    /// The verdict, from whether the store answers and how many records are in memory.
    pub fn state(&self, store_up: bool, warm: usize) -> State {
        let draining = self.draining();
        let serves = store_up || (self.serves_stale && warm > 0);
        State {
            ready: !draining && serves,
            draining,
            store_up,
            warm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_unless_draining_or_nothing_can_be_served() {
        let r = Readiness {
            draining: AtomicBool::new(false),
            asked: tokio::sync::Notify::new(),
            serves_stale: true,
        };
        assert!(r.state(true, 0).ready);
        let degraded = r.state(false, 3);
        assert!(
            degraded.ready && degraded.degraded(),
            "Redis down, cache warm"
        );
        assert!(!r.state(false, 0).ready, "Redis down, nothing cached");
        assert!(r.ask_drain());
        assert!(!r.ask_drain(), "once");
        assert!(!r.state(true, 3).ready, "draining");
        let cold = Readiness {
            draining: AtomicBool::new(false),
            asked: tokio::sync::Notify::new(),
            serves_stale: false,
        };
        assert!(!cold.state(false, 3).ready, "stale copies are off");
    }
}
