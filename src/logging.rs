//! Log setup for the binary (`main`): env_logger behind `Guarded`, which keeps the debug and
//! trace records of Pingora and the protocol crates out at any `RUST_LOG`, because they print
//! whole request headers (cookies, `Authorization`) and URIs (`?token=`). edgegate's own log
//! lines never carry a credential at any level.

use log::{Level, Log, Metadata, Record};

/// Targets whose records below `Info` may contain request headers or URIs.
const CHATTY: &[&str] = &[
    "pingora",
    "h2",
    "hyper",
    "tungstenite",
    "tokio_tungstenite",
    "redis",
];

/// A logger that passes everything but the chatty crates' debug and trace records to `inner`.
pub struct Guarded<L> {
    inner: L,
}

impl<L: Log> Guarded<L> {
    pub fn new(inner: L) -> Self {
        Self { inner }
    }
}

fn allowed(m: &Metadata) -> bool {
    m.level() <= Level::Info || !CHATTY.iter().any(|c| m.target().starts_with(c))
}

impl<L: Log> Log for Guarded<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        allowed(m) && self.inner.enabled(m)
    }

    fn log(&self, record: &Record) {
        if allowed(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Install the guarded env_logger at `level` (`RUST_LOG`, when set, wins).
pub fn init(level: &str) {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Guarded::new(inner))).is_ok() {
        log::set_max_level(max);
    }
}
