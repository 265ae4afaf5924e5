//! In-process cache with single-flight misses: route records (and resolved upstream names) are
//! served from memory for a short TTL, and however many requests miss on one key at once, one
//! fetch runs and they all share its answer. Called from `request_filter`; entries are dropped by
//! TTL or by the invalidation subscriber (`store::spawn_invalidation_listener`).

use crate::FastMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

struct Slot<V> {
    /// Filled once by the first fetcher; `Instant` is the expiry.
    cell: OnceCell<(V, Instant)>,
}

impl<V> Slot<V> {
    /// A slot still being fetched counts as fresh, so later requests wait on that fetch.
    fn is_fresh(&self, now: Instant) -> bool {
        self.cell.get().is_none_or(|(_, exp)| now < *exp)
    }
}

/// Whether an answer came from memory or from a fetch (for metrics and `explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

pub struct Cache<V> {
    map: Mutex<FastMap<String, Arc<Slot<V>>>>,
    max_entries: usize,
}

impl<V: Clone + Send + Sync> Cache<V> {
    pub fn new(max_entries: usize) -> Self {
        Self {
            map: Mutex::new(FastMap::default()),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FastMap<String, Arc<Slot<V>>>> {
        // A panic while holding this lock cannot leave the map inconsistent (every critical
        // section is a single insert/remove), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached value for `key`, or the result of `fetch`, which also says how long its
    /// answer may be kept (zero: share it with the requests already waiting, then forget it).
    pub async fn get_or_fetch<F, Fut>(&self, key: &str, fetch: F) -> (V, Outcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (V, Duration)>,
    {
        let now = Instant::now();
        let slot = {
            let mut map = self.lock();
            match map.get(key).map(|slot| (slot, slot.cell.get())) {
                // A hit is answered under the lock, without taking a share of its slot.
                Some((_, Some((v, exp)))) if now < *exp => return (v.clone(), Outcome::Hit),
                // Still being fetched: wait on that fetch.
                Some((slot, None)) => slot.clone(),
                _ => {
                    if map.len() >= self.max_entries {
                        sweep(&mut map, now, self.max_entries);
                    }
                    let slot = Arc::new(Slot {
                        cell: OnceCell::new(),
                    });
                    map.insert(key.to_owned(), slot.clone());
                    slot
                }
            }
        };
        if let Some((v, _)) = slot.cell.get() {
            return (v.clone(), Outcome::Hit);
        }
        let mut fetched = false;
        let (v, _) = slot
            .cell
            .get_or_init(|| async {
                fetched = true;
                let (v, ttl) = fetch().await;
                (v, Instant::now() + ttl)
            })
            .await;
        let outcome = if fetched { Outcome::Miss } else { Outcome::Hit };
        (v.clone(), outcome)
    }

    /// Drop `key` now; a fetch already under way finishes for its own waiters only.
    pub fn invalidate(&self, key: &str) -> bool {
        self.lock().remove(key).is_some()
    }

    /// Drop everything (after the invalidation channel was lost: messages may have been missed).
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Make room: drop expired entries, then, if still full, any finished half of the rest.
fn sweep<V>(map: &mut FastMap<String, Arc<Slot<V>>>, now: Instant, max: usize) {
    map.retain(|_, s| s.is_fresh(now));
    if map.len() >= max {
        let mut budget = map.len() / 2 + 1;
        map.retain(|_, s| {
            if budget > 0 && s.cell.get().is_some() {
                budget -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let cache: Arc<Cache<u32>> = Arc::new(Cache::new(100));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch("k", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        (7, Duration::from_secs(60))
                    })
                    .await
                    .0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn zero_ttl_answers_are_not_kept_and_invalidate_drops() {
        let cache: Cache<u32> = Cache::new(100);
        let (v, o) = cache
            .get_or_fetch("k", || async { (1, Duration::ZERO) })
            .await;
        assert_eq!((v, o), (1, Outcome::Miss));
        let (v, _) = cache
            .get_or_fetch("k", || async { (2, Duration::from_secs(60)) })
            .await;
        assert_eq!(v, 2);
        let (v, o) = cache
            .get_or_fetch("k", || async { (3, Duration::from_secs(60)) })
            .await;
        assert_eq!((v, o), (2, Outcome::Hit));
        assert!(cache.invalidate("k"));
        let (v, _) = cache
            .get_or_fetch("k", || async { (4, Duration::from_secs(60)) })
            .await;
        assert_eq!(v, 4);
    }

    #[tokio::test]
    async fn size_is_bounded() {
        let cache: Cache<u32> = Cache::new(10);
        for i in 0..100 {
            cache
                .get_or_fetch(&format!("k{i}"), || async { (i, Duration::from_secs(60)) })
                .await;
        }
        assert!(cache.len() <= 10, "{}", cache.len());
    }
}
