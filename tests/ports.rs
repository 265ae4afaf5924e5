//! Shared ports on a content site of their own (issue #17, SPEC §8): the sign-in through the
//! app's host and back with a host-only cookie, each visibility against each kind of
//! visitor, tightening a port while its requests and WebSockets are open, CORS between a
//! workspace's ports, port tokens and share links. Real Redis, real upstreams, the real
//! gateway; assertions on what the visitor got and on what the upstream received.

mod common;

use common::*;
use std::time::Duration;

/// Sessions beside `OWNER_SESSION` (user-1) and `OTHER_SESSION` (user-2, no organization).
const MEMBER_SESSION: &str = "sess-member";
const OUTSIDER_SESSION: &str = "sess-outsider";
const ORG: &str = "acme";

struct Site {
    w: World,
    /// The gateway's config (a second instance runs the same).
    text: String,
}

impl Site {
    async fn start(extra: &str) -> Site {
        Self::start_with(extra, PORTS).await
    }

    /// With another content route and `[ports]` table than `PORTS`.
    async fn start_with(extra: &str, ports: &str) -> Site {
        // Records are read afresh on each request (a 1 ms cache): a test that rewrites one
        // sees the change on its next request, without racing the invalidation message.
        Self::start_cached("[cache]\nttl_ms = 1\nnegative_ttl_ms = 1\n", extra, ports).await
    }

    /// With the `[cache]` table `cache`.
    async fn start_cached(cache: &str, extra: &str, ports: &str) -> Site {
        let redis = Redis::start();
        let a = upstream("upstream-a").await;
        let b = upstream("upstream-b").await;
        let app = upstream("app").await;
        let text = with_content_domain(&config_text(
            free_port(),
            redis.port,
            app.addr,
            &format!("{cache}{extra}{ports}"),
        ));
        let gw = Gateway::start(&text);
        redis.wait_for_subscriber("edgegate:invalidate");
        redis.sessions();
        redis.hset(
            &format!("session:{MEMBER_SESSION}"),
            &[("user", "user-3"), ("org", ORG)],
        );
        redis.hset(
            &format!("session:{OUTSIDER_SESSION}"),
            &[("user", "user-4"), ("org", "globex")],
        );
        Site {
            w: World {
                redis,
                a,
                b,
                app,
                gw,
            },
            text,
        }
    }

    /// Workspace `id` on upstream A, owned by user-1 of `ORG`, with `settings` (JSON) for A's
    /// port when given.
    fn workspace(&self, id: &str, settings: Option<&str>) {
        let backend = self.w.a.addr.to_string();
        let field = format!("port.{}", self.w.a.addr.port());
        let mut fields = vec![
            ("backend", backend.as_str()),
            ("owner", OWNER),
            ("status", "running"),
            ("org", ORG),
        ];
        if let Some(s) = settings {
            fields.push((field.as_str(), s));
        }
        self.w.redis.hset(&format!("workspace:{id}"), &fields);
        self.w
            .redis
            .publish("edgegate:invalidate", &format!("workspace:{id}"));
    }

    fn set_visibility(&self, id: &str, visibility: &str) {
        let _: () = redis::cmd("HSET")
            .arg(format!("workspace:{id}"))
            .arg(format!("port.{}", self.w.a.addr.port()))
            .arg(format!("{{\"visibility\":\"{visibility}\"}}"))
            .query(&mut self.w.redis.conn())
            .expect("HSET");
        self.w
            .redis
            .publish("edgegate:invalidate", &format!("workspace:{id}"));
    }

    /// The content host of `id`'s port `port`, as a browser sends it.
    fn host(&self, id: &str, port: u16) -> String {
        format!(
            "ws-{}--{port}.{CONTENT}:{}",
            id.to_ascii_lowercase(),
            self.w.gw.port
        )
    }

    fn a_port(&self) -> u16 {
        self.w.a.addr.port()
    }

    /// A browser's navigation, with extra headers.
    async fn navigate(&self, host: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut all = vec![("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Site", "none")];
        all.extend_from_slice(headers);
        self.w.gw.request("GET", host, target, &all).await
    }

    /// Step 1 of a browser's sign-in: its navigation to the content host, sent to the app's
    /// host with a state nonce (a cookie on the content host).
    async fn begin(&self, id: &str, port: u16, target: &str) -> SignIn {
        let host = self.host(id, port);
        let first = self.navigate(&host, target, &[]).await;
        assert_eq!(first.status, 303, "sent to sign in: {first:?}");
        let to_app = first.header("location").expect("location").to_string();
        let app_prefix = format!("http://{DOMAIN}:{}", self.w.gw.port);
        let app_target = to_app
            .strip_prefix(&app_prefix)
            .unwrap_or_else(|| panic!("the sign-in is on the app's host: {to_app}"))
            .to_string();
        let state = cookie_value(
            first.header("set-cookie").expect("the state cookie"),
            "edgegate_port_state",
        );
        SignIn {
            host,
            app_target,
            state,
        }
    }

