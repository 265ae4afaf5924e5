//! WebSocket upgrades, tunnelled by edgegate itself (`Tunnels::open`, from `request_filter`)
//! once the decision has bound the request's target. Pingora's own upgraded-body loop has no shutdown hook, so it
//! cannot say goodbye: here the tunnel watches the process's shutdown and, before the process
//! exits, sends the client a close frame with code 1012 (service restart) at a frame boundary,
//! so browsers reconnect at once instead of reporting 1006. When an invalidation message names
//! its session or its workspace record (and every `auth.recheck_interval_ms`), the tunnel runs
//! the request's decision again (`decide`, the pipeline every request goes through) and closes
//! with 1008 if the credential no longer passes (a revoked session ends its open terminals).
//! The tunnel also knows exactly which side ended a session (for the close-cause metric) and
//! counts frames as workspace activity.
//!
//! The upstream connection is made by Pingora's transport connector from the request's own peer
//! (`upstream::peer`: timeouts, TLS with SNI and verification), and the upstream request is the
//! browser's, rewritten by `headers::rewrite_upstream_request` exactly as for plain requests.

use crate::access::RequestLog;
use crate::activity::Activity;
use crate::auth::{key_hash, Spend};
use crate::config::{Config, UpstreamConfig};
use crate::ctx::RequestCtx;
use crate::decide::{Decider, Facts};
use crate::error::GatewayError;
use crate::headers::Forwarding;
use bytes::{Bytes, BytesMut};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

/// The close frame sent to clients when the process stops: FIN + close opcode, 2-byte payload,
/// status 1012 (service restart).
const CLOSE_1012: [u8; 4] = [0x88, 0x02, 0x03, 0xF4];
/// The close frame sent when the tunnel's credential is revoked: 1008 (policy violation).
const CLOSE_1008: [u8; 4] = [0x88, 0x02, 0x03, 0xF0];
/// The close frame sent when the tunnel's workspace stopped or its record went: 1001 (going
/// away), as a server going down says it.
const CLOSE_1001: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
/// The ping sent to a client that has been silent (server to client: unmasked, no payload).
const PING: [u8; 2] = [0x89, 0x00];
/// Longest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Room for one read from either side: small while a tunnel is quiet, larger during a burst,
/// and none once it has been idle for `RELEASE_AFTER` (the next read then takes 64 bytes and
/// grows again from there). Most open WebSockets are idle at any moment (a terminal, an
/// editor's channel): their buffers were most of an idle tunnel's memory.
const READ_SMALL: usize = 2 * 1024;
const READ_LARGE: usize = 16 * 1024;
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Where a byte stream of WebSocket frames stands: a close frame may only go between frames.
#[derive(Debug, Default)]
pub struct FrameTracker {
    header: Vec<u8>,
    remaining: u64,
    /// The frame being passed is a data frame (text, binary, continuation), not control.
    in_data: bool,
    /// A close frame went by: this side started (or answered) the closing handshake.
    pub saw_close: bool,
    /// Bytes of a data frame went by since `took_data` was last asked: pings and pongs keep
    /// a tunnel alive, only data makes it not idle.
    saw_data: bool,
}

impl FrameTracker {
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.remaining == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                self.saw_data |= self.in_data;
                data = &data[n..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if let Some((len, header_len)) = frame_header(&self.header) {
                debug_assert_eq!(header_len, self.header.len());
                let opcode = self.header[0] & 0x0F;
                self.saw_close |= opcode == 0x8;
                self.in_data = opcode < 0x8;
                self.saw_data |= self.in_data;
                self.header.clear();
                self.remaining = len;
            }
        }
    }

    /// Whether data-frame bytes went by since the last call.
    pub fn took_data(&mut self) -> bool {
        std::mem::take(&mut self.saw_data)
    }
}

/// `(payload length, header length)` once `h` holds a whole frame header.
fn frame_header(h: &[u8]) -> Option<(u64, usize)> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    let (len, ext) = match h[1] & 0x7F {
        126 => (
            h.get(2..4)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as u64)?,
            2,
        ),
        127 => {
            let b: [u8; 8] = h.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b), 8)
        }
        n => (n as u64, 0),
    };
    let header_len = 2 + ext + mask;
    (h.len() == header_len).then_some((len, header_len))
}

