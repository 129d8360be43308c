//! The responses this sidecar produced, kept in memory so a later request can continue one with
//! `previous_response_id`, reference one of its items with `item_reference`, or fetch it with
//! `GET /v1/responses/{id}`.
//!
//! Bounded two ways: at most `entries` responses (the least recently used goes first) and each for
//! at most `ttl` after it was stored. Nothing is written to disk and nothing is shared between
//! pods: a conversation continued through another replica, or after a restart, gets a clear
//! `previous_response_not_found` error and the client resends the whole conversation instead.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

/// How many responses a store keeps unless told otherwise (`--responses-store-entries`).
pub const DEFAULT_ENTRIES: usize = 1000;
/// How long a store keeps a response unless told otherwise (`--responses-store-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// One stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    /// The Response object as it was answered.
    pub response: Value,
    /// The whole conversation up to and including this response's output, as Responses input
    /// items (the chain's earlier turns, this request's input, this response's output). Items are
    /// shared between the responses of one chain, so a long conversation is held once.
    pub conversation: Vec<Arc<Value>>,
}

struct Entry {
    stored: Arc<Stored>,
    at: Instant,
}

/// Responses this sidecar produced, for `previous_response_id`. A cheap handle: clones share
/// one store.
#[derive(Clone)]
pub struct Store {
    lru: Option<Arc<Mutex<LruCache<String, Entry>>>>,
    ttl: Duration,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(DEFAULT_ENTRIES, DEFAULT_TTL)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.lru.as_ref().map(|l| l.lock().cap()))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Store {
    /// A store of at most `entries` responses, each kept for at most `ttl`. `entries == 0` or a
    /// zero `ttl` keeps nothing: `previous_response_id` then always answers "not found".
    pub fn new(entries: usize, ttl: Duration) -> Self {
        let lru = NonZeroUsize::new(entries)
            .filter(|_| !ttl.is_zero())
            .map(|n| Arc::new(Mutex::new(LruCache::new(n))));
        Self { lru, ttl }
    }

    /// The response `id`, if it is still here.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Stored>> {
        self.get_at(id, Instant::now())
    }

    pub(crate) fn get_at(&self, id: &str, now: Instant) -> Option<Arc<Stored>> {
        let lru = self.lru.as_ref()?;
        let mut lru = lru.lock();
        let fresh = lru
            .get(id)
            .map(|e| now.saturating_duration_since(e.at) < self.ttl)?;
        if fresh {
            lru.get(id).map(|e| e.stored.clone())
        } else {
            lru.pop(id);
            None
        }
    }

    /// Keeps `stored` under `id`.
    pub(crate) fn put(&self, id: String, stored: Stored) {
        self.put_at(id, stored, Instant::now());
    }

    pub(crate) fn put_at(&self, id: String, stored: Stored, now: Instant) {
        if let Some(lru) = &self.lru {
            let entry = Entry {
                stored: Arc::new(stored),
                at: now,
            };
            lru.lock().put(id, entry);
        }
    }

    /// Forgets `id`; whether it was here.
    pub(crate) fn remove(&self, id: &str) -> bool {
        self.remove_at(id, Instant::now())
    }

    fn remove_at(&self, id: &str, now: Instant) -> bool {
        let Some(lru) = &self.lru else { return false };
        lru.lock()
            .pop(id)
            .is_some_and(|e| now.saturating_duration_since(e.at) < self.ttl)
    }

    /// Responses held now (expired ones included until they are next looked up or pushed out).
    pub fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, |l| l.lock().len())
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"id": text}),
            conversation: vec![Arc::new(json!({"role": "user", "content": text}))],
        }
    }

    #[test]
    fn evicts_the_least_recently_used_beyond_its_size() {
        let s = Store::new(2, Duration::from_secs(60));
        let t = Instant::now();
        s.put_at("a".into(), stored("a"), t);
        s.put_at("b".into(), stored("b"), t);
        // Touch `a` so `b` is the least recently used.
        assert!(s.get_at("a", t).is_some());
        s.put_at("c".into(), stored("c"), t);
        assert!(s.get_at("b", t).is_none());
        assert_eq!(s.get_at("a", t).unwrap().response["id"], "a");
        assert!(s.get_at("c", t).is_some());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn forgets_responses_older_than_the_ttl() {
        let s = Store::new(10, Duration::from_secs(60));
        let t = Instant::now();
        s.put_at("a".into(), stored("a"), t);
        assert!(s.get_at("a", t + Duration::from_secs(59)).is_some());
        assert!(s.get_at("a", t + Duration::from_secs(60)).is_none());
        // Expired entries are dropped when seen, not kept around.
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn zero_entries_or_zero_ttl_stores_nothing() {
        for s in [
            Store::new(0, Duration::from_secs(60)),
            Store::new(10, Duration::ZERO),
        ] {
            s.put("a".into(), stored("a"));
            assert!(s.get("a").is_none());
            assert!(s.is_empty());
        }
    }

    #[test]
    fn remove_reports_whether_the_response_was_there() {
        let s = Store::new(10, Duration::from_secs(60));
        let t = Instant::now();
        s.put_at("a".into(), stored("a"), t);
        assert!(!s.remove_at("a", t + Duration::from_secs(61)));
        s.put_at("a".into(), stored("a"), t);
        assert!(s.remove_at("a", t));
        assert!(!s.remove_at("a", t));
    }
}
