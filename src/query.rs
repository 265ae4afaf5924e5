//! A request's query string as credentials live in it: parameter names are percent-decoded
//! before they are matched, so `%74oken` is `token` everywhere. Used by auth (the two places a
//! URL token is taken), by the upstream rewrite (what is stripped), by routing (what a redirect
//! may copy) and by the access log (what is redacted).

/// Whether a query parameter (`name=value` or a bare `name`) is a `token` parameter: its name,
/// percent-decoded, is `token` in any case (`%74oken`, `TOKEN`). Such a parameter is a
/// credential wherever it appears: redacted from logs, stripped before upstreams.
pub fn is_token(param: &str) -> bool {
    param_name(param).eq_ignore_ascii_case("token")
}

/// A query parameter's name, percent-decoded (`+` is a space), as the upstream's parser will
/// read it: names are matched only in this form, so `%74oken` is `token` everywhere.
pub fn param_name(param: &str) -> std::borrow::Cow<'_, str> {
    let name = param.split_once('=').map_or(param, |(k, _)| k);
    if name.bytes().any(|b| b == b'%' || b == b'+') {
        std::borrow::Cow::Owned(percent_decode(name))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// The value of the first `token` query parameter (name and value percent-decoded).
pub fn token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter(|p| is_token(p))
        .find_map(|p| p.split_once('='))
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

/// The value of the first parameter named `name` (name and value percent-decoded).
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter(|p| param_name(p) == name)
        .find_map(|p| p.split_once('='))
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `query` without its `token` parameters (`is_token`); `None` when there were none.
pub fn strip_token(query: &str) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let is_token = is_token(p);
            removed |= is_token;
            !is_token
        })
        .collect();
    removed.then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_query_parameter_handling() {
        assert_eq!(token(Some("a=1&token=x.y.z&b=2")).as_deref(), Some("x.y.z"));
        assert_eq!(token(Some("token=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(token(Some("tokens=1")), None);
        assert_eq!(token(Some("token=")), None);
        assert_eq!(token(None), None);
        assert_eq!(strip_token("a=1&token=x&b=2").as_deref(), Some("a=1&b=2"));
        assert_eq!(strip_token("token=x").as_deref(), Some(""));
        assert_eq!(strip_token("a=1"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%41"), "aA", "an escape at the very end");
    }

    #[test]
    fn token_parameter_names_are_decoded_before_they_are_matched() {
        for name in [
            "token",
            "%74oken",
            "%74%6F%6b%65%6E",
            "TOKEN",
            "Token",
            "tok%65n",
        ] {
            assert!(is_token(&format!("{name}=x")), "{name}");
            assert_eq!(
                token(Some(&format!("a=1&{name}=x.y"))).as_deref(),
                Some("x.y"),
                "{name}"
            );
            assert_eq!(
                strip_token(&format!("a=1&{name}=x.y&b=2")).as_deref(),
                Some("a=1&b=2"),
                "{name}"
            );
        }
        for name in [
            "tokens", "atoken", "token%00", "%74oke", "to+ken", "token[]",
        ] {
            assert!(!is_token(&format!("{name}=x")), "{name}");
        }
        assert!(is_token("token"), "a bare name");
    }
}
