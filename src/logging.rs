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

/// Install the guarded env_logger at `level` (`RUST_LOG`, when set, wins), writing `format`.
pub fn init(level: &str, format: crate::config::LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    if format == crate::config::LogFormat::Json {
        builder.format(|out, record| {
            use std::io::Write;
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let line = json_line(
                time,
                record.level(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(out, "{line}")
        });
    }
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Guarded::new(inner))).is_ok() {
        log::set_max_level(max);
    }
}

/// One log record as a JSON object.
fn json_line(time: f64, level: Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "time": (time * 1000.0).round() / 1000.0,
        "level": level.as_str(),
        "target": target,
        "message": message,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_records_are_one_line_objects() {
        let line = super::json_line(1.5, log::Level::Warn, "edgegate::proxy", "a \"b\"\nc");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "edgegate::proxy");
        assert_eq!(v["message"], "a \"b\"\nc");
        assert_eq!(v["time"], 1.5);
    }
}
