//! How many bytes a cached route record costs in edgegate's record cache, without a proxy or
//! Redis around it: fills a `Records`-shaped cache with N records of the bench's shape and
//! prints the RSS growth per record (mimalloc, as edgegate runs). `benches/load/scale.py
//! workspaces` measures the same through the whole gateway.
//!
//!   cargo run --release --example cache_memory -- [N]

#[path = "../src/allocator.rs"]
mod allocator;

#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;

use edgegate::route::cache::Cache;
use edgegate::route::store::{Cached, Record, RecordRef, StoreFailure};
use std::time::Duration;

type Lookup = Result<Option<RecordRef>, Box<StoreFailure>>;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cache: Cache<Lookup> = Cache::bounded(n * 5 / 4 + 1000, 1 << 30, None);
    let before = rss_kib();
    rt.block_on(async {
        for i in 0..n {
            let key = format!("workspace:01HZX3M9Q4{i:016}");
            let _ = cache
                .get_or_fetch(&key, |_| async {
                    let record: Record = [
                        ("backend", "127.0.0.1:50879"),
                        ("owner", "bench"),
                        ("status", "running"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                    (
                        Ok(Some(Cached::new(record))),
                        Some(Duration::from_secs(3600)),
                    )
                })
                .await;
        }
    });
    let after = rss_kib();
    println!(
        "{n} records: {} entries held, RSS {:.1} -> {:.1} MiB, {:.0} bytes per record",
        cache.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / n as f64
    );
}
