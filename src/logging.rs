//! Log setup for the binary (`main`): env_logger behind `Guarded`, which keeps the debug and
//! trace records of Pingora and the protocol crates out at any `RUST_LOG`, because they print
//! whole request headers (cookies, `Authorization`) and URIs (`?token=`). edgegate's own log
//! lines never carry a credential at any level.

use log::{Level, Log, Metadata, Record};

/// What Pingora reports at ERROR that is no fault (`edgegate_pingora_benign_total{kind}`):
/// `reuse_race` (a pooled connection its idle watcher still held: a new one is made),
/// `refused` (edgegate's own refusal, already in the access log), `client_gone` (the client
/// closed or reset before its answer was written). Counted, not logged.
pub static PINGORA_BENIGN: once_cell::sync::Lazy<prometheus::IntCounterVec> =
    once_cell::sync::Lazy::new(|| {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "edgegate_pingora_benign_total",
                "Errors Pingora reports that are no fault, counted instead of logged: reuse_race, refused, client_gone",
            ),
            &["kind"],
        )
        .expect("a fixed, valid metric name");
        for k in ["reuse_race", "refused", "client_gone"] {
            c.with_label_values(&[k]);
        }
        c
    });

/// Pingora's benign races, as the logger sees them.
fn benign(record: &Record) -> Option<&'static str> {
    if record.level() != Level::Error || !record.target().starts_with("pingora") {
        return None;
    }
    match record.args().as_str() {
        Some("failed to acquire reusable stream") => Some("reuse_race"),
        _ => None,
    }
}

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
        if let Some(kind) = benign(record) {
            PINGORA_BENIGN.with_label_values(&[kind]).inc();
            return;
        }
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
    fn pingoras_reuse_race_is_counted_not_logged() {
        let race = log::Record::builder()
            .level(log::Level::Error)
            .target("pingora_core::connectors")
            .args(format_args!("failed to acquire reusable stream"))
            .build();
        assert_eq!(super::benign(&race), Some("reuse_race"));
        let real = log::Record::builder()
            .level(log::Level::Error)
            .target("pingora_core::connectors")
            .args(format_args!("something else"))
            .build();
        assert_eq!(super::benign(&real), None);
        let ours = log::Record::builder()
            .level(log::Level::Error)
            .target("edgegate::proxy")
            .args(format_args!("failed to acquire reusable stream"))
            .build();
        assert_eq!(super::benign(&ours), None);
    }

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
