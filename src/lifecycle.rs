//! A workspace that is not running, as a caller auth let through meets it (issue #18): a
//! startable one is woken — one entry on a Redis stream per workspace per interval, however
//! many requests and instances see it — and the caller told it is starting; one on its way
//! somewhere is told to retry; anything else is not running.
//!
//! `Lifecycle` classifies a status inside the decision (`decide`), which returns a `Wake` as a
//! value; the first decision of a request hands it to the `Waker` (`proxy::request_filter`).
//! Re-checks of open WebSockets and `edgegate explain` never wake anything.
//!
//! The stream's entries (docs/INTEGRATION.md): `workspace` (the id), `key` (the record's key),
//! `route`, `user` (the verified user; absent on an open route), `at` (unix ms), `by` (the
//! instance's host name).

use crate::config::Config;
use crate::decide::Action;
use crate::error::GatewayError;
use crate::first_per::FirstPer;
use crate::metrics::Metrics;
use crate::route::id::WorkspaceId;
use crate::route::store::Records;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the status values of the config mean.
pub struct Lifecycle {
    startable: Vec<String>,
    transitioning: Vec<String>,
    waking: bool,
}

/// A request to start a stopped workspace, decided but not yet published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    /// The workspace's record.
    pub key: String,
    pub workspace: WorkspaceId,
    pub route: Arc<str>,
    /// The verified user who asked (`None` on an open route).
    pub user: Option<String>,
}

impl Lifecycle {
    pub fn new(config: &Config) -> Lifecycle {
        let lc = &config.lifecycle;
        Lifecycle {
            startable: lc.startable.clone(),
            transitioning: lc.transitioning.clone(),
            waking: !lc.wake_stream.is_empty(),
        }
    }

    /// What a caller auth let through meets when the record's `status` is not `running`.
    pub fn not_running(
        &self,
        status: Option<&str>,
        wake: impl FnOnce() -> Wake,
    ) -> Result<Action, GatewayError> {
        let Some(status) = status else {
            return Err(GatewayError::NotRunning);
        };
        if self.startable.iter().any(|s| s == status) {
            if self.waking {
                return Ok(Action::Wake(wake()));
            }
            return Err(GatewayError::NotRunning);
        }
        if self.transitioning.iter().any(|s| s == status) {
            return Err(GatewayError::Transitioning);
        }
        Err(GatewayError::NotRunning)
    }
}

/// Publishes wake requests, at most one per workspace per interval: remembered here (so the
/// requests of one instance cost no round trip), and across instances by a marker key in
/// Redis set with the entry.
pub struct Waker {
    stream: String,
    marker_prefix: String,
    interval: Duration,
    maxlen: u64,
    by: String,
    /// When each workspace was last woken from here; bounded by `cache.max_entries` (when the
    /// map starts over, only the Redis marker dedupes).
    recent: FirstPer<String>,
    metrics: Arc<Metrics>,
}

/// What became of a wake request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    Published,
    /// Another request (here or on another instance) woke it within the interval.
    Repeated,
    /// The store did not take it; the next request tries again.
    Failed,
}

impl Waker {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Waker {
        let lc = &config.lifecycle;
        let prefix = &config.redis.key_prefix;
        let interval = Duration::from_secs(lc.wake_interval_secs);
        Waker {
            stream: format!("{prefix}{}", lc.wake_stream),
            marker_prefix: format!("{prefix}{}:once:", lc.wake_stream),
            interval,
            maxlen: lc.wake_stream_maxlen,
            by: host_name(),
            recent: FirstPer::new(interval, config.cache.max_entries),
            metrics,
        }
    }

    /// Publish `w` unless the workspace was woken within the interval.
    pub async fn wake(&self, records: &Records, w: &Wake) -> Woken {
        let now = Instant::now();
        if !self.claim(&w.key, now) {
            return self.count(Woken::Repeated);
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
            .to_string();
        let mut entry = vec![
            ("workspace", w.workspace.as_str()),
            ("key", w.key.as_str()),
            ("route", &*w.route),
            ("at", at.as_str()),
            ("by", self.by.as_str()),
        ];
        if let Some(user) = &w.user {
            entry.push(("user", user.as_str()));
        }
        let marker = format!("{}{}", self.marker_prefix, w.key);
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        match records
            .add_once(&marker, interval_ms, &self.stream, self.maxlen, &entry)
            .await
        {
            Ok(true) => {
                log::info!(
                    "woke workspace {} (route {}, record {})",
                    w.workspace.as_str(),
                    w.route,
                    w.key
                );
                self.count(Woken::Published)
            }
            Ok(false) => self.count(Woken::Repeated),
            Err(_) => {
                // Not claimed after all: the next request tries again.
                self.recent.forget(w.key.as_str());
                self.count(Woken::Failed)
            }
        }
    }

    /// Whether this request is the one (on this instance) to publish for `key` now.
    fn claim(&self, key: &str, now: Instant) -> bool {
        self.recent.first(key, now)
    }

    fn count(&self, w: Woken) -> Woken {
        let label = match w {
            Woken::Published => "published",
            Woken::Repeated => "repeated",
            Woken::Failed => "failed",
        };
        self.metrics.wake_requests.with_label_values(&[label]).inc();
        w
    }
}

/// This machine's name, for the `by` field (`HOSTNAME`, else `/etc/hostname`, else `-`).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::test_workspace_config(extra)
    }

    fn wake() -> Wake {
        Wake {
            key: "workspace:X".into(),
            workspace: WorkspaceId::parse("01J0AAAAAAAAAAAAAAAAAAAAA1").expect("id"),
            route: "workspace".into(),
            user: Some("u".into()),
        }
    }

    #[test]
    fn statuses_mean_what_the_config_says() {
        let lc = Lifecycle::new(&config(""));
        assert!(matches!(
            lc.not_running(Some("stopped"), wake),
            Ok(Action::Wake(w)) if w == wake()
        ));
        for (status, err) in [
            (Some("starting"), GatewayError::Transitioning),
            (Some("stopping"), GatewayError::Transitioning),
            (Some("failed"), GatewayError::NotRunning),
            (None, GatewayError::NotRunning),
        ] {
            assert_eq!(lc.not_running(status, wake).err(), Some(err), "{status:?}");
        }
        let off = Lifecycle::new(&config(
            "[lifecycle]\nwake_stream = \"\"\nstartable = [\"off\"]\ntransitioning = []\n",
        ));
        assert_eq!(
            off.not_running(Some("off"), wake).err(),
            Some(GatewayError::NotRunning),
            "waking off: startable is simply not running"
        );
        assert_eq!(
            off.not_running(Some("starting"), wake).err(),
            Some(GatewayError::NotRunning)
        );
    }

    #[test]
    fn one_claim_per_workspace_per_interval_and_the_map_is_bounded() {
        let cfg = config("[cache]\nmax_entries = 4\n");
        let w = Waker::new(&cfg, Arc::new(Metrics::new().expect("metrics")));
        let t0 = Instant::now();
        assert!(w.claim("a", t0));
        assert!(!w.claim("a", t0 + Duration::from_secs(1)));
        assert!(w.claim("a", t0 + Duration::from_secs(31)), "a new interval");
        for i in 0..100 {
            w.claim(&format!("k{i}"), t0);
        }
        assert!(w.recent.len() <= 4);
    }
}
