//! Path parsing and id extraction on the app hosts (tunnel prefix, endpoints, traversal).
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    for upgrade in [false, true] {
        if let Ok(edgegate::route::RouteMatch::Workspace(m)) =
            common::table().match_request("app.example.com", path, query, upgrade)
        {
            assert_eq!(edgegate::route::WorkspaceId::parse(m.id.as_str()), Some(m.id));
            if let Some(up) = &m.upstream_path {
                assert!(edgegate::route::path_is_safe(up), "unsafe upstream path {up:?}");
            }
        }
    }
});
