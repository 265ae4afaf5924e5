//! In-process cache with single-flight misses: route records (and resolved upstream names) are
//! served from memory for a short TTL, and however many requests miss on one key at once, one
//! fetch runs and they all share its answer. Called from `request_filter`; entries are dropped by
//! TTL or by the invalidation subscriber (`store::spawn_invalidation_listener`).

use crate::FastMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// What an entry costs besides its key and value: the map's slot, the `Arc`, the cell.
const ENTRY_OVERHEAD: usize = 96;

/// The bytes a cached value holds (roughly: its heap data), for the cache's byte bound.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Option<std::net::IpAddr> {
    fn weight(&self) -> usize {
        0
    }
}

/// Plain numbers (benchmarks) hold nothing on the heap.
impl Weigh for u64 {
    fn weight(&self) -> usize {
        0
    }
}

struct Slot<V> {
    /// Filled once by the first fetcher; `Instant` is the expiry.
    cell: OnceCell<(V, Instant)>,
    /// The value's weight, counted in `Inner::bytes` (set under the map's lock).
    weight: AtomicUsize,
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

struct Inner<V> {
    map: FastMap<String, Arc<Slot<V>>>,
    /// Keys, values and per-entry overhead of everything in `map`.
    bytes: usize,
}

impl<V> Inner<V> {
    fn cost(key: &str, slot: &Slot<V>) -> usize {
        key.len() + ENTRY_OVERHEAD + slot.weight.load(Ordering::Relaxed)
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(slot) => {
                self.bytes = self.bytes.saturating_sub(Self::cost(key, &slot));
                true
            }
            None => false,
        }
    }
}

/// A cache bounded by entries and by bytes, whose keys may come from clients (session ids,
/// workspace ids): past either bound, expired entries are swept, then half of the rest, each
/// dropped fresh entry counted as an eviction.
pub struct Cache<V> {
    inner: Mutex<Inner<V>>,
    max_entries: usize,
    max_bytes: usize,
    evictions: Option<prometheus::IntCounter>,
}

impl<V: Clone + Send + Sync + Weigh> Cache<V> {
    /// At most `max_entries` entries, no byte bound (values the operator's records name).
    pub fn new(max_entries: usize) -> Self {
        Self::bounded(max_entries, usize::MAX, None)
    }

    /// At most `max_entries` entries and about `max_bytes` bytes; `evictions` counts the fresh
    /// entries dropped to stay inside them.
    pub fn bounded(
        max_entries: usize,
        max_bytes: usize,
        evictions: Option<prometheus::IntCounter>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: FastMap::default(),
                bytes: 0,
            }),
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1),
            evictions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        // A panic while holding this lock cannot leave the map inconsistent (every critical
        // section is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn full(&self, inner: &Inner<V>) -> bool {
        inner.map.len() >= self.max_entries || inner.bytes >= self.max_bytes
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
            let mut inner = self.lock();
            match inner.map.get(key).map(|slot| (slot, slot.cell.get())) {
                // A hit is answered under the lock, without taking a share of its slot.
                Some((_, Some((v, exp)))) if now < *exp => return (v.clone(), Outcome::Hit),
                // Still being fetched: wait on that fetch.
                Some((slot, None)) => slot.clone(),
                _ => {
                    inner.remove(key);
                    if self.full(&inner) {
                        self.sweep(&mut inner, now);
                    }
                    let slot = Arc::new(Slot {
                        cell: OnceCell::new(),
                        weight: AtomicUsize::new(0),
                    });
                    inner.bytes += key.len() + ENTRY_OVERHEAD;
                    inner.map.insert(key.to_owned(), slot.clone());
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
        if !fetched {
            return (v.clone(), Outcome::Hit);
        }
        // The value's bytes count from now, if its slot is still the one in the map.
        let weight = v.weight();
        if weight > 0 {
            let mut inner = self.lock();
            if inner.map.get(key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slot.weight.store(weight, Ordering::Relaxed);
                inner.bytes += weight;
                if inner.bytes > self.max_bytes {
                    self.sweep(&mut inner, Instant::now());
                }
            }
        }
        (v.clone(), Outcome::Miss)
    }

    /// Make room: drop expired entries, then, if still full, any finished half of the rest.
    fn sweep(&self, inner: &mut Inner<V>, now: Instant) {
        let mut freed = 0;
        inner.map.retain(|k, s| {
            let keep = s.is_fresh(now);
            if !keep {
                freed += Inner::cost(k, s);
            }
            keep
        });
        inner.bytes = inner.bytes.saturating_sub(freed);
        if self.full(inner) {
            let mut budget = inner.map.len() / 2 + 1;
            let (mut freed, mut evicted) = (0, 0u64);
            inner.map.retain(|k, s| {
                if budget > 0 && s.cell.get().is_some() {
                    budget -= 1;
                    freed += Inner::cost(k, s);
                    evicted += 1;
                    false
                } else {
                    true
                }
            });
            inner.bytes = inner.bytes.saturating_sub(freed);
            if let Some(c) = &self.evictions {
                c.inc_by(evicted);
            }
        }
    }

    /// Drop `key` now; a fetch already under way finishes for its own waiters only.
    pub fn invalidate(&self, key: &str) -> bool {
        self.lock().remove(key)
    }

    /// Drop everything (after the invalidation channel was lost: messages may have been missed).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the cache counts as held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
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

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            *self as usize
        }
    }

    #[tokio::test]
    async fn bytes_are_bounded_and_evictions_counted() {
        let evictions = prometheus::IntCounter::new("e", "e").expect("counter");
        let cache: Cache<u32> = Cache::bounded(1000, 10_000, Some(evictions.clone()));
        for i in 0..200u32 {
            // A 1000-byte value each: ten fit.
            cache
                .get_or_fetch(&format!("k{i}"), || async {
                    (1000, Duration::from_secs(60))
                })
                .await;
            assert!(
                cache.bytes() <= 10_000 + 1000 + 2 * (ENTRY_OVERHEAD + 4),
                "{}",
                cache.bytes()
            );
        }
        assert!(cache.len() <= 11, "{}", cache.len());
        assert!(evictions.get() >= 180, "{}", evictions.get());
        // Removals give their bytes back.
        cache.clear();
        assert_eq!(cache.bytes(), 0);
        cache
            .get_or_fetch("a", || async { (5, Duration::from_secs(60)) })
            .await;
        assert_eq!(cache.bytes(), 1 + ENTRY_OVERHEAD + 5);
        assert!(cache.invalidate("a"));
        assert_eq!(cache.bytes(), 0);
        // An expired entry replaced by a fresh fetch is not counted twice.
        cache
            .get_or_fetch("b", || async { (7, Duration::ZERO) })
            .await;
        cache
            .get_or_fetch("b", || async { (9, Duration::from_secs(60)) })
            .await;
        assert_eq!(cache.bytes(), 1 + ENTRY_OVERHEAD + 9);
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
