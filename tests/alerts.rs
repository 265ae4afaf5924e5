//! The operator's kit in `conf/`: the Prometheus alert rules pass `promtool`'s checks and unit
//! tests, the Grafana dashboard's queries are valid PromQL over series a real gateway exports,
//! and a real Prometheus scraping a real gateway evaluates the rules and fires an alert.
//! `scripts/setup --test` installs Debian's `prometheus` (promtool included).

mod common;

use common::tls::*;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn conf(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").join(rel)
}

/// Run promtool with `args` in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (scripts/setup --test installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_shipped_alert_rules_pass_promtools_checks_and_unit_tests() {
    let dir = conf("prometheus");
    promtool(&dir, &["check", "rules", "alerts.yml"]);
    promtool(&dir, &["check", "config", "prometheus.yml"]);
    let tests = promtool(&dir, &["test", "rules", "alerts.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// The dashboard's queries, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(conf("grafana/edgegate.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            out.push(
                e.replace("$__rate_interval", "1m")
                    .replace("=~\"$instance\"", "=~\".*\""),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_queries_are_valid_promql_over_series_a_gateway_exports() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    // Valid PromQL: promtool checks each as a recording rule.
    let dir = Scratch::new("eg-dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::Value::String(q.clone())
        ));
    }
    std::fs::write(dir.join("dashboard.yml"), rules).expect("write");
    promtool(&dir, &["check", "rules", "dashboard.yml"]);
    // Every metric they read exists in a running gateway's /metrics.
    let mut wanted = Vec::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find(|c: char| c.is_ascii_lowercase()) {
            rest = &rest[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            // Certificates exist only with a TLS listener, which this gateway has none of
            // (the Prometheus test below scrapes that series from one).
            let needs_tls = word == "edgegate_tls_certificate_expiry_timestamp_seconds";
            if (word.starts_with("edgegate_") || word.starts_with("process_")) && !needs_tls {
                wanted.push((word.to_string(), q.clone()));
            }
            rest = &rest[end..];
        }
    }
    let w = World::start("").await;
    let missing = || async {
        let exported = w.gw.admin_get("/metrics").await.body;
        wanted
            .iter()
            .filter(|(word, _)| {
                let base = word.trim_end_matches("_bucket");
                !exported.lines().any(|l| {
                    l.starts_with(&format!("# TYPE {base} "))
                        || l.starts_with(&format!("# TYPE {word} "))
                })
            })
            .map(|(word, q)| format!("{word} (in {q})"))
            .collect::<Vec<_>>()
    };
    // Scraped again for a few seconds: a run of the whole suite once failed here on one
    // scrape of a gateway just started (not reproduced alone, cause not found). A metric
    // that is never exported still fails.
    let _ = eventually(Duration::from_secs(5), || async {
        missing().await.is_empty()
    })
    .await;
    let left = missing().await;
    assert!(left.is_empty(), "not exported: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_edgegate_and_fires_an_alert() {
    let pki = pki();
    let redis = Redis::start();
    let app = upstream("app").await;
    let tls_port = free_port();
    // The test certificate lives 2 days: EdgegateCertificateExpiring fires at once.
    let tls = format!(
        "[[listen.tls]]\naddr = \"127.0.0.1:{tls_port}\"\n\
         [[listen.tls.certs]]\ncert_file = {:?}\nkey_file = {:?}\nnames = [\"*.example.test\"]\n",
        s(&pki.wild.0),
        s(&pki.wild.1)
    );
    let text = config_text(free_port(), redis.port, app.addr, "").replacen(
        "[admin]\n",
        &format!("{tls}[admin]\n"),
        1,
    );
    let gw = Gateway::start(&text);

    let dir = Scratch::new("eg-prometheus");
    std::fs::copy(conf("prometheus/alerts.yml"), dir.join("alerts.yml")).expect("rules");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: edgegate\n    static_configs:\n      - targets: [\"{}\"]\n",
            gw.admin
        ),
    )
    .expect("config");
    let port = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/setup --test)");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let api = |path: String| async move {
        // Prometheus takes a moment to listen: not yet is no answer, not a failure.
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return serde_json::Value::Null;
        }
        let req = format!("GET {path} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n");
        let r = raw(addr, req.as_bytes()).await;
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default()
    };
    let scraped = eventually(Duration::from_secs(30), || async {
        let v = api("/api/v1/query?query=up%7Bjob%3D%22edgegate%22%7D".into()).await;
        v["data"]["result"][0]["value"][1] == "1"
    })
    .await;
    let firing = scraped
        && eventually(Duration::from_secs(30), || async {
            let v = api("/api/v1/alerts".into()).await;
            v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "EdgegateCertificateExpiring"
                        && x["state"] == "firing"
                        && x["labels"]["names"] == "*.example.test"
                })
            })
        })
        .await;
    // Prometheus only counts what it scraped: the build series came through as well.
    let build = api("/api/v1/query?query=edgegate_build_info".into()).await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(scraped, "Prometheus scraped the admin listener");
    assert!(firing, "the certificate alert fired");
    assert_eq!(build["data"]["result"][0]["value"][1], "1");
}
