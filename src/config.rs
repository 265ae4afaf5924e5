//! The one TOML configuration file as plain data: serde structs (unknown keys rejected), their
//! defaults, and `validate()`, whose errors name the offending field. Nothing here builds a
//! runtime part: `runtime::Runtime::build` does, from a validated `Config` (route table, auth
//! keys, TLS resolvers). Loaded by `main` (`run`, `check`, `demo`) and by the tests;
//! `conf/edgegate.toml` documents every key shown here.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A configuration problem, phrased as `field: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(field: impl std::fmt::Display, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{field}: {msg}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The domain under which workspaces live (`ws-{id}.{base_domain}`).
    pub base_domain: String,
    /// A registrable domain of its own for workspace content (SPEC §8), e.g.
    /// `example-workspaces.net` beside the app's `example.com`: host routes written with
    /// `{content_domain}` serve shared ports there (`[ports]`). Empty: none.
    #[serde(default)]
    pub content_domain: String,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub default: Option<DefaultRouteConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub activity: ActivityConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub errors: ErrorsConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub ports: PortsConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// OpenTelemetry tracing (`src/trace.rs`), off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Where spans go: an OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (an
    /// OpenTelemetry Collector beside edgegate). "": tracing is off.
    pub otlp_endpoint: String,
    /// The share of traces started here that are kept (0.0 to 1.0); a trusted caller's
    /// `traceparent` decides for its own traces.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// How long one export may take.
    pub export_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            sample_ratio: 0.01,
            service_name: "edgegate".into(),
            export_timeout_ms: 3000,
        }
    }
}

/// Sharing a workspace's ports on the content site (`content_domain`, `src/ports/`):
/// visibility per port, the sign-in through the app domain, port tokens and share links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsConfig {
    /// The workspace record field that holds port `{port}`'s settings (JSON, docs/CONFIG.md).
    pub field: String,
    /// The field of the workspace record, and of the app session, that names its organization.
    pub org_field: String,
    /// The most open visibility a port may have (`private`, `organization`,
    /// `authenticated`, `public`): a record asking for more gets this.
    pub max_visibility: Visibility,
    /// Share links may be minted (`POST {api_prefix}{id}/{port}/share`).
    pub share_links: bool,
    /// The host-only credential cookie on the content site. Its `__Host-` prefix keeps any
    /// other host, a sibling workspace included, from setting it.
    pub cookie: String,
    /// Longest life of that cookie (and no longer than the app session it came from).
    pub cookie_ttl_secs: u64,
    /// Life of the one-time code the app domain hands the content site.
    pub code_ttl_secs: u64,
    /// The path, on a content host, where a code or a share link is exchanged for the cookie.
    pub callback_path: String,
    /// On the `[default]` hosts: `{api_prefix}{id}/{port}/authorize` (GET: the sign-in),
    /// `…/token` (POST: a port token), `…/share` (POST: a share link).
    pub api_prefix: String,
    /// The app host the content site sends browsers to for the sign-in (default: the first of
    /// `[default].hosts`).
    pub app_host: String,
    /// Where the sign-in sends a browser with no app session (`?return_to=` is appended);
    /// empty: it gets 401.
    pub login_url: String,
    /// Life of a port token (`X-Edgegate-Port-Token`, for non-browser clients).
    pub token_ttl_secs: u64,
    /// Longest life of a share link.
    pub share_max_ttl_secs: u64,
    /// Redis key of a grant (what a port cookie, token or share link stands for); `{jti}` is
    /// its id. Deleting it revokes that credential.
    pub grant_key: String,
    /// The route (by name) the port endpoints use; empty: the first route on `content_domain`.
    pub route: String,
}

impl Default for PortsConfig {
    fn default() -> Self {
        Self {
            field: "port.{port}".into(),
            org_field: "org".into(),
            max_visibility: Visibility::Public,
            share_links: true,
            cookie: "__Host-edgegate_port".into(),
            cookie_ttl_secs: 12 * 3600,
            code_ttl_secs: 60,
            callback_path: "/__edgegate/auth".into(),
            api_prefix: "/api/ports/".into(),
            app_host: String::new(),
            login_url: String::new(),
            token_ttl_secs: 24 * 3600,
            share_max_ttl_secs: 7 * 24 * 3600,
            grant_key: "edgegate:grant:{jti}".into(),
            route: String::new(),
        }
    }
}

/// Who may open a shared port, from the narrowest to the widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Its workspace's owner.
    Private,
    /// Users whose session's organization is the workspace's.
    Organization,
    /// Any user signed in to the app.
    Authenticated,
    /// Anyone, without a credential (every credential is stripped before the upstream).
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Organization => "organization",
            Visibility::Authenticated => "authenticated",
            Visibility::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<Visibility> {
        match s {
            "private" => Some(Visibility::Private),
            "organization" => Some(Visibility::Organization),
            "authenticated" => Some(Visibility::Authenticated),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }
}

/// The audit trail: who opened what, with which credential, for how long (`src/audit.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// JSON events appended to this file; "" writes none.
    pub file: String,
    /// The Redis stream events are also added to (`key_prefix` prepended); "" adds none.
    pub redis_stream: String,
    /// The stream is trimmed to about this many entries.
    pub redis_stream_maxlen: u64,
    /// One HTTP access event per user, workspace, port and route per this many seconds.
    pub http_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: String::new(),
            redis_stream: String::new(),
            redis_stream_maxlen: 100_000,
            http_interval_secs: 300,
        }
    }
}

/// Rate limits, per instance (docs/DECISIONS.md). A count of 0 turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Token minting and IDE bootstrap requests per client address (IPv6: per /64) per minute.
    pub endpoints_per_minute: u32,
    /// How many of those may come at once.
    pub endpoints_burst: u32,
    /// Proxied requests and WebSocket upgrades per verified user per second.
    pub user_requests_per_second: u32,
    /// How many of those may come at once.
    pub user_burst: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            endpoints_per_minute: 120,
            endpoints_burst: 60,
            user_requests_per_second: 200,
            user_burst: 2000,
        }
    }
}

/// What a request meets when its workspace is not running, and how it wakes one up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Status values that mean "stopped, may be started": a request by someone allowed to
    /// open the workspace publishes a wake request and is told it is starting.
    pub startable: Vec<String>,
    /// Status values that mean "on its way somewhere" (starting, stopping): told to retry.
    pub transitioning: Vec<String>,
    /// The Redis stream wake requests are added to (`key_prefix` prepended); "" turns waking
    /// off (a startable workspace is then simply not running).
    pub wake_stream: String,
    /// At most one wake request per workspace per this many seconds, across instances.
    pub wake_interval_secs: u64,
    /// The stream is trimmed to about this many entries.
    pub wake_stream_maxlen: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            startable: vec!["stopped".into()],
            transitioning: vec!["starting".into(), "stopping".into()],
            wake_stream: "edgegate:wake".into(),
            wake_interval_secs: 30,
            wake_stream_maxlen: 10_000,
        }
    }
}

/// How edgegate's own refusals look to a browser's navigation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsConfig {
    /// An HTML template for the page a navigation gets (`{{status}}`, `{{title}}`,
    /// `{{message}}`, `{{code}}`, `{{request_id}}` are filled in, escaped); empty: built in.
    pub page_template: String,
}

