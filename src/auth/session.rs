//! The app's session cookie: parsing `Cookie` headers, and `session:{sid}` in Redis (through the
//! record cache, so an invalidation message drops a session as it drops a route). Called by
//! `auth::Auth::authorize` from `request_filter`.

use super::token::now;
use crate::error::GatewayError;
use crate::headers::CookieStrip;
use crate::route::pattern::KeyTemplate;
use crate::route::store::Records;
use pingora::http::RequestHeader;

/// How many values of one cookie are tried.
const MAX_VALUES: usize = 4;

/// The values of one cookie, in order, without an allocation (a slice through `Deref`).
#[derive(Debug, Default)]
pub struct CookieValues<'r> {
    values: [&'r str; MAX_VALUES],
    len: usize,
    /// Some value differed from the first (counted beyond the four kept, too).
    differ: bool,
}

impl<'r> CookieValues<'r> {
    fn push(&mut self, v: &'r str) {
        if self.len > 0 && self.values[0] != v {
            self.differ = true;
        }
        if self.len < MAX_VALUES {
            self.values[self.len] = v;
            self.len += 1;
        }
    }

    /// The one value of this cookie: `None` when absent, the value when every copy agrees.
    /// Two different values are refused (401, `ambiguous_credentials`): a page on any sibling
    /// subdomain can toss a second cookie of the same name (a path-scoped one is even sent
    /// first), and picking either could pick the attacker's. One value also means at most one
    /// session lookup per request, whatever the cookies say.
    pub fn single(&self) -> Result<Option<&'r str>, GatewayError> {
        if self.differ {
            return Err(GatewayError::AmbiguousCredentials);
        }
        Ok(self.values[..self.len].first().copied())
    }
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

/// One pass over the request's `Cookie` headers: the values of the session cookie and of the
/// IDE cookie, and what stripping both of them before the upstream takes.
#[derive(Debug, Default)]
pub struct Cookies<'r> {
    pub session: CookieValues<'r>,
    pub ide: CookieValues<'r>,
    pub strip: CookieStrip,
}

impl<'r> Cookies<'r> {
    /// The first four values of each cookie, in order (a sibling subdomain can toss a second
    /// cookie of the same name; each is tried, none trusted blindly). Header values are
    /// visible ASCII (`to_str`), so ASCII trimming is all there is; a header that is not
    /// cannot be searched for credentials, so it is only ever rebuilt away.
    ///
    /// `app` names the app's other cookies (`auth.app_cookies`): never collected, but they go
    /// before the upstream as edgegate's own do.
    pub fn read(req: &'r RequestHeader, session: &str, ide: &str, app: &[String]) -> Self {
        let mut out = Cookies::default();
        let (mut credentials, mut others, mut headers) = (false, false, 0);
        for h in req.headers.get_all(http::header::COOKIE) {
            headers += 1;
            let Ok(h) = h.to_str() else {
                credentials = true;
                others = true;
                continue;
            };
            // By byte: `str::split` with a `char` costs more than the rest of the parse.
            let bytes = h.as_bytes();
            let mut start = 0;
            while start < bytes.len() {
                let end = bytes[start..]
                    .iter()
                    .position(|&b| b == b';')
                    .map_or(bytes.len(), |i| start + i);
                let pair = h[start..end].trim_ascii();
                start = end + 1;
                if pair.is_empty() {
                    continue;
                }
                let (name, value) = match pair.bytes().position(|b| b == b'=') {
                    Some(i) => (pair[..i].trim_ascii_end(), &pair[i + 1..]),
                    None => (pair, ""),
                };
                let values = if name == session {
                    &mut out.session
                } else if name == ide {
                    &mut out.ide
                } else if app.iter().any(|a| a == name) {
                    credentials = true;
                    continue;
                } else {
                    others = true;
                    continue;
                };
                credentials = true;
                let v = value.trim_ascii();
                let v = v
                    .strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .unwrap_or(v);
                if !v.is_empty() {
                    values.push(v);
                }
            }
        }
        // Several headers (HTTP/2 clients split cookies) are joined for an HTTP/1.1 upstream
        // (RFC 9113 8.2.3), which the rebuild does.
        out.strip = match (credentials, others) {
            (false, false) => CookieStrip::Keep,
            (false, true) if headers == 1 => CookieStrip::Keep,
            (true, false) => CookieStrip::Remove,
            _ => CookieStrip::Rebuild,
        };
        out
    }
}

/// The values of one cookie (`Cookies::read` for a single name).
pub fn cookie_values<'r>(req: &'r RequestHeader, name: &str) -> CookieValues<'r> {
    Cookies::read(req, name, name, &[]).session
}

/// A session id worth asking Redis about: bounded, printable, no key-template tricks.
fn plausible_sid(sid: &str) -> bool {
    (1..=256).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=%".contains(&b))
}

/// A valid app session, as auth needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user: String,
    /// A hash of the session's Redis key (for revocation), never the id itself.
    pub key_hash: u64,
    /// When the session ends by itself, unix seconds.
    pub expires_at: Option<u64>,
}

