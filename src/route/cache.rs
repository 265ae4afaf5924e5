//! In-process cache with single-flight misses: route records (and resolved upstream names) are
//! served from memory for a short TTL, and however many requests miss on one key at once, one
//! fetch runs and they all share its answer. Called from `request_filter`; entries are dropped by
//! TTL or by the invalidation subscriber (`store::spawn_invalidation_listener`).
//!
//! The entries live in `quick_cache` (CLOCK-PRO, sharded): an insert past the bound evicts in
//! O(1) amortised work under one shard's lock, never a scan of the whole map. An expired entry
//! stays until it is replaced or evicted, so the fetch that replaces it can fall back on it
//! (`Records` serves a route record stale while Redis is down).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// What an entry costs besides its key and value's heap bytes: its slot in the cache (key and
/// value inline, the CLOCK-PRO links, the hash table's index), and the value's `Arc` header.
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

/// Whether an answer came from memory or from a fetch (for metrics and `explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

/// One cached answer: the value, when it was fetched (nanoseconds since the cache's epoch),
/// for how long it is fresh (milliseconds, rounded down), and the generation it was fetched
/// in (`clear` starts a new one). 8 bytes of times less than two `u64` instants, in an entry
/// a million workspaces each have.
#[derive(Clone)]
struct Entry<V> {
    value: V,
    fetched_ns: u64,
    ttl_ms: u32,
    generation: u32,
}

impl<V> Entry<V> {
    fn expires_ns(&self) -> u64 {
        self.fetched_ns
            .saturating_add(u64::from(self.ttl_ms) * 1_000_000)
    }
}

/// A key as the cache holds it: up to 38 bytes in the slot itself (a workspace's record key,
/// `workspace:` and a 26-character id, is 36), longer ones on the heap. A `Box<str>` was 16
/// bytes in the slot and a 40-byte block besides.
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

/// The longest key held in the slot: with its length and the variant's tag, as large as a
/// `Box<str>` variant aligned to 8 makes the enum anyway (40 bytes).
const INLINE_KEY: usize = 38;

impl From<&str> for Key {
    fn from(key: &str) -> Key {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0u8; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.into()),
        }
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        match self {
            // Copied whole from a `&str` (`From<&str>`, the only constructor), so always
            // UTF-8: the check never fails, and costs too little to measure
            // (docs/BENCHMARKS.md, "second curves").
            Key::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Key::Heap(key) => key,
        }
    }
}

impl Key {
    fn as_str(&self) -> &str {
        std::borrow::Borrow::borrow(self)
    }
}

/// Hashed and compared as the `str` it holds, so that the cache is looked up by `&str`.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

/// Weighs an entry by its bytes, and at least `floor`: `max_bytes / max_entries`, so that one
/// weight bound keeps both the bytes and the number of entries inside the config's limits.
#[derive(Clone)]
struct Weigher {
    floor: u64,
    /// Without a byte bound every entry weighs 1 and the capacity is the entry count.
    unit: bool,
}

impl<V: Weigh> quick_cache::Weighter<Key, Entry<V>> for Weigher {
    fn weight(&self, key: &Key, entry: &Entry<V>) -> u64 {
        if self.unit {
            return 1;
        }
        ((key.as_str().len() + ENTRY_OVERHEAD + entry.value.weight()) as u64).max(self.floor)
    }
}

/// Counts the fresh or expired entries dropped to stay inside the bounds.
#[derive(Clone)]
struct Evictions(Option<prometheus::IntCounter>);

impl<V> quick_cache::Lifecycle<Key, Entry<V>> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: Key, _: Entry<V>) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }
}

/// A fetch under way for one key: every request that misses on the key meanwhile waits on it.
type Flight<V> = Arc<OnceCell<V>>;

/// A flight and the requests waiting on it, counted under the flights' lock.
struct Boarding<V> {
    flight: Flight<V>,
    waiting: usize,
}