/// How tunnels connect and how long they may idle, and the process-wide signals they watch.
pub struct Tunnels {
    /// Makes upstream connections for tunnels (TLS and timeouts per peer).
    connector: TransportConnector,
    upstream: UpstreamConfig,
    idle: Duration,
    /// Flips to `true` when the process starts to stop (tunnels then send 1012).
    stopping: Arc<watch::Sender<bool>>,
    /// Hashes of invalidated keys, for open tunnels to re-check their credential.
    invalidations: broadcast::Sender<u64>,
}

/// What a tunnel asks of the rest of the gateway for as long as it lives.
#[derive(Clone)]
pub struct TunnelEnv {
    /// The current decision state (a reload replaces it; an open tunnel re-checks with the
    /// new one).
    pub decider: Arc<arc_swap::ArcSwap<Decider>>,
    pub log: Arc<RequestLog>,
    pub activity: Option<Arc<Activity>>,
}

/// One open tunnel's settings and signals, in its own task.
struct Tunnel {
    env: TunnelEnv,
    idle: Duration,
    /// Ping a client silent this long (`None`: never), and close it if it stays silent for
    /// `pong_timeout` after the ping.
    ping_every: Option<Duration>,
    pong_timeout: Duration,
    write_timeout: Duration,
    stopping: watch::Receiver<bool>,
    invalidations: broadcast::Receiver<u64>,
}

impl Tunnels {
    pub fn new(config: &Config) -> Self {
        Self {
            connector: TransportConnector::new(Some(ConnectorOptions {
                ca_file: config.upstream.ca_file.clone(),
                ..ConnectorOptions::new(1)
            })),
            upstream: config.upstream.clone(),
            idle: config.ws_idle_timeout(),
            stopping: Arc::new(watch::channel(false).0),
            invalidations: broadcast::channel(1024).0,
        }
    }

    /// Set when the process starts to stop.
    pub fn stopping(&self) -> &Arc<watch::Sender<bool>> {
        &self.stopping
    }

    /// Where invalidated keys are announced to open tunnels.
    pub fn invalidations(&self) -> &broadcast::Sender<u64> {
        &self.invalidations
    }

