//! Cookie parsing: values found, and the header left after credentials are removed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut req) = pingora::http::RequestHeader::build("GET", b"/", None) else { return };
    if req.append_header("cookie", data).is_err() {
        return;
    }
    for v in edgegate::auth::session::cookie_values(&req, "session") {
        assert!(!v.is_empty());
    }
    if let Some(rest) = edgegate::auth::session::without_cookies(&req.headers, &["session", "edgegate_ide"]) {
        let mut again = pingora::http::RequestHeader::build("GET", b"/", None).expect("req");
        let _ = again.append_header("cookie", rest.as_str());
        assert!(edgegate::auth::session::cookie_values(&again, "session").is_empty());
    }
});
