//! Test harness with real parts: a `redis-server` of this test process on an ephemeral port,
//! in-process recording upstreams (`edgegate::demo::EchoUpstream`), the real gateway on an
//! ephemeral port, and small raw HTTP and WebSocket clients. Every wait is bounded.
#![allow(dead_code)]

pub mod tls;

use edgegate::config::Config;
use edgegate::demo::EchoUpstream;
use edgegate::BackgroundGateway;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ID_A: &str = "01HZX3M9Q4T8V6W2Y5B7C9D1EF";
pub const ID_B: &str = "01J0AAAAAAAAAAAAAAAAAAAAAB";
pub const DOMAIN: &str = "example.test";

/// The content site of the shared-ports tests (issue #17).
pub const CONTENT: &str = "example-content.test";

/// The content route and `[ports]` table of the shared-ports tests (plain HTTP: no `__Host-`
/// prefix without Secure).
pub const PORTS: &str = r#"
[[route]]
name = "port"
host = "ws-{id}--{port}.{content_domain}"
key = "workspace:{id}"
status_field = "status"
allowed_ports = ["1024-65535"]
auth = ["port_cookie", "port_token", "share_link"]

[ports]
cookie = "edgegate_port"
"#;

/// `text` (from `config_text`) with `content_domain = CONTENT` beside its `base_domain`.
pub fn with_content_domain(text: &str) -> String {
    text.replacen(
        &format!("base_domain = \"{DOMAIN}\"\n"),
        &format!("base_domain = \"{DOMAIN}\"\ncontent_domain = \"{CONTENT}\"\n"),
        1,
    )
}
/// The owner of the records `Redis::workspace` writes, and two app sessions.
pub const OWNER: &str = "user-1";
pub const OWNER_SESSION: &str = "sess-owner";
pub const OTHER_SESSION: &str = "sess-other";
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// A file holding the HS256 test secret: one fixed name, written by a rename, so every test
/// process shares it and none leaves a copy behind.
pub fn secret_file() -> String {
    let path = std::env::temp_dir().join("edgegate-test-secret");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(SECRET) {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, SECRET).expect("write secret");
        std::fs::rename(&tmp, &path).expect("rename secret");
    }
    path.display().to_string()
}

/// A directory of this test process under the temp dir, removed with what is in it when
/// dropped, so a test run leaves nothing behind. Declare it before whatever writes into it
/// (a gateway, a redis-server), so that is stopped first.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Token keys equal to the gateway's, for minting test tokens.
pub fn keys() -> edgegate::auth::token::TokenKeys {
    let cfg = edgegate::config::TokenConfig {
        secret_file: Some(secret_file().into()),
        ..Default::default()
    };
    edgegate::auth::token::TokenKeys::from_config(&cfg, 43200).expect("test keys")
}

pub fn mint(typ: edgegate::auth::token::TokenType, id: &str, user: &str) -> String {
    let id = edgegate::route::WorkspaceId::parse(id).expect("id");
    keys().mint(typ, &id, user).expect("mint").0
}

/// An ephemeral port nobody listens on, never the same twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh ephemeral port in 100 tries");
}

