//! Where route records live: Redis in production (`RedisStore`), or the config file's
//! `[store.records]` for local runs and the demo (`StaticStore`). `Records` puts the in-process
//! cache in front of either; `request_filter` asks it for the record of the matched route.
//! The Redis side also runs the `edgegate:invalidate` subscriber that drops cached keys.

use super::cache::{Cache, Outcome};
use super::redis_conn::{Backend, SubscribeTo};
use crate::config::{Config, RedisConfig, StoreKind};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use async_trait::async_trait;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One Redis hash, as the app wrote it.
pub type Record = crate::FastMap<String, String>;

/// A record as the cache holds it, shared (a clone is a count): the hash's fields and values
/// and the upstream that routing parsed from it, so a cache hit does not parse the same fields
/// again, in one allocation. The hash never changes once cached (a new read makes a new
/// `Cached`), so neither does the parse. A million cached workspaces is a memory target (issue
/// #20): a map of `String`s cost about 500 bytes a record in nine allocations; this is one
/// allocation of 56 bytes and the text (the bench's records: 95 bytes, in a 96-byte block).
///
/// The text is `field NUL value NUL` for each pair, UTF-8 but for the names of `NAMES`, which
/// are kept as two bytes (`NAMED` and the name's index from 1). A field name with a NUL is not
/// kept (no name edgegate reads has one); a value with a NUL is kept as U+FFFD, which no field
/// edgegate reads accepts, so it fails closed as the value itself would (a missing field would
/// not always: a session without `expires_at` does not expire).
#[derive(Clone)]
pub struct Cached(triomphe::ThinArc<Upstream, u8>);

/// The parse (upstream address, or why it failed) and the shape of the route that made it
/// (`Route::record_shape`): a route that reads other fields parses for itself.
pub(crate) type Upstream = std::sync::OnceLock<(u64, Parsed)>;

/// A shared cached record. `triomphe`'s `Arc` has no weak count and its thin pointer keeps the
/// text's length in the allocation: 8 bytes in the cache's slot.
pub type RecordRef = Cached;

/// A record's allocation besides its text: the count, the parse and the text's length.
const SHARED: usize = 8 + std::mem::size_of::<Upstream>() + 8;

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// An upstream parse as a cached record keeps it: 24 bytes where the `Result` it stands for
/// takes 40.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    Ip(std::net::IpAddr, u16),
    Name(Box<str>, u16),
    Failed(GatewayError),
}

impl Parsed {
    pub(crate) fn new(parsed: &Result<crate::upstream::UpstreamAddr, GatewayError>) -> Parsed {
        use crate::net::UpstreamHost;
        match parsed {
            Ok(a) => match &a.host {
                UpstreamHost::Ip(ip) => Parsed::Ip(*ip, a.port),
                UpstreamHost::Name(n) => Parsed::Name(n.as_str().into(), a.port),
            },
            Err(e) => Parsed::Failed(e.clone()),
        }
    }

    pub(crate) fn get(&self) -> Result<crate::upstream::UpstreamAddr, GatewayError> {
        use crate::net::UpstreamHost;
        let (host, port) = match self {
            Parsed::Ip(ip, port) => (UpstreamHost::Ip(*ip), *port),
            Parsed::Name(n, port) => (UpstreamHost::Name(n.to_string()), *port),
            Parsed::Failed(e) => return Err(e.clone()),
        };
        Ok(crate::upstream::UpstreamAddr { host, port })
    }
}

/// The field names of the contract's records (SPEC §3, and the fields edgegate writes or reads
/// by default), which a cached record keeps as two bytes each: a million records each spelling
/// out `backend`, `owner` and `status` was 17 bytes a record, and the size class below.
const NAMES: [&str; 8] = [
    "backend",
    "owner",
    "status",
    "target",
    "user",
    "expires_at",
    "org",
    "last_activity",
];

/// Starts a name kept by its index in `NAMES`. Never a byte of UTF-8, so never the start of a
/// name or value kept as text.
const NAMED: u8 = 0xFF;

/// How `name` is kept in a record's text: two bytes (in `buf`) for a name of `NAMES`, else its
/// own bytes.
fn stored_name<'a>(name: &'a str, buf: &'a mut [u8; 2]) -> &'a [u8] {
    // A `match` on the names (by length, then bytes) rather than a search of `NAMES`: every
    // request reads three fields.
    let i = match name {
        "backend" => 0,
        "owner" => 1,
        "status" => 2,
        "target" => 3,
        "user" => 4,
        "expires_at" => 5,
        "org" => 6,
        "last_activity" => 7,
        _ => return name.as_bytes(),
    };
    // The index counts from 1: a 0 would read as the name's end.
    *buf = [NAMED, i + 1];
    buf
}