    /// Step 2: the app's host, with the app session `session` (or none): the code's URL on
    /// the content host (path and query), or the refusal.
    async fn authorize(&self, sign: &SignIn, session: Option<&str>) -> Result<String, Resp> {
        let cookie = session.map(|s| format!("session={s}"));
        let mut headers = vec![
            ("Sec-Fetch-Mode", "navigate"),
            ("Sec-Fetch-Site", "cross-site"),
        ];
        if let Some(c) = &cookie {
            headers.push(("Cookie", c));
        }
        let app = self
            .w
            .gw
            .request("GET", &self.app(), &sign.app_target, &headers)
            .await;
        if app.status != 303 {
            return Err(app);
        }
        let back = app.header("location").expect("location").to_string();
        let code = back
            .strip_prefix(&format!("http://{}", sign.host))
            .unwrap_or_else(|| panic!("back on the content host: {back}"));
        assert!(code.starts_with("/__edgegate/auth?token="), "{back}");
        Ok(code.to_string())
    }

    /// Step 3: the exchange on `host`, from a browser holding state cookie `state`.
    async fn exchange(&self, host: &str, code: &str, state: Option<&str>) -> Resp {
        let cookie = state.map(|s| format!("edgegate_port_state={s}"));
        let mut headers = vec![];
        if let Some(c) = &cookie {
            headers.push(("Cookie", c.as_str()));
        }
        self.navigate(host, code, &headers).await
    }

    /// The whole sign-in of a browser holding the app session `session` (or none) for `id`'s
    /// port `port`, starting at `target`: the port cookie's value, or the response that
    /// refused.
    async fn sign_in_port(
        &self,
        id: &str,
        port: u16,
        session: Option<&str>,
        target: &str,
    ) -> Result<String, Resp> {
        let sign = self.begin(id, port, target).await;
        let code = self.authorize(&sign, session).await?;
        let exchanged = self.exchange(&sign.host, &code, Some(&sign.state)).await;
        assert_eq!(exchanged.status, 303, "{exchanged:?}");
        assert_eq!(
            exchanged.header("location"),
            Some(target),
            "back where the visitor started"
        );
        let set = exchanged.header("set-cookie").expect("the port cookie");
        Ok(cookie_value(set, "edgegate_port"))
    }

    /// `sign_in_port` for the A port.
    async fn sign_in(&self, id: &str, session: Option<&str>, target: &str) -> Result<String, Resp> {
        self.sign_in_port(id, self.a_port(), session, target).await
    }

    fn app(&self) -> String {
        format!("{DOMAIN}:{}", self.w.gw.port)
    }

    /// A plain request with port cookie `cookie` to `id`'s A port: the status, and the user
    /// the upstream was told (when it was reached).
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
        let user = (self.w.a.count() > before)
            .then(|| {
                self.w
                    .a
                    .seen()
                    .last()
                    .and_then(|s| s.header("x-edgegate-user").map(str::to_string))
            })
            .flatten();
        (r.status, user)
    }

    /// Write workspace `id` with `owner` and `org`, and `settings` for port `port`, without
    /// an invalidation message.
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
}

/// A sign-in under way: the content host, the app-host URL it was sent to, its state nonce.
struct SignIn {
    host: String,
    app_target: String,
    state: String,
}

/// The `jti` of a JWT (its grant's id), read without checking the signature.
fn jti_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("json");
    claims["jti"].as_str().expect("jti").to_string()
}

