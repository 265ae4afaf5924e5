//! Every file shipped in `conf/` is a valid configuration, and `edgegate check` says why a bad
//! one is not: one line naming the field, exit status 64.

use edgegate::config::Config;
use std::path::Path;
use std::process::Command;

/// The shipped configs read their token secrets from these variables.
fn set_secrets() {
    for var in ["EDGEGATE_JWT_SECRET", "EDGEGATE_DEMO_SECRET"] {
        std::env::set_var(var, "config-test-secret-0123456789abcdef0123");
    }
}

#[test]
fn every_shipped_config_file_validates() {
    set_secrets();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "conf/edgegate.toml and conf/demo.toml at least"
    );
}

fn check(text: &str) -> (i32, String, String) {
    set_secrets();
    let dir = std::env::temp_dir().join(format!("edgegate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(format!("c{}.toml", text.len()));
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run edgegate check");
    // Nothing left behind: the file, then the directory once no other check is using it.
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_config() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/edgegate.toml"))
            .expect("read");
    let (code, out, _) = check(&text);
    assert_eq!(code, 0);
    assert!(out.contains("ok"));
}

#[test]
fn bad_config_prints_one_line_naming_the_field_and_exits_64() {
    let good =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/edgegate.toml"))
            .expect("read");
    let cases = [
        (
            good.replacen("host = \"ws-{id}--{port}", "host = \"ws-x--{port}", 1),
            "route[1].host",
        ),
        (
            good.replacen(
                "allowed_ports = [3000, 5173, \"8000-8099\"]",
                "allowed_ports = [3000, 5173, \"8099-8000\"]",
                1,
            ),
            "route[1].allowed_ports[2]",
        ),
        (
            good.replacen(
                "allowed_ports = [3000, 5173, \"8000-8099\"]",
                "ports = [1024, 65535]",
                1,
            ),
            "route[1].ports",
        ),
        (
            good.replacen("key = \"dev:{id}\"", "key = \"dev\"", 1),
            "route[2].key",
        ),
        (
            good.replacen("[upstream]", "[upstream]\nbogus = 1", 1),
            "bogus",
        ),
        (
            good.replacen(
                "url = \"redis://127.0.0.1:6379/0\"",
                "url = \"http://x\"",
                1,
            ),
            "redis.url",
        ),
        (
            good.replacen("mode = \"single\"", "mode = \"cluster\"", 1),
            "redis.nodes",
        ),
        (
            good.replacen(
                "mode = \"single\"",
                "mode = \"sentinel\"\nnodes = [\"redis://127.0.0.1:26379\"]",
                1,
            ),
            "redis.service",
        ),
        (
            // The bad entry is named by position: a node URL may hold a password.
            good.replacen(
                "mode = \"single\"",
                "mode = \"cluster\"\nnodes = [\"redis://a:1\", \"redis//:hunter2@host\"]",
                1,
            ),
            "redis.nodes[1]",
        ),
        (
            good.replacen(
                "upstream = \"127.0.0.1:3000\"",
                "upstream = \"not an address!\"",
                1,
            ),
            "default.upstream",
        ),
    ];
    for (text, field) in cases {
        let (code, _, err) = check(&text);
        assert_eq!(code, 64, "{field}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(field), "{field} not named in {err:?}");
        assert!(!err.contains("hunter2"), "a password in the error: {err:?}");
    }
}

/// Every kind of config error says where it is, `FILE:LINE:COLUMN`, and the full field path:
/// syntax, unknown keys, wrong types and variants, and edgegate's own validation alike.
#[test]
fn config_errors_name_file_line_column_and_the_full_field_path() {
    set_secrets();
    let good =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/edgegate.toml"))
            .expect("read");
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.starts_with(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle:?} in the config"))
    };
    let cases: Vec<(String, &str, &str)> = vec![
        // (config, the line it starts with, what the error must say after FILE:LINE:COL)
        (
            good.replacen("dns_ttl_ms = ", "dns_ttl_msec = ", 1),
            "dns_ttl_msec",
            "cache.dns_ttl_msec: unknown field `dns_ttl_msec`",
        ),
        (
            good.replacen("stale_ms = 60000", "stale_ms = \"60s\"", 1),
            "stale_ms",
            "cache.stale_ms: invalid type: string \"60s\", expected u64",
        ),
        (
            good.replacen(
                "auth = [\"ide_cookie\", \"dev_ide_token\"]",
                "auth = [\"ide_cookie\", \"cookie\"]",
                1,
            ),
            "auth = [\"ide_cookie\", \"cookie\"]",
            "route[2].auth[1]: unknown variant `cookie`",
        ),
        (
            good.replacen("key = \"dev:{id}\"", "key = \"dev\"", 1),
            "key = \"dev\"",
            "route[2].key: \"{id}\" is missing",
        ),
        (
            good.replacen("[redis]\n", "[redis\n", 1),
            "[redis",
            "unclosed table",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("edgegate-located-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    for (i, (text, starts, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let e = Config::load(&path).expect_err("an error").to_string();
        let line = line_of(text, starts);
        let prefix = format!("{}:{line}:", path.display());
        assert!(e.starts_with(&prefix), "{e:?} should start with {prefix:?}");
        assert!(e.contains(want), "{e:?} should say {want:?}");
        assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config written before a key existed still loads: every key added since has a default,
/// in a table that is present as well as in one that is not (a `[server]` table without
/// `drain_delay_secs` failed to load once).
#[test]
fn a_config_without_the_newer_keys_loads_with_their_defaults() {
    set_secrets();
    let secret = std::env::temp_dir().join(format!("eg-old-secret-{}", std::process::id()));
    std::fs::write(&secret, "config-test-secret-0123456789abcdef0123").expect("secret");
    let text = format!(
        r#"
base_domain = "example.com"
[server]
threads = 1
[log]
level = "warn"
[redis]
url = "redis://127.0.0.1:6379/0"
[auth.tokens]
secret_file = {:?}
[api]
ide_route = ""
[[route]]
name = "workspace"
host = "ws-{{id}}.{{base_domain}}"
key = "workspace:{{id}}"
"#,
        secret.display().to_string()
    );
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.drain_delay_secs, 5);
    assert_eq!(c.log.access_log, "stdout");
    assert!(c.content_domain.is_empty() && c.tracing.otlp_endpoint.is_empty());
    let _ = std::fs::remove_file(&secret);
}