/// A kept name read back.
fn read_name(stored: &[u8]) -> Option<&str> {
    match stored {
        [NAMED, i] => NAMES.get(usize::from(i.wrapping_sub(1))).copied(),
        text => std::str::from_utf8(text).ok(),
    }
}

impl Cached {
    pub fn new(record: Record) -> Cached {
        let size = record
            .iter()
            .map(|(k, v)| stored_name(k, &mut [0; 2]).len() + v.len() + 2)
            .sum();
        let mut pairs = Vec::with_capacity(size);
        for (k, v) in &record {
            if k.contains('\0') {
                continue;
            }
            pairs.extend_from_slice(stored_name(k, &mut [0; 2]));
            pairs.push(0);
            pairs.extend_from_slice(if v.contains('\0') { "\u{FFFD}" } else { v }.as_bytes());
            pairs.push(0);
        }
        Cached(triomphe::ThinArc::from_header_and_slice(
            Upstream::new(),
            &pairs,
        ))
    }

    /// The upstream parse, once routing has made it.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.0.header.header
    }

    fn pairs(&self) -> &[u8] {
        &self.0.slice
    }

    /// The value of `field`, if the hash has it: one pass over the bytes, comparing only at
    /// the start of each field.
    pub fn get(&self, field: &str) -> Option<&str> {
        let bytes = self.pairs();
        let mut buf = [0; 2];
        let name = stored_name(field, &mut buf);
        let mut at = 0;
        while at < bytes.len() {
            let value = at + name.len() + 1;
            let is_it = bytes[at..].starts_with(name) && bytes.get(value - 1) == Some(&0);
            // Past this field's NUL, then past its value's.
            let field_end = at + bytes[at..].iter().position(|&b| b == 0)?;
            let value_end = field_end + 1 + bytes[field_end + 1..].iter().position(|&b| b == 0)?;
            if is_it {
                return bytes
                    .get(value..value_end)
                    .and_then(|v| std::str::from_utf8(v).ok());
            }
            at = value_end + 1;
        }
        None
    }

    /// Every field and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.pairs().split(|&b| b == 0);
        std::iter::from_fn(move || {
            let (name, value) = (parts.next()?, parts.next()?);
            Some((read_name(name)?, std::str::from_utf8(value).ok()?))
        })
    }

    /// The bytes the fields and values take.
    pub fn text_len(&self) -> usize {
        self.pairs().len()
    }
}

/// Why a record could not be read (the detail is logged, never sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFailure {
    /// Redis unreachable, timed out or failing: 503.
    Unavailable(String),
    /// The key exists but is not a hash: a bad record, 502.
    WrongType,
}

#[async_trait]
pub trait RouteStore: Send + Sync {
    /// The hash at `key` (prefix included), `None` when there is none. One round trip.
    async fn fetch(&self, key: &str) -> Result<Option<Record>, StoreFailure>;

