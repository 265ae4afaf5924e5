//! The per-workspace cap on requests and WebSockets in flight (`limits.
//! max_connections_per_workspace`): `request_filter` takes a `Slot` for the matched record key,
//! kept in the request's CTX and given back when the CTX is dropped, however the request ends.

use crate::FastMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct InFlight {
    max: usize,
    counts: Arc<Mutex<FastMap<String, usize>>>,
}

/// One request's place in its workspace's count.
#[derive(Debug)]
pub struct Slot {
    key: String,
    counts: Arc<Mutex<FastMap<String, usize>>>,
}

impl InFlight {
    /// `max` 0: no cap (and no bookkeeping).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for `key`, or `None` when the workspace is at its cap.
    pub fn enter(&self, key: &str) -> Option<Option<Slot>> {
        if self.max == 0 {
            return Some(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(Slot {
            key: key.to_owned(),
            counts: self.counts.clone(),
        }))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let f = InFlight::new(2);
        let a = f.enter("w").expect("room").expect("slot");
        let _b = f.enter("w").expect("room").expect("slot");
        assert!(f.enter("w").is_none(), "at the cap");
        assert!(f.enter("other").is_some(), "per workspace");
        drop(a);
        assert!(f.enter("w").is_some(), "given back on drop");
        assert!(InFlight::new(0).enter("w").expect("no cap").is_none());
    }
}