/// Bounds on what one client may ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest request target (path and query); longer is 414.
    pub max_uri_bytes: usize,
    /// Total size of the request headers; larger is 431.
    pub max_header_bytes: usize,
    /// Number of request headers; more is 431.
    pub max_headers: usize,
    /// Requests and WebSockets in flight per workspace record; beyond it 429. 0: no cap.
    pub max_connections_per_workspace: usize,
    /// Time a client has to send a request's headers (from accept, or from the first byte of
    /// a later request on the connection); past it 408 or a close. 0: no deadline.
    pub header_timeout_ms: u64,
    /// How long a kept-alive client connection may wait idle for its next request (nginx's
    /// `keepalive_timeout`). 0: every connection closes after its response.
    pub keepalive_timeout_secs: u64,
    /// Requests served on one client connection before it is closed (nginx's
    /// `keepalive_requests`). 0: no limit.
    pub keepalive_requests: u32,
    /// Longest wait between two reads of a request body (nginx's `client_body_timeout`).
    pub body_timeout_ms: u64,
    /// Longest wait for the client to take response bytes (nginx's `send_timeout`): a client
    /// that stops reading is closed, and its upstream connection with it.
    pub send_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8192,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_connections_per_workspace: 0,
            header_timeout_ms: 10_000,
            keepalive_timeout_secs: 75,
            keepalive_requests: 1000,
            body_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
        }
    }
}

/// The idle-culling signal written to workspace records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    /// Write `field` at most once per this many seconds per record; 0 turns it off.
    pub interval_secs: u64,
    /// The record field that receives the unix time of the last activity.
    pub field: String,
    /// A request carrying this header (any value) is background traffic: it, and the frames of
    /// a WebSocket it opens, do not count as activity. "" turns the opt-out off.
    pub background_header: String,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            field: "last_activity".into(),
            background_header: "x-edgegate-background".into(),
        }
    }
}

/// The operator's listener: `/metrics`, `/healthz`, `/readyz`. Never the public one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `ip:port`; an empty string turns the admin listener off.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// edgegate's log level (`error` … `trace`); `RUST_LOG` overrides it.
    pub level: String,
    /// Where the JSON access log goes: `stdout`, `stderr`, `off`, or a file path (appended).
    pub access_log: String,
    /// The verified user in the access log: `clear`, `hashed` (a stable pseudonym) or `off`.
    pub access_log_user: UserField,
    /// edgegate's own log (stderr): `text`, or `json` (one object per line).
    pub format: LogFormat,
}

/// How edgegate's own log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    /// `{"time": unix seconds, "level", "target", "message"}`, one per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access_log: "stdout".into(),
            access_log_user: UserField::Clear,
            format: LogFormat::Text,
        }
    }
}

/// How the access log writes the verified user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserField {
    Clear,
    /// The first 64 bits of SHA-256 over the user id, hex: lines of one user can be told
    /// together, and the id found by whoever can hash candidate ids (a pseudonym).
    Hashed,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain-HTTP listener addresses.
    #[serde(default = "default_listen")]
    pub http: Vec<String>,
    /// Peers whose `X-Forwarded-For` is kept and appended to (IPs or CIDRs).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// TLS listeners.
    #[serde(default)]
    pub tls: Vec<TlsListenConfig>,
    /// Read buffer per plain-HTTP client connection, held for the connection's life (Pingora's
    /// default is 64 KiB). 0, the default: unbuffered.
    #[serde(default = "default_read_buffer")]
    pub read_buffer_bytes: usize,
    /// Read buffer per TLS client connection, under rustls (which reads into a buffer of its
    /// own). 0, the default: unbuffered.
    #[serde(default = "default_tls_read_buffer")]
    pub tls_read_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenConfig {
    pub addr: String,
    /// Offer HTTP/2 by ALPN (WebSockets stay on HTTP/1.1 connections).
    #[serde(default = "yes")]
    pub h2: bool,
    /// Certificates chosen by SNI; the first also serves clients that send none or no match.
    pub certs: Vec<CertConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain.
    pub cert_file: std::path::PathBuf,
    /// PEM private key.
    pub key_file: std::path::PathBuf,
    /// SNI names served, exact or one-label wildcards (`*.example.com`).
    pub names: Vec<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            http: default_listen(),
            trusted_proxies: Vec::new(),
            tls: Vec::new(),
            read_buffer_bytes: default_read_buffer(),
            tls_read_buffer_bytes: default_tls_read_buffer(),
        }
    }
}

/// None: an idle connection would hold it as long as it waits, and what reads the socket
/// reads into buffers of its own (Pingora's head and body buffers, the tunnel's), which went
/// around it anyway or through it with a copy. Unbuffered: 4 KiB less per idle connection
/// and ~1,060 fewer instructions per request (docs/BENCHMARKS.md, "Scale").
fn default_read_buffer() -> usize {
    0
}

/// None, as for plain HTTP: rustls reads each record into its own buffer, so one under it
/// was a copy and a 16 KiB block every idle TLS connection held. Unbuffered: an idle TLS
/// keep-alive connection 34.7 -> 17.2 KiB (nginx 15.2, HAProxy 15.5), and no more CPU per
/// request (24.7 against 25.6 µs, interleaved; docs/BENCHMARKS.md, "Scale").
fn default_tls_read_buffer() -> usize {
    0
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Tokio work stealing between the worker threads.
    #[serde(default)]
    pub work_stealing: bool,
    /// Seconds a graceful stop waits before runtimes are shut down.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// On SIGTERM or `POST /drain` (admin): how long readiness fails before the listeners
    /// close, for the load balancer to take this instance out.
    #[serde(default = "default_drain_delay")]
    pub drain_delay_secs: u64,
    /// Seconds the runtimes get to finish their tasks after the grace period.
    #[serde(default = "default_graceful_shutdown")]
    pub graceful_shutdown_timeout_seconds: u64,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// Unix socket over which Pingora's graceful upgrade hands over listeners.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            work_stealing: false,
            grace_period_seconds: default_grace(),
            drain_delay_secs: default_drain_delay(),
            graceful_shutdown_timeout_seconds: default_graceful_shutdown(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
        }
    }
}

fn default_threads() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn default_grace() -> u64 {
    5
}
fn default_graceful_shutdown() -> u64 {
    5
}
fn default_pid_file() -> String {
    "/tmp/edgegate.pid".to_string()
}
fn default_upgrade_sock() -> String {
    "/tmp/edgegate_upgrade.sock".to_string()
}

/// Where route records come from.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Redis, as the app writes it (production).
    #[default]
    Redis,
    /// Records written in this file under `[store.records]` (local runs and the demo).
    Static,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub kind: StoreKind,
    /// For `kind = "static"`: full key name (prefix included) → hash fields.
    #[serde(default)]
    pub records: BTreeMap<String, BTreeMap<String, String>>,
}