    /// Set `key` only if absent, expiring after `ttl_secs`; `true` when this call set it.
    async fn spend_once(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreFailure>;

    /// Set the string `key` to `value`, expiring after `ttl_secs` (edgegate's own notes).
    async fn put(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), StoreFailure>;

    /// Write the hash `key` (replacing what was there), expiring after `ttl_secs`: edgegate's
    /// own records (the grants behind port cookies, tokens and share links).
    async fn put_record(
        &self,
        key: &str,
        fields: &[(&str, &str)],
        ttl_secs: u64,
    ) -> Result<(), StoreFailure>;

    /// Set the expiry of the existing `key` to `ttl_secs` from now; `false` when there is no
    /// such key (it is never created: a record deleted meanwhile stays deleted).
    async fn expire(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreFailure>;

    /// The string at `key`, `None` when there is none.
    async fn get_string(&self, key: &str) -> Result<Option<String>, StoreFailure>;

    /// Whether the store answers now (for `/readyz`).
    async fn ping(&self) -> bool;

    /// Set `field` to the given unix time on each existing record (never creating one).
    async fn mark_activity(&self, field: &str, batch: &[(&str, u64)]) -> Result<(), StoreFailure>;

    /// Add each of `events` to the stream `stream` as its field `event`, trimming the stream
    /// to about `maxlen` entries. One round trip.
    async fn append(
        &self,
        stream: &str,
        maxlen: u64,
        events: &[String],
    ) -> Result<(), StoreFailure>;

    /// Add `entry` to the stream `stream` (trimmed to about `maxlen`) unless `once_key` is
    /// set; `once_key` is then set for `once_ms`. `true` when this call added the entry.
    async fn add_once(
        &self,
        once_key: &str,
        once_ms: u64,
        stream: &str,
        maxlen: u64,
        entry: &[(&str, &str)],
    ) -> Result<bool, StoreFailure>;
}

/// The answer cached per key.
/// The failure is boxed: it is never kept (only shared with the requests waiting on its fetch),
/// and a boxed one makes the answer 16 bytes, not 24, in an entry every cached record has.
type Lookup = Result<Option<RecordRef>, Box<StoreFailure>>;

impl super::cache::Weigh for Lookup {
    /// The record's fields and values, and what each costs in its map.
    fn weight(&self) -> usize {
        match self {
            // The record's text and the rest of its allocation (the entry's own slot is the
            // cache's overhead).
            Ok(Some(rec)) => rec.text_len() + SHARED,
            _ => 0,
        }
    }
}

/// The cached view of a store, shared by all requests.
pub struct Records {
    store: Arc<dyn RouteStore>,
    cache: Arc<Cache<Lookup>>,
    /// Sessions have a cache of their own: made-up session ids must not push route records out.
    secrets: Arc<Cache<Lookup>>,
    ttl: Duration,
    negative_ttl: Duration,
    metrics: Arc<Metrics>,
    /// How long after its last successful read a route record may be served while the store
    /// is unreachable (never a session).
    stale_window: Duration,
}

impl Records {
    pub fn new(
        store: Arc<dyn RouteStore>,
        cache: Arc<Cache<Lookup>>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            cache,
            secrets: Self::new_cache(config, &metrics, "sessions"),
            ttl: Duration::from_millis(config.cache.ttl_ms),
            negative_ttl: Duration::from_millis(config.cache.negative_ttl_ms),
            metrics,
            stale_window: Duration::from_millis(config.cache.stale_ms),
        }
    }

    /// A cache of records bounded by `cache.max_entries` and `cache.max_bytes`, its evictions
    /// counted as `edgegate_cache_evictions_total{cache=name}`.
    pub fn new_cache(config: &Config, metrics: &Metrics, name: &str) -> Arc<Cache<Lookup>> {
        Arc::new(Cache::bounded(
            config.cache.max_entries,
            config.cache.max_bytes,
            Some(metrics.cache_evictions.with_label_values(&[name])),
        ))
    }

    /// The record at `key`; `Ok(None)` when there is none. Store failures become the
    /// client-facing error here and are logged with the key.
    pub async fn get(&self, key: &str) -> (Result<Option<RecordRef>, GatewayError>, Outcome) {
        self.lookup(key, key, true).await
    }

    /// Like `get`, for keys that embed a secret (a session id): logs never name the key, and a
    /// stale copy is never served (auth fails closed).
    pub async fn get_secret(
        &self,
        key: &str,
    ) -> (Result<Option<RecordRef>, GatewayError>, Outcome) {
        self.lookup(key, "<redacted>", false).await
    }

    /// Spend a one-time marker: `true` the first time `key` is set (SET NX with expiry).
    /// Note `value` at `key` for `ttl_secs` (never cached: each read asks the store).
    pub async fn put(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), GatewayError> {
        self.store
            .put(key, value, ttl_secs.max(1))
            .await
            .map_err(|f| {
                log::warn!("route store cannot keep a note: {f:?}");
                GatewayError::StoreUnavailable
            })
    }

    /// Write a record of edgegate's own (`RouteStore::put_record`); read it with `get_secret`.
    pub async fn put_record(
        &self,
        key: &str,
        fields: &[(&str, &str)],
        ttl_secs: u64,
    ) -> Result<(), GatewayError> {
        self.store
            .put_record(key, fields, ttl_secs.max(1))
            .await
            .map_err(|f| {
                log::warn!("route store cannot keep a grant: {f:?}");
                GatewayError::StoreUnavailable
            })
    }

    /// Give the existing record `key` `ttl_secs` more from now (`RouteStore::expire`); `false`
    /// when it is gone.
    pub async fn expire(&self, key: &str, ttl_secs: u64) -> Result<bool, GatewayError> {
        self.store.expire(key, ttl_secs.max(1)).await.map_err(|f| {
            log::warn!("route store cannot extend a grant: {f:?}");
            GatewayError::StoreUnavailable
        })
    }

    /// A note `put` wrote, if it is still there.
    pub async fn note(&self, key: &str) -> Result<Option<String>, GatewayError> {
        self.store.get_string(key).await.map_err(|f| {
            log::warn!("route store cannot read a note: {f:?}");
            GatewayError::StoreUnavailable
        })
    }

    /// Add a stream entry at most once per `once_ms` per `once_key` (see `RouteStore::add_once`).
    pub async fn add_once(
        &self,
        once_key: &str,
        once_ms: u64,
        stream: &str,
        maxlen: u64,
        entry: &[(&str, &str)],
    ) -> Result<bool, GatewayError> {
        self.store
            .add_once(once_key, once_ms, stream, maxlen, entry)
            .await
            .map_err(|f| {
                log::warn!("route store cannot add to {stream}: {f:?}");
                GatewayError::StoreUnavailable
            })
    }

    pub async fn spend_once(&self, key: &str, ttl_secs: u64) -> Result<bool, GatewayError> {
        self.store
            .spend_once(key, ttl_secs.max(1))
            .await
            .map_err(|f| {
                log::warn!("route store cannot record a spent token: {f:?}");
                GatewayError::StoreUnavailable
            })
    }

    async fn lookup(
        &self,
        key: &str,
        log_key: &str,
        stale_ok: bool,
    ) -> (Result<Option<RecordRef>, GatewayError>, Outcome) {
        // Route records (stale allowed) and secrets (sessions) live in separate caches.
        let cache = if stale_ok { &self.cache } else { &self.secrets };
        let (lookup, outcome) = cache
            .get_or_fetch(key, |previous| async move {
                let res = self
                    .store
                    .fetch(key)
                    .await
                    .map(|r| r.map(Cached::new))
                    .map_err(Box::new);
                if let (Err(StoreFailure::Unavailable(_)), true) =
                    (res.as_ref().map_err(|f| &**f), stale_ok)
                {
                    // The expired copy, read within the stale window and not invalidated since
                    // (read now, after the failure): served to the waiting requests and left as
                    // it was, so the window still counts from its read.
                    if let Some((Ok(Some(rec)), age)) = previous.get() {
                        if age < self.stale_window {
                            self.metrics.cache.stale.inc();
                            return (Ok(Some(rec)), None);
                        }
                    }
                }
                let ttl = match &res {
                    // Kept past its TTL as the fallback for an outage (`stale_ms`), even with
                    // a TTL of zero (then it is never fresh, only a fallback).
                    Ok(Some(_)) if stale_ok && !self.stale_window.is_zero() => {
                        self.ttl.max(Duration::from_nanos(1))
                    }
                    Ok(Some(_)) => self.ttl,
                    Ok(None) => self.negative_ttl,
                    // Shared with the requests already waiting, then retried.
                    Err(_) => Duration::ZERO,
                };
                (res, Some(ttl))
            })
            .await;
        let c = &self.metrics.cache;
        match (&lookup, outcome) {
            (_, Outcome::Miss) => c.miss.inc(),
            (Ok(None), Outcome::Hit) => c.negative_hit.inc(),
            (_, Outcome::Hit) => c.hit.inc(),
        }
        let res = lookup.map_err(|f| match *f {
            StoreFailure::Unavailable(why) => {
                log::warn!("route store unavailable reading {log_key}: {why}");
                GatewayError::StoreUnavailable
            }
            StoreFailure::WrongType => {
                log::warn!("bad record {log_key}: not a hash");
                GatewayError::BadRecord
            }
        });
        (res, outcome)
    }

    /// Route records in memory: cached, or kept for an outage (`/readyz`).
    pub fn warm(&self) -> usize {
        self.cache.len()
    }

    /// The store itself (for writers that outlive a request: the audit trail).
    pub fn store(&self) -> Arc<dyn RouteStore> {
        self.store.clone()
    }

    pub fn cache(&self) -> &Arc<Cache<Lookup>> {
        &self.cache
    }

    /// The session cache (for the invalidation listener).
    pub fn secrets_cache(&self) -> &Arc<Cache<Lookup>> {
        &self.secrets
    }
}

/// Records written in the config file; spent tokens and notes are remembered in memory.
pub struct StaticStore {
    records: HashMap<String, Record>,
    spent: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    notes: std::sync::Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Records edgegate wrote itself (grants), until they expire.
    written: std::sync::Mutex<HashMap<String, (Record, std::time::Instant)>>,
}

impl StaticStore {
    pub fn new(config: &Config) -> Self {
        let records = config
            .store
            .records
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter().map(|(f, x)| (f.clone(), x.clone())).collect(),
                )
            })
            .collect();
        Self {
            records,
            spent: std::sync::Mutex::new(HashMap::new()),
            notes: std::sync::Mutex::new(HashMap::new()),
            written: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl RouteStore for StaticStore {
    async fn fetch(&self, key: &str) -> Result<Option<Record>, StoreFailure> {
        if let Some(r) = self.records.get(key) {
            return Ok(Some(r.clone()));
        }
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        Ok(written
            .get(key)
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(r, _)| r.clone()))
    }

    async fn put_record(
        &self,
        key: &str,
        fields: &[(&str, &str)],
        ttl_secs: u64,
    ) -> Result<(), StoreFailure> {
        let now = std::time::Instant::now();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.retain(|_, (_, until)| *until > now);
        let record = fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect();
        written.insert(
            key.to_string(),
            (record, now + Duration::from_secs(ttl_secs)),
        );
        Ok(())
    }

    async fn expire(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreFailure> {
        let now = std::time::Instant::now();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match written.get_mut(key).filter(|(_, until)| *until > now) {
            Some((_, until)) => {
                *until = now + Duration::from_secs(ttl_secs);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn spend_once(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreFailure> {
        let now = std::time::Instant::now();
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        spent.retain(|_, until| *until > now);
        if spent.contains_key(key) {
            return Ok(false);
        }
        spent.insert(key.to_string(), now + Duration::from_secs(ttl_secs));
        Ok(true)
    }

    async fn put(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), StoreFailure> {
        let now = std::time::Instant::now();
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        notes.retain(|_, (_, until)| *until > now);
        notes.insert(
            key.to_string(),
            (value.to_string(), now + Duration::from_secs(ttl_secs)),
        );
        Ok(())
    }

    async fn get_string(&self, key: &str) -> Result<Option<String>, StoreFailure> {
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(notes
            .get(key)
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(v, _)| v.clone()))
    }

    async fn ping(&self) -> bool {
        true
    }

    async fn mark_activity(
        &self,
        _field: &str,
        _batch: &[(&str, u64)],
    ) -> Result<(), StoreFailure> {
        // Records written in the config file are not updated.
        Ok(())
    }

    async fn append(
        &self,
        _stream: &str,
        _maxlen: u64,
        _events: &[String],
    ) -> Result<(), StoreFailure> {
        // No Redis: the audit file is the only destination.
        Ok(())
    }

    async fn add_once(
        &self,
        once_key: &str,
        once_ms: u64,
        stream: &str,
        _maxlen: u64,
        entry: &[(&str, &str)],
    ) -> Result<bool, StoreFailure> {
        // Nothing consumes a stream here: the entry goes to the log, once per interval.
        if !self.spend_once(once_key, once_ms.div_ceil(1000)).await? {
            return Ok(false);
        }
        log::info!("{stream}: {entry:?} (static store: nothing consumes it)");
        Ok(true)
    }
}

/// Redis in any of its `[redis] mode`s (see `redis_conn`). Connections are made lazily so
/// the gateway starts while Redis is down.
pub struct RedisStore {
    backend: Backend,
    command_timeout: Duration,
    metrics: Arc<Metrics>,
    /// A span per command, under the request's, when tracing is on.
    tracing: Option<Arc<crate::trace::Tracing>>,
}

impl RedisStore {
    /// Must be called inside the Tokio runtime that will drive the connection (see `RedisRuntime`).
    pub fn new(
        cfg: &RedisConfig,
        metrics: Arc<Metrics>,
        tracing: Option<Arc<crate::trace::Tracing>>,
    ) -> Result<Self, String> {
        Ok(Self {
            backend: Backend::new(cfg)?,
            command_timeout: Duration::from_millis(cfg.command_timeout_ms),
            metrics,
            tracing,
        })
    }

    /// Run one command under the deadline, timed and counted.
    async fn run<T: redis::FromRedisValue>(
        &self,
        name: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreFailure> {
        self.deadline(name, self.command_timeout, async {
            let mut conn = self.backend.conn().await?;
            match cmd.query_async::<T>(&mut conn).await {
                // A Sentinel master that is gone: ask for the new one and try once more.
                Err(e) if self.backend.failed(Some(&e)) => {
                    let mut conn = self.backend.conn().await?;
                    cmd.query_async::<T>(&mut conn).await
                }
                res => res,
            }
        })
        .await
    }

    /// Await `work` for at most `limit`; timed, counted, and failures reported to the backend.
    async fn deadline<T>(
        &self,
        name: &'static str,
        limit: Duration,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreFailure> {
        let span = self.tracing.as_ref().and_then(|t| {
            crate::trace::current_span().map(|cx| {
                t.child(
                    &cx,
                    format!("redis {name}"),
                    opentelemetry::trace::SpanKind::Client,
                )
            })
        });
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(limit, work).await;
        if let Some(cx) = &span {
            let failed = !matches!(res, Ok(Ok(_)));
            crate::trace::end(
                cx,
                vec![opentelemetry::KeyValue::new("db.system", "redis")],
                failed,
            );
        }
        self.metrics
            .redis_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        let failure = match res {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.code() == Some("WRONGTYPE") => StoreFailure::WrongType,
            Ok(Err(e)) => {
                self.backend.failed(Some(&e));
                StoreFailure::Unavailable(e.to_string())
            }
            Err(_) => {
                self.backend.failed(None);
                StoreFailure::Unavailable(format!("no answer within {limit:?}"))
            }
        };
        self.metrics.redis_errors.with_label_values(&[name]).inc();
        Err(failure)
    }
}

#[async_trait]
impl RouteStore for RedisStore {
    async fn fetch(&self, key: &str) -> Result<Option<Record>, StoreFailure> {
        let h: Record = self.run("hgetall", redis::cmd("HGETALL").arg(key)).await?;
        Ok((!h.is_empty()).then_some(h))
    }

    async fn spend_once(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreFailure> {
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs)
            .clone();
        let set: Option<String> = self.run("set", &cmd).await?;
        Ok(set.is_some())
    }

    async fn put(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), StoreFailure> {
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(ttl_secs)
            .clone();
        self.run::<()>("set", &cmd).await
    }

    async fn get_string(&self, key: &str) -> Result<Option<String>, StoreFailure> {
        self.run("get", redis::cmd("GET").arg(key)).await
    }

    async fn expire(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreFailure> {
        // EXPIRE acts on an existing key only (1), and answers 0 for a missing one.
        let set: i64 = self
            .run("expire", redis::cmd("EXPIRE").arg(key).arg(ttl_secs))
            .await?;
        Ok(set == 1)
    }

    async fn put_record(
        &self,
        key: &str,
        fields: &[(&str, &str)],
        ttl_secs: u64,
    ) -> Result<(), StoreFailure> {
        // One key, so one slot: DEL, HSET and EXPIRE as one transaction.
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(key).ignore();
        let hset = pipe.cmd("HSET").arg(key);
        for (f, v) in fields {
            hset.arg(*f).arg(*v);
        }
        hset.ignore();
        pipe.cmd("EXPIRE").arg(key).arg(ttl_secs).ignore();
        self.deadline("hset", self.command_timeout, async {
            let mut conn = self.backend.conn().await?;
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    async fn ping(&self) -> bool {
        self.run::<String>("ping", &redis::cmd("PING"))
            .await
            .is_ok()
    }

    async fn mark_activity(&self, field: &str, batch: &[(&str, u64)]) -> Result<(), StoreFailure> {
        // Only records that still exist: a deleted workspace must not come back as a hash
        // holding nothing but `last_activity`.
        const SCRIPT: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
            redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0";
        let eval = |key: &str, at: u64| {
            redis::cmd("EVAL")
                .arg(SCRIPT)
                .arg(1)
                .arg(key)
                .arg(field)
                .arg(at)
                .clone()
        };
        let cluster = self.backend.is_cluster();
        self.deadline("activity", self.command_timeout * 4, async {
            let mut conn = self.backend.conn().await?;
            if cluster {
                // A cluster pipeline must stay within one slot: one command per key.
                for (key, at) in batch {
                    eval(key, *at).query_async::<()>(&mut conn).await?;
                }
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (key, at) in batch {
                pipe.add_command(eval(key, *at)).ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    async fn append(
        &self,
        stream: &str,
        maxlen: u64,
        events: &[String],
    ) -> Result<(), StoreFailure> {
        // One key: a pipeline stays in one slot, in a cluster too.
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(maxlen)
                .arg("*")
                .arg("event")
                .arg(e)
                .ignore();
        }
        self.deadline("xadd", self.command_timeout * 4, async {
            let mut conn = self.backend.conn().await?;
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    async fn add_once(
        &self,
        once_key: &str,
        once_ms: u64,
        stream: &str,
        maxlen: u64,
        entry: &[(&str, &str)],
    ) -> Result<bool, StoreFailure> {
        // Two commands, not a script: in a cluster the marker and the stream live in
        // different slots.
        let once = redis::cmd("SET")
            .arg(once_key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(once_ms.max(1))
            .clone();
        let set: Option<String> = self.run("set", &once).await?;
        if set.is_none() {
            return Ok(false);
        }
        let mut add = redis::cmd("XADD");
        add.arg(stream).arg("MAXLEN").arg("~").arg(maxlen).arg("*");
        for (field, value) in entry {
            add.arg(*field).arg(*value);
        }
        if let Err(e) = self.run::<String>("xadd", &add).await {
            // Let the next request try again rather than wait out the interval.
            let _ = self
                .run::<i64>("del", redis::cmd("DEL").arg(once_key))
                .await;
            return Err(e);
        }
        Ok(true)
    }
}

/// A small runtime of edgegate's own for Redis: its connection tasks and the invalidation
/// subscriber outlive any one Pingora service runtime.
pub struct RedisRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl RedisRuntime {
    pub fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("edgegate-redis")
            .enable_all()
            .build()?;
        Ok(Self { rt: Some(rt) })
    }

    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.rt.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for RedisRuntime {
    fn drop(&mut self) {
        // Dropping a runtime from async context panics; never wait here.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Called with `Some(key)` to drop one key, or `None` to drop everything.
pub type Invalidate = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Subscribe to the invalidation channel for the life of the process, reconnecting with
/// backoff. Every (re)subscription clears the caches: messages sent while the subscription
/// was down are lost, and the TTLs are short, so a clean start costs little.
///
/// A cluster's nodes are tried in turn (PUBLISH reaches every node of a cluster); with
/// Sentinel the subscription follows the master, and moves when the Sentinels name another.
pub fn spawn_invalidation_listener(
    handle: &tokio::runtime::Handle,
    cfg: &RedisConfig,
    invalidate: Invalidate,
) -> Result<(), String> {
    let mut to = SubscribeTo::new(cfg)?;
    let channel = cfg.invalidate_channel.clone();
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    handle.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        for attempt in 0usize.. {
            let subscribed = async {
                let client = to.client(attempt).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>((pubsub, client.get_connection_info().addr().clone()))
            };
            match tokio::time::timeout(connect_timeout, subscribed).await {
                Ok(Ok((pubsub, addr))) => {
                    log::info!("subscribed to invalidation channel {channel} at {addr}");
                    invalidate(None);
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.into_on_message();
                    let mut check = tokio::time::interval(MASTER_CHECK_INTERVAL);
                    check.tick().await;
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => match std::str::from_utf8(msg.get_payload_bytes()) {
                                    Ok(key) => invalidate(Some(key)),
                                    Err(_) => log::warn!("ignoring non-UTF-8 invalidation message"),
                                },
                                None => break,
                            },
                            _ = check.tick() => {
                                // A master that lost its role but not its connections would
                                // keep this subscription while the app publishes elsewhere.
                                if to.moved_from(&addr).await {
                                    log::warn!("redis master moved away from {addr}");
                                    break;
                                }
                            }
                        }
                    }
                    log::warn!("invalidation channel {channel} lost; resubscribing");
                    continue;
                }
                Ok(Err(e)) => log::debug!("invalidation subscriber cannot subscribe: {e}"),
                Err(_) => log::debug!("invalidation subscriber: connect timed out"),
            }
            // Cached entries stay while Redis is away (nobody can change records then); the
            // clear on resubscription covers messages missed in between.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    Ok(())
}

/// How often a Sentinel-mode subscriber checks that it still listens to the master.
const MASTER_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Build the configured store; `None` runtime for the static store.
pub fn build(
    config: &Config,
    runtime: Option<&RedisRuntime>,
    metrics: Arc<Metrics>,
    tracing: Option<Arc<crate::trace::Tracing>>,
) -> Result<Arc<dyn RouteStore>, String> {
    match config.store.kind {
        StoreKind::Static => Ok(Arc::new(StaticStore::new(config))),
        StoreKind::Redis => {
            let handle = runtime
                .and_then(|r| r.handle())
                .ok_or("the Redis store needs its runtime")?;
            let _guard = handle.enter();
            Ok(Arc::new(RedisStore::new(&config.redis, metrics, tracing)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached record is one allocation: 8 bytes of count, the parse, the text's length and
    /// the text, and a pointer in the cache's slot. Growing any of them costs every cached
    /// record (a million-workspace target in docs/BENCHMARKS.md counts on it): the bench's
    /// records take 95 bytes, in the allocator's 96-byte class.
    #[test]
    fn a_cached_record_is_one_allocation_of_56_bytes_and_its_text() {
        assert_eq!(std::mem::size_of::<Parsed>(), 24);
        assert_eq!(std::mem::size_of::<Upstream>(), 40);
        assert_eq!(SHARED, 56);
        assert_eq!(std::mem::size_of::<Cached>(), 8);
        assert_eq!(std::mem::size_of::<Lookup>(), 16);
        let bench: Record = [
            ("backend", "127.0.0.1:50879"),
            ("owner", "bench"),
            ("status", "running"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(SHARED + Cached::new(bench).text_len(), 95);
    }

    #[test]
    fn a_cached_record_answers_each_field_and_poisons_values_with_a_nul() {
        let record: Record = [
            ("backend", "10.0.0.1:8080"),
            ("owner", "u1"),
            ("status", ""),
            ("owner2", "owner"),
            ("bad\0field", "x"),
            ("org", "a\0b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = Cached::new(record);
        assert_eq!(c.get("backend"), Some("10.0.0.1:8080"));
        assert_eq!(c.get("owner"), Some("u1"));
        assert_eq!(c.get("owner2"), Some("owner"));
        assert_eq!(c.get("status"), Some(""));
        assert_eq!(
            c.get("org"),
            Some("\u{FFFD}"),
            "a value with a NUL fails every parse"
        );
        assert_eq!(c.get("bad"), None);
        assert_eq!(c.get("x"), None, "values are never read as fields");
        assert_eq!(c.get("10.0.0.1:8080"), None);
        let mut all: Vec<_> = c.iter().collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("backend", "10.0.0.1:8080"),
                ("org", "\u{FFFD}"),
                ("owner", "u1"),
                ("owner2", "owner"),
                ("status", "")
            ]
        );
        assert!(Cached::new(Record::default()).get("").is_none());
    }

    /// `stored_name`'s `match` and `NAMES` list the same names in the same order.
    #[test]
    fn every_contract_name_is_stored_by_its_index_and_read_back() {
        for (i, name) in NAMES.iter().enumerate() {
            let mut buf = [0; 2];
            let stored = stored_name(name, &mut buf).to_vec();
            assert_eq!(stored, [NAMED, i as u8 + 1], "{name}");
            assert_eq!(read_name(&stored), Some(*name));
        }
    }

    /// The contract's names are kept as two bytes each, and nothing else reads as one of them:
    /// not a longer or shorter name, not a value that spells one, not a name that is text.
    #[test]
    fn the_contract_names_are_kept_short_and_read_back_only_as_themselves() {
        let pairs = [
            ("backend", "10.0.0.1:8080"),
            ("backendx", "owner"),
            ("own", "status"),
            ("owner", "backend"),
            ("status", "running"),
            ("last_activity", "1765000000"),
            ("\u{FF}\u{1}", "\u{FF}"),
        ];
        let record: Record = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = Cached::new(record);
        for (k, v) in pairs {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        for absent in [
            "back",
            "backendxx",
            "ownerx",
            "statu",
            "user",
            "running",
            "\u{FF}",
        ] {
            assert_eq!(c.get(absent), None, "{absent}");
        }
        let mut all: Vec<_> = c.iter().collect();
        all.sort();
        let mut want = pairs.to_vec();
        want.sort();
        assert_eq!(all, want);
        let three: Record = [("backend", "b"), ("owner", "o"), ("status", "s")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        // Three names of two bytes, three one-byte values and six NULs.
        assert_eq!(Cached::new(three).text_len(), 6 + 3 + 6);
    }
}
