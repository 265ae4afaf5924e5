//! Properties of id canonicalisation over generated hosts and paths: whatever edgegate looks up
//! is a valid canonical id, and two requests reach the same workspace exactly when their
//! canonical ids are equal.

use edgegate::config::Config;
use edgegate::route::{RouteMatch, RouteTable, WorkspaceId};
use proptest::prelude::*;

static TABLE: once_cell::sync::Lazy<RouteTable> = once_cell::sync::Lazy::new(build_table);

fn table() -> &'static RouteTable {
    &TABLE
}

fn build_table() -> RouteTable {
    let dir = std::env::temp_dir().join(format!("eg-prop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "property-test-secret-0123456789abcdef").expect("secret");
    let text = include_str!("../conf/edgegate.toml").replace(
        "secret_env = \"EDGEGATE_JWT_SECRET\"",
        &format!("secret_file = {:?}", secret.display().to_string()),
    );
    let table = RouteTable::new(&Config::parse(&text).expect("config")).expect("table");
    let _ = std::fs::remove_dir_all(&dir);
    table
}

/// The id a request would look up, if any.
fn looked_up(t: &RouteTable, host: &str, path: &str) -> Option<WorkspaceId> {
    let host = edgegate::headers::normalize_host(host).ok()?;
    match t.match_request(&host, path, None, false).ok()? {
        RouteMatch::Workspace(m) => Some(m.id),
        _ => None,
    }
}

const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz";

fn ulid_like() -> impl Strategy<Value = String> {
    // Mostly valid ids in mixed case, sometimes with a stray character or wrong length.
    prop_oneof![
        4 => (prop::sample::select(vec!['0', '1', '2', '3', '4', '5', '6', '7']),
              prop::collection::vec(prop::sample::select(CROCKFORD.chars().collect::<Vec<_>>()), 25))
            .prop_map(|(first, rest)| std::iter::once(first).chain(rest).collect()),
        1 => "[0-9A-Za-z%./_-]{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_looked_up_id_is_canonical(id in ulid_like(), port in proptest::option::of(1u16..65535),
                                       upper in any::<bool>(), dot in any::<bool>(),
                                       rest in "[a-z0-9/._%-]{0,20}") {
        let t = table();
        let mut host = format!("ws-{id}.example.com");
        if upper { host = host.to_ascii_uppercase(); }
        if dot { host.push('.'); }
        if let Some(p) = port { host = format!("{host}:{p}"); }
        let path = format!("/__ide/{id}/{rest}");
        for (h, p) in [(host.as_str(), "/"), ("app.example.com", path.as_str())] {
            if let Some(found) = looked_up(t, h, p) {
                let s = found.as_str();
                prop_assert_eq!(s.len(), 26);
                prop_assert!(s.bytes().all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)));
                prop_assert!(s.as_bytes()[0] <= b'7');
                prop_assert_eq!(Some(found), WorkspaceId::parse(s));
                // The id came from the request, only upper-cased.
                prop_assert!(id.eq_ignore_ascii_case(s));
            }
        }
    }

    #[test]
    fn same_workspace_exactly_when_canonical_ids_are_equal(a in ulid_like(), b in ulid_like(),
                                                            ua in any::<bool>(), ub in any::<bool>()) {
        let t = table();
        let case = |s: &str, up: bool| if up { s.to_ascii_uppercase() } else { s.to_ascii_lowercase() };
        let ha = format!("ws-{}.example.com", case(&a, ua));
        let hb = format!("ws-{}.example.com", case(&b, ub));
        let (ia, ib) = (looked_up(t, &ha, "/"), looked_up(t, &hb, "/"));
        if let (Some(ia), Some(ib)) = (ia, ib) {
            let canon_equal = WorkspaceId::parse(&a) == WorkspaceId::parse(&b);
            prop_assert_eq!(ia == ib, canon_equal);
            prop_assert_eq!(ia == ib, a.eq_ignore_ascii_case(&b));
        }
        // The tunnel route agrees with the host route.
        let pa = looked_up(t, "app.example.com", &format!("/__ide/{a}/x"));
        prop_assert_eq!(pa, ia);
    }
}
