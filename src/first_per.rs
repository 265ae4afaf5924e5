//! "Once per key per interval", remembered in a map a client cannot grow without bound: the
//! audit trail's first access in each interval (`audit`) and the one wake request per
//! workspace per interval (`lifecycle`).

use crate::FastMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct FirstPer<K> {
    /// When each key was last let through.
    seen: Mutex<FastMap<K, Instant>>,
    interval: Duration,
    max_entries: usize,
}

impl<K: Hash + Eq> FirstPer<K> {
    pub fn new(interval: Duration, max_entries: usize) -> Self {
        Self {
            seen: Mutex::new(FastMap::default()),
            interval,
            max_entries,
        }
    }

    /// Whether `key` is let through at `now`: the first time, and then once `interval` has
    /// passed since it last was. At `max_entries` keys, a new key first drops the keys whose
    /// interval is over; if none is, the map starts over (every key is new again: more
    /// events, never an unbounded map).
    pub fn first<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = seen.get(key) {
            if now.duration_since(*at) < self.interval {
                return false;
            }
        }
        if seen.len() >= self.max_entries && !seen.contains_key(key) {
            let interval = self.interval;
            seen.retain(|_, at| now.duration_since(*at) < interval);
            if seen.len() >= self.max_entries {
                seen.clear();
            }
        }
        seen.insert(key.to_owned(), now);
        true
    }

    /// Forget `key`: the next `first` lets it through (what it was let through for failed).
    pub fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Keys remembered now (for the tests of the bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_and_never_more_than_max_entries() {
        let f: FirstPer<String> = FirstPer::new(Duration::from_secs(30), 8);
        let t0 = Instant::now();
        assert!(f.first("a", t0));
        assert!(!f.first("a", t0 + Duration::from_secs(1)));
        assert!(f.first("a", t0 + Duration::from_secs(31)), "a new interval");
        f.forget("a");
        assert!(f.first("a", t0 + Duration::from_secs(32)), "forgotten");
        for i in 0..100 {
            f.first(&format!("k{i}"), t0);
            assert!(f.len() <= 8);
        }
    }

    #[test]
    fn a_full_map_drops_what_is_over_first_and_else_starts_over() {
        let f: FirstPer<u64> = FirstPer::new(Duration::from_secs(30), 8);
        let t0 = Instant::now();
        for k in 0..4 {
            assert!(f.first(&k, t0));
        }
        for k in 4..8 {
            assert!(f.first(&k, t0 + Duration::from_secs(20)));
        }
        // Full: the four whose interval is over go, the four still in theirs stay.
        assert!(f.first(&8, t0 + Duration::from_secs(31)));
        assert_eq!(f.len(), 5);
        assert!(!f.first(&4, t0 + Duration::from_secs(31)));
        for k in 9..12 {
            assert!(f.first(&k, t0 + Duration::from_secs(31)));
        }
        // Full of keys all still in their interval: a new key starts the map over.
        assert!(f.first(&12, t0 + Duration::from_secs(32)));
        assert_eq!(f.len(), 1);
    }
}
