//! Attacks on the shared-ports feature (issue #17). Every test here FAILS today: each one
//! demonstrates a hole and states the behaviour a fix must give. Same harness and `Site`
//! pattern as tests/ports.rs (real Redis, real upstreams, the real gateway, loopback only).

mod common;

use common::*;
use std::time::Duration;

const CONTENT: &str = "example-content.test";
const MEMBER_SESSION: &str = "sess-member";
const ORG: &str = "acme";

const PORTS: &str = r#"
[[route]]
name = "port"
host = "ws-{id}--{port}.{content_domain}"
key = "workspace:{id}"
status_field = "status"
allowed_ports = ["1024-65535"]
auth = ["port_cookie", "port_token", "share_link"]

[ports]
cookie = "edgegate_port"
"#;

struct Site {
    w: World,
}

impl Site {
    async fn start(extra: &str) -> Site {
        let redis = Redis::start();
        let a = upstream("upstream-a").await;
        let b = upstream("upstream-b").await;
        let app = upstream("app").await;
        let cache = "[cache]\nttl_ms = 1\nnegative_ttl_ms = 1\n";
        let text = config_text(
            free_port(),
            redis.port,
            app.addr,
            &format!("{cache}{extra}{PORTS}"),
        )
        .replacen(
            &format!("base_domain = \"{DOMAIN}\"\n"),
            &format!("base_domain = \"{DOMAIN}\"\ncontent_domain = \"{CONTENT}\"\n"),
            1,
        );
        let gw = Gateway::start(&text);
        redis.wait_for_subscriber("edgegate:invalidate");
        redis.sessions();
        redis.hset(
            &format!("session:{MEMBER_SESSION}"),
            &[("user", "user-3"), ("org", ORG)],
        );
        Site {
            w: World {
                redis,
                a,
                b,
                app,
                gw,
            },
        }
    }

    /// Workspace `id` on upstream A, owned by `owner` of `org`, with `settings` for port
    /// `port` (A's port unless given).
    fn record(&self, id: &str, owner: &str, org: &str, port: u16, settings: Option<&str>) {
        let backend = self.w.a.addr.to_string();
        let field = format!("port.{port}");
        let mut fields = vec![
            ("backend", backend.as_str()),
            ("owner", owner),
            ("status", "running"),
            ("org", org),
        ];
        if let Some(s) = settings {
            fields.push((field.as_str(), s));
        }
        self.w.redis.hset(&format!("workspace:{id}"), &fields);
    }

    fn workspace(&self, id: &str, settings: Option<&str>) {
        self.record(id, OWNER, ORG, self.a_port(), settings);
        self.invalidate(&format!("workspace:{id}"));
    }

    fn invalidate(&self, key: &str) {
        self.w.redis.publish("edgegate:invalidate", key);
    }

    fn host(&self, id: &str, port: u16) -> String {
        format!(
            "ws-{}--{port}.{CONTENT}:{}",
            id.to_ascii_lowercase(),
            self.w.gw.port
        )
    }

    fn app(&self) -> String {
        format!("{DOMAIN}:{}", self.w.gw.port)
    }

    fn a_port(&self) -> u16 {
        self.w.a.addr.port()
    }

    async fn navigate(&self, host: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut all = vec![("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Site", "none")];
        all.extend_from_slice(headers);
        self.w.gw.request("GET", host, target, &all).await
    }

