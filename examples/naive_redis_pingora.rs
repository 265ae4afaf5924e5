//! The cold-miss baseline of `benches/load/scale.py`: the proxy a team writes on its first day
//! with Pingora and Redis. One `HGETALL workspace:{ID}` per request (the command edgegate sends
//! on a miss), the record's `backend` as the peer, nothing cached, no auth, no metrics, no
//! logging. Not part of edgegate.
//!
//!   cargo run --release --example naive_redis_pingora -- LISTEN_ADDR REDIS_URL [THREADS] [isolated]
//!
//! `isolated` gives each workspace its own pool of upstream connections, as edgegate does (a
//! pooled connection is never reused for another workspace behind the same address): a
//! workspace with no idle connection costs a TCP connect.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::collections::HashMap;

struct Naive {
    redis: redis::Client,
    isolated: bool,
    conn: tokio::sync::OnceCell<redis::aio::MultiplexedConnection>,
}

fn refuse(status: u16) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(status), "no route")
}

#[async_trait]
impl ProxyHttp for Naive {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        // `ws-{id}.{domain}`: the id is the first label without its `ws-`.
        let host = s
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let id = host
            .split('.')
            .next()
            .and_then(|l| l.strip_prefix("ws-"))
            .ok_or_else(|| refuse(404))?
            .to_ascii_uppercase();
        let mut conn = self
            .conn
            .get_or_try_init(|| self.redis.get_multiplexed_async_connection())
            .await
            .map_err(|_| refuse(503))?
            .clone();
        let record: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("workspace:{id}"))
            .query_async(&mut conn)
            .await
            .map_err(|_| refuse(503))?;
        let backend: std::net::SocketAddr = record
            .get("backend")
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| refuse(404))?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        if self.isolated {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut h);
            peer.group_key = h.finish();
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(url)) = (args.next(), args.next()) else {
        eprintln!("usage: naive_redis_pingora LISTEN_ADDR REDIS_URL [THREADS]");
        std::process::exit(64);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let isolated = args.next().as_deref() == Some("isolated");
    let redis = match redis::Client::open(url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("REDIS_URL: {e}");
            std::process::exit(64);
        }
    };
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let naive = Naive {
        redis,
        isolated,
        conn: tokio::sync::OnceCell::new(),
    };
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, naive);
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
