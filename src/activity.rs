//! The activity signal for idle culling: each workspace record gets `last_activity` (unix
//! seconds) at most once per interval, from HTTP requests and WebSocket frames in either
//! direction. Requests only mark the record key in memory (`touch`, from `request_filter` and
//! the body filters); a task on the Redis runtime writes the marks in one pipeline per interval.

use crate::route::store::RouteStore;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Marks written per Redis pipeline.
const FLUSH_CHUNK: usize = 1000;

pub struct Activity {
    marks: Mutex<Marks>,
}

/// One interval's marks: each record key once, with its latest time. The keys are kept end to
/// end in one string and the table holds where each one is: a mark is no allocation of its
/// own. (A map of `String`s made a million marks a million small blocks, placed among the
/// record cache's and left as holes when the interval's marks were written and freed: 26
/// bytes of RSS per cached record that stayed; docs/BENCHMARKS.md, "Scale".)
#[derive(Default)]
struct Marks {
    keys: String,
    table: hashbrown::HashTable<Mark>,
    hasher: ahash::RandomState,
}

struct Mark {
    at: u32,
    len: u32,
    time: u64,
}

impl Mark {
    /// This mark's key in `keys` (whose end `note` bounds every span by).
    fn key<'k>(&self, keys: &'k str) -> &'k str {
        keys.get(self.at as usize..(self.at + self.len) as usize)
            .unwrap_or_default()
    }
}

impl Marks {
    /// Note `key` at `time` (the later of two times wins). A key that would take the keys
    /// past 4 GiB in one interval is not noted.
    fn note(&mut self, key: &str, time: u64) {
        let hash = self.hasher.hash_one(key);
        let Marks {
            keys,
            table,
            hasher,
        } = self;
        if let Some(m) = table.find_mut(hash, |m| m.key(keys) == key) {
            m.time = m.time.max(time);
            return;
        }
        let (Ok(at), Ok(len)) = (u32::try_from(keys.len()), u32::try_from(key.len())) else {
            return;
        };
        if at.checked_add(len).is_none() {
            return;
        }
        keys.push_str(key);
        table.insert_unique(hash, Mark { at, len, time }, |m| {
            hasher.hash_one(m.key(keys))
        });
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.table.iter().map(|m| (m.key(&self.keys), m.time))
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            marks: Mutex::new(Marks::default()),
        }
    }

    /// Note activity on the record at `key` at unix time `now`.
    pub fn touch(&self, key: &str, now: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.note(key, now);
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

    fn take(&self) -> Marks {
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
                if marks.len() == 0 {
                    continue;
                }
                // In pipelines of a bounded size: a million marks in one pipeline held a
                // buffer of hundreds of MB and could not finish inside one deadline.
                let total = marks.len();
                let (mut failed, mut written) = (0, 0);
                let mut batch = Vec::with_capacity(FLUSH_CHUNK.min(total));
                let mut marks = marks.iter().peekable();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_marked_once_with_its_latest_time() {
        let mut m = Marks::default();
        for i in 0..10_000u64 {
            m.note(&format!("workspace:{}", i % 2_500), i);
        }
        m.note("workspace:7", 3);
        assert_eq!(m.len(), 2_500);
        let mut seen: Vec<(String, u64)> = m.iter().map(|(k, t)| (k.to_owned(), t)).collect();
        seen.sort();
        assert_eq!(seen.len(), 2_500);
        for (k, t) in seen {
            let i: u64 = k.trim_start_matches("workspace:").parse().expect("key");
            assert_eq!(t, 7_500 + i, "{k}");
        }
        // Keys that share a prefix or are empty stay apart.
        m.note("", 1);
        m.note("workspace:1", 99_999);
        m.note("workspace:10", 5);
        assert_eq!(m.len(), 2_501);
        let get = |k: &str| m.iter().find(|(key, _)| *key == k).map(|(_, t)| t);
        assert_eq!(get(""), Some(1));
        assert_eq!(get("workspace:1"), Some(99_999));
        assert_eq!(get("workspace:10"), Some(7_510));
    }
}
