//! A client connection's life around Pingora's request handling: the wait between requests,
//! the deadline for a request's headers, and the request-line check. Wraps the proxy's server
//! app (`ConnectionApp`); the proxy's first and last hooks tell it where a request stands.
//!
//! **Between requests.** Pingora's HTTP/1 loop waits for a kept-alive connection's next request
//! inside its request future, which is sized for the whole proxying path (tens of KiB, held as
//! long as the connection idles). `ConnectionApp` runs that loop itself: it hands Pingora one
//! request at a time (`process_new_http`, whose future lives only while the request does) and
//! waits for the next one's first byte on a future of its own of a few hundred bytes, for at
//! most `limits.keepalive_timeout_secs`, and on a graceful stop until the cleanup (below).
//! HTTP/2 connections (ALPN) go to Pingora's own handling.
//!
//! **The header deadline**, which Pingora does not have: it times each read on its own, so a
//! client that sends a byte every few seconds (slowloris) holds a connection for as long as it
//! likes. Each HTTP/1 connection is wrapped in a `Guarded` stream whose reads fail once the deadline passes while the request
//! headers are still incomplete: the deadline starts at accept for a new connection, and at
//! the first byte of the next request on a kept-alive one. The proxy's first hook
//! (`early_request_filter`) calls `headers_received` on the stream, which lifts it for the rest
//! of that request (bodies and WebSocket tunnels have timeouts of their own), and its last
//! (`logging`) calls `request_done`, after which the next byte starts the next deadline. A client that
//! sent part of a request gets a 408 JSON error, one that sent nothing is closed.
//! HTTP/2 connections (ALPN) are passed through unwrapped: h2 frames its own requests.
//!
//! The same stream checks each request line as it arrives, before Pingora parses it: a line
//! with a control character or a space inside its target is answered 400 (`bad_path`) and the
//! connection closed; a head larger than `limits.max_uri_bytes` + `limits.max_header_bytes`
//! is answered 431 before Pingora has buffered it (it would take up to a MiB). An HTTP/2
//! connection's preface must arrive within the same deadline. Pingora itself would percent-encode such bytes and proxy the request,
//! and upstreams that see the original line split or truncate it differently (SPEC §5).
//!
//! Being the proxy's app, it also decides when idle connections are dropped on a graceful stop
//! (halfway through the grace period; see `cleanup`).

use crate::error::{self, GatewayError};
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The headers of the current request are incomplete and the deadline runs.
const WAITING: u8 = 0;
/// Between requests on a kept-alive connection: the deadline starts at the next byte.
const IDLE: u8 = 1;
/// The headers are in; nothing to enforce until the next request.
const RECEIVED: u8 = 2;

/// The proxy's server app, running each HTTP/1 connection's request loop with a header
/// deadline, the request-line check and a small wait between requests.
pub struct ConnectionApp<A> {
    inner: Arc<A>,
    /// Zero: no deadline (the request line is still checked).
    limit: Duration,
    /// How long a kept-alive connection waits for its next request.
    keepalive: Duration,
    /// The largest request head read (request line and headers); larger is 431.
    max_head: usize,
    /// On a graceful stop, how long after the listeners close connections still waiting for a
    /// request are closed (half the grace period).
    idle_close: Duration,
    /// Flips to `true` when idle connections are to be dropped (the delayed cleanup).
    closing_idle: tokio::sync::watch::Sender<bool>,
    /// Client connections open now (`edgegate_connections_open`).
    open: Option<prometheus::IntGauge>,
}

/// One open connection in the gauge, for as long as it lives (a WebSocket's tunnel holds one
/// of its own once it leaves the connection's task).
pub(crate) struct Counted(Option<prometheus::IntGauge>);

