//! edgegate: a programmable edge gateway for cloud-development workspaces, on Pingora.
//!
//! `build_server` turns a validated `Config` into an `EdgeServer` (Pingora's `Server` with the
//! proxy service, `proxy::Gateway`); `main` runs it, and the tests start it on an ephemeral
//! port with `BackgroundGateway`. The request path is described at the top of `proxy.rs`.

pub mod access;
pub mod activity;
pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod connection;
pub mod ctx;
pub mod decide;
pub mod demo;
pub mod drain;
pub mod error;
pub mod explain;
mod fast_stop;
pub mod first_per;
pub mod headers;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod ports;
pub mod proxy;
pub mod query;
pub mod ratelimit;
pub mod readiness;
pub mod route;
pub mod runtime;
pub mod signals;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod websocket;

use config::{Config, StoreKind};

/// A hash that is the same in every thread of the process (ahash with fixed seeds): for pool
/// group keys and for matching invalidated keys against open WebSockets.
pub(crate) fn stable_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    static SEEDED: ahash::RandomState = ahash::RandomState::with_seeds(
        0x6564_6765_6761_7465,
        0x706f_6f6c_6b65_7973,
        0x696e_7661_6c69_6461,
        0x7465_6b65_7973_2121,
    );
    SEEDED.hash_one(value)
}

/// A hash map for keys a client can influence (workspace and session keys, record fields):
/// ahash's per-process random keys resist flooding as std's SipHash does, for a fraction of
/// its cost per lookup (SipHash was 2k instructions per request in a profile).
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use route::store::{self, Invalidate, Records, RedisRuntime};
use std::sync::Arc;

/// The gateway and what the admin listener shares with it.
pub struct Parts {
    pub gateway: proxy::Gateway,
    /// Set when the server starts to stop.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    pub metrics: Arc<metrics::Metrics>,
    pub store: Arc<dyn store::RouteStore>,
}

/// Build the proxy logic from a validated config: the store (with its own Redis runtime), the
/// cache in front of it, and, when `subscribe`, the invalidation listener. Used by the server
/// and by `explain`, so both decide with the same code.
pub fn build_gateway(config: &Config, subscribe: bool) -> Result<Parts, String> {
    let runtime = runtime::Runtime::build(config).map_err(|e| e.to_string())?;
    build_gateway_from(config, runtime, subscribe)
}

/// `edgegate_tls_certificate_expiry_timestamp_seconds` for every configured certificate (the
/// files were read and checked when the runtime was built; one that will not parse here is
/// left out, not fatal).
pub(crate) fn record_certificate_expiry(config: &Config, metrics: &metrics::Metrics) {
    // A reload starts over: certificates no longer configured leave no series behind.
    metrics.cert_expiry.reset();
    for (i, l) in config.listen.tls.iter().enumerate() {
        for c in &l.certs {
            let Ok(pem) = std::fs::read(&c.cert_file) else {
                continue;
            };
            let Ok((_, block)) = x509_parser::pem::parse_x509_pem(&pem) else {
                continue;
            };
            let Ok(cert) = block.parse_x509() else {
                continue;
            };
            let expiry = cert.validity().not_after.timestamp() as f64;
            metrics
                .cert_expiry
                .with_label_values(&[&format!("listen.tls[{i}]"), &c.names.join(",")])
                .set(expiry);
        }
    }
}