/// How edgegate finds its Redis.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or one address in front of several), at `url`.
    #[default]
    Single,
    /// The master of `service`, as the Sentinels at `nodes` name it; followed across failovers.
    Sentinel,
    /// A Redis Cluster; `nodes` are seeds, the rest is discovered.
    Cluster,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub mode: RedisMode,
    /// `mode = "single"`: the server's URL, database included.
    pub url: String,
    /// `mode = "sentinel"`: the Sentinels' URLs; `mode = "cluster"`: seed nodes' URLs.
    pub nodes: Vec<String>,
    /// `mode = "sentinel"`: the monitored master's name.
    pub service: String,
    /// `mode = "sentinel"`: database on the master.
    pub master_db: i64,
    /// `mode = "sentinel"`: environment variable holding the master's password (unset: none).
    pub master_password_env: String,
    /// Prepended to every key edgegate reads or writes.
    pub key_prefix: String,
    /// Pub/sub channel on which the app publishes key names to drop from the cache.
    pub invalidate_channel: String,
    pub connect_timeout_ms: u64,
    /// Deadline for one Redis command; past it the request gets 503.
    pub command_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379/0".to_string(),
            nodes: Vec::new(),
            service: String::new(),
            master_db: 0,
            master_password_env: String::new(),
            key_prefix: String::new(),
            invalidate_channel: "edgegate:invalidate".to_string(),
            connect_timeout_ms: 500,
            command_timeout_ms: 500,
        }
    }
}

impl RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url_ok = |u: &str| redis::parse_redis_url(u).is_some();
        match self.mode {
            RedisMode::Single => {
                if !url_ok(&self.url) {
                    return Err(bad("redis.url", "not a redis:// or rediss:// URL"));
                }
            }
            RedisMode::Sentinel | RedisMode::Cluster => {
                if self.nodes.is_empty() {
                    return Err(bad(
                        "redis.nodes",
                        "list at least one node for mode = \"sentinel\" or \"cluster\"",
                    ));
                }
                // By position: a URL may carry a password.
                if let Some(i) = self.nodes.iter().position(|n| !url_ok(n)) {
                    return Err(bad(
                        format!("redis.nodes[{i}]"),
                        "not a redis:// or rediss:// URL",
                    ));
                }
                if self.mode == RedisMode::Sentinel && self.service.is_empty() {
                    return Err(bad(
                        "redis.service",
                        "name the master the Sentinels monitor",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The master's password for `mode = "sentinel"`, read from `master_password_env`.
    pub fn master_password(&self) -> Option<String> {
        (!self.master_password_env.is_empty())
            .then(|| std::env::var(&self.master_password_env).ok())
            .flatten()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a found record is served from memory.
    pub ttl_ms: u64,
    /// How long "no such record" is served from memory.
    pub negative_ttl_ms: u64,
    /// Upper bound on entries in each cache (records, sessions, names); past it the least
    /// used entries are evicted (CLOCK-PRO, O(1) per insert).
    pub max_entries: usize,
    /// Upper bound on the bytes (keys and values) each cache of Redis records holds: the
    /// session cache is keyed by whatever cookie values clients send.
    pub max_bytes: usize,
    /// How long a resolved upstream DNS name is kept.
    pub dns_ttl_ms: u64,
    /// While Redis is unreachable, serve a route record read within this window (0: never).
    /// Sessions are never served stale.
    pub stale_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 1000,
            negative_ttl_ms: 1000,
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            dns_ttl_ms: 30_000,
            stale_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// Longest wait for upstream bytes on a plain HTTP request.
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout_ms: u64,
    /// Idle upstream connections kept per worker thread, across all workspaces (Pingora's
    /// `upstream_keepalive_pool_size`, whose LRU is split into 16 shards).
    pub pool_size: usize,
    /// How long an upgraded (WebSocket) connection may carry no data frame in either
    /// direction (pings and pongs do not count).
    pub ws_idle_timeout_secs: u64,
    /// A WebSocket client that sent nothing for this long is pinged (keeps NATs and load
    /// balancers from dropping an idle tunnel); 0 turns pinging off.
    pub ws_ping_interval_ms: u64,
    /// A pinged client that sends nothing for this long after the ping is closed.
    pub ws_pong_timeout_ms: u64,
    /// PEM bundle of CAs for TLS upstreams, used instead of the system roots.
    pub ca_file: Option<String>,
    /// Networks a record's upstream may not resolve into (SSRF guard): this host, link-local
    /// (cloud metadata) and the like. `net::DEFAULT_BLOCKED` by default.
    pub blocked_networks: Vec<String>,
    /// Exceptions to `blocked_networks`, e.g. `["127.0.0.0/8"]` when workspaces run on this host.
    pub allowed_networks: Vec<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3000,
            read_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            pool_idle_timeout_ms: 60_000,
            pool_size: 1024,
            ws_idle_timeout_secs: 3600,
            ws_ping_interval_ms: 15_000,
            ws_pong_timeout_ms: 15_000,
            ca_file: None,
            blocked_networks: crate::net::DEFAULT_BLOCKED
                .iter()
                .map(|s| s.to_string())
                .collect(),
            allowed_networks: Vec::new(),
        }
    }
}

/// One entry of the route table: a host pattern or a path-prefix pattern, and the Redis record
/// whose upstream field names where the request goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in logs and metric labels.
    pub name: String,
    /// Host pattern with `{id}`, optionally `{port}`, and `{base_domain}`.
    pub host: Option<String>,
    /// Path-prefix pattern `/prefix/{id}/`.
    pub path: Option<String>,
    /// For path routes: the hosts on which the prefix is served (default: `[default].hosts`).
    pub hosts: Option<Vec<String>>,
    /// Redis key template, `{id}` is the canonical id (the key prefix is added).
    pub key: String,
    /// Record field that holds the upstream (`ip`, `ip:port`, `host`, `host:port`).
    #[serde(default = "default_upstream_field")]
    pub upstream_field: String,
    /// Record field that holds the owning user.
    #[serde(default = "default_owner_field")]
    pub owner_field: String,
    /// Record field that must read `running` for the request to be proxied (absent: no check).
    pub status_field: Option<String>,
    /// Port used when the record's upstream has none.
    #[serde(default = "default_port")]
    pub port: u16,
    /// For `{port}` routes: the ports a host may name, as ports (`3000`) or inclusive ranges
    /// (`"8000-8099"`). Empty: none is exposed.
    #[serde(default)]
    pub allowed_ports: Vec<PortSpec>,
    /// The range this key used to hold is no longer accepted (an explicit list is): kept so an
    /// old config gets a message that says what to write instead.
    #[serde(default)]
    pub ports: Option<toml::Value>,
    /// Send the browser's Host upstream (false: the upstream's own `host:port`).
    #[serde(default = "yes")]
    pub preserve_host: bool,
    /// For path routes: remove the matched prefix before proxying.
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    /// Credentials accepted on this route (`session`, `terminal_token`, `ide_cookie`,
    /// `dev_ide_token`, or `none` alone for an open route).
    #[serde(default = "default_auth")]
    pub auth: Vec<AuthMethod>,
    /// Keep `?token=` in the URL sent upstream (the upstream validates it too). On a route that
    /// takes terminal tokens this applies to the agent WebSocket path only.
    #[serde(default)]
    pub forward_token: bool,
    /// Connect to the upstream over TLS.
    #[serde(default)]
    pub upstream_tls: bool,
    /// SNI and name to verify for TLS upstreams (default: the record's host name).
    pub upstream_sni: Option<String>,
    /// Verify the TLS upstream's certificate and name.
    #[serde(default = "yes")]
    pub upstream_verify: bool,
}

impl RouteConfig {
    /// Whether the route serves the content site (its host names `{content_domain}`).
    pub fn on_content_domain(&self) -> bool {
        self.host
            .as_ref()
            .is_some_and(|h| h.contains("{content_domain}"))
    }
}

/// One entry of `allowed_ports`: a port, or an inclusive range written `"low-high"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Port(u16),
    Range(String),
}

impl PortSpec {
    /// `(low, high)`, inclusive; `None` for a malformed entry or port 0.
    pub fn bounds(&self) -> Option<(u16, u16)> {
        let (lo, hi) = match self {
            PortSpec::Port(p) => (*p, *p),
            PortSpec::Range(r) => {
                let (lo, hi) = r.split_once('-')?;
                (lo.trim().parse().ok()?, hi.trim().parse().ok()?)
            }
        };
        (lo >= 1 && lo <= hi).then_some((lo, hi))
    }
}

/// A credential a route can accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// The app's session cookie; its user must own the record.
    Session,
    /// A `terminal` JWT (`?token=` or Bearer), only on a WebSocket upgrade of
    /// `auth.agent_ws_path`; spent once.
    TerminalToken,
    /// The cookie set by the IDE bootstrap.
    IdeCookie,
    /// A `dev-ide` JWT as `Authorization: Bearer` (never from the URL); spent once.
    DevIdeToken,
    /// No credential: the upstream does its own auth.
    None,
    /// On the content site: the host-only port cookie the sign-in through the app domain sets,
    /// its user checked against the port's visibility.
    PortCookie,
    /// On the content site: a port token in `X-Edgegate-Port-Token` (non-browser clients).
    PortToken,
    /// On the content site: the cookie a share link was exchanged for.
    ShareLink,
}