    /// `GET {api}/{id}/{port}/authorize` with app session `session`: the code URL on the
    /// content host (path and query), as the app's 303 names it.
    async fn code_url(&self, id: &str, port: u16, session: &str, path: &str) -> String {
        let r = self
            .w
            .gw
            .request(
                "GET",
                &self.app(),
                &format!("/api/ports/{id}/{port}/authorize?path={path}"),
                &[
                    ("Cookie", &format!("session={session}")),
                    ("Sec-Fetch-Mode", "navigate"),
                    ("Sec-Fetch-Site", "cross-site"),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "authorize: {r:?}");
        let back = r.header("location").expect("location").to_string();
        back.strip_prefix(&format!("http://{}", self.host(id, port)))
            .unwrap_or_else(|| panic!("back on the content host: {back}"))
            .to_string()
    }

    /// The whole sign-in of a browser holding `session`, for `id`'s A port.
    async fn sign_in(&self, id: &str, session: &str) -> String {
        let host = self.host(id, self.a_port());
        let code = self.code_url(id, self.a_port(), session, "%2F").await;
        let r = self.navigate(&host, &code, &[]).await;
        assert_eq!(r.status, 303, "{r:?}");
        cookie_value(r.header("set-cookie").expect("set-cookie"), "edgegate_port")
    }

    /// A share link (path and query on the content host) minted by `session`.
    async fn share_link(&self, id: &str, session: &str) -> String {
        let app = self.app();
        let r = self
            .w
            .gw
            .request(
                "POST",
                &app,
                &format!("/api/ports/{id}/{}/share?ttl_secs=3600", self.a_port()),
                &[
                    ("Cookie", &format!("session={session}")),
                    ("Origin", &format!("http://{app}")),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "share: {r:?}");
        let url = r.json()["url"].as_str().expect("url").to_string();
        url.strip_prefix(&format!("http://{}", self.host(id, self.a_port())))
            .expect("content host")
            .to_string()
    }

    /// A plain request with port cookie `cookie`; the status and the user the upstream was told.
    async fn open(&self, id: &str, cookie: &str) -> (u16, Option<String>) {
        let before = self.w.a.count();
        let r = self
            .w
            .gw
            .request(
                "GET",
                &self.host(id, self.a_port()),
                "/",
                &[("Cookie", &format!("edgegate_port={cookie}"))],
            )
            .await;
        let user = if self.w.a.count() > before {
            self.w
                .a
                .seen()
                .last()
                .and_then(|s| s.header("x-edgegate-user").map(str::to_string))
        } else {
            None
        };
        (r.status, user)
    }
}

fn cookie_value(set_cookie: &str, name: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|p| p.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {set_cookie}"))
        .to_string()
}

/// An upstream that accepts and holds every request open (a long poll / SSE stream).
async fn holding_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
    addr
}

/// FINDING 1 (login CSRF beyond the documented one). SECURITY.md says the worst a crafted
/// link can do is sign the victim into the *attacker's* port. But a code is bound to nothing
/// in the browser that asked for it: any user who passes a port's visibility can mint a code
/// for that port (here: the victim's OWN `authenticated` port) and have the victim's browser
/// swap it in. The victim's existing cookie is overwritten and, on their own workspace, every
/// request now carries the attacker's identity to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_code_minted_by_another_user_signs_the_victim_into_the_victims_own_port() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"authenticated"}"#));
    let port = s.a_port();
    let host = s.host(ID_A, port);

    // The victim (the workspace's owner) is signed in to their own port as themselves.
    let victims = s.sign_in(ID_A, OWNER_SESSION).await;
    assert_eq!(s.open(ID_A, &victims).await, (200, Some(OWNER.into())));

    // The attacker (user-2, any signed-in user) gets a code for the victim's port from the
    // app's host with their own session, and does not use it.
    let code = s.code_url(ID_A, port, OTHER_SESSION, "%2F").await;

    // The victim's browser is made to open the attacker's URL (a link, `location =`, a popup,
    // from any site): a cross-site top-level navigation carrying the victim's own cookie.
    let r = s
        .w
        .gw
        .request(
            "GET",
            &host,
            &code,
            &[
                ("Sec-Fetch-Mode", "navigate"),
                ("Sec-Fetch-Site", "cross-site"),
                ("Sec-Fetch-Dest", "document"),
                ("Cookie", &format!("edgegate_port={victims}")),
            ],
        )
        .await;
    let planted = r
        .header("set-cookie")
        .map(|c| cookie_value(c, "edgegate_port"));
    let seen_as = match &planted {
        Some(c) => s.open(ID_A, c).await.1,
        None => None,
    };
    assert!(
        planted.is_none(),
        "a code minted for user-2 was exchanged in another browser ({} {:?}): the victim's \
         port cookie was overwritten, and their own workspace's upstream now sees \
         X-Edgegate-User = {seen_as:?}",
        r.status,
        r.header("location"),
    );
}

/// FINDING 1b: the exchange is not limited to navigations. From a page on a sibling
/// workspace (same site while the content domain is not on the PSL), an `<img src>` of the
/// code URL is a same-site subresource request whose SameSite=Lax `Set-Cookie` the browser
/// stores: the victim is silently signed into the target port as the attacker. No redirect
/// chain of the sign-in is ever a subresource (it is a navigation throughout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_the_code_exchange_sets_the_cookie_for_an_image_request() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"authenticated"}"#));
    let port = s.a_port();
    let host = s.host(ID_A, port);
    let code = s.code_url(ID_A, port, OTHER_SESSION, "%2F").await;
    let r = s
        .w
        .gw
        .request(
            "GET",
            &host,
            &code,
            &[
                ("Sec-Fetch-Mode", "no-cors"),
                ("Sec-Fetch-Site", "same-site"),
                ("Sec-Fetch-Dest", "image"),
                ("Referer", &format!("http://{}/", s.host(ID_B, 3000))),
            ],
        )
        .await;
    assert!(
        r.header("set-cookie").is_none(),
        "an <img> request exchanged a code and set the port cookie: {} {:?}",
        r.status,
        r.header("set-cookie")
    );
}