/// `build_gateway` with the runtime parts already built (`build_server` needs its TLS part).
fn build_gateway_from(
    config: &Config,
    runtime: runtime::Runtime,
    subscribe: bool,
) -> Result<Parts, String> {
    // Redis gets a runtime of its own that lives as long as the proxy service holding it.
    let redis_rt = match config.store.kind {
        StoreKind::Redis => {
            Some(Arc::new(RedisRuntime::new().map_err(|e| {
                format!("cannot start the Redis runtime: {e}")
            })?))
        }
        StoreKind::Static => None,
    };
    let metrics = Arc::new(metrics::Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    record_certificate_expiry(config, &metrics);
    let tracing = trace::Tracing::new(&config.tracing)?;
    metrics.known_routes(
        config
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .chain(config.default.as_ref().map(|_| "default")),
    );
    let store = store::build(
        config,
        redis_rt.as_deref(),
        metrics.clone(),
        tracing.clone(),
    )?;
    let cache = Records::new_cache(config, &metrics, "records");
    let activity = match redis_rt.as_ref().and_then(|r| r.handle()) {
        Some(handle) if subscribe && config.activity.interval_secs > 0 => {
            let a = Arc::new(activity::Activity::new());
            a.spawn_flusher(
                &handle,
                store.clone(),
                config.activity.field.clone(),
                std::time::Duration::from_secs(config.activity.interval_secs),
            );
            Some(a)
        }
        _ => None,
    };
    let records = Records::new(store.clone(), cache.clone(), config, metrics.clone());
    let gateway = proxy::Gateway::new(
        config,
        runtime,
        records,
        metrics.clone(),
        redis_rt.clone(),
        activity,
        tracing,
    )?;
    if let Some(handle) = redis_rt
        .as_ref()
        .and_then(|r| r.handle())
        .filter(|_| subscribe)
    {
        let secrets = gateway.records().secrets_cache().clone();
        let (c, m, tunnels) = (cache, metrics.clone(), gateway.invalidations());
        let (gw, on) = (gateway.clone(), handle.clone());
        let invalidate: Invalidate = Arc::new(move |key: Option<&str>| match key {
            Some(k) => {
                m.cache_invalidations.inc();
                c.invalidate(k);
                secrets.invalidate(k);
                // After the caches: a tunnel that re-checks, and the drain of the requests in
                // flight, must read the new record.
                let _ = tunnels.send(auth::key_hash(k));
                if let Some(drain) = gw.drain_check(k) {
                    on.spawn(drain);
                }
            }
            None => {
                c.clear();
                secrets.clear();
            }
        });
        store::spawn_invalidation_listener(&handle, &config.redis, invalidate)?;
    }
    Ok(Parts {
        stopping: gateway.stopping(),
        gateway,
        metrics,
        store,
    })
}

/// A built server, ready to run.
pub struct EdgeServer {
    server: Server,
    accept_loops: fast_stop::AcceptLoops,
    control: Arc<signals::Control>,
}

impl EdgeServer {
    /// Run until `signal` says to stop (its fast stop ends the accept loops first).
    pub fn run(self, signal: Box<dyn ShutdownSignalWatch + Send + Sync>) {
        let shutdown_signal = Box::new(self.accept_loops.signal(signal));
        self.server.run(RunArgs { shutdown_signal });
    }

    /// Run on Unix signals (`signals`: SIGHUP reloads `config_path`, SIGUSR1 reopens the
    /// logs, SIGTERM drains, SIGQUIT upgrades, SIGINT stops at once), then exit.
    pub fn run_forever(mut self, config_path: Option<std::path::PathBuf>) -> ! {
        if let Some(c) = Arc::get_mut(&mut self.control) {
            c.config_path = config_path;
        }
        let signals = signals::Signals::new(self.control.clone());
        let gateway = self.control.gateway.clone();
        self.run(Box::new(signals));
        gateway.flush_traces();
        log::info!("stopped");
        std::process::exit(0)
    }
}

/// Build the server and its proxy service from a validated config. `opt` carries Pingora's
/// command-line switches (`upgrade` for a graceful handover).
pub fn build_server(config: &Config, opt: Option<Opt>) -> Result<EdgeServer, String> {
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        pid_file: config.server.pid_file.clone(),
        upgrade_sock: config.server.upgrade_sock.clone(),
        ca_file: config.upstream.ca_file.clone(),
        upstream_keepalive_pool_size: config.upstream.pool_size.max(16),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let accept_loops = fast_stop::AcceptLoops::new();

    let runtime = runtime::Runtime::build(config).map_err(|e| e.to_string())?;
    let certs: Vec<Arc<tls::Certificates>> = runtime
        .tls
        .iter()
        .map(|r| tls::Certificates::new(r.clone()))
        .collect();
    let Parts {
        gateway,
        stopping,
        metrics,
        store,
    } = build_gateway_from(config, runtime, true)?;
    let readiness = readiness::Readiness::new(config);
    let control = Arc::new(signals::Control {
        gateway: gateway.clone(),
        certs: certs.clone(),
        readiness: readiness.clone(),
        drain_delay: std::time::Duration::from_secs(config.server.drain_delay_secs),
        config_path: None,
        metrics: metrics.clone(),
    });
    let metrics_for_connections = metrics.connections_open.clone();
    server.add_service(pingora::services::background::background_service(
        "edgegate-stopping",
        StopRelay(stopping, accept_loops.clone()),
    ));

    if !config.admin.listen.is_empty() {
        let mut admin = pingora::services::listening::Service::new(
            "edgegate-admin".to_string(),
            admin::Admin::new(metrics, store, readiness, {
                let gw = gateway.clone();
                Box::new(move || gw.records().warm())
            }),
        );
        admin.add_tcp(&config.admin.listen);
        server.add_service(accept_loops.wrap(admin));
    }

    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.keepalive_request_limit =
        (config.limits.keepalive_requests > 0).then_some(config.limits.keepalive_requests);
    // An idle HTTP/2 connection ends as an idle HTTP/1 one does (Pingora's default: never).
    options.h2_idle_timeout = (config.limits.keepalive_timeout_secs > 0)
        .then(|| std::time::Duration::from_secs(config.limits.keepalive_timeout_secs));
    proxy.server_options = Some(options);
    let limit = std::time::Duration::from_millis(config.limits.header_timeout_ms);
    let grace = std::time::Duration::from_secs(config.server.grace_period_seconds);
    let keepalive = std::time::Duration::from_secs(config.limits.keepalive_timeout_secs);
    // The request line and headers, room for the line's method and version, and for the one
    // read that completes a head (it may carry the start of a body).
    let max_head = config.limits.max_uri_bytes + config.limits.max_header_bytes + 64 * 1024;
    let app = connection::ConnectionApp::new(proxy, limit, keepalive, max_head, grace)
        .counting(metrics_for_connections);
    let mut service = pingora::services::listening::Service::new("edgegate".to_string(), app);
    // Pingora reads each client connection through a 64 KiB buffer by default; smaller ones
    // keep idle connections (WebSockets above all) cheap.
    use pingora::listeners::ListenerConfig;
    use pingora::protocols::l4::stream::L4BufferSettings;
    let l = &config.listen;
    for addr in &l.http {
        let buffers = L4BufferSettings::default().read(l.read_buffer_bytes);
        service.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    for (i, (t, resolver)) in l.tls.iter().zip(certs).enumerate() {
        let settings =
            tls::settings(&format!("listen.tls[{i}]"), t, resolver).map_err(|e| e.to_string())?;
        let buffers = L4BufferSettings::default().read(l.tls_read_buffer_bytes);
        service.add_listener(
            ListenerConfig::tcp(t.addr.as_str())
                .tls(settings)
                .l4_buffer(buffers),
        );
    }
    server.add_service(accept_loops.wrap(service));
    Ok(EdgeServer {
        server,
        accept_loops,
        control,
    })
}

/// Tells the gateway's WebSocket tunnels when Pingora starts to stop (they send 1012), once
/// this process no longer accepts connections: a client that reconnects at the 1012 must not
/// land on the stopping process (during a graceful upgrade both accept until then).
struct StopRelay(
    Arc<tokio::sync::watch::Sender<bool>>,
    fast_stop::AcceptLoops,
);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for StopRelay {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        self.1
            .stopped_accepting(std::time::Duration::from_secs(2))
            .await;
        let _ = self.0.send(true);
    }
}

/// A gateway running on a thread of this process until dropped (tests, `demo`).
pub struct BackgroundGateway {
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ChannelShutdown {
    rx: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<ShutdownSignal>>>,
    /// `POST /drain` on the admin listener stops it too, as it stops `edgegate run`.
    control: Arc<signals::Control>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for ChannelShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.rx.lock().await.take();
        let told = async {
            match rx {
                Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            how = told => how,
            _ = self.control.readiness.drain_asked() => {
                self.control.drain("POST /drain").await;
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

impl BackgroundGateway {
    /// Start a gateway on a thread of its own, always on Pingora's work-stealing runtime.
    ///
    /// Pingora's no-steal runtime keeps each worker's runtime handles in a thread-local keyed by
    /// thread id, and the `thread_local` crate hands a dead thread's id, value included, to the
    /// next thread that asks for one (Pingora's timers ask on every worker). Once a no-steal
    /// server has stopped, a later server in the same process can find the dead handles and
    /// spawn its accepted connections onto a runtime that is gone. `edgegate run` has one
    /// server per process; the tests start many, so they run the real binary for the no-steal
    /// runtime (tests/graceful.rs, scripts/e2e).
    pub fn start(config: &Config) -> Result<Self, String> {
        let mut config = config.clone();
        config.server.work_stealing = true;
        let server = build_server(&config, None)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let control = server.control.clone();
        let thread = std::thread::Builder::new()
            .name("edgegate-server".into())
            .spawn(move || {
                server.run(Box::new(ChannelShutdown {
                    rx: tokio::sync::Mutex::new(Some(rx)),
                    control,
                }))
            })
            .map_err(|e| format!("cannot start the server thread: {e}"))?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stop at once and wait for the server's runtimes to end.
    pub fn stop(mut self) {
        self.shutdown(ShutdownSignal::FastShutdown);
    }

    /// Stop as on SIGTERM (grace period, open WebSockets closed with 1012) and wait for it.
    pub fn stop_gracefully(mut self) {
        self.shutdown(ShutdownSignal::GracefulTerminate);
    }

    fn shutdown(&mut self, how: ShutdownSignal) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(how);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundGateway {
    fn drop(&mut self) {
        self.shutdown(ShutdownSignal::FastShutdown);
    }
}