/// The user of session `sid`, `None` when there is no valid session (unknown, expired,
/// malformed). Redis unreachable is an error: auth fails closed.
pub async fn session_user(
    records: &Records,
    key_template: &KeyTemplate,
    sid: &str,
) -> Result<Option<SessionUser>, GatewayError> {
    if !plausible_sid(sid) {
        return Ok(None);
    }
    session_at(records, &key_template.key(sid)).await
}

/// The session at its Redis `key` (as `session_user`, for a key edgegate noted itself).
pub async fn session_at(records: &Records, key: &str) -> Result<Option<SessionUser>, GatewayError> {
    let key = key.to_owned();
    let (found, _) = records.get_secret(&key).await;
    let Some(rec) = found? else { return Ok(None) };
    let Some(user) = rec.get("user").filter(|u| !u.is_empty()) else {
        log::warn!("session record without a user field (key redacted)");
        return Ok(None);
    };
    let expires_at = match rec.get("expires_at") {
        Some(exp) => match exp.trim().parse::<u64>() {
            Ok(exp) if exp > now() => Some(exp),
            Ok(_) => return Ok(None),
            Err(_) => {
                log::warn!("session record with a malformed expires_at (key redacted)");
                return Ok(None);
            }
        },
        None => None,
    };
    Ok(Some(SessionUser {
        user: user.to_owned(),
        key_hash: super::key_hash(&key),
        expires_at,
    }))
}

/// Another field of the session at `key` (its organization, for a port's visibility), read
/// from the same cached record.
pub async fn session_field(
    records: &Records,
    key: &str,
    field: &str,
) -> Result<Option<String>, GatewayError> {
    let (found, _) = records.get_secret(key).await;
    Ok(found?.and_then(|rec| {
        rec.get(field)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::without_cookies;

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
    fn one_pass_finds_both_cookies_and_what_stripping_them_takes() {
        let c = |h: &[&str]| {
            let r = req(h);
            let c = Cookies::read(&r, "session", "edgegate_ide", &[]);
            (
                c.session.to_vec().join(","),
                c.ide.to_vec().join(","),
                c.strip,
            )
        };
        let s = |a: &str, b: &str, strip| (a.to_string(), b.to_string(), strip);
        assert_eq!(c(&[]), s("", "", CookieStrip::Keep));
        assert_eq!(c(&["a=1; b=2"]), s("", "", CookieStrip::Keep));
        assert_eq!(
            c(&["a=1", "b=2"]),
            s("", "", CookieStrip::Rebuild),
            "split headers are joined"
        );
        assert_eq!(c(&["session=abc"]), s("abc", "", CookieStrip::Remove));
        assert_eq!(
            c(&["session=abc", "edgegate_ide=x.y", " session=\"def\" "]),
            s("abc,def", "x.y", CookieStrip::Remove)
        );
        assert_eq!(
            c(&["session"]),
            s("", "", CookieStrip::Remove),
            "a credential name without a value still goes"
        );
        assert_eq!(
            c(&["a=1; session=abc; edgegate_ide=x.y; b"]),
            s("abc", "x.y", CookieStrip::Rebuild)
        );
        // A header that is not visible ASCII cannot be searched, so it is rebuilt away.
        let mut r = req(&[]);
        r.append_header(
            "cookie",
            http::HeaderValue::from_bytes(b"session=abc; x=\xff").expect("obs-text"),
        )
        .expect("cookie");
        let got = Cookies::read(&r, "session", "edgegate_ide", &[]);
        assert!(got.session.is_empty());
        assert_eq!(got.strip, CookieStrip::Rebuild);
        assert_eq!(without_cookies(&r.headers, &["session"]), None);
    }

    #[test]
    fn the_apps_other_cookies_are_stripped_too() {
        let r = req(&["a=1; refresh=secret; session=abc"]);
        let c = Cookies::read(&r, "session", "edgegate_ide", &["refresh".to_string()]);
        assert_eq!(c.strip, CookieStrip::Rebuild);
        let r = req(&["refresh=secret"]);
        let c = Cookies::read(&r, "session", "edgegate_ide", &["refresh".to_string()]);
        assert_eq!(c.strip, CookieStrip::Remove);
        assert!(c.session.is_empty());
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
    fn a_cookie_with_two_different_values_is_ambiguous() {
        let one = |h: &[&str]| {
            let r = req(h);
            let v = cookie_values(&r, "session").single();
            v.map(|v| v.map(str::to_string))
        };
        assert_eq!(one(&[]), Ok(None));
        assert_eq!(one(&["a=1"]), Ok(None));
        assert_eq!(one(&["session=abc"]), Ok(Some("abc".into())));
        assert_eq!(
            one(&["session=abc; x=1", "session=abc"]),
            Ok(Some("abc".into())),
            "the same value twice is one value"
        );
        assert_eq!(
            one(&["session=abc; session=tossed"]),
            Err(GatewayError::AmbiguousCredentials)
        );
        assert_eq!(
            one(&["session=a; session=a; session=a; session=a; session=b"]),
            Err(GatewayError::AmbiguousCredentials),
            "a fifth, different value is seen too"
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
