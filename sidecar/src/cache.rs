//! Exact-match response cache: the whole request body is the key, bounded by entries and bytes,
//! with a TTL. Only successful, non-streaming answers are stored.

use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CACHE_CONTROL;
use lru::LruCache;
use parking_lot::Mutex;
use tokio::time::Instant;

use llmesh_api::snapshot::Cache as CacheSpec;

/// A cached answer.
#[derive(Clone, Debug)]
pub struct Hit {
    /// The response body.
    pub body: Bytes,
    /// Index of the backend that produced it.
    pub backend: usize,
    /// Whether the body is in the client's own format (native passthrough).
    pub native: bool,
}

/// What the cache did for a request (the `x-llmesh-cache` header and the access log's `cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The route has no cache, or the request streams.
    Off,
    /// The client asked for a fresh answer (`Cache-Control: no-store` or `no-cache`).
    Bypass,
    /// Answered from the cache.
    Hit,
    /// Not in the cache: the answer, if it succeeds, is stored.
    Miss,
}

impl Status {
    /// The label (`off`, `bypass`, `hit`, `miss`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Bypass => "bypass",
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// The cache step of a request: the route's cache (if any) consulted for a non-streaming
/// request body in `scope`, unless the client's `Cache-Control` says not to. `usable` says
/// whether a stored answer can serve this request.
pub fn lookup(
    cache: Option<&ResponseCache>,
    stream: bool,
    headers: &HeaderMap,
    scope: usize,
    request: &[u8],
    usable: impl Fn(&Hit) -> bool,
    now: Instant,
) -> (Status, Option<Hit>) {
    let Some(c) = cache.filter(|_| !stream) else {
        return (Status::Off, None);
    };
    let no_store = headers
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("no-store") || v.contains("no-cache"));
    if no_store {
        return (Status::Bypass, None);
    }
    match c.get(scope, request, now).filter(usable) {
        Some(hit) => (Status::Hit, Some(hit)),
        None => (Status::Miss, None),
    }
}

struct Entry {
    scope: usize,
    request: Bytes,
    hit: Hit,
    expires: Instant,
}

struct Inner {
    lru: LruCache<u64, Entry>,
    bytes: u64,
}

/// One route's cache.
pub struct ResponseCache {
    spec: CacheSpec,
    hasher: std::collections::hash_map::RandomState,
    inner: Mutex<Inner>,
}

impl ResponseCache {
    /// An empty cache with the route's bounds.
    pub fn new(spec: CacheSpec) -> Self {
        let cap = NonZeroUsize::new(spec.max_entries.max(1) as usize).unwrap_or(NonZeroUsize::MIN);
        Self {
            spec,
            hasher: Default::default(),
            inner: Mutex::new(Inner {
                lru: LruCache::new(cap),
                bytes: 0,
            }),
        }
    }

    /// The route's cache settings.
    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    fn key(&self, scope: usize, request: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_usize(scope);
        h.write(request);
        h.finish()
    }

    /// The fresh answer stored for exactly this request body in `scope` (the A/B arm the
    /// request was assigned, so variants never serve each other's answers).
    pub fn get(&self, scope: usize, request: &[u8], now: Instant) -> Option<Hit> {
        let k = self.key(scope, request);
        let mut i = self.inner.lock();
        match i.lru.get(&k) {
            Some(e) if e.scope == scope && e.request.as_ref() == request && e.expires > now => {
                return Some(e.hit.clone());
            }
            Some(_) => {}
            None => return None,
        }
        // Expired (or a hash collision): drop it.
        if let Some(old) = i.lru.pop(&k) {
            i.bytes -= (old.request.len() + old.hit.body.len()) as u64;
        }
        None
    }

    /// Stores an answer for `scope`, evicting the least recently used ones beyond the bounds.
    pub fn put(&self, scope: usize, request: Bytes, hit: Hit, now: Instant) {
        let size = (request.len() + hit.body.len()) as u64;
        if size > self.spec.max_bytes {
            return;
        }
        let k = self.key(scope, &request);
        let mut i = self.inner.lock();
        let entry = Entry {
            scope,
            request,
            hit,
            expires: now + Duration::from_millis(self.spec.ttl_ms),
        };
        if let Some((_, old)) = i.lru.push(k, entry) {
            i.bytes -= (old.request.len() + old.hit.body.len()) as u64;
        }
        i.bytes += size;
        while i.bytes > self.spec.max_bytes {
            match i.lru.pop_lru() {
                Some((_, old)) => i.bytes -= (old.request.len() + old.hit.body.len()) as u64,
                None => break,
            }
        }
    }