impl AuthMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::Session => "session",
            AuthMethod::TerminalToken => "terminal_token",
            AuthMethod::IdeCookie => "ide_cookie",
            AuthMethod::DevIdeToken => "dev_ide_token",
            AuthMethod::None => "none",
            AuthMethod::PortCookie => "port_cookie",
            AuthMethod::PortToken => "port_token",
            AuthMethod::ShareLink => "share_link",
        }
    }
}

fn default_auth() -> Vec<AuthMethod> {
    vec![AuthMethod::Session]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Name of the app's session cookie (set by the app on `.{base_domain}`).
    pub session_cookie: String,
    /// Redis key of a session, `{sid}` is the cookie's value (the key prefix is added).
    pub session_key: String,
    /// Name of the cookie the IDE bootstrap sets.
    pub ide_cookie: String,
    /// The app's other cookies on `.{base_domain}` (refresh tokens, CSRF tokens, …): stripped
    /// before every workspace upstream, and no workspace response may set them.
    pub app_cookies: Vec<String>,
    /// Lifetime of that cookie.
    pub ide_cookie_ttl_secs: u64,
    /// Mark cookies `Secure`; turn off only for plain-HTTP local runs.
    pub cookie_secure: bool,
    /// Origins besides a request's own that cookie-authenticated requests may come from.
    pub trusted_origins: Vec<String>,
    /// The agent WebSocket path, where terminal tokens are accepted.
    pub agent_ws_path: String,
    /// Redis key marking a one-time token as spent, `{jti}` is the token's id.
    pub jti_key: String,
    /// Redis key of a VM agent's state, returned by the status endpoint.
    pub agent_key: String,
    /// Longest life of a WebSocket opened with a token (terminal or dev-ide): the token proves
    /// who the client was at the upgrade, and its tunnel must not outlive that indefinitely.
    pub token_tunnel_max_secs: u64,
    /// How often an open WebSocket re-checks the credential it was opened with (its record and,
    /// for a cookie, the app session behind it); invalidation messages trigger it at once too.
    pub recheck_interval_ms: u64,
    pub tokens: TokenConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_cookie: "session".into(),
            session_key: "session:{sid}".into(),
            ide_cookie: "edgegate_ide".into(),
            app_cookies: Vec::new(),
            ide_cookie_ttl_secs: 12 * 3600,
            cookie_secure: true,
            trusted_origins: Vec::new(),
            agent_ws_path: "/agent/ws".into(),
            jti_key: "edgegate:jti:{jti}".into(),
            agent_key: "agent:{id}".into(),
            token_tunnel_max_secs: 12 * 3600,
            recheck_interval_ms: 1000,
            tokens: TokenConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `HS256`, `EdDSA`, `ES256` or `RS256`. Tokens naming another algorithm are refused.
    pub algorithm: String,
    /// HS256: file holding the secret (at least 32 bytes; trailing whitespace ignored).
    pub secret_file: Option<std::path::PathBuf>,
    /// HS256: environment variable holding the secret, instead of a file.
    pub secret_env: Option<String>,
    /// EdDSA / ES256 / RS256: PEM private key (signs minted tokens).
    pub private_key_file: Option<std::path::PathBuf>,
    /// EdDSA / ES256 / RS256: PEM public key (verifies).
    pub public_key_file: Option<std::path::PathBuf>,
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed on `exp`, at most 5.
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before decoding.
    pub max_bytes: usize,
    pub dev_ide_ttl_secs: u64,
    pub terminal_ttl_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret_file: None,
            secret_env: None,
            private_key_file: None,
            public_key_file: None,
            issuer: "edgegate".into(),
            audience: "edgegate".into(),
            leeway_secs: 5,
            max_bytes: 4096,
            dev_ide_ttl_secs: 300,
            terminal_ttl_secs: 60,
        }
    }
}

/// Endpoints edgegate answers itself, on the `[default]` hosts. `{id}` is the workspace id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `POST`: mint a dev-ide token for the owner of the `ide_route` record.
    pub ide_token: String,
    /// `POST`: mint a terminal token for the owner of the `workspace_route` record.
    pub terminal_token: String,
    /// `GET`: spend a dev-ide token, set the ide cookie, redirect into the tunnel.
    pub ide_bootstrap: String,
    /// `GET`: the agent's state, for the owner of the `ide_route` record.
    pub agent_status: String,
    /// Route (by name) whose records and prefix the IDE endpoints use.
    pub ide_route: String,
    /// Route (by name) whose records and host the terminal endpoint uses.
    pub workspace_route: String,
}

/// Which route an `[api]` endpoint reads its records from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute {
    Ide,
    Workspace,
}

