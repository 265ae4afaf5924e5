//! Host parsing and id extraction: any Host value, normalised and matched.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    if let Ok(host) = edgegate::headers::normalize_host(raw) {
        if let Ok(edgegate::route::RouteMatch::Workspace(m)) =
            common::table().match_request(&host, "/", None, false)
        {
            // Whatever is looked up is a canonical id.
            assert_eq!(edgegate::route::WorkspaceId::parse(m.id.as_str()), Some(m.id));
        }
    }
});
