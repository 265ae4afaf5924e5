//! The load harness's baseline: a minimal Pingora 0.9 proxy with one fixed peer and Pingora's
//! defaults (no routing, no auth, no metrics, no logging). Not part of edgegate.
//!
//!   cargo run --release --example plain_pingora -- LISTEN_ADDR UPSTREAM_ADDR [THREADS]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Plain {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: plain_pingora LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        std::process::exit(64);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let Ok(upstream) = upstream.parse() else {
        eprintln!("UPSTREAM_ADDR must be ip:port");
        std::process::exit(64);
    };
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Plain { upstream });
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