    /// How long an upgraded connection may stay silent.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Tunnel an authorised upgrade request. `Err` only before the client got its 101 (the
    /// caller answers with the JSON error); afterwards the tunnel runs until one side ends.
    pub async fn open(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        fwd: &Forwarding<'_>,
        env: &TunnelEnv,
    ) -> Result<(), GatewayError> {
        ctx.upstream_started = Some(std::time::Instant::now());
        let mut upstream = loop {
            let Some(target) = ctx.target().cloned() else {
                return Err(GatewayError::Internal);
            };
            let peer = crate::upstream::peer(&target, &self.upstream, true);
            match self.connector.new_stream(&*peer).await {
                Ok(stream) => break stream,
                Err(e) => {
                    // The connector's errors are the upstream's, as Pingora's proxy marks them
                    // for plain requests: 502 or 504 like those, never a 500.
                    let e = e.into_up();
                    log::warn!("websocket upstream {}: {e}", target.addr);
                    env.log.upstream_failure(ctx, &e);
                    if ctx.may_have_moved(env.decider.load().records(), &e) {
                        // Decide again from a fresh record (auth included), then retry once.
                        ctx.refresh = crate::ctx::Refresh::Done;
                        let req = session.req_header();
                        let jti = ctx.principal().and_then(|p| p.jti.clone());
                        let facts = Facts {
                            is_upgrade: true,
                            proto: ctx.proto,
                            spend: jti.as_deref().map_or(Spend::Yes, Spend::Already),
                            established: None,
                            client: None,
                        };
                        let decider = env.decider.load_full();
                        let decided = decider.decide(req, &facts).await;
                        env.log.checked(decided.check);
                        if ctx.decided(decided)?.is_some() {
                            return Err(GatewayError::Internal);
                        }
                        continue;
                    }
                    return Err(
                        GatewayError::from_proxy_error(&e).unwrap_or(GatewayError::UpstreamRefused)
                    );
                }
            }
        };

        // The browser's request stays with the tunnel (credential re-checks, the access log).
        let browser_req = owned_copy(session.req_header())?;
        let mut req = session.req_header().clone();
        crate::headers::rewrite_upstream_request(&mut req, &ctx.edits(), fwd)
            .map_err(|_| GatewayError::BadPath)?;
        // The rewrite dropped the client's hop-by-hop headers: only the upgrade itself goes on,
        // and no body framing (an upgrade request has no body to frame).
        req.remove_header("content-length");
        req.remove_header("transfer-encoding");
        req.insert_header("connection", "Upgrade")
            .and_then(|_| req.insert_header("upgrade", "websocket"))
            .map_err(|_| GatewayError::Internal)?;
        let wire = http_req_header_to_wire(&req).ok_or(GatewayError::BadPath)?;
        let connect_timeout = Duration::from_millis(self.upstream.connect_timeout_ms);
        let read_timeout = Duration::from_millis(self.upstream.read_timeout_ms);
        let sent = tokio::time::timeout(connect_timeout, upstream.write_all(&wire)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(GatewayError::UpstreamRefused);
        }
        let _ = upstream.flush().await;

        // The upstream's answer to the upgrade.
        let mut buf = Vec::with_capacity(4096);
        let (mut resp, head_len) = loop {
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(read_timeout, upstream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(GatewayError::UpstreamRefused),
                Ok(Ok(n)) => n,
                Err(_) => return Err(GatewayError::UpstreamTimeout),
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut resp = ResponseHeader::build(
                        parsed.code.unwrap_or(502),
                        Some(parsed.headers.len() + 1),
                    )
                    .map_err(|_| GatewayError::UpstreamRefused)?;
                    for h in parsed.headers.iter() {
                        resp.append_header(h.name.to_string(), h.value)
                            .map_err(|_| GatewayError::UpstreamRefused)?;
                    }
                    break (resp, len);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
                _ => return Err(GatewayError::UpstreamRefused),
            }
        };
        let rest = Bytes::copy_from_slice(&buf[head_len..]);
        ctx.upstream_answered(resp.status.as_u16());
        // The same hygiene as every response (response_filter never sees this one): the
        // upstream's hop-by-hop headers stop here, and what a workspace may set in the browser
        // is confined (a 101 or a declined upgrade could set the app's cookies otherwise).
        crate::headers::set_response_request_id(&mut resp, &ctx.request_id)
            .map_err(|_| GatewayError::UpstreamRefused)?;
        if let Some(t) = ctx.target() {
            let decider = env.decider.load();
            let protected = &decider.auth().credential_cookies;
            crate::headers::confine_response(&mut resp, &t.content, protected)
                .map_err(|_| GatewayError::UpstreamRefused)?;
        }
        if resp.status.as_u16() != 101 {
            // The upstream declined the upgrade: pass its answer on, then close.
            session.set_keepalive(None);
            // A chunked body would need re-framing: it is dropped, the status says enough.
            let chunked = resp.remove_header("transfer-encoding").is_some();
            resp.insert_header("connection", "close")
                .map_err(|_| GatewayError::Internal)?;
            let body = if chunked {
                Bytes::new()
            } else {
                read_rest(
                    &mut upstream,
                    rest,
                    &resp,
                    read_timeout.min(Duration::from_secs(2)),
                )
                .await
            };
            resp.insert_header("content-length", body.len().to_string())
                .map_err(|_| GatewayError::Internal)?;
            let ok = session
                .write_response_header(Box::new(resp), body.is_empty())
                .await
                .is_ok();
            if ok && !body.is_empty() {
                let _ = session.write_response_body(Some(body), true).await;
            }
            return Ok(());
        }

        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_err()
        {
            ctx.ws_close_cause = Some("client");
            return Ok(());
        }
        env.log.ws_opened(ctx);
        let Some((client, early)) = take_client(session) else {
            ctx.ws_close_cause = Some("error");
            return Ok(());
        };
        let Some(client) = crate::connection::for_tunnel(client) else {
            ctx.ws_close_cause = Some("error");
            return Ok(());
        };
        // The tunnel, its request and its state go to a task of their own: Pingora's task for
        // this connection (and everything it holds for HTTP) ends here.
        let ctx = std::mem::replace(ctx, RequestCtx::detached_shell());
        let tunnel = Tunnel {
            env: env.clone(),
            idle: self.idle,
            ping_every: (self.upstream.ws_ping_interval_ms > 0)
                .then(|| Duration::from_millis(self.upstream.ws_ping_interval_ms)),
            pong_timeout: Duration::from_millis(self.upstream.ws_pong_timeout_ms),
            write_timeout: Duration::from_millis(self.upstream.write_timeout_ms),
            stopping: self.stopping.subscribe(),
            invalidations: self.invalidations.subscribe(),
        };
        tokio::spawn(tunnel.run(browser_req, ctx, client, early, upstream, rest));
        Ok(())
    }
}

