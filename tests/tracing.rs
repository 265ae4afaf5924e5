//! Tracing over OTLP (issue #19): a real OTLP/HTTP receiver gets the spans of a request — the
//! request, its decision, its Redis commands and its upstream — in the trace of the trusted
//! proxy's `traceparent`, which the upstream receives as its own parent; an untrusted client's
//! `traceparent` starts nothing.

mod common;

use common::*;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An OTLP/HTTP traces receiver: every POST body, as received.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head + 4..head + 4 + len].to_vec();
                    buf.drain(..head + 4 + len);
                    if let Ok(mut b) = keep.lock() {
                        b.push(body);
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    (addr, bodies)
}

/// Every span received: (trace id hex, span id hex, parent span id hex, name).
fn spans(bodies: &Arc<Mutex<Vec<Vec<u8>>>>) -> Vec<(String, String, String, String)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = Vec::new();
    for body in bodies.lock().expect("bodies").iter() {
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push((
                        hex(&s.trace_id),
                        hex(&s.span_id),
                        hex(&s.parent_span_id),
                        s.name,
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_in_the_trusted_callers_trace() {
    // Export at once, not after the batch processor's 5 s.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let (otlp, bodies) = receiver().await;
    let redis = Redis::start();
    redis.sessions();
    let a = upstream("a").await;
    let app = upstream("app").await;
    let extra =
        format!("[tracing]\notlp_endpoint = \"http://{otlp}/v1/traces\"\nsample_ratio = 1.0\n");
    let port = free_port();
    // The test client is the trusted proxy.
    let text = config_text(port, redis.port, app.addr, &extra).replacen(
        &format!("http = [\"127.0.0.1:{port}\"]\n"),
        &format!("http = [\"127.0.0.1:{port}\"]\ntrusted_proxies = [\"127.0.0.1\"]\n"),
        1,
    );
    let gw = Gateway::start(&text);
    redis.workspace(ID_A, &a.addr.to_string());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let r = gw
        .get(&gw.ws_host(ID_A), "/traced", &[("traceparent", &parent)])
        .await;
    assert_eq!(r.status, 200);
    // The upstream's parent is edgegate's upstream span, in the caller's trace.
    let seen = a.seen();
    let up = seen
        .last()
        .expect("seen")
        .header("traceparent")
        .expect("traceparent")
        .to_string();
    let parts: Vec<&str> = up.split('-').collect();
    assert_eq!(parts[1], trace_id, "{up}");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "a span of edgegate's in between"
    );

    let got = eventually(Duration::from_secs(10), || async {
        let names: Vec<String> = spans(&bodies).into_iter().map(|s| s.3).collect();
        [
            "edgegate.request",
            "edgegate.decide",
            "edgegate.upstream",
            "redis hgetall",
        ]
        .iter()
        .all(|n| names.iter().any(|x| x == n))
    })
    .await;
    let all = spans(&bodies);
    assert!(got, "spans: {all:?}");
    let of = |name: &str| all.iter().find(|s| s.3 == name).expect(name).clone();
    let (request, decide, upstream_span, redis_span) = (
        of("edgegate.request"),
        of("edgegate.decide"),
        of("edgegate.upstream"),
        of("redis hgetall"),
    );
    for s in [&request, &decide, &upstream_span, &redis_span] {
        assert_eq!(s.0, trace_id, "{s:?} in the caller's trace");
    }
    assert_eq!(
        request.2, "00f067aa0ba902b7",
        "the request's parent is the caller's span"
    );
    assert_eq!(decide.2, request.1);
    assert_eq!(upstream_span.2, request.1);
    assert_eq!(redis_span.2, decide.1, "Redis under the decision");
    assert_eq!(
        parts[2], upstream_span.1,
        "the upstream's parent is the upstream span"
    );

    // An untrusted client's traceparent starts nothing: a trace of edgegate's own.
    let untrusted = Gateway::start(&config_text(free_port(), redis.port, app.addr, &extra));
    let r = untrusted
        .get(&untrusted.ws_host(ID_A), "/x", &[("traceparent", &parent)])
        .await;
    assert_eq!(r.status, 200);
    let seen = a.seen();
    let up = seen
        .last()
        .expect("seen")
        .header("traceparent")
        .expect("traceparent")
        .to_string();
    assert!(!up.contains(trace_id), "{up}");
}