    /// (entries, bytes) held.
    pub fn usage(&self) -> (usize, u64) {
        let i = self.inner.lock();
        (i.lru.len(), i.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: u32, bytes: u64) -> ResponseCache {
        ResponseCache::new(CacheSpec {
            ttl_ms: 1_000,
            max_entries: entries,
            max_bytes: bytes,
        })
    }

    fn hit(s: &'static str) -> Hit {
        Hit {
            body: Bytes::from_static(s.as_bytes()),
            backend: 0,
            native: false,
        }
    }

    #[test]
    fn exact_match_within_ttl() {
        let t0 = Instant::now();
        let c = cache(10, 10_000);
        c.put(0, Bytes::from_static(b"req-a"), hit("answer-a"), t0);
        assert_eq!(
            c.get(0, b"req-a", t0 + Duration::from_millis(999))
                .unwrap()
                .body,
            "answer-a"
        );
        assert!(c.get(0, b"req-b", t0).is_none());
        assert!(
            c.get(1, b"req-a", t0).is_none(),
            "another A/B arm does not share answers"
        );
        assert!(
            c.get(0, b"req-a", t0 + Duration::from_millis(1_000))
                .is_none()
        );
        assert_eq!(c.usage(), (0, 0), "expired entries are dropped on read");
    }

    #[test]
    fn lookup_says_off_bypass_hit_or_miss() {
        let t0 = Instant::now();
        let c = cache(10, 10_000);
        c.put(0, Bytes::from_static(b"req"), hit("answer"), t0);
        let plain = HeaderMap::new();
        let mut no_store = HeaderMap::new();
        no_store.insert(CACHE_CONTROL, "no-store".parse().unwrap());
        let any = |_: &Hit| true;
        let status = |cache, stream, h, req: &[u8], usable: &dyn Fn(&Hit) -> bool| {
            lookup(cache, stream, h, 0, req, usable, t0).0
        };
        assert_eq!(status(None, false, &plain, b"req", &any), Status::Off);
        assert_eq!(status(Some(&c), true, &plain, b"req", &any), Status::Off);
        assert_eq!(
            status(Some(&c), false, &no_store, b"req", &any),
            Status::Bypass
        );
        assert_eq!(
            status(Some(&c), false, &plain, b"other", &any),
            Status::Miss
        );
        assert_eq!(
            status(Some(&c), false, &plain, b"req", &|_| false),
            Status::Miss,
            "a stored answer this request cannot use is a miss"
        );
        let (s, h) = lookup(Some(&c), false, &plain, 0, b"req", any, t0);
        assert_eq!(
            (s, h.map(|h| h.body)),
            (Status::Hit, Some(Bytes::from("answer")))
        );
        assert_eq!(Status::Bypass.as_str(), "bypass");
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let t0 = Instant::now();
        let c = cache(2, 10_000);
        for r in ["a", "b", "c"] {
            c.put(0, Bytes::from(r), hit("x"), t0);
        }
        assert!(c.get(0, b"a", t0).is_none());
        assert!(c.get(0, b"c", t0).is_some());
        let c = cache(100, 20);
        c.put(0, Bytes::from_static(b"1"), hit("123456789"), t0);
        c.put(0, Bytes::from_static(b"2"), hit("123456789"), t0);
        c.put(0, Bytes::from_static(b"3"), hit("123456789"), t0);
        assert_eq!(c.usage(), (2, 20));
        c.put(
            0,
            Bytes::from_static(b"big"),
            Hit {
                body: Bytes::from(vec![0u8; 50]),
                backend: 0,
                native: false,
            },
            t0,
        );
        assert!(
            c.get(0, b"big", t0).is_none(),
            "an answer over the byte bound is not stored"
        );
    }
}
