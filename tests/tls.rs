//! TLS termination with certificates made in the test (`openssl`): SNI picks the wildcard or the
//! other certificate, HTTP/2 is offered over ALPN, and WebSockets work on HTTP/1.1 over TLS.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca: PathBuf,
    /// (cert, key) of `*.example.test` + `app.example.test`, and of `other.test`.
    wild: (PathBuf, PathBuf),
    other: (PathBuf, PathBuf),
    _dir: Scratch,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn pki() -> Pki {
    let dir = Scratch::new("eg-tls");
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&ca_key),
        "-out",
        s(&ca),
        "-days",
        "2",
        "-subj",
        "/CN=edgegate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    let leaf = |name: &str, sans: &str| -> (PathBuf, PathBuf) {
        let (cert, key, csr, ext) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("ext");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            &format!("/CN={name}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&ca),
            "-CAkey",
            s(&ca_key),
            "-CAcreateserial",
            "-out",
            s(&cert),
            "-days",
            "2",
            "-extfile",
            s(&ext),
        ]);
        (cert, key)
    };
    Pki {
        wild: leaf("wild", "DNS:*.example.test,DNS:example.test"),
        other: leaf("other", "DNS:other.test"),
        ca,
        _dir: dir,
    }
}

fn client(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca).expect("ca");
    let der = pem_to_der(&pem);
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The DER of the first PEM block.
fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("pem base64")
}

async fn connect(
    gw: std::net::SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    sni: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(gw).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
    tls.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_picks_certificates_by_sni_and_speaks_h1_h2_and_websocket() {
    let pki = pki();
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let tls_port = free_port();
    let extra = format!(
        "[[listen.tls]]\naddr = \"127.0.0.1:{tls_port}\"\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"*.example.test\", \"example.test\"]\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"other.test\"]\n",
        s(&pki.wild.0), s(&pki.wild.1), s(&pki.other.0), s(&pki.other.1)
    );
    // The TLS listener must sit in [listen]: put it right after that table.
    let text = config_text(free_port(), redis.port, app.addr, "").replacen(
        "[admin]\n",
        &format!("{extra}[admin]\n"),
        1,
    );
    let _gw = Gateway::start(&text);
    redis.workspace(ID_A, &a.addr.to_string());
    let gw: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let wild_der = pem_to_der(&std::fs::read(&pki.wild.0).expect("pem"));
    let other_der = pem_to_der(&std::fs::read(&pki.other.0).expect("pem"));

    // SNI → certificate (the handshake itself verifies the name against the chain).
    let h1 = client(&pki, &[b"http/1.1"]);
    let host = format!("ws-{}.{DOMAIN}", ID_A.to_ascii_lowercase());
    let mut stream = connect(gw, &h1, &host).await;
    let peer = stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
    assert_eq!(peer, wild_der, "the wildcard serves a workspace host");
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: {host}:{tls_port}\r\nCookie: session={OWNER_SESSION}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &a.seen()[0];
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("host"),
        Some(format!("{host}:{tls_port}").as_str())
    );

    let stream = connect(gw, &h1, "other.test").await;
    assert_eq!(
        stream.get_ref().1.peer_certificates().expect("certs")[0].as_ref(),
        &other_der[..]
    );

    // HTTP/2 by ALPN, to the app.
    let both = client(&pki, &[b"h2", b"http/1.1"]);
    let stream = connect(gw, &both, "app.example.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2c, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("https://app.{DOMAIN}:{tls_port}/api/me"))
        .body(())
        .expect("request");
    let (resp, _) = h2c.send_request(req, true).expect("send");
    let resp = resp.await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    let seen = &app.seen()[0];
    assert_eq!(seen.target, "/api/me");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("app.{DOMAIN}:{tls_port}").as_str())
    );

    // A WebSocket over TLS on an HTTP/1.1 connection (browsers offer only http/1.1 for them).
    let token = mint(edgegate::auth::token::TokenType::Terminal, ID_A, OWNER);
    let stream = connect(gw, &h1, &host).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let wsreq = format!("wss://{host}:{tls_port}/agent/ws?token={token}")
        .into_client_request()
        .expect("ws request");
    let (mut ws, _) = tokio_tungstenite::client_async(wsreq, stream)
        .await
        .expect("101 over TLS");
    assert_eq!(ws_roundtrip_tls(&mut ws, "hi").await, "a:hi");
}

async fn ws_roundtrip_tls<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(msg)).await.expect("send");
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

