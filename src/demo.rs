//! A small upstream for `edgegate demo` and the integration tests: HTTP/1.1 answered with a
//! JSON echo of what arrived, and WebSocket upgrades echoed message by message. Every request
//! it receives is recorded, so tests can assert on what the upstream saw.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One request as the upstream saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent upstream.
    pub target: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub websocket: bool,
    /// Which upstream connection carried it (numbered from 0 in accept order).
    pub conn: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

/// A running echo upstream. Dropping it does not stop it: it lives as long as its runtime.
#[derive(Clone)]
pub struct EchoUpstream {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicU64>,
}

impl EchoUpstream {
    /// Bind `addr` (port 0 for an ephemeral one) and serve on the current Tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<EchoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let up = EchoUpstream {
            name: name.to_string(),
            addr: listener.local_addr()?,
            seen: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(AtomicU64::new(0)),
        };
        let server = up.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = server.clone();
                let conn = s.conns.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Err(e) = s.serve(stream, conn).await {
                        log::debug!("echo upstream {}: {e}", s.name);
                    }
                });
            }
        });
        Ok(up)
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn record(&self, seen: Seen) {
        if let Ok(mut v) = self.seen.lock() {
            v.push(seen);
        }
    }

    /// An upstream that records and answers on streams its caller accepts (e.g. over TLS).
    pub fn unbound(name: &str, addr: SocketAddr) -> EchoUpstream {
        EchoUpstream {
            name: name.to_string(),
            addr,
            seen: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Serve one connection.
    pub async fn serve<S>(&self, mut stream: S, conn: u64) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = Vec::with_capacity(4096);
        loop {
            // Read one request head.
            let (seen, head_len, body_len) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let headers: Vec<(String, String)> = req
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        let body_len = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        let websocket = headers
                            .iter()
                            .any(|(k, v)| k == "upgrade" && v.eq_ignore_ascii_case("websocket"));
                        let seen = Seen {
                            method: req.method.unwrap_or("").to_string(),
                            target: req.path.unwrap_or("").to_string(),
                            headers,
                            websocket,
                            conn,
                        };
                        break (seen, n, body_len);
                    }
                    Ok(httparse::Status::Partial) => {
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk).await?;
                        if n == 0 {
                            return Ok(());
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.len() > 64 * 1024 {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                    }
                }
            };
            while buf.len() < head_len + body_len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..head_len + body_len);
            self.record(seen.clone());

            if seen.websocket {
                let key = seen.header("sec-websocket-key").unwrap_or("").to_string();
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                stream.write_all(resp.as_bytes()).await?;
                return self.echo_websocket(stream).await;
            }

            let body = serde_json::json!({
                "upstream": self.name,
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers,
            })
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: {}\r\n\r\n{}",
                body.len(),
                self.name,
                body
            );
            stream.write_all(resp.as_bytes()).await?;
        }
    }

    /// Answer each text message with `{name}:{message}`, binary with itself.
    async fn echo_websocket<S>(&self, stream: S) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
        while let Some(msg) = ws.next().await {
            let reply = match msg {
                Ok(Message::Text(t)) => Message::text(format!("{}:{}", self.name, t.as_str())),
                Ok(Message::Binary(b)) => Message::Binary(b),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}