/// A cache bounded by entries and by bytes, whose keys may come from clients (session ids,
/// workspace ids).
pub struct Cache<V> {
    entries: quick_cache::sync::Cache<Key, Entry<V>, Weigher, ahash::RandomState, Evictions>,
    /// Fetches under way, one per key, each with the requests waiting on it: as many as
    /// requests in flight, and left when they land or the last request waiting gives up.
    flights: Mutex<crate::FastMap<Box<str>, Boarding<V>>>,
    epoch: Instant,
    generation: AtomicU32,
}

/// Nanoseconds as the cache keeps them, saturating (a TTL of years does not wrap).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<V: Clone + Send + Sync + Weigh> Cache<V> {
    /// At most `max_entries` entries, no byte bound (values the operator's records name).
    pub fn new(max_entries: usize) -> Self {
        Self::bounded(max_entries, usize::MAX, None)
    }

    /// At most `max_entries` entries and about `max_bytes` bytes; `evictions` counts the
    /// entries dropped to stay inside them.
    pub fn bounded(
        max_entries: usize,
        max_bytes: usize,
        evictions: Option<prometheus::IntCounter>,
    ) -> Self {
        let max_entries = max_entries.max(1);
        let unit = max_bytes == usize::MAX;
        let capacity = if unit { max_entries } else { max_bytes.max(1) } as u64;
        let weigher = Weigher {
            floor: (capacity / max_entries as u64).max(1),
            unit,
        };
        Self {
            entries: quick_cache::sync::Cache::with(
                max_entries,
                capacity,
                weigher,
                ahash::RandomState::new(),
                Evictions(evictions),
            ),
            flights: Mutex::new(crate::FastMap::default()),
            epoch: Instant::now(),
            generation: AtomicU32::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.epoch))
    }

    fn flights(&self) -> MutexGuard<'_, crate::FastMap<Box<str>, Boarding<V>>> {
        // Every critical section is a single insert, lookup or remove: a poisoned lock still
        // holds a consistent map.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fresh value of `key`, if it is cached.
    fn fresh(&self, key: &str, now: u64) -> Option<V> {
        self.entries
            .get(key)
            .filter(|e| {
                now < e.expires_ns() && e.generation == self.generation.load(Ordering::Relaxed)
            })
            .map(|e| e.value)
    }

    /// The cached value for `key`, or the result of `fetch`, which says how long its answer
    /// may be kept: `Some(ttl)` replaces the entry (`Some(ZERO)`: share it with the requests
    /// already waiting, then drop the key), `None` shares it and leaves the entry as it was.
    /// `fetch` may ask its `Previous` for the expired entry (to serve it stale).
    pub async fn get_or_fetch<'a, F, Fut>(&'a self, key: &'a str, fetch: F) -> (V, Outcome)
    where
        F: FnOnce(Previous<'a, V>) -> Fut,
        Fut: Future<Output = (V, Option<Duration>)>,
    {
        if let Some(v) = self.fresh(key, self.now_ns()) {
            return (v, Outcome::Hit);
        }
        let flight = {
            let mut flights = self.flights();
            match flights.get_mut(key) {
                Some(b) => {
                    b.waiting += 1;
                    b.flight.clone()
                }
                None => {
                    let flight = Flight::default();
                    let boarding = Boarding {
                        flight: flight.clone(),
                        waiting: 1,
                    };
                    flights.insert(key.into(), boarding);
                    flight
                }
            }
        };
        let landing = Landing {
            cache: self,
            key,
            flight: flight.clone(),
        };
        let mut fetched = false;
        let value = flight
            .get_or_init(|| async {
                // A flight that landed between the lookup above and joining the flights has
                // stored its answer already (it stores before it leaves the flights).
                if let Some(v) = self.fresh(key, self.now_ns()) {
                    return v;
                }
                fetched = true;
                let previous = Previous {
                    cache: self,
                    key,
                    flight: flight.clone(),
                };
                let (value, keep) = fetch(previous).await;
                if let Some(ttl) = keep {
                    self.land(key, &flight, &value, ttl);
                }
                value
            })
            .await
            .clone();
        drop(landing);
        (value, if fetched { Outcome::Miss } else { Outcome::Hit })
    }

    /// Whether `flight` is still the one under way for `key` (not called off by `invalidate`
    /// or `clear`). Call with the flights' lock held.
    fn boarding(
        flights: &crate::FastMap<Box<str>, Boarding<V>>,
        key: &str,
        flight: &Flight<V>,
    ) -> bool {
        flights
            .get(key)
            .is_some_and(|b| Arc::ptr_eq(&b.flight, flight))
    }

    /// Store a flight's answer for `ttl` (zero: drop the key), unless the flight was called off
    /// meanwhile (`invalidate`, `clear`): its answer may predate the change, so it goes to its
    /// own waiters only. Under the flights' lock, so a call-off is either before or after it.
    fn land(&self, key: &str, flight: &Flight<V>, value: &V, ttl: Duration) {
        let flights = self.flights();
        if !Self::boarding(&flights, key, flight) {
            return;
        }
        if ttl.is_zero() {
            self.entries.remove(key);
            return;
        }
        self.entries.insert(
            key.into(),
            Entry {
                value: value.clone(),
                fetched_ns: self.now_ns(),
                // Up to 49 days; a longer TTL is cut to that.
                ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
                generation: self.generation.load(Ordering::Relaxed),
            },
        );
        drop(flights);
    }

    /// Drop `key` now; a fetch already under way finishes for its own waiters only.
    pub fn invalidate(&self, key: &str) -> bool {
        let mut flights = self.flights();
        let in_flight = flights.remove(key).is_some();
        self.entries.remove(key).is_some() || in_flight
    }

    /// Treat everything cached as expired (after the invalidation channel was lost: messages
    /// may have been missed). The entries stay as fallbacks for their refetch, as after a TTL.
    pub fn clear(&self) {
        let mut flights = self.flights();
        self.generation.fetch_add(1, Ordering::Relaxed);
        flights.clear();
    }

    /// Entries held, fresh or expired.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the cache counts as held now (the weight of its entries).
    pub fn bytes(&self) -> usize {
        self.entries.weight() as usize
    }
}