impl Counted {
    pub(crate) fn new(gauge: &Option<prometheus::IntGauge>) -> Counted {
        if let Some(g) = gauge {
            g.inc();
        }
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

impl<A> ConnectionApp<A> {
    pub fn new(
        inner: A,
        limit: Duration,
        keepalive: Duration,
        max_head: usize,
        grace_period: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            limit,
            keepalive,
            max_head,
            idle_close: grace_period / 2,
            closing_idle: tokio::sync::watch::channel(false).0,
            open: None,
        }
    }

    /// Count open connections in `gauge`.
    pub fn counting(mut self, gauge: prometheus::IntGauge) -> Self {
        self.open = Some(gauge);
        self
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionApp<A> {
    /// Wait for the first bytes of a kept-alive connection's next request (kept in the
    /// stream); `false` when the connection is to close instead: the client closed it or sent
    /// a line that was refused, the keep-alive timeout passed, or idle connections are being
    /// dropped on a graceful stop.
    ///
    /// `timer` is the connection's one keep-alive timer, armed at its first wait and moved
    /// only when it fires before the current wait's end: a request costs no timer
    /// registration. (A fresh `sleep` per wait was earlier than the timer driver's next wake,
    /// so tokio woke its own driver for it: a `write` and an `epoll_wait` more per request,
    /// `benches/load/syscalls.py`.)
    async fn next_request(
        &self,
        stream: &mut Guarded,
        timer: &mut Option<Pin<Box<Sleep>>>,
    ) -> bool {
        let mut closing = self.closing_idle.subscribe();
        if *closing.borrow() {
            return false;
        }
        let due = Instant::now() + self.keepalive;
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        let read = stream.read_ahead();
        tokio::pin!(read);
        loop {
            tokio::select! {
                read = &mut read => return read,
                () = timer.as_mut() => {
                    if Instant::now() >= due {
                        return false;
                    }
                    // Armed for an earlier wait: this one ends later.
                    timer.as_mut().reset(due);
                }
                _ = closing.changed() => return false,
            }
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _counted = Counted::new(&self.open);
        let options = self.inner.server_options();
        let pingoras_own = matches!(
            stream.selected_alpn_proto(),
            Some(ALPN::H2) | Some(ALPN::Custom(_))
        ) || options.is_some_and(|o| o.h2c || o.force_custom);
        if pingoras_own {
            // HTTP/2 frames its own requests (its idle connections end by Pingora's
            // `h2_idle_timeout`); its preface must still come in time.
            let stream: Stream = if self.limit.is_zero() {
                stream
            } else {
                Box::new(Guarded::h2(stream, self.limit))
            };
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let mut stream = Box::new(Guarded::new(stream, self.limit, self.max_head));
        // `None` for the connection's first request; then what the last one left for the next.
        let mut reused: Option<Option<pingora::apps::HttpPersistentSettings>> = None;
        let mut keepalive = None;
        loop {
            if reused.is_some() && !self.next_request(&mut stream, &mut keepalive).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            match reused.take().flatten() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    // As Pingora's own loop starts a connection.
                    session.set_keepalive((!*shutdown.borrow()).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        options.and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            // One request; its (large) future is freed when it ends.
            let (next, persistent) = self
                .inner
                .process_new_http(session, shutdown)
                .await?
                .consume();
            if !next.as_any().is::<Guarded>() {
                return Some(next);
            }
            stream = next.into_any().downcast::<Guarded>().ok()?;
            stream.phase.store(IDLE, Ordering::Relaxed);
            reused = Some(persistent);
        }
    }

    /// Run halfway through the grace period, not at once. Dropping every connection still
    /// waiting for a request at once would also drop ones accepted a moment before the
    /// listeners closed whose first request is on its way, and that client got a reset. Until
    /// then such a request is answered, with `Connection: close`; after it, the rest of the
    /// grace period lets requests in flight finish before the runtimes stop
    /// (docs/DECISIONS.md). A fast stop drops the task.
    async fn cleanup(&self) {
        let (inner, after, closing) = (
            self.inner.clone(),
            self.idle_close,
            self.closing_idle.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = closing.send(true);
            inner.http_cleanup().await;
        });
    }
}

/// The client's stream for a WebSocket tunnel, which reads and writes it through buffers of
/// its own: the `Guarded` wrapper comes off (its header deadline and line checks are over)
/// and, on plain text, Pingora's L4 buffers are dropped (pingora-core patch 0002), so an idle
/// tunnel holds neither. A stream that still holds bytes in either is kept as it is.
/// `None` only if a checked downcast failed, which cannot happen.
pub fn for_tunnel(stream: Stream) -> Option<Stream> {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    let stream = match stream.as_any().downcast_ref::<Guarded>() {
        Some(g) if g.ahead.is_empty() && g.reply.is_none() => {
            stream.into_any().downcast::<Guarded>().ok()?.inner
        }
        _ => return Some(stream),
    };
    if !stream.as_any().is::<L4Stream>() {
        return Some(stream);
    }
    let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    l4.release_buffers();
    Some(l4)
}

/// Called by the proxy once a request's headers are parsed.
pub fn headers_received(stream: Option<&Stream>) {
    set_phase(stream, RECEIVED);
}

/// Called by the proxy when a request is over (the next byte on the connection starts the next
/// request's deadline).
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
    /// The 408 or 400 response still to write before failing the read.
    reply: Option<(Vec<u8>, usize)>,
    /// Bytes of the next request read while waiting for it, served before the inner stream's.
    ahead: Vec<u8>,
    /// Where the current request line stands.
    line: RequestLine,
    /// What the current request sent before its head was whole: Pingora buffers up to a MiB
    /// of head before anything can check its limits.
    head: HeadSize,
    /// An HTTP/2 connection: only the client's preface is timed (then h2 frames its own
    /// requests), no request line is checked.
    h2: bool,
}

/// The bytes read of a request while its head is incomplete (the phase `WAITING`): its head,
/// and at most the one read that completed it. Counting stops when the proxy has the head.
#[derive(Debug, Clone, Copy)]
struct HeadSize {
    bytes: usize,
    max: usize,
}

impl HeadSize {
    fn new(max: usize) -> Self {
        Self { bytes: 0, max }
    }

    /// Count `added`; `false` once more than `max` bytes came in before the head was whole.
    fn feed(&mut self, added: &[u8]) -> bool {
        self.bytes = self.bytes.saturating_add(added.len());
        self.bytes <= self.max
    }
}

/// The scan of one request line, byte by byte, across reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestLine {
    /// Before its first byte (empty lines before a request are skipped, RFC 9112 §2.2).
    Before,
    /// Inside it: the spaces seen so far, and whether the last byte was a CR.
    In { spaces: u8, cr: bool },
    /// Past its end, until the next request begins.
    Done,
    /// It broke the rules: answered 400, the connection is closing.
    Bad,
}

impl RequestLine {
    /// Feed bytes; `Bad` once a byte breaks the line's grammar.
    fn feed(mut self, bytes: &[u8]) -> RequestLine {
        for &b in bytes {
            self = match self {
                RequestLine::Before if b == b'\r' || b == b'\n' => RequestLine::Before,
                RequestLine::Before => RequestLine::In {
                    spaces: 0,
                    cr: false,
                }
                .feed(&[b]),
                RequestLine::In { .. } if b == b'\n' => RequestLine::Done,
                // A CR anywhere but right before the LF, a control byte, DEL, or a third space
                // (the target's own): the line means different things to different parsers.
                RequestLine::In { cr: true, .. } => RequestLine::Bad,
                RequestLine::In { spaces, .. } if b == b'\r' => {
                    RequestLine::In { spaces, cr: true }
                }
                RequestLine::In { .. } if b < 0x20 || b == 0x7F => RequestLine::Bad,
                RequestLine::In { spaces, .. } if b == b' ' => {
                    if spaces >= 2 {
                        RequestLine::Bad
                    } else {
                        RequestLine::In {
                            spaces: spaces + 1,
                            cr: false,
                        }
                    }
                }
                RequestLine::In { spaces, .. } => RequestLine::In { spaces, cr: false },
                done @ (RequestLine::Done | RequestLine::Bad) => return done,
            };
        }
        self
    }
}

impl Guarded {
    fn new(inner: Stream, limit: Duration, max_head: usize) -> Self {
        Self {
            inner,
            phase: AtomicU8::new(WAITING),
            limit,
            deadline: Instant::now() + limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: !limit.is_zero(),
            started: false,
            reply: None,
            ahead: Vec::new(),
            line: RequestLine::Before,
            head: HeadSize::new(max_head),
            h2: false,
        }
    }

    /// An HTTP/2 connection: the client's preface (24 bytes) must arrive within `limit`.
    fn h2(inner: Stream, limit: Duration) -> Self {
        Self {
            line: RequestLine::Done,
            h2: true,
            ..Self::new(inner, limit, usize::MAX)
        }
    }

    /// Read the next request's first bytes and keep them for the reads that follow; `false`
    /// when the connection ended instead (closed, or a refused request line).
    async fn read_ahead(&mut self) -> bool {
        let mut first = [0u8; 256];
        match self.read(&mut first).await {
            Ok(n) if n > 0 => {
                self.ahead.extend_from_slice(&first[..n]);
                true
            }
            _ => false,
        }
    }

    /// Check what a read of request-head bytes added: the request line's grammar and the
    /// head's size. On a bad line (400) or an oversized head (431), queue the answer and say
    /// the read must fail. On HTTP/2, the preface lifts the deadline for good.
    fn check_line(&mut self, cx: &mut Context<'_>, added: &[u8]) -> bool {
        if self.h2 {
            self.head.bytes += added.len();
            if self.head.bytes >= 24 {
                self.phase.store(RECEIVED, Ordering::Relaxed);
            }
            return false;
        }
        if !self.head.feed(added) {
            self.line = RequestLine::Bad;
            let err = GatewayError::HeadersTooLarge;
            self.reply = Some((error_reply(&err, "Request Header Fields Too Large"), 0));
            self.send_reply(cx);
            return true;
        }
        if !matches!(self.line, RequestLine::Before | RequestLine::In { .. }) {
            return false;
        }
        self.line = self.line.feed(added);
        if self.line != RequestLine::Bad {
            return false;
        }
        self.reply = Some((error_reply(&GatewayError::BadPath, "Bad Request"), 0));
        self.send_reply(cx);
        true
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

/// A whole response for a refusal made before Pingora parsed the request, connection closed.
fn error_reply(err: &GatewayError, reason: &str) -> Vec<u8> {
    let body = error::body(err, &crate::ctx::new_request_id());
    let mut r = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        err.status(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

fn bad_line() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "request line with a control character or a space in its target",
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.ahead.is_empty() {
            // Already read (and checked) while waiting for this request.
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.drain(..n);
            if this.ahead.is_empty() {
                this.ahead = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        let phase = this.phase.load(Ordering::Relaxed);
        let before = buf.filled().len();
        if this.line == RequestLine::Bad {
            return Poll::Ready(Err(bad_line()));
        }
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
                    this.line = RequestLine::Before;
                    this.head = HeadSize::new(this.head.max);
                    if this.check_line(cx, &buf.filled()[before..]) {
                        return Poll::Ready(Err(bad_line()));
                    }
                }
                res
            }
            _ => {
                this.started |= got;
                if got && this.check_line(cx, &buf.filled()[before..]) {
                    return Poll::Ready(Err(bad_line()));
                }
                if res.is_ready() || this.limit.is_zero() {
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
                        // An HTTP/2 client gets no HTTP/1 answer, only the close.
                        if this.started && !this.h2 {
                            let err = GatewayError::HeaderTimeout;
                            this.reply = Some((error_reply(&err, "Request Timeout"), 0));
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

#[cfg(test)]
mod tests {
    use super::RequestLine;

    #[test]
    fn request_lines_with_controls_or_a_space_in_the_target_are_bad() {
        let scan = |bytes: &[u8]| RequestLine::Before.feed(bytes);
        for good in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\n",
            b"GET /caf\xe9 HTTP/1.1\n",
            b"GET http://a.test/x HTTP/1.1\r\n",
        ] {
            assert_eq!(
                scan(good),
                RequestLine::Done,
                "{:?}",
                good.escape_ascii().to_string()
            );
        }
        for bad in [
            &b"GET /a\x01b HTTP/1.1\r\n"[..],
            b"GET /a\tb HTTP/1.1\r\n",
            b"GET /a\x7f HTTP/1.1\r\n",
            b"GET /a b HTTP/1.1\r\n",
            b"GET /a\rb HTTP/1.1\r\n",
            b"GET /a\x00 HTTP/1.1\r\n",
        ] {
            assert_eq!(
                scan(bad),
                RequestLine::Bad,
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
        // Split across reads, byte by byte.
        let mut line = RequestLine::Before;
        for b in b"GET /x\x0by HTTP/1.1\r\n" {
            line = line.feed(&[*b]);
        }
        assert_eq!(line, RequestLine::Bad);
        // Unfinished: still in the line.
        assert!(matches!(scan(b"GET /x"), RequestLine::In { spaces: 1, .. }));
    }
}