impl Tunnel {
    /// A detached tunnel, from the 101 to the access log line.
    async fn run(
        mut self,
        req: RequestHeader,
        mut ctx: RequestCtx,
        mut client: Stream,
        early: Bytes,
        mut upstream: Stream,
        rest: Bytes,
    ) {
        // Still a client connection (`edgegate_connections_open`), now that the connection's
        // own task, which counted it, has ended.
        let _open =
            crate::connection::Counted::new(&Some(self.env.log.metrics().connections_open.clone()));
        let write_timeout = self.write_timeout;
        let mut to_client = FrameTracker::default();
        let mut from_client = FrameTracker::default();
        let cause = async {
            // What the upstream sent behind its 101, and what the client sent behind its
            // request, before anything else.
            if !rest.is_empty() {
                to_client.feed(&rest);
                ctx.bytes_out += rest.len() as u64;
                if !write_to(&mut client, &rest, write_timeout).await {
                    return "client";
                }
            }
            drop(rest);
            if !early.is_empty() {
                from_client.feed(&early);
                ctx.bytes_in += early.len() as u64;
                if !write_to(&mut upstream, &early, write_timeout).await {
                    return "upstream";
                }
            }
            // A slice of the body reader's 64 KiB buffer: not kept for the tunnel's life.
            drop(early);
            self.pump(
                &req,
                &mut ctx,
                [&mut client, &mut upstream],
                [&mut to_client, &mut from_client],
            )
            .await
        }
        .await;
        ctx.ws_close_cause = Some(cause);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        })
        .await;
        self.env.log.finish(&req, 101, &ctx);
    }

    /// Copy both ways until one side ends, the connection idles out, its credential is revoked,
    /// or the process stops.
    async fn pump(
        &mut self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        [client, upstream]: [&mut Stream; 2],
        [to_client, from_client]: [&mut FrameTracker; 2],
    ) -> &'static str {
        let idle = self.idle;
        let write_timeout = self.write_timeout;
        // The keys whose invalidation makes this tunnel re-check its credential.
        let watched: Vec<u64> = ctx
            .record_key()
            .map(key_hash)
            .into_iter()
            .chain(ctx.principal().and_then(|p| p.session_key_hash))
            .collect();
        // One buffer per direction, reused for every read: small while the tunnel idles,
        // larger while a side sends in bulk.
        let mut down = BytesMut::with_capacity(READ_SMALL);
        let mut up = BytesMut::with_capacity(READ_SMALL);
        // The last read either way, and whether the buffers were released since (a read
        // under way holds 64 bytes again, so their capacity does not say).
        let mut read_at = Instant::now();
        let mut released = false;
        // The last data frame either way (idleness), and the last byte from the client with
        // the ping it was sent since (liveness).
        let mut last = Instant::now();
        let mut heard = last;
        let mut pinged: Option<Instant> = None;
        let mut ping_pending = false;
        let (ping_every, pong_timeout) = (self.ping_every, self.pong_timeout);
        // The credential is re-checked every `recheck_interval` (a session deleted without an
        // invalidation message, a record changed behind the cache), and ends by itself: a
        // session at its `expires_at`, a token's tunnel after `token_tunnel_max`.
        let decider = self.env.decider.load_full();
        let auth = decider.auth();
        let (recheck_every, token_max) = (auth.recheck_interval, auth.token_tunnel_max);
        let mut next_recheck = last + recheck_every;
        let ends: Option<(Instant, &'static str)> = ctx.principal().and_then(|p| {
            let session = p.expires_at.map(|exp| {
                let left = exp.saturating_sub(crate::auth::token::now());
                (last + Duration::from_secs(left), "revoked")
            });
            let life = p
                .tunnel_has_max_life()
                .then_some((last + token_max, "max_life"));
            match (session, life) {
                (Some(s), Some(l)) => Some(if s.0 <= l.0 { s } else { l }),
                (s, l) => s.or(l),
            }
        });
        // Which side started a closing handshake.
        let mut first_close: Option<&'static str> = if from_client.saw_close {
            Some("client")
        } else if to_client.saw_close {
            Some("upstream")
        } else {
            None
        };
        // Set once the tunnel must end: the close frame, the cause, and how long to wait for a
        // frame boundary to send it at.
        let mut closing: Option<(&'static [u8; 4], &'static str, Instant)> = None;
        loop {
            if closing.is_none() && *self.stopping.borrow() {
                closing = Some((
                    &CLOSE_1012,
                    "shutdown",
                    Instant::now() + Duration::from_secs(1),
                ));
            }
            if let Some((frame, cause, deadline)) = closing {
                if to_client.at_boundary() || Instant::now() >= deadline {
                    if to_client.at_boundary() {
                        write_to(client, frame, write_timeout).await;
                    }
                    return cause;
                }
            }
            let idle_at = last + idle;
            let mut wake = idle_at;
            if closing.is_some() {
                // Waiting for a frame boundary to close at: look again every 50 ms.
                wake = wake.min(Instant::now() + Duration::from_millis(50));
            }
            if !released {
                wake = wake.min(read_at + RELEASE_AFTER);
            }
            if closing.is_none() {
                match (ping_every, pinged) {
                    (_, Some(at)) => wake = wake.min(at + pong_timeout),
                    (Some(every), None) if !ping_pending => wake = wake.min(heard + every),
                    _ => {}
                }
            }
            // A public port's tunnel has no principal, and is re-checked all the same: its
            // port may have been made private without an invalidation message.
            let rechecked =
                ctx.principal().is_some() || ctx.plan.as_ref().is_some_and(|p| p.access.is_some());
            if closing.is_none() && rechecked {
                wake = wake.min(next_recheck);
                if let Some((at, _)) = ends {
                    wake = wake.min(at);
                }
            }
            let recheck = tokio::select! {
                read = client.read_buf(&mut down) => match read {
                    Ok(0) | Err(_) => return first_close.unwrap_or("client"),
                    Ok(n) => {
                        from_client.feed(&down[..n]);
                        if from_client.saw_close {
                            first_close.get_or_insert("client");
                        }
                        ctx.bytes_in += n as u64;
                        // Anything from the client (a pong included) says it is there.
                        heard = Instant::now();
                        (read_at, released) = (heard, false);
                        pinged = None;
                        if from_client.took_data() {
                            if let Some(a) = &self.env.activity {
                                ctx.touch(a);
                            }
                            last = heard;
                        }
                        // Bounded: an upstream that stops reading must not freeze the tunnel.
                        if !write_to(upstream, &down, write_timeout).await {
                            return "upstream";
                        }
                        resize_after(&mut down, n);
                        false
                    }
                },
                read = upstream.read_buf(&mut up) => match read {
                    Ok(0) | Err(_) => return first_close.unwrap_or("upstream"),
                    Ok(n) => {
                        to_client.feed(&up[..n]);
                        if to_client.saw_close {
                            first_close.get_or_insert("upstream");
                        }
                        ctx.bytes_out += n as u64;
                        (read_at, released) = (Instant::now(), false);
                        if to_client.took_data() {
                            if let Some(a) = &self.env.activity {
                                ctx.touch(a);
                            }
                            last = read_at;
                        }
                        // Bounded: a client that stops reading must not freeze the tunnel.
                        if !write_to(client, &up, write_timeout).await {
                            return "client";
                        }
                        if ping_pending && to_client.at_boundary() {
                            // The ping waited for the upstream's frame to end.
                            ping_pending = false;
                            pinged = Some(Instant::now());
                            if !write_to(client, &PING, write_timeout).await {
                                return "client";
                            }
                        }
                        resize_after(&mut up, n);
                        false
                    }
                },
                key = self.invalidations.recv(), if closing.is_none() => match key {
                    Ok(h) => watched.contains(&h),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                },
                _ = self.stopping.changed(), if !*self.stopping.borrow() => false,
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= idle_at {
                        return "idle_timeout";
                    }
                    if !released && now >= read_at + RELEASE_AFTER {
                        // Both sides quiet: no read is under way (select! dropped them).
                        (down, up, released) = (BytesMut::new(), BytesMut::new(), true);
                    }
                    if closing.is_none() {
                        if let Some(at) = pinged {
                            if now >= at + pong_timeout {
                                // Silent since the ping: gone, or stuck. A close frame if it
                                // fits at once, then the connection ends.
                                if to_client.at_boundary() {
                                    write_to(client, &CLOSE_1001, Duration::from_millis(100)).await;
                                }
                                return "ping_timeout";
                            }
                        } else if ping_every.is_some_and(|every| now >= heard + every) && !ping_pending {
                            if to_client.at_boundary() {
                                pinged = Some(now);
                                if !write_to(client, &PING, write_timeout).await {
                                    return "client";
                                }
                            } else {
                                ping_pending = true;
                            }
                            continue;
                        }
                    }
                    match ends {
                        Some((at, cause)) if now >= at && closing.is_none() => {
                            log::info!(
                                "request {}: closing its WebSocket, its credential's time is up ({cause})",
                                ctx.request_id
                            );
                            closing = Some((&CLOSE_1008, cause, now + Duration::from_secs(1)));
                            false
                        }
                        _ if now >= next_recheck && closing.is_none() => {
                            next_recheck = now + recheck_every;
                            true
                        }
                        _ => false,
                    }
                }
            };
            if recheck {
                // Boxed: a decision's future is kilobytes, and the tunnel's task would be
                // sized for it for its whole life although it runs once a minute.
                let ends = match Box::pin(self.recheck(req, ctx)).await {
                    Recheck::Holds => None,
                    Recheck::Revoked => Some((&CLOSE_1008, "revoked")),
                    Recheck::Drained(cause) => {
                        self.env
                            .log
                            .metrics()
                            .drained
                            .with_label_values(&["websocket", cause.as_str()])
                            .inc();
                        Some((&CLOSE_1001, cause.ws_close_cause()))
                    }
                };
                if let Some((frame, cause)) = ends {
                    closing = Some((frame, cause, Instant::now() + Duration::from_secs(1)));
                }
            }
        }
    }

    /// Whether the tunnel may go on: the request, decided again as every request is
    /// (`decide`), is refused now — its record is gone or stopped (drained, 1001), or owned by
    /// someone else, or (for a session or an ide cookie) the app session behind it ended or
    /// names someone else (revoked, 1008). The token that opened a tunnel is not verified
    /// again (see `auth::Auth::authorize`). A store outage ends nothing.
    async fn recheck(&self, req: &RequestHeader, ctx: &RequestCtx) -> Recheck {
        let facts = Facts {
            is_upgrade: true,
            proto: ctx.proto,
            spend: Spend::DryRun,
            established: ctx.principal(),
            client: None,
        };
        let decider = self.env.decider.load_full();
        let outcome = decider.decide(req, &facts).await.outcome;
        let verdict = match &outcome {
            Ok(crate::decide::Action::Proxy(_)) | Err(GatewayError::StoreUnavailable) => {
                Recheck::Holds
            }
            Ok(crate::decide::Action::Wake(_))
            | Err(
                GatewayError::NotRunning | GatewayError::Starting | GatewayError::Transitioning,
            ) => Recheck::Drained(crate::drain::Cause::Stopped),
            Err(GatewayError::UnknownWorkspace) => Recheck::Drained(crate::drain::Cause::Gone),
            Ok(crate::decide::Action::Answer(_)) | Err(_) => Recheck::Revoked,
        };
        if verdict != Recheck::Holds {
            let why = match &outcome {
                Err(e) => e.code(),
                _ => "workspace_stopped",
            };
            log::info!("request {}: closing its WebSocket ({why})", ctx.request_id);
        }
        verdict
    }
}

