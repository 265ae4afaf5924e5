//! `docs/CONFIG.md` documents exactly the keys `conf/edgegate.toml` shows (set or commented).

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).expect(rel)
}

/// `section.key` for every `key = …` line, and every `# key = …` line (an optional key shown
/// commented out), in the shipped config.
const DATA: &str = "<data>";

fn conf_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in read("conf/edgegate.toml").lines() {
        // Commented-out tables and keys count: they document optional ones.
        let line = line.trim().trim_start_matches('#').trim();
        let line = line.split(" #").next().unwrap_or(line).trim();
        let header = line
            .strip_prefix("[[")
            .and_then(|l| l.strip_suffix("]]"))
            .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')));
        if let Some(s) = header {
            // Example record tables (`[store.records."workspace:…"]`) hold data, not keys.
            section = if s.contains('"') {
                DATA.to_string()
            } else {
                s.to_string()
            };
            continue;
        }
        if section == DATA {
            continue;
        }
        let body = line;
        let Some((key, _)) = body.split_once(" = ") else {
            continue;
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        keys.insert(if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        });
    }
    keys
}

/// Every `` | `section.key` | `` row of the reference.
fn doc_keys() -> BTreeSet<String> {
    read("docs/CONFIG.md")
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once("` |")
                .map(|(k, _)| k.to_string())
        })
        .collect()
}

#[test]
fn config_reference_and_shipped_config_list_the_same_keys() {
    let (conf, docs) = (conf_keys(), doc_keys());
    assert!(conf.len() > 60, "parsed {} keys", conf.len());
    let undocumented: Vec<_> = conf.difference(&docs).collect();
    let unshipped: Vec<_> = docs.difference(&conf).collect();
    assert!(
        undocumented.is_empty(),
        "in conf/edgegate.toml, not in docs/CONFIG.md: {undocumented:?}"
    );
    assert!(
        unshipped.is_empty(),
        "in docs/CONFIG.md, not in conf/edgegate.toml: {unshipped:?}"
    );
}
