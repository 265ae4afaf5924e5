//! A fast stop (SIGINT, `BackgroundGateway::stop`) that ends the accept loops before Pingora
//! drops its runtimes.
//!
//! Pingora's fast shutdown does not tell the listening services: it shuts every runtime down
//! with a zero timeout and joins them. With `server.work_stealing = false` each worker thread
//! is a tokio runtime of its own. A listener's socket is registered with the worker that bound
//! it, while its accept loop is spawned on a worker picked at random. When the binding worker
//! stops first, `accept()` fails at once, every time ("being shutdown"), and Pingora's loop
//! logs and retries without yielding: the looping worker never reads its own stop message and
//! the process never exits (8 hangs in 100 runs of `tests/auth_keys.rs` with two threads).
//!
//! So each listening service runs behind `StopFirst`, which hands it a stop watch of edgegate's
//! own: true when Pingora's turns true (graceful stops, unchanged) or when a fast stop starts.
//! `StopAcceptingFirst` wraps the shutdown signal: on a fast stop it flips the watch and waits
//! (briefly, bounded) for the services' accept loops to return, then lets Pingora go on.

use async_trait::async_trait;
use pingora::server::{ListenFds, RuntimeOpts, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::Service;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a fast stop waits for the accept loops; a loop that needs longer is left to
/// Pingora's runtime shutdown, as before.
const ACCEPT_LOOPS_GRACE: Duration = Duration::from_secs(2);

/// Shared by the services of one server and its shutdown signal.
#[derive(Clone)]
pub(crate) struct AcceptLoops(Arc<Shared>);

struct Shared {
    /// True once a fast stop has started.
    stop: watch::Sender<bool>,
    /// Services whose accept loops are running.
    running: watch::Sender<usize>,
}

impl AcceptLoops {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Shared {
            stop: watch::channel(false).0,
            running: watch::channel(0).0,
        }))
    }

    /// Put `service` under this stop.
    pub(crate) fn wrap<S: Service + 'static>(&self, service: S) -> StopFirst<S> {
        StopFirst {
            inner: service,
            loops: self.clone(),
        }
    }

    /// Wrap the signal that stops the server.
    pub(crate) fn signal(
        &self,
        inner: Box<dyn ShutdownSignalWatch + Send + Sync>,
    ) -> StopAcceptingFirst {
        StopAcceptingFirst {
            inner,
            loops: self.clone(),
        }
    }

    /// Wait (at most `limit`) until no service accepts any more.
    pub(crate) async fn stopped_accepting(&self, limit: Duration) {
        let mut running = self.0.running.subscribe();
        let _ = tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await;
    }

    /// Tell every accept loop to end, and wait (bounded) until they have.
    async fn end(&self) {
        self.0.stop.send_replace(true);
        let mut running = self.0.running.subscribe();
        let ended = tokio::time::timeout(ACCEPT_LOOPS_GRACE, running.wait_for(|n| *n == 0));
        if ended.await.is_err() {
            log::warn!(
                "fast stop: accept loops still running after {ACCEPT_LOOPS_GRACE:?}; stopping anyway"
            );
        }
    }
}

/// A Pingora service whose accept loops also end when a fast stop starts.
pub(crate) struct StopFirst<S> {
    inner: S,
    loops: AcceptLoops,
}

#[async_trait]
impl<S: Service + 'static> Service for StopFirst<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let (tx, rx) = watch::channel(false);
        let mut fast = self.loops.0.stop.subscribe();
        // `wait_for` looks at the current value first: a stop that came before this service
        // started still reaches it. A dropped sender (the server is gone) counts as a stop.
        let relay = tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => {}
                _ = fast.wait_for(|stopping| *stopping) => {}
            }
            let _ = tx.send(true);
        });
        self.loops.0.running.send_modify(|n| *n += 1);
        // Counted down and the relay stopped even if the service panics (Pingora expects its
        // listeners to bind), so a later fast stop does not wait for it.
        let _running = Running {
            loops: &self.loops,
            relay,
        };
        self.inner.start_service(fds, rx, listeners_per_fd).await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// One running service: counted while it runs, its relay stopped when it ends.
struct Running<'a> {
    loops: &'a AcceptLoops,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.loops.0.running.send_modify(|n| *n -= 1);
        self.relay.abort();
    }
}

/// The server's shutdown signal, which ends the accept loops before a fast stop goes on.
pub(crate) struct StopAcceptingFirst {
    inner: Box<dyn ShutdownSignalWatch + Send + Sync>,
    loops: AcceptLoops,
}

#[async_trait]
impl ShutdownSignalWatch for StopAcceptingFirst {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        if matches!(signal, ShutdownSignal::FastShutdown) {
            self.loops.end().await;
        }
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::apps::ServerApp;
    use pingora::protocols::Stream;
    use pingora::services::listening::Service as Listening;

    /// Closes every connection it is given.
    struct Closes;

    #[async_trait]
    impl ServerApp for Closes {
        async fn process_new(self: &Arc<Self>, _: Stream, _: &ShutdownWatch) -> Option<Stream> {
            None
        }
    }

    /// A signal that asks for a fast stop at once.
    struct Fast;

    #[async_trait]
    impl ShutdownSignalWatch for Fast {
        async fn recv(&self) -> ShutdownSignal {
            ShutdownSignal::FastShutdown
        }
    }

    /// A Pingora listening service under `loops` on an ephemeral port, started with `pingora`
    /// as Pingora's own stop watch; returns once it accepts.
    async fn listening(
        loops: &AcceptLoops,
        pingora: ShutdownWatch,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port");
        let mut service = Listening::new("test".to_string(), Closes);
        service.add_tcp(&addr.to_string());
        let mut service = loops.wrap(service);
        let task = tokio::spawn(async move { service.start_service(None, pingora, 1).await });
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (addr, task);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the service did not listen on {addr}");
    }

    #[tokio::test]
    async fn a_fast_stop_ends_the_accept_loops_before_pingora_hears_of_it() {
        let loops = AcceptLoops::new();
        // Pingora's own watch never turns true on a fast stop.
        let (_pingora, watch) = watch::channel(false);
        let (addr, task) = listening(&loops, watch).await;

        let signal = loops.signal(Box::new(Fast));
        assert!(matches!(signal.recv().await, ShutdownSignal::FastShutdown));
        assert_eq!(
            *loops.0.running.borrow(),
            0,
            "the accept loops returned first"
        );
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(ended, Ok(Ok(()))), "the service returned");
    }

    #[tokio::test]
    async fn pingoras_graceful_stop_still_reaches_the_accept_loops() {
        let loops = AcceptLoops::new();
        let (pingora, watch) = watch::channel(false);
        let (addr, task) = listening(&loops, watch).await;

        pingora.send_replace(true);
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(ended, Ok(Ok(()))), "the service returned");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