/// FINDING 2: a share link outlives its maker's ownership. Every other port credential is
/// checked against the record's *current* owner (SECURITY.md: "every credential names one user
/// and one id, checked against the record's current owner"); a share grant names its maker
/// but is never compared with the owner. After the workspace changes hands, the former
/// owner's links (and the cookies they were swapped for) keep opening the new owner's port,
/// private included, for up to `share_max_ttl_secs` (7 days).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_former_owners_share_link_keeps_opening_the_port_after_a_transfer() {
    let s = Site::start("").await;
    s.workspace(ID_A, None); // private
    let link = s.share_link(ID_A, OWNER_SESSION).await;
    let host = s.host(ID_A, s.a_port());
    let r = s.navigate(&host, &link, &[]).await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = cookie_value(r.header("set-cookie").expect("cookie"), "edgegate_port");
    assert_eq!(s.open(ID_A, &cookie).await.0, 200);
    // Control: the former owner's own session cookie is refused after the transfer.
    let owners = s.sign_in(ID_A, OWNER_SESSION).await;

    // The workspace is handed to user-2 (the app rewrites the owner and says so).
    s.record(ID_A, "user-2", ORG, s.a_port(), None);
    s.invalidate(&format!("workspace:{ID_A}"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            s.open(ID_A, &owners).await.0 == 403
        })
        .await,
        "control: the former owner's session cookie no longer opens the private port"
    );

    let by_cookie = s.open(ID_A, &cookie).await.0;
    let fresh = s.navigate(&host, &link, &[]).await.status;
    assert!(
        by_cookie != 200 && fresh != 303,
        "the former owner's share link still opens user-2's private port: cookie {by_cookie}, \
         link exchange {fresh}"
    );
}

/// FINDING 3: tightening drains check only visibility, not the relation behind the access.
/// DECISIONS.md: "an invalidation of the record ends the requests whose relation no longer
/// passes". An organization member's in-flight request (long poll, SSE, download) goes on
/// after the workspace leaves the organization (its `org` changes and the app says so),
/// though every new request of theirs is 403 and their WebSockets are closed. The same
/// holds for an `Owner` relation when the record's `owner` changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_members_stream_survives_the_workspace_leaving_the_org() {
    let s = Site::start("").await;
    let held = holding_upstream().await;
    // The workspace's backend is loopback: a `{port}` route reaches the held port there.
    let org_port = r#"{"visibility":"organization"}"#;
    s.record(ID_A, OWNER, ORG, held.port(), Some(org_port));
    s.invalidate(&format!("workspace:{ID_A}"));
    let held_host = s.host(ID_A, held.port());
    let code = s.code_url(ID_A, held.port(), MEMBER_SESSION, "%2F").await;
    let r = s.navigate(&held_host, &code, &[]).await;
    let cookie = cookie_value(r.header("set-cookie").expect("cookie"), "edgegate_port");

    let mut poll = {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(s.w.gw.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /events HTTP/1.1\r\nHost: {held_host}\r\nCookie: edgegate_port={cookie}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.expect("write");
        c
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The workspace moves to another organization; the app says so.
    s.record(ID_A, OWNER, "globex", held.port(), Some(org_port));
    s.invalidate(&format!("workspace:{ID_A}"));
    // Control: the member's next request is refused.
    let again = s
        .w
        .gw
        .request(
            "GET",
            &held_host,
            "/",
            &[("Cookie", &format!("edgegate_port={cookie}"))],
        )
        .await;
    assert_eq!(again.status, 403, "control: {again:?}");

    let mut rest = Vec::new();
    let ended = {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(5), poll.read_to_end(&mut rest))
            .await
            .is_ok()
    };
    assert!(
        ended,
        "the former member's stream is still open 5 s after the workspace left the org (it \
         lasts until the upstream's 60 s read timeout, or for ever if the upstream trickles)"
    );
}

/// FINDING 4: a public port's anonymous WebSockets are re-checked only when an invalidation
/// message arrives. Every other tunnel is re-checked every `auth.recheck_interval_ms` ("a
/// session deleted without an invalidation message, a record changed behind the cache"),
/// but the loop only schedules re-checks for tunnels with a principal, and a public port has
/// none. A port made private while the message is lost (a Redis failover, a subscriber
/// reconnecting, a write from a tool that does not publish) leaves every anonymous tunnel
/// open for as long as it has traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_public_port_websocket_is_never_rechecked_on_its_timer() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"public"}"#));
    let host = s.host(ID_A, s.a_port());
    let mut ws = ws_connect(s.w.gw.addr, &host, "/ws", &[])
        .await
        .expect("anonymous tunnel on the public port");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-a:hi");

    // The port is made private, without an invalidation message (the cache lives 1 ms here,
    // so every new request sees it at once).
    s.record(ID_A, OWNER, ORG, s.a_port(), Some(r#"{"visibility":"private"}"#));
    let fresh = s.w.gw.request("GET", &host, "/", &[]).await;
    assert_eq!(fresh.status, 401, "control: a new anonymous request is refused");

    // Well past several re-check intervals (1 s), with traffic flowing: still open.
    let mut still_open = 0;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => still_open += 1,
            _ => break,
        }
    }
    assert!(
        still_open < 8,
        "an anonymous tunnel to a port made private 4 s ago still round-trips ({still_open}/8)"
    );
}