impl ApiConfig {
    /// `(field, path template, route it reads)` of every endpoint, in matching order.
    pub fn endpoints(&self) -> [(&'static str, &str, ApiRoute); 4] {
        [
            ("ide_token", &self.ide_token, ApiRoute::Ide),
            ("ide_bootstrap", &self.ide_bootstrap, ApiRoute::Ide),
            ("agent_status", &self.agent_status, ApiRoute::Ide),
            ("terminal_token", &self.terminal_token, ApiRoute::Workspace),
        ]
    }
}

/// An `[api]` path `/path/{id}/rest`: `(head, tail)` around the one `{id}`.
pub fn api_template(template: &str) -> Result<(&str, &str), String> {
    let Some((head, tail)) = template.split_once("{id}") else {
        return Err("\"{id}\" is missing".into());
    };
    if !head.starts_with('/') || !head.ends_with('/') || tail.contains('{') || head.contains('{') {
        return Err("must look like \"/path/{id}/rest\" with one placeholder".into());
    }
    Ok((head, tail))
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            ide_token: "/api/dev/{id}/ide-token".into(),
            terminal_token: "/api/workspaces/{id}/terminal-token".into(),
            ide_bootstrap: "/api/dev/{id}/ide".into(),
            agent_status: "/api/servers/{id}/status".into(),
            ide_route: "ide".into(),
            workspace_route: "workspace".into(),
        }
    }
}

fn default_drain_delay() -> u64 {
    5
}

fn default_upstream_field() -> String {
    "backend".to_string()
}
fn default_owner_field() -> String {
    "owner".to_string()
}
fn default_port() -> u16 {
    8080
}

/// The app API: hosts that are proxied without a Redis lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultRouteConfig {
    pub hosts: Vec<String>,
    pub upstream: String,
    #[serde(default = "yes")]
    pub preserve_host: bool,
}