type Snis = Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A recording upstream behind TLS, serving the wildcard certificate; records each SNI.
async fn tls_upstream(pki: &Pki) -> (edgegate::demo::EchoUpstream, Snis) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = edgegate::demo::EchoUpstream::unbound("tls-up", listener.local_addr().expect("addr"));
    let chain = vec![rustls::pki_types::CertificateDer::from(pem_to_der(
        &std::fs::read(&pki.wild.0).expect("cert"),
    ))];
    let key = rustls::pki_types::PrivateKeyDer::try_from(pem_to_der(
        &std::fs::read(&pki.wild.1).expect("key"),
    ))
    .expect("key der");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let served = up.clone();
    let snis: Snis = Arc::default();
    let seen_snis = snis.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, up, snis) = (acceptor.clone(), served.clone(), seen_snis.clone());
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    if let Ok(mut v) = snis.lock() {
                        v.push(sni);
                    }
                    let _ = up.serve(tls, conn).await;
                }
            });
        }
    });
    (up, snis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_reach_its_upstream_over_verified_tls_with_sni() {
    let pki = pki();
    let redis = Redis::start();
    redis.sessions();
    let (up, snis) = tls_upstream(&pki).await;
    let app = upstream("app").await;
    let text = config_text(
        free_port(),
        redis.port,
        app.addr,
        &format!("[upstream]\nca_file = {:?}\n", s(&pki.ca)),
    )
    .replacen(
        "forward_token = true\n",
        "forward_token = true\nupstream_tls = true\nupstream_sni = \"vm.example.test\"\n",
        1,
    );
    let gw = Gateway::start(&text);
    redis.workspace(ID_A, &up.addr.to_string());
    let r = gw.get(&gw.ws_host(ID_A), "/over-tls", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.seen()[0].target, "/over-tls");
    assert_eq!(
        snis.lock().expect("snis")[0].as_deref(),
        Some("vm.example.test"),
        "the route's SNI was sent"
    );
    let mut ws = ws_connect(gw.addr, &gw.ws_host(ID_A), &agent_path(ID_A, OWNER), &[])
        .await
        .expect("upgrade to a TLS upstream");
    assert_eq!(ws_roundtrip(&mut ws, "t").await, "tls-up:t");

    // The same upstream named by a SNI its certificate does not cover is refused (502).
    let text = config_text(
        free_port(),
        redis.port,
        app.addr,
        &format!("[upstream]\nca_file = {:?}\n", s(&pki.ca)),
    )
    .replacen(
        "forward_token = true\n",
        "forward_token = true\nupstream_tls = true\nupstream_sni = \"vm.elsewhere.test\"\n",
        1,
    );
    let gw2 = Gateway::start(&text);
    let before = up.count();
    let r = gw2.get(&gw2.ws_host(ID_A), "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(up.count(), before, "the unverified upstream got nothing");
}

/// HTTP/2 connections end too (SPEC §8): a client whose preface does not come within the
/// header deadline is closed, and an idle one after the keep-alive timeout (Pingora's own
/// default keeps both forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_end_when_their_preface_is_late_or_they_idle() {
    let pki = pki();
    let redis = Redis::start();
    let app = upstream("app").await;
    let tls_port = free_port();
    let extra = format!(
        "[[listen.tls]]\naddr = \"127.0.0.1:{tls_port}\"\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"*.example.test\", \"example.test\"]\n",
        s(&pki.wild.0),
        s(&pki.wild.1)
    );
    let text = config_text(
        free_port(),
        redis.port,
        app.addr,
        "[limits]\nheader_timeout_ms = 1000\nkeepalive_timeout_secs = 1\n",
    )
    .replacen("[admin]\n", &format!("{extra}[admin]\n"), 1);
    let _gw = Gateway::start(&text);
    let gw: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let h2 = client(&pki, &[b"h2"]);
    // No preface at all: closed by the deadline.
    let mut silent = connect(gw, &h2, "app.example.test").await;
    assert_eq!(
        silent.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "HTTP/2 by ALPN"
    );
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), silent.read_to_end(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "a connection without a preface was still open after 15 s"
    );

    // A preface and settings, then nothing: closed as idle.
    let mut idle = connect(gw, &h2, "app.example.test").await;
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), idle.read_to_end(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection was still open after 15 s"
    );
    assert!(
        !buf.is_empty(),
        "the server spoke HTTP/2 (its settings) before it closed"
    );
}
