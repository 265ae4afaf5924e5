//! The process's signals as nginx and Envoy users expect them (issue #19), watched by
//! `edgegate run` in place of Pingora's own watcher:
//!
//! | signal | what happens |
//! | --- | --- |
//! | `SIGHUP` | reload the config file: routes, auth keys, ports, lifecycle and certificates, for the next request and handshake; open connections and WebSockets go on. A config that does not load is logged and changes nothing. |
//! | `SIGUSR1` | reopen the access log and audit files (after a rotation moved them) |
//! | `SIGTERM`, `POST /drain` | drain: readiness fails at once, the balancer gets `server.drain_delay_secs`, then the listeners close and requests get `server.grace_period_seconds`; WebSockets close with 1012 |
//! | `SIGQUIT` | graceful upgrade: a new process started with `run -u` takes the listeners |
//! | `SIGINT` | fast stop (WebSockets get 1012 first) |
//! | `SIGUSR2` | logged and ignored (its default would end the process without a word) |
//!
//! Each is logged when it arrives.

use crate::config::Config;
use crate::proxy::Gateway;
use crate::readiness::Readiness;
use crate::tls::Certificates;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What the signals act on.
pub struct Control {
    pub gateway: Gateway,
    /// Each TLS listener's certificates, in `listen.tls` order.
    pub certs: Vec<Arc<Certificates>>,
    pub readiness: Arc<Readiness>,
    pub drain_delay: Duration,
    /// The config file a reload reads (`None`: nothing to reload, e.g. the embedded demo).
    pub config_path: Option<PathBuf>,
    /// For the reloaded certificates' expiry.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Control {
    /// Reload the config file: what the decision reads, and the certificates.
    pub fn reload(&self) {
        let Some(path) = &self.config_path else {
            log::warn!("SIGHUP: no config file to reload");
            return;
        };
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("SIGHUP: the new config is not valid, the running one stays: {e}");
                return;
            }
        };
        let runtime = match crate::runtime::Runtime::build(&config) {
            Ok(r) => r,
            Err(e) => {
                let e = Config::locate_in_file(path, e);
                log::error!("SIGHUP: the new config does not build, the running one stays: {e}");
                return;
            }
        };
        if runtime.tls.len() != self.certs.len() {
            log::warn!(
                "SIGHUP: listen.tls has {} listeners now, {} running: listeners change with an \
                 upgrade (run -u), not a reload; certificates of the running ones are reloaded",
                runtime.tls.len(),
                self.certs.len()
            );
        }
        let tls = runtime.tls.clone();
        if let Err(e) = self.gateway.reload(&config, runtime) {
            log::error!("SIGHUP: the running config stays: {e}");
            return;
        }
        for (certs, resolver) in self.certs.iter().zip(&tls) {
            certs.replace(resolver.clone());
        }
        crate::record_certificate_expiry(&config, &self.metrics);
        log::info!(
            "SIGHUP: reloaded {} (routes, auth, ports, lifecycle, certificates); [listen], \
             [server], [redis], [admin] and [log] change with an upgrade (run -u)",
            path.display()
        );
    }

    /// The first step of a stop: readiness fails, the balancer gets its time.
    pub(crate) async fn drain(&self, why: &str) {
        self.readiness.start_draining();
        log::warn!(
            "{why}: draining: readiness fails now, the listeners close in {:?}",
            self.drain_delay
        );
        tokio::time::sleep(self.drain_delay).await;
        log::warn!("{why}: closing the listeners; requests in flight get the grace period");
    }
}

/// The watcher `edgegate run` gives Pingora.
pub struct Signals {
    control: Arc<Control>,
}

impl Signals {
    pub fn new(control: Arc<Control>) -> Signals {
        Signals { control }
    }
}

/// A signal stream, or one that never fires when it cannot be installed (logged).
fn watch(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .map_err(|e| log::error!("cannot watch {name}: {e}"))
        .ok()
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = watch(SignalKind::terminate(), "SIGTERM");
        let mut quit = watch(SignalKind::quit(), "SIGQUIT");
        let mut int = watch(SignalKind::interrupt(), "SIGINT");
        let mut hup = watch(SignalKind::hangup(), "SIGHUP");
        let mut usr1 = watch(SignalKind::user_defined1(), "SIGUSR1");
        let mut usr2 = watch(SignalKind::user_defined2(), "SIGUSR2");
        let c = &self.control;
        loop {
            tokio::select! {
                _ = next(&mut term) => {
                    c.drain("SIGTERM").await;
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = c.readiness.drain_asked() => {
                    c.drain("POST /drain").await;
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = next(&mut quit) => {
                    log::warn!("SIGQUIT: graceful upgrade: handing the listeners over");
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = next(&mut int) => {
                    // At once, but WebSockets still hear why (1012) before the runtimes go:
                    // Pingora's fast stop tells the tunnels nothing.
                    log::warn!("SIGINT: stopping at once; WebSockets get 1012");
                    let _ = c.gateway.stopping().send(true);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return ShutdownSignal::FastShutdown;
                }
                _ = next(&mut hup) => c.reload(),
                _ = next(&mut usr1) => {
                    log::info!("SIGUSR1: reopening the log files");
                    c.gateway.reopen_logs();
                }
                _ = next(&mut usr2) => log::warn!("SIGUSR2: ignored"),
            }
        }
    }
}