impl Config {
    /// Read, parse and validate a config file. Errors read `FILE:LINE:COLUMN: field: what`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parse and validate config text (errors located in `config`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_named(text, "config")
    }

    /// Parse and validate config text read from `name`. Every error, syntax, type or
    /// validation, names the full field path and where in the text it is (`nginx -t` does).
    pub fn parse_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        let located = |span: Option<std::ops::Range<usize>>, field: &str, msg: &str| {
            let at = span.map_or(String::new(), |s| {
                let (line, col) = line_col(text, s.start);
                format!(":{line}:{col}")
            });
            let field = if field.is_empty() || field == "." {
                String::new()
            } else {
                format!("{field}: ")
            };
            ConfigError(format!("{name}{at}: {field}{msg}"))
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| located(e.span(), "", e.message().trim()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let span = inner.span().or_else(|| field_span(text, &path));
            // toml's message can span lines (with a source excerpt); keep it to one.
            let msg = inner.message().lines().next().unwrap_or_default().trim();
            located(span, &path, msg)
        })?;
        config.validate().map_err(|e| locate(text, name, &e))?;
        Ok(config)
    }

    /// An error about the config file at `path` (`field: what`, as `Runtime::build` gives
    /// them for the files a config names), located in it as parse errors are.
    pub fn locate_in_file(path: &Path, e: ConfigError) -> ConfigError {
        match std::fs::read_to_string(path) {
            Ok(text) => locate(&text, &path.display().to_string(), &e),
            Err(_) => e,
        }
    }

    /// Check everything serde cannot: patterns, ranges, addresses, references between sections,
    /// that the files and variables the config names exist. Only data is looked at; the keys and
    /// certificates are read by `runtime::Runtime::build` (`edgegate check` does both).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bd = &self.base_domain;
        if bd.is_empty()
            || !bd
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad("base_domain", format!("{bd:?} is not a DNS name")));
        }
        if self.listen.http.is_empty() && self.listen.tls.is_empty() {
            return Err(bad("listen.http", "at least one listener is required"));
        }
        for (i, t) in self.listen.tls.iter().enumerate() {
            let field = format!("listen.tls[{i}]");
            t.addr.parse::<SocketAddr>().map_err(|_| {
                bad(
                    format!("{field}.addr"),
                    format!("{:?} is not ip:port", t.addr),
                )
            })?;
            if t.certs.is_empty() {
                return Err(bad(format!("{field}.certs"), "at least one certificate"));
            }
            for (j, c) in t.certs.iter().enumerate() {
                let f = format!("{field}.certs[{j}]");
                if c.names.is_empty() {
                    return Err(bad(format!("{f}.names"), "list the SNI names it serves"));
                }
                for (name, path) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
                    std::fs::metadata(path).map_err(|e| {
                        bad(format!("{f}.{name}"), format!("{}: {e}", path.display()))
                    })?;
                }
            }
        }
        for (i, addr) in self.listen.http.iter().enumerate() {
            addr.parse::<SocketAddr>().map_err(|_| {
                bad(
                    format!("listen.http[{i}]"),
                    format!("{addr:?} is not ip:port"),
                )
            })?;
        }
        for (i, p) in self.listen.trusted_proxies.iter().enumerate() {
            crate::net::IpNet::parse(p).ok_or_else(|| {
                bad(
                    format!("listen.trusted_proxies[{i}]"),
                    format!("{p:?} is not an IP or CIDR"),
                )
            })?;
        }
        if !self.admin.listen.is_empty() {
            let admin: SocketAddr = self.admin.listen.parse().map_err(|_| {
                bad(
                    "admin.listen",
                    format!("{:?} is not ip:port", self.admin.listen),
                )
            })?;
            if self
                .listen
                .http
                .iter()
                .any(|h| h.parse::<SocketAddr>().ok() == Some(admin))
            {
                return Err(bad(
                    "admin.listen",
                    "must differ from every public listener",
                ));
            }
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log.level.as_str()) {
            return Err(bad(
                "log.level",
                format!(
                    "{:?} is not error, warn, info, debug or trace",
                    self.log.level
                ),
            ));
        }
        if self.activity.interval_secs > 0 && self.activity.field.is_empty() {
            return Err(bad("activity.field", "must not be empty"));
        }
        if self.log.access_log.is_empty() {
            return Err(bad("log.access_log", "stdout, stderr, off, or a file path"));
        }
        if let Some(ca) = &self.upstream.ca_file {
            std::fs::metadata(ca).map_err(|e| bad("upstream.ca_file", format!("{ca}: {e}")))?;
        }
        if self.server.threads == 0 {
            return Err(bad("server.threads", "must be at least 1"));
        }
        match self.store.kind {
            StoreKind::Redis => {
                if !self.store.records.is_empty() {
                    return Err(bad(
                        "store.records",
                        "only used with store.kind = \"static\"",
                    ));
                }
                self.redis.validate()?;
            }
            StoreKind::Static => {}
        }
        for (field, v) in [
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            ("upstream.read_timeout_ms", self.upstream.read_timeout_ms),
            ("upstream.write_timeout_ms", self.upstream.write_timeout_ms),
            ("limits.body_timeout_ms", self.limits.body_timeout_ms),
            ("limits.send_timeout_ms", self.limits.send_timeout_ms),
            (
                "auth.token_tunnel_max_secs",
                self.auth.token_tunnel_max_secs,
            ),
            ("auth.recheck_interval_ms", self.auth.recheck_interval_ms),
            ("cache.max_bytes", self.cache.max_bytes as u64),
            (
                "upstream.ws_idle_timeout_secs",
                self.upstream.ws_idle_timeout_secs,
            ),
            (
                "upstream.ws_pong_timeout_ms",
                self.upstream.ws_pong_timeout_ms,
            ),
            ("audit.redis_stream_maxlen", self.audit.redis_stream_maxlen),
            ("audit.http_interval_secs", self.audit.http_interval_secs),
        ] {
            if v == 0 {
                return Err(bad(field, "must be greater than 0"));
            }
        }
        if self.redis.invalidate_channel.is_empty() {
            return Err(bad("redis.invalidate_channel", "must not be empty"));
        }
        crate::net::parse_list("upstream.blocked_networks", &self.upstream.blocked_networks)
            .map_err(ConfigError)?;
        crate::net::parse_list("upstream.allowed_networks", &self.upstream.allowed_networks)
            .map_err(ConfigError)?;
        if self.cache.max_entries == 0 {
            return Err(bad("cache.max_entries", "must be at least 1"));
        }
        if self.routes.is_empty() && self.default.is_none() {
            return Err(bad(
                "route",
                "no route and no [default]: nothing can be served",
            ));
        }
        if let Some(d) = &self.default {
            if d.hosts.is_empty() {
                return Err(bad("default.hosts", "at least one host is required"));
            }
            crate::net::UpstreamAddr::parse(&d.upstream, 80)
                .map_err(|e| bad("default.upstream", format!("{:?} {e}", d.upstream)))?;
        }
        if !self.errors.page_template.is_empty() {
            std::fs::metadata(&self.errors.page_template).map_err(|e| {
                bad(
                    "errors.page_template",
                    format!("{}: {e}", self.errors.page_template),
                )
            })?;
        }
        if !self.activity.background_header.is_empty()
            && http::HeaderName::from_bytes(self.activity.background_header.as_bytes()).is_err()
        {
            return Err(bad(
                "activity.background_header",
                format!("{:?} is not a header name", self.activity.background_header),
            ));
        }
        let lc = &self.lifecycle;
        if let Some(s) = lc
            .startable
            .iter()
            .chain(&lc.transitioning)
            .find(|s| s.trim().is_empty() || s.as_str() == crate::route::record::RUNNING)
        {
            return Err(bad(
                "lifecycle.startable",
                format!("{s:?} cannot mean anything but running or not"),
            ));
        }
        if let Some(s) = lc.startable.iter().find(|s| lc.transitioning.contains(s)) {
            return Err(bad(
                "lifecycle.transitioning",
                format!("{s:?} is also listed as startable"),
            ));
        }
        if !lc.wake_stream.is_empty() && (lc.wake_interval_secs == 0 || lc.wake_stream_maxlen == 0)
        {
            return Err(bad(
                "lifecycle.wake_interval_secs",
                "wake_interval_secs and wake_stream_maxlen must be at least 1 while waking is on",
            ));
        }
        self.validate_routes()?;
        self.validate_api()?;
        self.validate_ports()?;
        let t = &self.tracing;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(bad("tracing.sample_ratio", "between 0.0 and 1.0"));
        }
        if !t.otlp_endpoint.is_empty() && !t.otlp_endpoint.starts_with("http://") {
            return Err(bad(
                "tracing.otlp_endpoint",
                "an http:// URL (a collector beside edgegate; this build has no TLS exporter)",
            ));
        }
        self.validate_auth()
    }

    /// Every `[[route]]`: names, patterns (`route::pattern`, the rules the table compiles
    /// with), ports, key template, credentials.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        use crate::route::pattern;
        let expand = |s: &str| self.expand_host(s);
        let default_hosts = self.default.as_ref().is_some_and(|d| !d.hosts.is_empty());
        for (i, rc) in self.routes.iter().enumerate() {
            let err = |field: &str, msg: String| route_error(i, field, msg);
            if rc.name.is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if self.routes[..i].iter().any(|r| r.name == rc.name) {
                return Err(err("name", format!("{:?} is used twice", rc.name)));
            }
            if rc.ports.is_some() {
                // It used to hold a range, [1024, 65535], which exposed every port in it.
                return Err(err(
                    "ports",
                    "replaced by allowed_ports, an explicit list of ports and \"low-high\" \
                     ranges (an empty list exposes none)"
                        .into(),
                ));
            }
            let has_port = match (&rc.host, &rc.path) {
                (Some(host), None) => {
                    let tokens = pattern::host(&expand(host)).map_err(|e| err("host", e))?;
                    if rc.hosts.is_some() {
                        return Err(err("hosts", "only allowed on path routes".into()));
                    }
                    tokens.contains(&pattern::Token::Port)
                }
                (None, Some(path)) => {
                    pattern::path_prefix(path).map_err(|e| err("path", e))?;
                    let served = rc.hosts.as_ref().map_or(default_hosts, |h| !h.is_empty());
                    if !served {
                        return Err(err(
                            "hosts",
                            "a path route needs hosts (or [default].hosts) to be served on".into(),
                        ));
                    }
                    false
                }
                _ => {
                    return Err(err(
                        "host",
                        "exactly one of host or path is required".into(),
                    ))
                }
            };
            if !has_port && !rc.allowed_ports.is_empty() {
                return Err(err(
                    "allowed_ports",
                    "only allowed when host has \"{port}\"".into(),
                ));
            }
            for (j, spec) in rc.allowed_ports.iter().enumerate() {
                if spec.bounds().is_none() {
                    return Err(err(
                        &format!("allowed_ports[{j}]"),
                        format!("{spec:?} is not a port (1-65535) or a range \"low-high\""),
                    ));
                }
            }
            pattern::key(&rc.key, "{id}").map_err(|e| err("key", e))?;
            let is_host = rc.host.is_some();
            let auth = &rc.auth;
            let content = rc.on_content_domain();
            let port_methods = [
                AuthMethod::PortCookie,
                AuthMethod::PortToken,
                AuthMethod::ShareLink,
            ];
            if content {
                if self.content_domain.is_empty() {
                    return Err(err(
                        "host",
                        "uses {content_domain}, which is not set".into(),
                    ));
                }
                if !has_port {
                    return Err(err(
                        "host",
                        "a route on {content_domain} serves ports: it needs \"{port}\"".into(),
                    ));
                }
                if let Some(m) = auth.iter().find(|m| !port_methods.contains(m)) {
                    return Err(err(
                        "auth",
                        format!(
                            "{:?} cannot work on the content site (the app's cookies never \
                             reach it): list port_cookie, port_token, share_link",
                            m.as_str()
                        ),
                    ));
                }
            } else if let Some(m) = auth.iter().find(|m| port_methods.contains(m)) {
                return Err(err(
                    "auth",
                    format!("{:?} is for routes on {{content_domain}}", m.as_str()),
                ));
            }
            if auth.is_empty() {
                return Err(err(
                    "auth",
                    "list the accepted credentials, or [\"none\"]".into(),
                ));
            }
            if auth.contains(&AuthMethod::None) && auth.len() > 1 {
                return Err(err(
                    "auth",
                    "\"none\" cannot be combined with credentials".into(),
                ));
            }
            if auth.contains(&AuthMethod::TerminalToken) && !is_host {
                return Err(err("auth", "terminal_token is for host routes".into()));
            }
            if auth.contains(&AuthMethod::IdeCookie) && is_host {
                return Err(err(
                    "auth",
                    "ide_cookie is for path routes (its cookie is path-scoped)".into(),
                ));
            }
            if rc.upstream_field.is_empty() || rc.owner_field.is_empty() {
                return Err(err(
                    "upstream_field",
                    "field names must not be empty".into(),
                ));
            }
        }
        Ok(())
    }

    /// `[api]`: the routes it names exist and have the right shape, its paths one `{id}`.
    fn validate_api(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        let route = |field: &str, name: &str| -> Result<Option<&RouteConfig>, ConfigError> {
            if name.is_empty() {
                return Ok(None);
            }
            self.routes
                .iter()
                .find(|r| r.name == name)
                .map(Some)
                .ok_or_else(|| bad(format!("api.{field}"), format!("no route named {name:?}")))
        };
        let ide = route("ide_route", &api.ide_route)?;
        let workspace = route("workspace_route", &api.workspace_route)?;
        if ide.is_some_and(|r| r.path.is_none()) {
            return Err(bad("api.ide_route", "must name a path route"));
        }
        if workspace.is_some_and(|r| r.host.as_ref().is_none_or(|h| h.contains("{port}"))) {
            return Err(bad(
                "api.workspace_route",
                "must name a host route without {port}",
            ));
        }
        for (field, template, enabled) in api.endpoints() {
            let enabled = match enabled {
                ApiRoute::Ide => ide.is_some(),
                ApiRoute::Workspace => workspace.is_some(),
            };
            if template.is_empty() || !enabled {
                continue;
            }
            api_template(template).map_err(|e| bad(format!("api.{field}"), e))?;
        }
        Ok(())
    }

    /// `[auth]` as data: names, paths, origins, key templates, and where the token keys come
    /// from (the keys themselves are read and checked when the runtime is built).
    fn validate_auth(&self) -> Result<(), ConfigError> {
        use crate::route::pattern;
        let a = &self.auth;
        if a.session_cookie.is_empty() || a.ide_cookie.is_empty() {
            return Err(bad("auth.session_cookie", "cookie names must not be empty"));
        }
        if !a.agent_ws_path.starts_with('/') {
            return Err(bad("auth.agent_ws_path", "must start with '/'"));
        }
        if a.ide_cookie_ttl_secs == 0 {
            return Err(bad("auth.ide_cookie_ttl_secs", "must be greater than 0"));
        }
        for (i, o) in a.trusted_origins.iter().enumerate() {
            let ok = (o.starts_with("http://") || o.starts_with("https://"))
                && !o.ends_with('/')
                && o.split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err(bad(
                    format!("auth.trusted_origins[{i}]"),
                    format!("{o:?} is not an origin (scheme://host[:port])"),
                ));
            }
        }
        for (field, template, placeholder) in [
            ("auth.session_key", &a.session_key, "{sid}"),
            ("auth.jti_key", &a.jti_key, "{jti}"),
            ("auth.agent_key", &a.agent_key, "{id}"),
        ] {
            pattern::key(template, placeholder).map_err(|e| bad(field, e))?;
        }
        let t = &a.tokens;
        let field = |f: &str| format!("auth.tokens.{f}");
        match t.algorithm.as_str() {
            "HS256" => match (&t.secret_file, &t.secret_env) {
                (Some(path), None) => {
                    std::fs::metadata(path).map_err(|e| {
                        bad(field("secret_file"), format!("{}: {e}", path.display()))
                    })?;
                }
                (None, Some(var)) => {
                    if std::env::var_os(var).is_none() {
                        return Err(bad(field("secret_env"), format!("${var} is not set")));
                    }
                }
                _ => {
                    return Err(bad(
                        field("secret_file"),
                        "HS256 needs exactly one of secret_file or secret_env",
                    ))
                }
            },
            alg @ ("EdDSA" | "ES256" | "RS256") => {
                let (Some(private), Some(public)) = (&t.private_key_file, &t.public_key_file)
                else {
                    return Err(bad(
                        field("private_key_file"),
                        format!("{alg} needs private_key_file and public_key_file (PEM)"),
                    ));
                };
                for (f, path) in [("private_key_file", private), ("public_key_file", public)] {
                    std::fs::metadata(path)
                        .map_err(|e| bad(field(f), format!("{}: {e}", path.display())))?;
                }
            }
            other => {
                return Err(bad(
                    field("algorithm"),
                    format!("{other:?} is not one of HS256, EdDSA, ES256, RS256"),
                ))
            }
        }
        if t.leeway_secs > 5 {
            return Err(bad(field("leeway_secs"), "must be at most 5"));
        }
        if t.issuer.is_empty() || t.audience.is_empty() {
            return Err(bad(
                field("issuer"),
                "issuer and audience must not be empty",
            ));
        }
        Ok(())
    }

    /// A host pattern with `{base_domain}` and `{content_domain}` filled in, lower case.
    pub fn expand_host(&self, pattern: &str) -> String {
        pattern
            .replace("{base_domain}", &self.base_domain)
            .replace("{content_domain}", &self.content_domain)
            .to_ascii_lowercase()
    }

    /// The route the port endpoints use (`ports.route`, else the first on the content domain).
    pub fn ports_route(&self) -> Option<&RouteConfig> {
        let p = &self.ports;
        if p.route.is_empty() {
            self.routes.iter().find(|r| r.on_content_domain())
        } else {
            self.routes.iter().find(|r| r.name == p.route)
        }
    }

    /// `content_domain` and `[ports]`: a domain of its own, and settings that hold together.
    fn validate_ports(&self) -> Result<(), ConfigError> {
        let p = &self.ports;
        let cd = self.content_domain.to_ascii_lowercase();
        if !cd.is_empty() {
            let bd = self.base_domain.to_ascii_lowercase();
            let under = |a: &str, b: &str| a == b || a.ends_with(&format!(".{b}"));
            // The point of the content site is that no cookie of the app's reaches it and
            // none of its pages is same-site with the app.
            if under(&cd, &bd) || under(&bd, &cd) {
                return Err(bad(
                    "content_domain",
                    format!(
                        "{cd:?} must be a registrable domain of its own, not {bd:?} nor \
                         above or below it"
                    ),
                ));
            }
            if cd.contains('{') || cd.starts_with('.') || cd.ends_with('.') || !cd.contains('.') {
                return Err(bad(
                    "content_domain",
                    format!("{cd:?} is not a domain name"),
                ));
            }
        }
        if p.cookie.is_empty()
            || !p
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(bad(
                "ports.cookie",
                "a cookie name of letters, digits, - and _",
            ));
        }
        // Only where the cookie is set: a config without a content route need not rename it.
        if p.cookie.starts_with("__Host-")
            && !self.auth.cookie_secure
            && self.ports_route().is_some()
        {
            return Err(bad(
                "ports.cookie",
                "a __Host- cookie must be Secure, and auth.cookie_secure is false: use a name \
                 without the prefix for plain-HTTP local runs",
            ));
        }
        for (field, v) in [
            ("ports.cookie_ttl_secs", p.cookie_ttl_secs),
            ("ports.code_ttl_secs", p.code_ttl_secs),
            ("ports.token_ttl_secs", p.token_ttl_secs),
            ("ports.share_max_ttl_secs", p.share_max_ttl_secs),
        ] {
            if v == 0 {
                return Err(bad(field, "must be greater than 0"));
            }
        }
        if p.code_ttl_secs > 300 {
            return Err(bad(
                "ports.code_ttl_secs",
                "at most 300: it travels in a URL",
            ));
        }
        if !p.callback_path.starts_with('/') || p.callback_path.contains(['?', '#', '{']) {
            return Err(bad("ports.callback_path", "a plain path starting with '/'"));
        }
        if !p.api_prefix.starts_with('/')
            || !p.api_prefix.ends_with('/')
            || p.api_prefix.contains('{')
        {
            return Err(bad(
                "ports.api_prefix",
                "a path that starts and ends with '/'",
            ));
        }
        if !p.field.contains("{port}") {
            return Err(bad("ports.field", "\"{port}\" is missing"));
        }
        if p.org_field.is_empty() {
            return Err(bad("ports.org_field", "must not be empty"));
        }
        let login_ok = p.login_url.is_empty()
            || ["https://", "http://", "/"]
                .iter()
                .any(|s| p.login_url.starts_with(s));
        if !login_ok {
            return Err(bad("ports.login_url", "an absolute URL or a path"));
        }
        crate::route::pattern::key(&p.grant_key, "{jti}").map_err(|e| bad("ports.grant_key", e))?;
        if !p.route.is_empty() {
            match self.routes.iter().find(|r| r.name == p.route) {
                Some(r) if r.on_content_domain() => {}
                Some(_) => return Err(bad("ports.route", "must name a route on {content_domain}")),
                None => return Err(bad("ports.route", format!("no route named {:?}", p.route))),
            }
        }
        if self.ports_route().is_some() && self.default.is_none() {
            return Err(bad(
                "ports.app_host",
                "the content site signs browsers in through the app's hosts: [default] is needed",
            ));
        }
        Ok(())
    }

    pub fn ws_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream.ws_idle_timeout_secs)
    }
}