/// What a re-check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recheck {
    Holds,
    Revoked,
    Drained(crate::drain::Cause),
}

async fn read_rest(
    upstream: &mut pingora::protocols::Stream,
    mut have: Bytes,
    resp: &ResponseHeader,
    timeout: Duration,
) -> Bytes {
    let want = resp
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(MAX_HEAD)
        .min(MAX_HEAD);
    let mut body = have.to_vec();
    let _ = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 4096];
        while body.len() < want {
            match upstream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    body.truncate(want);
    have = Bytes::from(body);
    have
}

/// Request headers the tunnel's copy leaves out: the handshake's own and the browser's
/// content negotiation, which no decision, re-check or log line reads (a browser's upgrade
/// carries a dozen headers, each costing its copy and its slot for the tunnel's life). A
/// header a decision starts to read must not be listed here.
const NOT_KEPT: [http::HeaderName; 8] = [
    http::header::SEC_WEBSOCKET_KEY,
    http::header::SEC_WEBSOCKET_VERSION,
    http::header::SEC_WEBSOCKET_EXTENSIONS,
    http::header::ACCEPT_ENCODING,
    http::header::ACCEPT_LANGUAGE,
    http::header::CACHE_CONTROL,
    http::header::PRAGMA,
    http::header::USER_AGENT,
];

