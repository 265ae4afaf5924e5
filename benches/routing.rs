//! Micro-benchmarks of the per-request routing work: Host normalisation, route matching with id
//! canonicalisation, and a route-cache hit. Run with `cargo bench --bench routing`.

use criterion::{criterion_group, criterion_main, Criterion};
use edgegate::config::Config;
use edgegate::headers::normalize_host;
use edgegate::route::cache::Cache;
use edgegate::route::RouteTable;
use std::hint::black_box;
use std::time::Duration;

fn table() -> RouteTable {
    let text = include_str!("../conf/edgegate.toml");
    let config = Config::parse(text).expect("shipped config is valid");
    RouteTable::new(&config).expect("table")
}

fn routing(c: &mut Criterion) {
    let t = table();
    c.bench_function("host: normalise + match workspace route", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("ws-01hzx3m9q4t8v6w2y5b7c9d1ef.example.com:443"))
                .expect("host");
            let m = t
                .match_request(&host, black_box("/agent/ws"), None, false)
                .expect("match");
            black_box(&m);
        })
    });
    c.bench_function("path: match ide tunnel + strip", |b| {
        b.iter(|| {
            let m = t
                .match_request(
                    black_box("app.example.com"),
                    black_box("/__ide/01HZX3M9Q4T8V6W2Y5B7C9D1EF/static/out/main.js"),
                    Some("v=1"),
                    false,
                )
                .expect("match");
            black_box(&m);
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cache: Cache<u64> = Cache::new(1000);
    rt.block_on(
        cache.get_or_fetch("workspace:01HZX3M9Q4T8V6W2Y5B7C9D1EF", |_| async {
            (1, Some(Duration::from_secs(3600)))
        }),
    );
    c.bench_function("route cache hit", |b| {
        b.iter(|| {
            let v = rt.block_on(cache.get_or_fetch(
                black_box("workspace:01HZX3M9Q4T8V6W2Y5B7C9D1EF"),
                |_| async { (2, Some(Duration::from_secs(3600))) },
            ));
            black_box(v);
        })
    });
}

criterion_group!(benches, routing);
criterion_main!(benches);
