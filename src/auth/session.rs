//! The app's session cookie: parsing `Cookie` headers, and `session:{sid}` in Redis (through the
//! record cache, so an invalidation message drops a session as it drops a route). Called by
//! `auth::Auth::authorize` from `request_filter`.

use super::token::now;
use super::KeyTemplate;
use crate::error::GatewayError;
use crate::route::store::Records;
use pingora::http::RequestHeader;

/// How many values of one cookie are tried.
const MAX_VALUES: usize = 4;

/// The values of one cookie, in order, without an allocation (a slice through `Deref`).
#[derive(Debug, Default)]
pub struct CookieValues<'r> {
    values: [&'r str; MAX_VALUES],
    len: usize,
}

impl<'r> std::ops::Deref for CookieValues<'r> {
    type Target = [&'r str];
    fn deref(&self) -> &[&'r str] {
        &self.values[..self.len]
    }
}

impl<'r> IntoIterator for CookieValues<'r> {
    type Item = &'r str;
    type IntoIter = std::iter::Take<std::array::IntoIter<&'r str, MAX_VALUES>>;
    fn into_iter(self) -> Self::IntoIter {
        self.values.into_iter().take(self.len)
    }
}

/// The first four values of cookie `name` in the request's `Cookie` headers, in order (a
/// sibling subdomain can toss a second cookie of the same name; each is tried, none trusted
/// blindly). Header values are visible ASCII (`to_str`), so ASCII trimming is all there is.
pub fn cookie_values<'r>(req: &'r RequestHeader, name: &str) -> CookieValues<'r> {
    let mut out = CookieValues::default();
    for h in req.headers.get_all(http::header::COOKIE) {
        let Ok(h) = h.to_str() else { continue };
        for pair in h.split(';') {
            if let Some((k, v)) = pair.trim_ascii().split_once('=') {
                if k.trim_ascii() == name {
                    let v = v.trim_ascii();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|x| x.strip_suffix('"'))
                        .unwrap_or(v);
                    if !v.is_empty() && out.len < MAX_VALUES {
                        out.values[out.len] = v;
                        out.len += 1;
                    }
                }
            }
        }
    }
    out
}

/// The `Cookie` header without the named cookies; `None` when nothing is left.
pub fn without_cookies(headers: &http::HeaderMap, names: &[&str]) -> Option<String> {
    let mut kept = String::new();
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(h) = h.to_str() else { continue };
        for pair in h.split(';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim_ascii();
            if names.contains(&name) {
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    }
    (!kept.is_empty()).then_some(kept)
}

/// A session id worth asking Redis about: bounded, printable, no key-template tricks.
fn plausible_sid(sid: &str) -> bool {
    (1..=256).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=%".contains(&b))
}

/// The user of session `sid` and the hash of its Redis key (for revocation), `None` when there
/// is no valid session (unknown, expired, malformed). Redis unreachable is an error: auth fails
/// closed.
pub async fn session_user(
    records: &Records,
    key_template: &KeyTemplate,
    sid: &str,
) -> Result<Option<(String, u64)>, GatewayError> {
    if !plausible_sid(sid) {
        return Ok(None);
    }
    let key = key_template.key(sid);
    let (found, _) = records.get_secret(&key).await;
    let Some(rec) = found? else { return Ok(None) };
    let Some(user) = rec.get("user").filter(|u| !u.is_empty()) else {
        log::warn!("session record without a user field (key redacted)");
        return Ok(None);
    };
    if let Some(exp) = rec.get("expires_at") {
        match exp.trim().parse::<u64>() {
            Ok(exp) if exp > now() => {}
            Ok(_) => return Ok(None),
            Err(_) => {
                log::warn!("session record with a malformed expires_at (key redacted)");
                return Ok(None);
            }
        }
    }
    Ok(Some((user.clone(), super::key_hash(&key))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cookies: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        for c in cookies {
            r.append_header("cookie", *c).expect("cookie");
        }
        r
    }

    #[test]
    fn cookie_parsing_table() {
        let r = req(&["a=1; session=abc; b=\"2\"", "session=def"]);
        assert_eq!(*cookie_values(&r, "session"), ["abc", "def"]);
        assert_eq!(*cookie_values(&r, "b"), ["2"]);
        let many = req(&["s=1; s=2; s=3", "s=4; s=5"]);
        assert_eq!(
            *cookie_values(&many, "s"),
            ["1", "2", "3", "4"],
            "four at most"
        );
        assert!(cookie_values(&r, "sess").is_empty());
        assert!(cookie_values(&req(&["session="]), "session").is_empty());
        assert!(cookie_values(&req(&["garbage"]), "session").is_empty());
    }

    #[test]
    fn credential_cookies_are_removed_and_others_kept() {
        let r = req(&["a=1; session=abc; edgegate_ide=x.y.z; b=2"]);
        assert_eq!(
            without_cookies(&r.headers, &["session", "edgegate_ide"]).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(
            without_cookies(&req(&["session=abc"]).headers, &["session"]),
            None
        );
    }

    #[test]
    fn implausible_session_ids_are_not_looked_up() {
        assert!(plausible_sid("c0ffee-123_abc"));
        assert!(!plausible_sid(""));
        assert!(!plausible_sid("a b"));
        assert!(!plausible_sid("x}{y"));
        assert!(!plausible_sid(&"a".repeat(300)));
    }
}