/// A copy of `req` that owns its bytes, for the tunnel's re-checks and log line. Pingora's
/// parse shares the connection's head buffer (4 KiB) with every header value and the target,
/// so a clone held by the tunnel would keep that buffer (and the case map) for its life.
fn owned_copy(req: &RequestHeader) -> Result<RequestHeader, GatewayError> {
    let kept = || req.headers.iter().filter(|(n, _)| !NOT_KEPT.contains(n));
    let mut copy =
        RequestHeader::build_no_case(req.method.clone(), req.raw_path(), Some(kept().count()))
            .map_err(|_| GatewayError::BadPath)?;
    copy.set_version(req.version);
    for (name, value) in kept() {
        let value =
            http::HeaderValue::from_bytes(value.as_bytes()).map_err(|_| GatewayError::Internal)?;
        copy.append_header(name.clone(), value)
            .map_err(|_| GatewayError::Internal)?;
    }
    Ok(copy)
}

/// Take the client's connection out of Pingora's session (which keeps an empty one that
/// closes at once), with the bytes its body reader already holds: frames the client sent
/// right behind its request. `None` (session untouched) for anything but HTTP/1.
fn take_client(session: &mut Session) -> Option<(Stream, Bytes)> {
    let shell = ServerSession::new_http1(Box::new(tokio::io::duplex(1).0));
    match std::mem::replace(&mut *session.downstream_session, shell) {
        ServerSession::H1(mut h1) => {
            // Polled once: bytes the body reader already holds are returned at once. When it
            // holds none, this one poll reads the socket (into a transient 64 KiB buffer of
            // Pingora's): whatever is waiting is returned here, and a pending read is dropped
            // with nothing taken. Either way no byte is lost or read twice.
            let early = {
                let mut read = std::pin::pin!(h1.read_body_bytes());
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match read.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(Ok(Some(b))) => b,
                    _ => Bytes::new(),
                }
            };
            Some((h1.into_inner(), early))
        }
        other => {
            *session.downstream_session = other;
            None
        }
    }
}