/// `NAME:LINE:COLUMN: field: what` for a `field: what` error about `text`.
fn locate(text: &str, name: &str, e: &ConfigError) -> ConfigError {
    let (field, msg) = e.0.split_once(": ").unwrap_or(("", e.0.as_str()));
    let at = field_span(text, field).map_or(String::new(), |s| {
        let (line, col) = line_col(text, s.start);
        format!(":{line}:{col}")
    });
    ConfigError(format!("{name}{at}: {field}: {msg}"))
}

/// 1-based line and column (in characters) of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where the field at `path` (`route[2].auth[0]`, `redis.url`) is written in `text`: the
/// deepest part of the path the text has (a missing key is placed at its table).
fn field_span(text: &str, path: &str) -> Option<std::ops::Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut here: Option<std::ops::Range<usize>> = None;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            return here;
        };
        here = Some(k.span());
        let mut value = v;
        for index in indices
            .split(['[', ']'])
            .filter(|i| !i.is_empty())
            .filter_map(|i| i.parse::<usize>().ok())
        {
            let DeValue::Array(items) = value.get_ref() else {
                return here;
            };
            let Some(item) = items.get(index) else {
                return here;
            };
            value = item;
            here = Some(item.span());
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => {
                if indices.is_empty() {
                    here = Some(k.span());
                }
                return here;
            }
        }
    }
    here
}