/// What a fetch may fall back on: the entry its key still holds (expired, or from before a
/// `clear`), read when asked, so that an invalidation that came meanwhile is seen.
pub struct Previous<'a, V> {
    cache: &'a Cache<V>,
    key: &'a str,
    flight: Flight<V>,
}

impl<V: Clone + Send + Sync + Weigh> Previous<'_, V> {
    /// The entry's value and its age now; `None` when there is none, or when this fetch was
    /// called off (its key invalidated) since it started.
    pub fn get(&self) -> Option<(V, Duration)> {
        let flights = self.cache.flights();
        if !Cache::boarding(&flights, self.key, &self.flight) {
            return None;
        }
        let e = self.cache.entries.peek(self.key)?;
        let age = self.cache.now_ns().saturating_sub(e.fetched_ns);
        Some((e.value, Duration::from_nanos(age)))
    }
}

/// Leaves the flights when its request stops waiting: once the flight has landed (its answer is
/// stored), or when the last request waiting on it gives up (its client went away), so that a
/// flight nobody waits on is not joined by later requests. The count changes only under the
/// flights' lock.
struct Landing<'a, V> {
    cache: &'a Cache<V>,
    key: &'a str,
    flight: Flight<V>,
}

impl<V> Drop for Landing<'_, V> {
    fn drop(&mut self) {
        let mut flights = self.cache.flights.lock().unwrap_or_else(|p| p.into_inner());
        let leave = match flights.get_mut(self.key) {
            Some(b) if Arc::ptr_eq(&b.flight, &self.flight) => {
                b.waiting = b.waiting.saturating_sub(1);
                b.waiting == 0 || self.flight.initialized()
            }
            _ => false,
        };
        if leave {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys up to 38 bytes are held in the slot, longer ones on the heap; either way a lookup
    /// by `&str` finds exactly its own key (one byte longer or shorter is another key).
    #[tokio::test]
    async fn keys_inline_and_on_the_heap_are_found_by_their_text() {
        let cache: Cache<u32> = Cache::new(100);
        let keys: Vec<String> = (36..=40).map(|n| "k".repeat(n)).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                matches!(Key::from(k.as_str()), Key::Inline { .. }),
                k.len() <= INLINE_KEY
            );
            cache
                .get_or_fetch(
                    k,
                    |_| async move { (i as u32, Some(Duration::from_secs(60))) },
                )
                .await;
        }
        for (i, k) in keys.iter().enumerate() {
            let (v, outcome) = cache
                .get_or_fetch(k, |_| async { (99, Some(Duration::from_secs(60))) })
                .await;
            assert_eq!((v, outcome), (i as u32, Outcome::Hit), "{}", k.len());
        }
        assert_eq!(cache.len(), keys.len());
        assert!(cache.invalidate(&"k".repeat(38)));
        assert!(!cache.invalidate(&"k".repeat(38)));
        assert_eq!(cache.len(), keys.len() - 1);
        let multibyte = "é".repeat(19);
        assert_eq!(Key::from(multibyte.as_str()).as_str(), multibyte);
    }
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
                    .get_or_fetch("k", |_| async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        (7, Some(Duration::from_secs(60)))
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
            .get_or_fetch("k", |_| async { (1, Some(Duration::ZERO)) })
            .await;
        assert_eq!((v, o), (1, Outcome::Miss));
        let (v, _) = cache
            .get_or_fetch("k", |_| async { (2, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!(v, 2);
        let (v, o) = cache
            .get_or_fetch("k", |_| async { (3, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!((v, o), (2, Outcome::Hit));
        assert!(cache.invalidate("k"));
        let (v, _) = cache
            .get_or_fetch("k", |_| async { (4, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!(v, 4);
    }

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            *self as usize
        }
    }

    #[tokio::test]
    async fn bytes_and_entries_are_bounded_and_evictions_counted() {
        let evictions = prometheus::IntCounter::new("e", "e").expect("counter");
        let cache: Cache<u32> = Cache::bounded(1000, 10_000, Some(evictions.clone()));
        for i in 0..200u32 {
            // A 1000-byte value each: nine fit (each weighs its key and overhead too).
            cache
                .get_or_fetch(&format!("k{i}"), |_| async {
                    (1000, Some(Duration::from_secs(60)))
                })
                .await;
            assert!(cache.bytes() <= 10_000, "{}", cache.bytes());
        }
        assert!(cache.len() <= 10, "{}", cache.len());
        assert_eq!(evictions.get(), 200 - cache.len() as u64);
        // Small values under a large byte bound: the entry bound holds (each weighs at least
        // 10_000_000 / 1000).
        let cache: Cache<u32> = Cache::bounded(1000, 10_000_000, None);
        for i in 0..20_000u32 {
            cache
                .get_or_fetch(&i.to_string(), |_| async {
                    (0, Some(Duration::from_secs(60)))
                })
                .await;
        }
        assert!(cache.len() <= 1000, "{}", cache.len());
        assert!(cache.len() >= 500, "{}", cache.len());
        // Removals give their bytes back.
        let cache: Cache<u32> = Cache::bounded(1000, 100_000, None);
        cache
            .get_or_fetch("a", |_| async { (5, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!(cache.bytes(), 1 + ENTRY_OVERHEAD + 5);
        assert!(cache.invalidate("a"));
        assert_eq!(cache.bytes(), 0);
        // A fresh fetch replaces an expired entry: counted once.
        cache
            .get_or_fetch("b", |_| async { (7, Some(Duration::from_nanos(1))) })
            .await;
        cache
            .get_or_fetch("b", |_| async { (9, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!(cache.bytes(), 1 + ENTRY_OVERHEAD + 9);
    }

    #[tokio::test]
    async fn size_is_bounded() {
        let cache: Cache<u32> = Cache::new(10);
        for i in 0..100 {
            cache
                .get_or_fetch(&format!("k{i}"), |_| async {
                    (i, Some(Duration::from_secs(60)))
                })
                .await;
        }
        assert!(cache.len() <= 10, "{}", cache.len());
    }

    #[tokio::test]
    async fn an_expired_entry_is_offered_to_its_refetch_and_kept_when_asked() {
        let cache: Cache<u32> = Cache::new(100);
        cache
            .get_or_fetch("k", |_| async { (1, Some(Duration::from_millis(20))) })
            .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Expired: the fetch runs and sees the old value and its age; `None` keeps it as it was.
        for _ in 0..2 {
            let (v, o) = cache
                .get_or_fetch("k", |previous| async move {
                    let (old, age) = previous.get().expect("the expired entry");
                    assert_eq!(old, 1);
                    assert!(age >= Duration::from_millis(20), "{age:?}");
                    (old, None)
                })
                .await;
            assert_eq!((v, o), (1, Outcome::Miss));
        }
        // `clear` expires everything but keeps it as the refetch's fallback.
        cache
            .get_or_fetch("j", |_| async { (2, Some(Duration::from_secs(60))) })
            .await;
        cache.clear();
        let (v, o) = cache
            .get_or_fetch("j", |previous| async move {
                assert_eq!(previous.get().map(|p| p.0), Some(2));
                (3, Some(Duration::from_secs(60)))
            })
            .await;
        assert_eq!((v, o), (3, Outcome::Miss));
        let (v, o) = cache
            .get_or_fetch("j", |_| async { (4, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!((v, o), (3, Outcome::Hit));
    }

    #[tokio::test]
    async fn a_fetch_called_off_by_an_invalidation_answers_its_waiters_only() {
        let cache: Arc<Cache<u32>> = Arc::new(Cache::new(100));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("k", |_| async {
                        let _ = wait.await;
                        (1, Some(Duration::from_secs(60)))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The record changes while the first read is under way.
        assert!(cache.invalidate("k"));
        let _ = go.send(());
        assert_eq!(slow.await.expect("task"), (1, Outcome::Miss));
        let (v, o) = cache
            .get_or_fetch("k", |_| async { (2, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!((v, o), (2, Outcome::Miss), "the old read was not stored");
    }

    /// A request for `key` whose fetch never answers (a client that waits until aborted).
    fn spawn_stuck_fetch(
        cache: &Arc<Cache<u32>>,
        key: &'static str,
    ) -> tokio::task::JoinHandle<(u32, Outcome)> {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_fetch(key, |_| async {
                    std::future::pending::<()>().await;
                    (1, Some(Duration::from_secs(60)))
                })
                .await
        })
    }

    #[tokio::test]
    async fn a_fetch_whose_requests_all_left_is_not_joined() {
        let cache: Arc<Cache<u32>> = Arc::new(Cache::new(100));
        let stuck = spawn_stuck_fetch(&cache, "k");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(cache.flights().len(), 1);
        stuck.abort();
        let _ = stuck.await;
        assert_eq!(cache.flights().len(), 0, "the abandoned flight left");
        let (v, o) = cache
            .get_or_fetch("k", |_| async { (2, Some(Duration::from_secs(60))) })
            .await;
        assert_eq!((v, o), (2, Outcome::Miss));
        assert_eq!(cache.flights().len(), 0);
    }

    #[tokio::test]
    async fn an_invalidation_during_a_fetch_takes_its_fallback_away() {
        let cache: Arc<Cache<u32>> = Arc::new(Cache::new(100));
        cache
            .get_or_fetch("k", |_| async { (1, Some(Duration::from_nanos(1))) })
            .await;
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("k", |previous| async move {
                        assert_eq!(previous.get().map(|p| p.0), Some(1), "the expired entry");
                        let _ = wait.await;
                        // Redis failed, say: the fallback is asked for after the message.
                        (previous.get().map_or(0, |p| p.0), None)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(cache.invalidate("k"));
        let _ = go.send(());
        assert_eq!(task.await.expect("task"), (0, Outcome::Miss));
    }

    #[tokio::test]
    async fn waiters_that_all_give_up_leave_no_flight_behind() {
        let cache: Arc<Cache<u32>> = Arc::new(Cache::new(100));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            tasks.push(spawn_stuck_fetch(&cache, "k"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(cache.flights().get("k").map(|b| b.waiting), Some(8));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        assert_eq!(cache.flights().len(), 0);
    }

    #[test]
    fn ttls_too_long_to_count_in_nanoseconds_saturate() {
        assert_eq!(nanos(Duration::from_secs(u64::MAX)), u64::MAX);
        assert_eq!(nanos(Duration::from_millis(5)), 5_000_000);
    }
}
