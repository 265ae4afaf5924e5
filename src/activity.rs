//! The activity signal for idle culling: each workspace record gets `last_activity` (unix
//! seconds) at most once per interval, from HTTP requests and WebSocket frames in either
//! direction. Requests only mark the record key in memory (`touch`, from `request_filter` and
//! the body filters); a task on the Redis runtime writes the marks in one pipeline per interval.

use crate::route::store::RouteStore;
use crate::FastMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Marks written per Redis pipeline.
const FLUSH_CHUNK: usize = 1000;

pub struct Activity {
    marks: Mutex<FastMap<String, u64>>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            marks: Mutex::new(FastMap::default()),
        }
    }

    /// Note activity on the record at `key` at unix time `now`.
    pub fn touch(&self, key: &str, now: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match marks.get_mut(key) {
            Some(t) => *t = (*t).max(now),
            None => {
                marks.insert(key.to_owned(), now);
            }
        }
    }

    /// Note a request's activity on its record, at most once a second per request (`last` is
    /// the request's own mark).
    pub fn touch_request(&self, key: &str, last: &mut u64) {
        let now = crate::auth::token::now();
        if now != *last {
            *last = now;
            self.touch(key, now);
        }
    }

    fn take(&self) -> FastMap<String, u64> {
        std::mem::take(&mut *self.marks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Write the marks every `interval`, for the life of the process.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
        store: Arc<dyn RouteStore>,
        field: String,
        interval: Duration,
    ) {
        let me = self.clone();
        handle.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let marks = me.take();
                if marks.is_empty() {
                    continue;
                }
                // In pipelines of a bounded size: a million marks in one pipeline held a
                // buffer of hundreds of MB and could not finish inside one deadline.
                let total = marks.len();
                let (mut failed, mut written) = (0, 0);
                let mut batch = Vec::with_capacity(FLUSH_CHUNK.min(total));
                let mut marks = marks.into_iter().peekable();
                while marks.peek().is_some() {
                    batch.clear();
                    batch.extend(marks.by_ref().take(FLUSH_CHUNK));
                    if let Err(e) = store.mark_activity(&field, &batch).await {
                        // Redis is failing: the rest would each wait out a deadline too.
                        failed = total - written;
                        log::debug!("activity write failed: {e:?}");
                        break;
                    }
                    written += batch.len();
                }
                if failed > 0 {
                    log::warn!("cannot write activity for {failed} of {total} records");
                }
            }
        });
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}