/// `route[i].field` for error messages.
pub(crate) fn route_field(i: usize, field: &str) -> String {
    format!("route[{i}].{field}")
}

pub(crate) fn route_error(i: usize, field: &str, msg: impl std::fmt::Display) -> ConfigError {
    bad(route_field(i, field), msg)
}

/// A unit-test fixture of fixed contents under one fixed name in the temp dir. Written by a
/// rename, so concurrent test processes share it and nothing piles up from run to run.
#[cfg(test)]
pub(crate) fn test_fixture(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("edgegate-unit-{name}"));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(contents) {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, contents).expect("write fixture");
        std::fs::rename(&tmp, &path).expect("rename fixture");
    }
    path
}

/// One host-routed workspace route, no IDE route, the test secret, plus `extra` (unit tests
/// only).
#[cfg(test)]
pub(crate) fn test_workspace_config(extra: &str) -> Config {
    Config::parse(&test_workspace_toml(extra)).expect("config")
}

/// The text of `test_workspace_config`.
#[cfg(test)]
fn test_workspace_toml(extra: &str) -> String {
    format!(
        r#"
        base_domain = "example.test"
        [api]
        ide_route = ""
        [[route]]
        name = "workspace"
        host = "ws-{{id}}.{{base_domain}}"
        key = "workspace:{{id}}"
        {}
        {extra}
        "#,
        test_tokens_toml()
    )
}

/// A `[auth.tokens]` section with a test secret (unit tests only).
#[cfg(test)]
pub(crate) fn test_tokens_toml() -> String {
    let path = test_fixture("config-secret", "0123456789abcdef0123456789abcdef-config");
    format!(
        "[auth.tokens]\nsecret_file = {:?}\n",
        path.display().to_string()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> String {
        test_workspace_toml("")
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(&minimal()).expect("valid");
        assert_eq!(c.cache.ttl_ms, 1000);
        assert_eq!(c.upstream.ws_idle_timeout_secs, 3600);
        assert_eq!(c.routes[0].upstream_field, "backend");
        assert!(c.routes[0].preserve_host);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::parse(&format!("bogus = 1\n{}", minimal())).unwrap_err();
        assert!(err.0.contains("bogus"), "{err}");
        assert!(!err.0.contains('\n'), "one line: {err:?}");
    }

    #[test]
    fn errors_name_the_field() {
        let m = minimal();
        let cases = [
            (m.replace("ws-{id}", "ws-x"), "route[0].host"),
            (m.replace("example.test", "bad domain"), "base_domain"),
            (
                format!("{m}\n[upstream]\nconnect_timeout_ms = 0\n"),
                "upstream.connect_timeout_ms",
            ),
            (format!("{m}\n[listen]\nhttp = [\"nope\"]\n"), "listen.http[0]"),
            (
                format!(
                    "{m}\n[[route]]\nname = \"p\"\nhost = \"p-{{id}}--{{port}}.{{base_domain}}\"\nkey = \"k:{{id}}\"\nports = [1024, 65535]\n"
                ),
                "route[1].ports",
            ),
            (
                format!(
                    "{m}\n[[route]]\nname = \"p\"\nhost = \"p-{{id}}--{{port}}.{{base_domain}}\"\nkey = \"k:{{id}}\"\nallowed_ports = [3000, \"9-1\"]\n"
                ),
                "route[1].allowed_ports[1]",
            ),
            (
                format!("{m}\n[upstream]\nallowed_networks = [\"10.0.0.0/99\"]\n"),
                "upstream.allowed_networks[0]",
            ),
            (
                m.replace("key = \"workspace:{id}\"", "key = \"workspace:{id}\"\nauth = []"),
                "route[0].auth",
            ),
            (
                m.replace("[api]\n", "[api]\nworkspace_route = \"nope\"\n"),
                "api.workspace_route",
            ),
            (
                m.replace("secret_file", "secret_env = \"EG_UNSET_VAR_FOR_TEST\"\n#"),
                "auth.tokens.secret_env",
            ),
        ];
        for (text, field) in cases {
            let err = Config::parse(&text).unwrap_err();
            // `config:LINE:COLUMN: field: what`.
            let (at, rest) = err.0.split_once(": ").expect("located");
            assert!(at.starts_with("config:"), "{field}: got {err}");
            assert!(rest.starts_with(field), "{field}: got {err}");
        }
    }
}
