//! A deadline for receiving a request's headers, which Pingora does not have: it times each
//! read on its own, so a client that sends a byte every few seconds (slowloris) holds a
//! connection for as long as it likes.
//!
//! `HeaderDeadlineApp` wraps the proxy's server app. The first time a connection comes in it is
//! wrapped in a `Guarded` stream whose reads fail once the deadline passes while the request
//! headers are still incomplete: the deadline starts at accept for a new connection, and at
//! the first byte of the next request on a kept-alive one. The proxy's first hook
//! (`early_request_filter`) calls `headers_received` on the stream, which lifts it for the rest
//! of that request (bodies and WebSocket tunnels have timeouts of their own), and its last
//! (`logging`) calls `request_done`, after which the next byte starts the next deadline. A client that
//! sent part of a request gets a 408 JSON error, one that sent nothing is closed.
//! HTTP/2 connections (ALPN) are passed through unwrapped: h2 frames its own requests.
//!
//! Being the proxy's app, it also decides when Pingora's cleanup runs on a graceful stop
//! (halfway through the grace period; see `cleanup`).

use crate::error::{self, GatewayError};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The headers of the current request are incomplete and the deadline runs.
const WAITING: u8 = 0;
/// Between requests on a kept-alive connection: the deadline starts at the next byte.
const IDLE: u8 = 1;
/// The headers are in; nothing to enforce until the next request.
const RECEIVED: u8 = 2;

/// The proxy's server app with a header deadline on every HTTP/1 connection.
pub struct HeaderDeadlineApp<A> {
    inner: Arc<A>,
    limit: Duration,
    /// On a graceful stop, how long after the listeners close connections still waiting for a
    /// request are closed (half the grace period).
    idle_close: Duration,
}

impl<A> HeaderDeadlineApp<A> {
    pub fn new(inner: A, limit: Duration, grace_period: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            limit,
            idle_close: grace_period / 2,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = match stream.as_ref().as_any().downcast_ref::<Guarded>() {
            // Handed back for another request (not done by Pingora's HTTP/1 loop today).
            Some(g) => {
                g.phase.store(IDLE, Ordering::Relaxed);
                stream
            }
            None if self.limit.is_zero() => stream,
            None if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) => stream,
            None => Box::new(Guarded::new(stream, self.limit)),
        };
        self.inner.process_new(stream, shutdown).await
    }

    /// Passed on halfway through the grace period, not at once. Pingora's proxy cleanup drops
    /// every connection still waiting for a request: idle kept-alive ones, but also ones
    /// accepted a moment before the listeners closed whose first request is on its way, and
    /// that client got a reset. Until the cleanup runs such a request is answered, with
    /// `Connection: close`; after it, the rest of the grace period lets requests in flight
    /// finish before the runtimes stop (docs/DECISIONS.md). A fast stop drops the task.
    async fn cleanup(&self) {
        let (inner, after) = (self.inner.clone(), self.idle_close);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            inner.cleanup().await;
        });
    }
}

/// Called by the proxy once a request's headers are parsed.
pub fn headers_received(stream: Option<&Stream>) {
    set_phase(stream, RECEIVED);
}

/// Called by the proxy when a request is over (Pingora serves the next request of a
/// kept-alive connection within the same `process_new`).
pub fn request_done(stream: Option<&Stream>) {
    set_phase(stream, IDLE);
}

fn set_phase(stream: Option<&Stream>, phase: u8) {
    if let Some(g) = stream.and_then(|s| s.as_ref().as_any().downcast_ref::<Guarded>()) {
        g.phase.store(phase, Ordering::Relaxed);
    }
}

/// A downstream connection with a header deadline.
#[derive(Debug)]
pub struct Guarded {
    inner: Stream,
    phase: AtomicU8,
    limit: Duration,
    /// When the current request's headers are due.
    deadline: Instant,
    /// Fires at `deadline` while `phase` is `WAITING`. Armed only once a read of an
    /// incomplete request has to wait: a request that arrives whole never touches the timer.
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// Bytes of the current request seen while waiting (0: a silent client, closed without
    /// a response).
    started: bool,
    /// The 408 response still to write before failing the read.
    reply: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    fn new(inner: Stream, limit: Duration) -> Self {
        Self {
            inner,
            phase: AtomicU8::new(WAITING),
            limit,
            deadline: Instant::now() + limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: true,
            started: false,
            reply: None,
        }
    }

    /// Write what is left of the 408 without blocking; whatever the socket does not take is
    /// dropped (the client is too slow to be owed more).
    fn send_reply(&mut self, cx: &mut Context<'_>) {
        while let Some((bytes, at)) = &mut self.reply {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(n)) if n > 0 && *at + n < bytes.len() => *at += n,
                _ => self.reply = None,
            }
        }
    }
}

fn timeout_reply() -> Vec<u8> {
    let err = GatewayError::HeaderTimeout;
    let body = error::body(&err, &crate::ctx::new_request_id());
    let mut r = format!(
        "HTTP/1.1 {} Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        err.status(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let phase = this.phase.load(Ordering::Relaxed);
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got = buf.filled().len() > before;
        match phase {
            RECEIVED => res,
            IDLE => {
                if got {
                    // The next request begins: its headers have `limit` from now.
                    this.phase.store(WAITING, Ordering::Relaxed);
                    this.started = true;
                    this.deadline = Instant::now() + this.limit;
                    this.armed = false;
                }
                res
            }
            _ => {
                this.started |= got;
                if res.is_ready() {
                    return res;
                }
                if !this.armed {
                    this.armed = true;
                    let at = this.deadline;
                    this.timer.as_mut().reset(at);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        if this.started {
                            this.reply = Some((timeout_reply(), 0));
                            this.send_reply(cx);
                        }
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request headers not received in time",
                        )))
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