/// Write and flush within `timeout`; `false` if that failed.
async fn write_to(stream: &mut Stream, data: &[u8], timeout: Duration) -> bool {
    let wrote = tokio::time::timeout(timeout, async {
        stream.write_all(data).await?;
        stream.flush().await
    })
    .await;
    matches!(wrote, Ok(Ok(())))
}

/// Empty a read buffer for the next read: more room when the last read filled it (small
/// after the first read into a released one, large after a small one), back to small when it
/// did not need the large one.
fn resize_after(buf: &mut BytesMut, n: usize) {
    let cap = buf.capacity();
    buf.clear();
    if n == cap && cap < READ_SMALL {
        *buf = BytesMut::with_capacity(READ_SMALL);
    } else if n == cap && cap < READ_LARGE {
        buf.reserve(READ_LARGE);
    } else if n <= READ_SMALL && cap > READ_SMALL {
        *buf = BytesMut::with_capacity(READ_SMALL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A released buffer takes 64 bytes on its next read (BytesMut's own growth), then grows
    /// to small and large as reads fill it, and goes back to small after a quiet read.
    #[test]
    fn read_buffers_grow_from_released_and_shrink_back() {
        let mut buf = BytesMut::new();
        assert_eq!(buf.capacity(), 0);
        bytes::BufMut::chunk_mut(&mut buf);
        let first = buf.capacity();
        assert!(first > 0 && first < READ_SMALL, "{first}");
        resize_after(&mut buf, 10);
        assert_eq!(buf.capacity(), first, "a quiet read keeps what it has");
        resize_after(&mut buf, first);
        assert_eq!(buf.capacity(), READ_SMALL);
        resize_after(&mut buf, READ_SMALL);
        assert!(buf.capacity() >= READ_LARGE);
        resize_after(&mut buf, 100);
        assert_eq!(buf.capacity(), READ_SMALL);
    }

    #[test]
    fn only_data_frames_count_as_data() {
        let mut t = FrameTracker::default();
        // A ping, then a masked pong with a 2-byte payload: control only.
        t.feed(&[0x89, 0x00, 0x8A, 0x82, 1, 2, 3, 4, 9, 9]);
        assert!(!t.took_data());
        // A text frame split in two: its payload counts, once asked.
        t.feed(&[0x81, 0x02, b'h']);
        assert!(t.took_data());
        t.feed(b"i");
        assert!(t.took_data(), "the rest of a data frame is data");
        assert!(!t.took_data(), "asked again: nothing new");
        t.feed(&[0x8A, 0x00]);
        assert!(!t.took_data() && t.at_boundary());
    }

    #[test]
    fn frame_boundaries_are_tracked_across_chunks() {
        let mut t = FrameTracker::default();
        assert!(t.at_boundary());
        // "hello" text frame, split mid-header and mid-payload.
        let frame = [0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
        t.feed(&frame[..1]);
        assert!(!t.at_boundary());
        t.feed(&frame[1..4]);
        assert!(!t.at_boundary());
        t.feed(&frame[4..]);
        assert!(t.at_boundary());
        // A 300-byte binary frame (16-bit length) followed by a masked 0-byte frame.
        let mut big = vec![0x82, 126, 0x01, 0x2C];
        big.extend(std::iter::repeat_n(0u8, 300));
        big.extend([0x89, 0x80, 1, 2, 3, 4]);
        for chunk in big.chunks(7) {
            t.feed(chunk);
        }
        assert!(t.at_boundary());
        assert!(!t.saw_close);
        // A masked close frame from a client.
        t.feed(&[0x88, 0x82, 9, 9, 9, 9, 1, 2]);
        assert!(t.saw_close && t.at_boundary());
        t.feed(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(!t.at_boundary(), "64-bit length: 65536 bytes pending");
    }
}