/// The value a `Set-Cookie` sets for `name`.
fn cookie_value(set_cookie: &str, name: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|p| p.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {set_cookie}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_without_a_port_credential_signs_in_through_the_app_and_gets_a_host_only_cookie()
{
    let s = Site::start("").await;
    s.workspace(ID_A, None);
    let port = s.a_port();
    let host = s.host(ID_A, port);

    // No credential: sent to the app's host (where the app session lives), never proxied.
    let first = s.navigate(&host, "/x?y=1&token=leak", &[]).await;
    assert_eq!(first.status, 303);
    let location = first.header("location").expect("location");
    let want = format!(
        "http://{DOMAIN}:{}/api/ports/{ID_A}/{port}/authorize?path=/x%3Fy%3D1&state=",
        s.w.gw.port
    );
    assert!(
        location.starts_with(&want),
        "the way back, without any token parameter, and this browser's nonce: {location}"
    );
    let state = cookie_value(
        first.header("set-cookie").expect("state"),
        "edgegate_port_state",
    );
    assert!(location.ends_with(&format!("state={state}")), "{location}");
    // A fetch is told 401 (a redirect would be followed blindly), an upgrade too.
    let fetch = s.w.gw.request("GET", &host, "/x", &[]).await;
    assert_eq!(
        (fetch.status, fetch.error_code().as_str()),
        (401, "unauthenticated")
    );
    assert_eq!(s.w.a.count(), 0, "nothing reached the upstream");

    // The whole sign-in, then the port with its cookie.
    let cookie = s
        .sign_in(ID_A, Some(OWNER_SESSION), "/x?y=1")
        .await
        .expect("owner");
    let r =
        s.w.gw
            .request(
                "GET",
                &host,
                "/x?y=1",
                &[("Cookie", &format!("edgegate_port={cookie}; theirs=1"))],
            )
            .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.w.a.seen();
    let last = seen.last().expect("the upstream saw it");
    assert_eq!(last.target, "/x?y=1");
    assert_eq!(
        last.header("cookie"),
        Some("theirs=1"),
        "the port cookie stays here"
    );
    assert_eq!(last.header("x-edgegate-user"), Some(OWNER));
    assert_eq!(
        last.header("host"),
        Some(host.as_str()),
        "the browser's Host"
    );

    // The cookie: host-only (no Domain), HttpOnly, for the whole host; the nonce goes.
    let sign = s.begin(ID_A, port, "/").await;
    let code = s.authorize(&sign, Some(OWNER_SESSION)).await.expect("code");
    let exchanged = s.exchange(&host, &code, Some(&sign.state)).await;
    let sets: Vec<&str> = exchanged
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    let set = sets
        .iter()
        .find(|c| c.starts_with("edgegate_port="))
        .expect("the port cookie");
    assert!(!set.to_ascii_lowercase().contains("domain"), "{set}");
    assert!(set.contains("Path=/;") && set.contains("HttpOnly"), "{set}");
    assert!(
        sets.iter()
            .any(|c| c.starts_with("edgegate_port_state=;") && c.contains("Max-Age=0")),
        "{sets:?}"
    );
    assert_eq!(exchanged.header("referrer-policy"), Some("no-referrer"));
    // The code is spent: the same URL again signs nobody in.
    let replay =
        s.w.gw
            .request(
                "GET",
                &host,
                &code,
                &[("Cookie", &format!("edgegate_port_state={}", sign.state))],
            )
            .await;
    assert_eq!(
        (replay.status, replay.error_code().as_str()),
        (401, "token_spent")
    );
    // A code for one port opens no other (nor another workspace).
    let sign = s.begin(ID_A, port, "/").await;
    let code = s.authorize(&sign, Some(OWNER_SESSION)).await.expect("code");
    let elsewhere = s
        .exchange(&s.host(ID_A, port + 1), &code, Some(&sign.state))
        .await;
    assert_eq!(elsewhere.status, 403, "{elsewhere:?}");
    // The app's host, reached without a nonce (a bookmark, a link): the sign-in starts over
    // on the content host, and no code is handed out.
    let bare =
        s.w.gw
            .request(
                "GET",
                &s.app(),
                &format!("/api/ports/{ID_A}/{port}/authorize?path=%2Fq"),
                &[("Cookie", &format!("session={OWNER_SESSION}"))],
            )
            .await;
    assert_eq!(bare.status, 303);
    assert_eq!(
        bare.header("location"),
        Some(format!("http://{host}/q").as_str())
    );
    // A port cookie of one port is no credential on another.
    let other_port =
        s.w.gw
            .request(
                "GET",
                &s.host(ID_A, port + 1),
                "/",
                &[("Cookie", &format!("edgegate_port={cookie}"))],
            )
            .await;
    assert_eq!(other_port.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_visibility_lets_in_exactly_its_visitors() {
    let s = Site::start("").await;
    let port = s.a_port();
    let host = s.host(ID_A, port);
    // (visibility, [owner, member of the org, user of another org, signed-in user with no
    // org, anonymous]): whether each gets the port.
    let table = [
        ("private", [true, false, false, false, false]),
        ("organization", [true, true, false, false, false]),
        ("authenticated", [true, true, true, true, false]),
        ("public", [true, true, true, true, true]),
    ];
    let visitors = [
        Some(OWNER_SESSION),
        Some(MEMBER_SESSION),
        Some(OUTSIDER_SESSION),
        Some(OTHER_SESSION),
        None,
    ];
    for (visibility, want) in table {
        s.workspace(ID_A, Some(&format!("{{\"visibility\":\"{visibility}\"}}")));
        for (visitor, want) in visitors.iter().zip(want) {
            let before = s.w.a.count();
            let got = if visibility == "public" {
                // No credential needed, none asked for.
                let mut headers = vec![];
                let c = visitor.map(|v| format!("session={v}"));
                if let Some(c) = &c {
                    headers.push(("Cookie", c.as_str()));
                }
                let r = s.navigate(&host, "/", &headers).await;
                assert_eq!(r.status, 200, "{visibility} {visitor:?}: {r:?}");
                let seen = s.w.a.seen();
                let last = seen.last().expect("seen");
                assert_eq!(last.header("x-edgegate-user"), None, "nobody in particular");
                assert_eq!(last.header("cookie"), None, "no credential of any kind");
                true
            } else {
                match s.sign_in(ID_A, *visitor, "/").await {
                    Ok(cookie) => {
                        let r =
                            s.w.gw
                                .request(
                                    "GET",
                                    &host,
                                    "/",
                                    &[("Cookie", &format!("edgegate_port={cookie}"))],
                                )
                                .await;
                        assert_eq!(r.status, 200, "{visibility} {visitor:?}: {r:?}");
                        true
                    }
                    Err(refused) => {
                        let want_status = if visitor.is_some() { 403 } else { 401 };
                        assert_eq!(
                            refused.status, want_status,
                            "{visibility} {visitor:?}: {refused:?}"
                        );
                        false
                    }
                }
            };
            assert_eq!(got, want, "{visibility}: {visitor:?}");
            assert_eq!(
                s.w.a.count() - before,
                usize::from(got),
                "{visibility} {visitor:?}: the upstream saw exactly the requests let in"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_gets_no_credential_of_any_kind_and_the_cap_holds() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"public"}"#));
    let host = s.host(ID_A, s.a_port());
    let ours = mint(edgegate::auth::token::TokenType::DevIde, ID_A, OWNER);
    let cookies = format!("session={OWNER_SESSION}; edgegate_ide=x; edgegate_port=y; app=1");
    let bearer = format!("Bearer {ours}");
    let r =
        s.w.gw
            .request(
                "GET",
                &host,
                "/p",
                &[
                    ("Cookie", &cookies),
                    ("Authorization", &bearer),
                    ("X-Edgegate-Port-Token", "abc"),
                    ("X_Edgegate_Port_Token", "abc"),
                ],
            )
            .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.w.a.seen();
    let last = seen.last().expect("seen");
    assert_eq!(last.header("cookie"), Some("app=1"));
    assert_eq!(last.header("authorization"), None);
    assert_eq!(last.header("x-edgegate-port-token"), None);
    assert_eq!(last.header("x_edgegate_port_token"), None);
    assert_eq!(last.header("x-edgegate-user"), None);

    // With ports.max_visibility = "authenticated", the same record opens to signed-in users
    // only.
    let capped = Site::start_with(
        "",
        &PORTS.replace("[ports]\n", "[ports]\nmax_visibility = \"authenticated\"\n"),
    )
    .await;
    capped.workspace(ID_A, Some(r#"{"visibility":"public"}"#));
    let host = capped.host(ID_A, capped.a_port());
    let anonymous = capped.w.gw.request("GET", &host, "/", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert!(capped.sign_in(ID_A, Some(OTHER_SESSION), "/").await.is_ok());
    assert!(capped.sign_in(ID_A, None, "/").await.is_err());
}

/// An upstream that holds every request open (a long poll): counts what it accepted.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_a_port_closes_what_no_longer_passes_on_the_spot() {
    let s = Site::start("").await;
    s.w.redis.wait_for_subscriber("edgegate:invalidate");
    s.workspace(ID_A, Some(r#"{"visibility":"authenticated"}"#));
    let port = s.a_port();
    let host = s.host(ID_A, port);
    let visitor = s
        .sign_in(ID_A, Some(OTHER_SESSION), "/")
        .await
        .expect("signed in");
    let owner = s
        .sign_in(ID_A, Some(OWNER_SESSION), "/")
        .await
        .expect("owner");
    let origin = format!("http://{host}");
    let open = |cookie: String| {
        let (gw, host, origin) = (s.w.gw.addr, host.clone(), origin.clone());
        async move {
            ws_connect(
                gw,
                &host,
                "/ws",
                &[
                    ("Cookie", &format!("edgegate_port={cookie}")),
                    ("Origin", &origin),
                ],
            )
            .await
            .expect("open")
        }
    };
    let mut theirs = open(visitor.clone()).await;
    let mut mine = open(owner.clone()).await;
    assert_eq!(ws_roundtrip(&mut theirs, "hi").await, "upstream-a:hi");
    // The visitor's WebSocket on a second instance too.
    let second = Gateway::start(&s.text.replace(
        &format!("127.0.0.1:{}", s.w.gw.port),
        &format!("127.0.0.1:{}", free_port()),
    ));
    let second_host = host.replace(&s.w.gw.port.to_string(), &second.port.to_string());
    let mut theirs_too = ws_connect(
        second.addr,
        &second_host,
        "/ws",
        &[
            ("Cookie", &format!("edgegate_port={visitor}")),
            ("Origin", &format!("http://{second_host}")),
        ],
    )
    .await
    .expect("open on the second instance");
    assert_eq!(ws_roundtrip(&mut theirs_too, "hi").await, "upstream-a:hi");

    // A long poll of the visitor's, on another port of the workspace that holds it open.
    let held = holding_upstream().await;
    let field = format!("port.{}", held.port());
    let _: () = redis::cmd("HSET")
        .arg(format!("workspace:{ID_A}"))
        .arg(&field)
        .arg(r#"{"visibility":"authenticated"}"#)
        .query(&mut s.w.redis.conn())
        .expect("HSET");
    s.w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let held_host = s.host(ID_A, held.port());
    let poll_cookie = s
        .sign_in_port(ID_A, held.port(), Some(OTHER_SESSION), "/")
        .await
        .expect("the held port's sign-in");
    // A `{port}` route reaches that port on the record's host (127.0.0.1 here).
    let mut poll = {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(s.w.gw.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /poll HTTP/1.1\r\nHost: {held_host}\r\nCookie: edgegate_port={poll_cookie}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.expect("write");
        c
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The owner makes both ports private again and says so.
    let _: () = redis::cmd("HSET")
        .arg(format!("workspace:{ID_A}"))
        .arg(&field)
        .arg(r#"{"visibility":"private"}"#)
        .query(&mut s.w.redis.conn())
        .expect("HSET");
    s.set_visibility(ID_A, "private");
    // Bounds, not timings: far below the 1 h WebSocket idle and 60 s upstream timeouts.
    assert_eq!(
        expect_close(&mut theirs, Duration::from_secs(10)).await,
        1008
    );
    assert_eq!(
        expect_close(&mut theirs_too, Duration::from_secs(10)).await,
        1008
    );
    let mut rest = Vec::new();
    {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(10), poll.read_to_end(&mut rest))
            .await
            .expect("the long poll ends (not at the 60 s upstream timeout)")
            .ok();
    }
    let r = parse_response(&rest);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_not_running"),
        "{r:?}"
    );
    // The owner passes private: their WebSocket goes on, and the visitor is refused now.
    assert_eq!(ws_roundtrip(&mut mine, "still").await, "upstream-a:still");
    let again =
        s.w.gw
            .request(
                "GET",
                &host,
                "/",
                &[("Cookie", &format!("edgegate_port={visitor}"))],
            )
            .await;
    assert_eq!(again.status, 403);
    let m = s.w.gw.admin_get("/metrics").await.body;
    assert!(
        m.contains("edgegate_drained_total{cause=\"access_changed\",kind=\"http\"} 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("drained"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_between_a_workspaces_ports_is_edgegates_and_nothing_else_gets_in() {
    let s = Site::start("").await;
    s.workspace(ID_A, None);
    let port = s.a_port();
    let host = s.host(ID_A, port);
    let sibling = format!("http://{}", s.host(ID_A, port + 1));
    let stranger = format!("http://{}", s.host(ID_B, port + 1));

    // The preflight to the private port carries no cookie: edgegate answers it for the
    // workspace's own other port, and nothing reaches the upstream.
    let preflight = |origin: String| {
        let (gw, host) = (&s.w.gw, host.clone());
        async move {
            gw.request(
                "OPTIONS",
                &host,
                "/api",
                &[
                    ("Origin", &origin),
                    ("Access-Control-Request-Method", "PUT"),
                    ("Access-Control-Request-Headers", "content-type, x-thing"),
                ],
            )
            .await
        }
    };
    let ok = preflight(sibling.clone()).await;
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some(sibling.as_str())
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type, x-thing")
    );
    let refused = preflight(stranger.clone()).await;
    assert_eq!(refused.status, 401, "another workspace's page gets nothing");
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(s.w.a.count(), 0);

    // The credentialed request from the sibling: edgegate's CORS headers, once each.
    let cookie = s
        .sign_in(ID_A, Some(OWNER_SESSION), "/")
        .await
        .expect("owner");
    let from = |origin: String| {
        let (gw, host, cookie) = (&s.w.gw, host.clone(), cookie.clone());
        async move {
            gw.request(
                "GET",
                &host,
                "/api",
                &[
                    ("Origin", &origin),
                    ("Cookie", &format!("edgegate_port={cookie}")),
                    ("Sec-Fetch-Site", "same-site"),
                    ("Sec-Fetch-Mode", "cors"),
                ],
            )
            .await
        }
    };
    let r = from(sibling.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let acao: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "access-control-allow-origin")
        .collect();
    assert_eq!(acao.len(), 1);
    assert_eq!(acao[0].1, sibling);
    // Another workspace's page, with the visitor's cookie riding along: refused.
    let r = from(stranger).await;
    assert_eq!(r.status, 403, "{r:?}");

    // passthru: the app answers; a preflight without a credential does not get past a
    // private port.
    s.workspace(ID_A, Some(r#"{"cors":"passthru"}"#));
    let before = s.w.a.count();
    let r = preflight(sibling.clone()).await;
    assert_eq!(r.status, 401);
    assert_eq!(s.w.a.count(), before);
    s.workspace(ID_A, Some(r#"{"cors":"passthru","visibility":"public"}"#));
    let r = preflight(sibling).await;
    assert_eq!(r.status, 200, "the app's own answer");
    assert_eq!(
        s.w.a.seen().last().map(|x| x.method.clone()).as_deref(),
        Some("OPTIONS")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_token_opens_its_port_from_a_header_until_its_grant_or_session_goes() {
    let s = Site::start("").await;
    s.w.redis.wait_for_subscriber("edgegate:invalidate");
    s.workspace(ID_A, None);
    let port = s.a_port();
    let host = s.host(ID_A, port);
    let app = format!("{DOMAIN}:{}", s.w.gw.port);
    let mint = |session: &'static str, origin: Option<String>| {
        let (gw, app) = (&s.w.gw, app.clone());
        async move {
            let cookie = format!("session={session}");
            let mut h = vec![("Cookie", cookie.as_str())];
            let o = origin.unwrap_or_default();
            if !o.is_empty() {
                h.push(("Origin", o.as_str()));
            }
            gw.request("POST", &app, &format!("/api/ports/{ID_A}/{port}/token"), &h)
                .await
        }
    };
    // Another user may not mint one for a private port; a page of another origin may not
    // mint one at all.
    assert_eq!(mint(OTHER_SESSION, None).await.status, 403);
    let hostile = mint(OWNER_SESSION, Some(format!("http://{host}"))).await;
    assert_eq!(hostile.status, 403);
    let r = mint(OWNER_SESSION, Some(format!("http://{app}"))).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let token = v["token"].as_str().expect("token").to_string();
    assert_eq!(v["header"], "x-edgegate-port-token");

    let with = |t: String, host: String| {
        let gw = &s.w.gw;
        async move {
            gw.request("GET", &host, "/api", &[("X-Edgegate-Port-Token", &t)])
                .await
        }
    };
    let r = with(token.clone(), host.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.w.a.seen();
    let last = seen.last().expect("seen");
    assert_eq!(last.header("x-edgegate-port-token"), None, "stripped");
    assert_eq!(last.header("x-edgegate-user"), Some(OWNER));
    // Another port, a tampered token: refused.
    assert_eq!(
        with(token.clone(), s.host(ID_A, port + 1)).await.status,
        403
    );
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push('x');
    assert_eq!(with(tampered, host.clone()).await.status, 401);
    // The grant deleted (and said so): revoked.
    let gid = jti_of(&token);
    let key = format!("edgegate:grant:{gid}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query(&mut s.w.redis.conn())
        .expect("DEL");
    s.w.redis.publish("edgegate:invalidate", &key);
    assert!(
        eventually(Duration::from_secs(2), || async {
            with(token.clone(), host.clone()).await.status == 401
        })
        .await,
        "revoked within the cache's second"
    );
    // A fresh one dies with the session it was minted under.
    let r = mint(OWNER_SESSION, Some(format!("http://{app}"))).await;
    let token = r.json()["token"].as_str().expect("token").to_string();
    assert_eq!(with(token.clone(), host.clone()).await.status, 200);
    let _: () = redis::cmd("DEL")
        .arg(format!("session:{OWNER_SESSION}"))
        .query(&mut s.w.redis.conn())
        .expect("DEL");
    s.w.redis
        .publish("edgegate:invalidate", &format!("session:{OWNER_SESSION}"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            with(token.clone(), host.clone()).await.status == 401
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_open_one_port_for_anyone_until_revoked_and_never_reach_a_log() {
    let dir = Scratch::new("ports-share");
    let log = dir.join("access.log");
    let s = Site::start(&format!(
        "[log]\naccess_log = {:?}\n",
        log.display().to_string()
    ))
    .await;
    s.w.redis.wait_for_subscriber("edgegate:invalidate");
    s.workspace(ID_A, None);
    let port = s.a_port();
    let host = s.host(ID_A, port);
    let app = format!("{DOMAIN}:{}", s.w.gw.port);
    let share = |session: &'static str, q: &'static str| {
        let (gw, app) = (&s.w.gw, app.clone());
        async move {
            let cookie = format!("session={session}");
            let origin = format!("http://{app}");
            gw.request(
                "POST",
                &app,
                &format!("/api/ports/{ID_A}/{port}/share{q}"),
                &[("Cookie", &cookie), ("Origin", &origin)],
            )
            .await
        }
    };
    assert_eq!(
        share(OTHER_SESSION, "").await.status,
        403,
        "the owner's alone"
    );
    let r = share(OWNER_SESSION, "?ttl_secs=600").await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["expires_in"], 600);
    let url = v["url"].as_str().expect("url").to_string();
    let gid = v["id"].as_str().expect("id").to_string();
    let link = url.strip_prefix(&format!("http://{host}")).expect("host");
    let secret = link.split("token=").nth(1).expect("token").to_string();

    // An anonymous visitor follows it: a cookie, and the token leaves the URL.
    let r = s.navigate(&host, link, &[]).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    let cookie = cookie_value(r.header("set-cookie").expect("cookie"), "edgegate_port");
    let open = |c: String| {
        let (gw, host) = (&s.w.gw, host.clone());
        async move {
            gw.request(
                "GET",
                &host,
                "/",
                &[("Cookie", &format!("edgegate_port={c}"))],
            )
            .await
        }
    };
    let r = open(cookie.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.w.a.seen();
    assert_eq!(
        seen.last().expect("seen").header("x-edgegate-user"),
        None,
        "a link's holder is nobody in particular"
    );
    // Another port of the same workspace: the link is for one port.
    let elsewhere = s.navigate(&s.host(ID_A, port + 1), link, &[]).await;
    assert_eq!(elsewhere.status, 403);
    // Revoked through Redis: its cookies open nothing.
    let key = format!("edgegate:grant:{gid}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query(&mut s.w.redis.conn())
        .expect("DEL");
    s.w.redis.publish("edgegate:invalidate", &key);
    assert!(
        eventually(Duration::from_secs(2), || async {
            open(cookie.clone()).await.status == 401
        })
        .await
    );
    assert_eq!(s.navigate(&host, link, &[]).await.status, 401);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).expect("access log");
    assert!(text.contains("/__edgegate/auth"), "the exchange was logged");
    assert!(!text.contains(&secret), "the link is never logged");
    assert!(!text.contains(&cookie), "nor the cookie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_ports_visibility_and_the_rule() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"organization"}"#));
    let host = s.host(ID_A, s.a_port());
    let cookie = s
        .sign_in(ID_A, Some(MEMBER_SESSION), "/")
        .await
        .expect("member");
    let text = with_content_domain(&config_text(
        free_port(),
        s.w.redis.port,
        s.w.app.addr,
        PORTS,
    ));
    let config = edgegate::config::Config::parse(&text).expect("config");
    let q = edgegate::explain::Question {
        url: format!("http://{host}/"),
        method: "GET".into(),
        cookie: Some(format!("edgegate_port={cookie}")),
        token: None,
        origin: None,
        upgrade: false,
    };
    let a = edgegate::explain::explain(&config, &q)
        .await
        .expect("explain");
    assert!(
        a.report
            .contains("port visibility organization; rule: organization member"),
        "{}",
        a.report
    );
    let q = edgegate::explain::Question { cookie: None, ..q };
    let a = edgegate::explain::explain(&config, &q)
        .await
        .expect("explain");
    assert!(
        a.report.contains("port visibility organization"),
        "{}",
        a.report
    );
}

/// A grant revoked while its code is being exchanged stays revoked: the exchange extends the
/// grant's expiry and never writes back the grant it read. (It did: a grant the app deleted
/// between the gateway's read and its rewrite came back, and the port cookie worked.) The
/// window is made wide here: a port cookie naming the code's grant puts the grant in the
/// sessions cache, then the app deletes it without an invalidation message, so the exchange
/// reads a grant that is already gone from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_during_its_exchange_is_not_brought_back() {
    let s = Site::start_cached("[cache]\nttl_ms = 60000\n", "", PORTS).await;
    s.workspace(ID_A, None);
    let port = s.a_port();
    let sign = s.begin(ID_A, port, "/").await;
    let code_path = s
        .authorize(&sign, Some(OWNER_SESSION))
        .await
        .expect("a code");
    let code = code_path
        .split("token=")
        .nth(1)
        .and_then(|t| t.split('&').next())
        .expect("the code");
    let gid = jti_of(code);
    let id = edgegate::route::WorkspaceId::parse(ID_A).expect("id");
    let probe = keys()
        .mint_port(
            edgegate::auth::token::TokenType::PortCookie,
            &id,
            port,
            OWNER,
            &gid,
            60,
            None,
        )
        .expect("mint");
    // Read through the gateway (it opens the port): the grant is in the sessions cache now.
    assert_eq!(s.open(ID_A, &probe).await, (200, Some(OWNER.into())));
    let key = format!("edgegate:grant:{gid}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query(&mut s.w.redis.conn())
        .expect("DEL");
    let before = s.w.a.count();
    let r = s.exchange(&sign.host, &code_path, Some(&sign.state)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        !r.headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.starts_with("edgegate_port=") && v.len() > 40),
        "no port cookie: {r:?}"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query(&mut s.w.redis.conn())
        .expect("EXISTS");
    assert!(!exists, "the revoked grant stays deleted");
    assert_eq!(s.w.a.count(), before, "nothing reached the upstream");
}

// Found by an attacker's read of the first version (each failed then, passes now).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_signs_in_only_the_browser_that_started_its_sign_in() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"authenticated"}"#));
    let port = s.a_port();
    let host = s.host(ID_A, port);
    // The victim (the owner) is signed in to their own port.
    let victims = s
        .sign_in(ID_A, Some(OWNER_SESSION), "/")
        .await
        .expect("owner");
    assert_eq!(s.open(ID_A, &victims).await, (200, Some(OWNER.into())));
    // The attacker, any signed-in user, gets a code for that port in their own browser.
    let theirs = s.begin(ID_A, port, "/").await;
    let code = s
        .authorize(&theirs, Some(OTHER_SESSION))
        .await
        .expect("code");
    // The victim's browser is made to open it: with its own nonce, or none, it signs in
    // nobody, and the victim's cookie stays theirs.
    let victims_own = s.begin(ID_A, port, "/").await;
    for state in [Some(victims_own.state.as_str()), None] {
        let r = s.exchange(&host, &code, state).await;
        assert_eq!(r.status, 403, "{state:?}: {r:?}");
        assert!(r.header("set-cookie").is_none(), "{r:?}");
    }
    assert_eq!(s.open(ID_A, &victims).await, (200, Some(OWNER.into())));
    // And the code still works where it was started (it was not spent by the refusals).
    let r = s.exchange(&host, &code, Some(&theirs.state)).await;
    assert_eq!(r.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_and_the_sign_in_take_navigations_only() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"authenticated"}"#));
    let port = s.a_port();
    let host = s.host(ID_A, port);
    let sign = s.begin(ID_A, port, "/").await;
    let code = s.authorize(&sign, Some(OTHER_SESSION)).await.expect("code");
    // An <img> of the code URL from a sibling page, nonce and all: no cookie.
    let state = format!("edgegate_port_state={}", sign.state);
    let r =
        s.w.gw
            .request(
                "GET",
                &host,
                &code,
                &[
                    ("Sec-Fetch-Mode", "no-cors"),
                    ("Sec-Fetch-Site", "same-site"),
                    ("Sec-Fetch-Dest", "image"),
                    ("Cookie", &state),
                ],
            )
            .await;
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none(), "{r:?}");
    // A fetch of the sign-in from a hostile page: refused before it mints anything.
    let r =
        s.w.gw
            .request(
                "GET",
                &s.app(),
                &sign.app_target,
                &[
                    ("Sec-Fetch-Mode", "cors"),
                    ("Cookie", &format!("session={OWNER_SESSION}")),
                ],
            )
            .await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_link_ends_when_its_maker_no_longer_owns_the_workspace() {
    let s = Site::start("").await;
    s.workspace(ID_A, None);
    let app = s.app();
    let r =
        s.w.gw
            .request(
                "POST",
                &app,
                &format!("/api/ports/{ID_A}/{}/share?ttl_secs=3600", s.a_port()),
                &[
                    ("Cookie", &format!("session={OWNER_SESSION}")),
                    ("Origin", &format!("http://{app}")),
                ],
            )
            .await;
    let url = r.json()["url"].as_str().expect("url").to_string();
    let host = s.host(ID_A, s.a_port());
    let link = url.strip_prefix(&format!("http://{host}")).expect("host");
    let r = s.navigate(&host, link, &[]).await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = cookie_value(r.header("set-cookie").expect("cookie"), "edgegate_port");
    assert_eq!(s.open(ID_A, &cookie).await.0, 200);
    // The workspace changes hands (user-2's, private).
    s.record(ID_A, "user-2", ORG, s.a_port(), None);
    assert_eq!(s.open(ID_A, &cookie).await.0, 401);
    assert_eq!(s.navigate(&host, link, &[]).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_stream_ends_when_the_workspace_leaves_the_organization() {
    let s = Site::start("").await;
    let held = holding_upstream().await;
    let org_port = r#"{"visibility":"organization"}"#;
    s.record(ID_A, OWNER, ORG, held.port(), Some(org_port));
    let held_host = s.host(ID_A, held.port());
    let cookie = s
        .sign_in_port(ID_A, held.port(), Some(MEMBER_SESSION), "/")
        .await
        .expect("member");
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
    // The workspace moves to another organization, and the app says so.
    s.record(ID_A, OWNER, "globex", held.port(), Some(org_port));
    s.w.redis
        .publish("edgegate:invalidate", &format!("workspace:{ID_A}"));
    let mut rest = Vec::new();
    {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(10), poll.read_to_end(&mut rest))
            .await
            .expect("the stream ends (not at the 60 s upstream timeout)")
            .ok();
    }
    let r = parse_response(&rest);
    assert_eq!(r.status, 503, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_ports_websocket_is_rechecked_without_an_invalidation_message() {
    let s = Site::start("").await;
    s.workspace(ID_A, Some(r#"{"visibility":"public"}"#));
    let host = s.host(ID_A, s.a_port());
    let mut ws = ws_connect(s.w.gw.addr, &host, "/ws", &[])
        .await
        .expect("anonymous tunnel on the public port");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await, "upstream-a:hi");
    // Made private, and nobody says so (a lost message): the periodic re-check finds it.
    s.record(
        ID_A,
        OWNER,
        ORG,
        s.a_port(),
        Some(r#"{"visibility":"private"}"#),
    );
    assert_eq!(expect_close(&mut ws, Duration::from_secs(10)).await, 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_more_open_port_cannot_use_the_visitors_credentials_on_a_narrower_one() {
    let s = Site::start("").await;
    let port = s.a_port();
    let public = port + 1;
    // The A port is private, its sibling public (a demo that shows anyone's input, say).
    s.record(ID_A, OWNER, ORG, port, Some(r#"{"visibility":"private"}"#));
    let _: () = redis::cmd("HSET")
        .arg(format!("workspace:{ID_A}"))
        .arg(format!("port.{public}"))
        .arg(r#"{"visibility":"public"}"#)
        .query(&mut s.w.redis.conn())
        .expect("HSET");
    let host = s.host(ID_A, port);
    let origin = format!("http://{}", s.host(ID_A, public));
    let cookie = s
        .sign_in(ID_A, Some(OWNER_SESSION), "/")
        .await
        .expect("owner");
    let before = s.w.a.count();
    let preflight =
        s.w.gw
            .request(
                "OPTIONS",
                &host,
                "/",
                &[
                    ("Origin", &origin),
                    ("Access-Control-Request-Method", "PUT"),
                ],
            )
            .await;
    assert_eq!(preflight.status, 401);
    let read =
        s.w.gw
            .request(
                "GET",
                &host,
                "/",
                &[
                    ("Origin", &origin),
                    ("Cookie", &format!("edgegate_port={cookie}")),
                ],
            )
            .await;
    assert_eq!(read.status, 403, "{read:?}");
    assert_eq!(read.header("access-control-allow-origin"), None);
    assert_eq!(s.w.a.count(), before, "nothing reached the private port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_in_particular_does_not_wake_a_stopped_workspace() {
    let s = Site::start("").await;
    let field = format!("port.{}", s.a_port());
    s.w.redis.hset(
        &format!("workspace:{ID_A}"),
        &[
            ("backend", &s.w.a.addr.to_string()),
            ("owner", OWNER),
            ("status", "stopped"),
            (&field, r#"{"visibility":"public"}"#),
        ],
    );
    let r =
        s.w.gw
            .request("GET", &s.host(ID_A, s.a_port()), "/", &[])
            .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "workspace_not_running")
    );
    let woken: i64 = redis::cmd("XLEN")
        .arg("edgegate:wake")
        .query(&mut s.w.redis.conn())
        .expect("XLEN");
    assert_eq!(woken, 0, "an anonymous visit woke nothing");
}