/// A `redis-server` owned by this test; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// More `redis-server` arguments (cluster mode, `--replicaof`, a Sentinel's config file).
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A `redis-server` with more arguments; for a Sentinel, its config file comes first.
    pub fn start_with(args: &[&str]) -> Redis {
        let mut r = Redis::not_started();
        r.args = args.iter().map(|a| a.to_string()).collect();
        r.spawn();
        r
    }

    /// A port reserved for a Redis that is not running yet.
    pub fn not_started() -> Redis {
        Redis {
            port: free_port(),
            child: None,
            args: Vec::new(),
        }
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(&self.args)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (README: the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not come up on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal to the running server (`-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("redis connection")
    }

    pub fn hset(&self, key: &str, fields: &[(&str, &str)]) {
        let mut c = self.conn();
        let _: () = redis::cmd("DEL").arg(key).query(&mut c).expect("DEL");
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (f, v) in fields {
            cmd.arg(*f).arg(*v);
        }
        let _: () = cmd.query(&mut c).expect("HSET");
    }

    pub fn workspace(&self, id: &str, backend: &str) {
        self.hset(
            &format!("workspace:{id}"),
            &[
                ("backend", backend),
                ("owner", OWNER),
                ("status", "running"),
            ],
        );
    }

    pub fn dev(&self, id: &str, target: &str) {
        self.hset(
            &format!("dev:{id}"),
            &[("target", target), ("owner", OWNER)],
        );
    }

    /// The owner's and another user's app sessions.
    pub fn sessions(&self) {
        self.hset(&format!("session:{OWNER_SESSION}"), &[("user", OWNER)]);
        self.hset(&format!("session:{OTHER_SESSION}"), &[("user", "user-2")]);
    }

    pub fn publish(&self, channel: &str, msg: &str) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(msg)
            .query(&mut self.conn())
            .expect("PUBLISH");
    }

    /// How many times Redis has run `cmd` (from `INFO commandstats`).
    pub fn calls(&self, cmd: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .expect("INFO");
        let prefix = format!("cmdstat_{}:calls=", cmd.to_ascii_lowercase());
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Wait until the gateway's invalidation subscriber is listening.
    pub fn wait_for_subscriber(&self, channel: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let v: Vec<redis::Value> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query(&mut self.conn())
                .expect("PUBSUB");
            if let Some(redis::Value::Int(n)) = v.get(1) {
                if *n > 0 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no subscriber on {channel}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway's config for tests: the SPEC's routes, Redis on `redis_port`, the app API
/// on `app`, plus any extra TOML (later keys must not repeat a table already written here).
pub fn config_text(gw_port: u16, redis_port: u16, app: SocketAddr, extra: &str) -> String {
    let redis = format!("url = \"redis://127.0.0.1:{redis_port}/0\"");
    config_text_redis(gw_port, &redis, app, extra)
}

/// What the tests' upstreams need: they listen on loopback, which `upstream.blocked_networks`
/// refuses by default. Goes into the `[upstream]` table of `extra` when it has one.
const LOOPBACK_UPSTREAMS: &str = "allowed_networks = [\"127.0.0.0/8\"]\n";

/// `config_text` with `redis` as the `[redis]` table's way to Redis (`url`, or `mode` and `nodes`).
pub fn config_text_redis(gw_port: u16, redis: &str, app: SocketAddr, extra: &str) -> String {
    let extra = if extra.contains("[upstream]\n") {
        extra.replacen(
            "[upstream]\n",
            &format!("[upstream]\n{LOOPBACK_UPSTREAMS}"),
            1,
        )
    } else {
        format!("[upstream]\n{LOOPBACK_UPSTREAMS}{extra}")
    };
    format!(
        r#"
base_domain = "{DOMAIN}"
[listen]
http = ["127.0.0.1:{gw_port}"]
[admin]
listen = "127.0.0.1:{admin_port}"
[server]
threads = 2
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
drain_delay_secs = 0
[redis]
{redis}
key_prefix = ""
invalidate_channel = "edgegate:invalidate"
connect_timeout_ms = 300
command_timeout_ms = 500

[auth]
cookie_secure = false
[auth.tokens]
secret_file = "{secret}"

[[route]]
name = "workspace"
host = "ws-{{id}}.{{base_domain}}"
key = "workspace:{{id}}"
status_field = "status"
auth = ["session", "terminal_token"]
forward_token = true

[[route]]
name = "workspace_port"
host = "ws-{{id}}--{{port}}.{{base_domain}}"
key = "workspace:{{id}}"
status_field = "status"
# Any port: the tests' upstreams listen on ephemeral ones.
allowed_ports = ["1024-65535"]

[[route]]
name = "ide"
path = "/__ide/{{id}}/"
key = "dev:{{id}}"
upstream_field = "target"
auth = ["ide_cookie", "dev_ide_token"]

[default]
hosts = ["{{base_domain}}", "app.{{base_domain}}"]
upstream = "{app}"
{extra}
"#,
        secret = secret_file(),
        admin_port = free_port()
    )
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub port: u16,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    bg: Option<BackgroundGateway>,
}

impl Gateway {
    pub fn start(text: &str) -> Gateway {
        let config = Config::parse(text).expect("test config is valid");
        let addr: SocketAddr = config.listen.http[0].parse().expect("listen addr");
        let admin: SocketAddr = config.admin.listen.parse().expect("admin addr");
        let bg = BackgroundGateway::start(&config).expect("gateway starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "gateway did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        while std::net::TcpStream::connect(admin).is_err() {
            assert!(Instant::now() < deadline, "admin did not listen on {admin}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Gateway {
            addr,
            port: addr.port(),
            admin,
            bg: Some(bg),
        }
    }

    /// Stop as on SIGTERM, on a thread of its own (it waits out the grace period).
    pub fn stop_gracefully(&mut self) -> std::thread::JoinHandle<()> {
        let bg = self.bg.take();
        std::thread::spawn(move || {
            if let Some(bg) = bg {
                bg.stop_gracefully();
            }
        })
    }

    /// `ws-{id}.example.test:{port}`: the Host a browser sends.
    pub fn ws_host(&self, id: &str) -> String {
        format!("ws-{}.{DOMAIN}:{}", id.to_ascii_lowercase(), self.port)
    }

    /// GET a path on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        raw(self.admin, req.as_bytes()).await
    }

    pub fn app_host(&self) -> String {
        format!("app.{DOMAIN}:{}", self.port)
    }

    /// GET with the owner's app session cookie (routing tests; auth tests use `request`).
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let cookie = format!("session={OWNER_SESSION}");
        let mut all = vec![("Cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        self.request("GET", host, path, &all).await
    }

    /// Any request, with exactly the headers given.
    pub async fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        raw(self.addr, req.as_bytes()).await
    }
}

/// A fixture: Redis, two workspace upstreams, the app upstream and the gateway.
pub struct World {
    pub redis: Redis,
    pub a: EchoUpstream,
    pub b: EchoUpstream,
    pub app: EchoUpstream,
    pub gw: Gateway,
}

impl World {
    pub async fn start(extra: &str) -> World {
        let redis = Redis::start();
        Self::start_with(redis, extra).await
    }

    pub async fn start_with(redis: Redis, extra: &str) -> World {
        let a = upstream("upstream-a").await;
        let b = upstream("upstream-b").await;
        let app = upstream("app").await;
        let gw = Gateway::start(&config_text(free_port(), redis.port, app.addr, extra));
        if redis.child.is_some() {
            redis.sessions();
        }
        World {
            redis,
            a,
            b,
            app,
            gw,
        }
    }
}

pub async fn upstream(name: &str) -> EchoUpstream {
    EchoUpstream::start(name, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("upstream starts")
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The edgegate error code of a refusal.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["request_id"].is_string(), "no request_id: {v}");
        assert!(v["message"].is_string(), "no message: {v}");
        v["error"].as_str().unwrap_or("").to_string()
    }
}

/// Send raw bytes, read a whole `Connection: close` response (bounded by 15 s).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect gateway");
        s.write_all(bytes).await.expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("response within 15 s");
    parse_response(&buf)
}

/// Read one response with a Content-Length body (none: an empty one) from a kept-alive
/// connection, bounded by 10 s. Returns what was read and where the response ends in it (what
/// follows, if anything, the peer sent beyond the response).
pub async fn read_response_bytes(s: &mut TcpStream) -> (Vec<u8>, usize) {
    let fut = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a whole response");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return (buf, end + 4 + len);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("a response within 10 s")
}

/// Everything the gateway still sends, up to its close (bounded at 10 s, well below the
/// upstream read timeout that would end a request anyway).
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the gateway ended the request (not the upstream's read timeout)")
        .ok();
    rest
}

/// `read_response_bytes`, parsed.
pub async fn read_response(s: &mut TcpStream) -> Resp {
    parse_response(&read_response_bytes(s).await.0)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "incomplete response ({other:?}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    Resp {
        status: resp.code.unwrap_or(0),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&buf[n..]).into_owned(),
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Open a WebSocket through the gateway with the given Host and extra headers.
pub async fn ws_connect(
    gw: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}{path}").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    let tcp = TcpStream::connect(gw).await.expect("connect gateway");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("handshake within 10 s")?;
    Ok(ws)
}

/// Open a WebSocket on `path` with the workspace owner's session cookie, from the host's own
/// origin (a browser's page on that workspace); panics if the upgrade is refused.
pub async fn ws_connect_as_owner(gw: SocketAddr, host: &str, path: &str) -> Ws {
    let origin = format!("http://{host}");
    let cookie = format!("session={OWNER_SESSION}");
    ws_connect(gw, host, path, &[("origin", &origin), ("cookie", &cookie)])
        .await
        .expect("upgrade")
}

/// Send a text message and return the reply text.
pub async fn ws_roundtrip(ws: &mut Ws, msg: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(msg)).await.expect("ws send");
    let fut = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.as_str().to_string(),
                Some(Ok(_)) => continue,
                other => panic!("websocket ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("reply within 10 s")
}

/// Poll `f` every 25 ms until it is true or `limit` passes; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Stay on an open WebSocket for `time` as a browser does while nothing happens: reading,
/// so that pings are answered (tungstenite queues the pong and sends it on the next read),
/// and sending nothing. Returns the pings seen; panics on anything else.
pub async fn ws_idle(ws: &mut Ws, time: Duration) -> usize {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let until = tokio::time::Instant::now() + time;
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return pings,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            other => panic!("while idle: {other:?}"),
        }
    }
}

/// Wait (at most `limit`) for the peer's close frame and return its code.
pub async fn expect_close(ws: &mut Ws, limit: Duration) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let frame = tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time");
    u16::from(frame.expect("a close code").code)
}

/// Run `openssl` (keys and certificates made in the tests).
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A WebSocket upgrade request's head, as a browser or agent sends it, with extra headers.
pub fn upgrade_request(host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Send an upgrade request and return the response head (a 101 leaves the tunnel open; it is
/// dropped here) with whatever body a refusal carried. Bounded by 15 s.
pub async fn upgrade(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let req = upgrade_request(host, path, headers);
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect gateway");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let r = parse_response(&buf);
                let want = r
                    .header("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if r.status == 101 || buf.len() >= head + 4 + want {
                    break;
                }
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("response within 15 s");
    parse_response(&buf)
}

/// `/agent/ws?token=…` with a fresh terminal token of `user` for `id` (each is spent once).
pub fn agent_path(id: &str, user: &str) -> String {
    format!(
        "/agent/ws?token={}",
        mint(edgegate::auth::token::TokenType::Terminal, id, user)
    )
}

/// An ide cookie value for `id` and `user`, bound to the app session `sid` (what the
/// bootstrap sets).
pub fn ide_cookie(id: &str, user: &str, sid: &str) -> String {
    let id = edgegate::route::WorkspaceId::parse(id).expect("id");
    let binding = edgegate::auth::token::session_binding(sid);
    keys()
        .mint_bound(
            edgegate::auth::token::TokenType::IdeSession,
            &id,
            user,
            Some(binding),
        )
        .expect("mint")
        .0
}
