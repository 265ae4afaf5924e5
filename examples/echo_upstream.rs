//! The load harness's WebSocket upstream: edgegate's demo echo server on one address.
//!
//!   cargo run --release --example echo_upstream -- ADDR

fn main() {
    let Some(addr) = std::env::args().nth(1).and_then(|a| a.parse().ok()) else {
        eprintln!("usage: echo_upstream ip:port");
        std::process::exit(64);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let _up = edgegate::demo::EchoUpstream::start("bench-ws", addr)
            .await
            .expect("listen");
        std::future::pending::<()>().await
    });
}
