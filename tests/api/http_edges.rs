//! HTTP edges: form bodies of the wrong type (415 before any other work), the methods each
//! route has (405 with `Allow`), and which responses may be cached.

use portcullis::store::FailureQuery;

use crate::helpers::{hidden_field, spawn_app, spawn_app_with, TestApp, GOOD_PASSWORD};

/// Every route that takes a form.
const POST_ROUTES: &[&str] = &[
    "/login",
    "/logout",
    "/sessions/end-others",
    "/sessions/end",
    "/admin/unlock",
    "/login/second-factor",
    "/account/password",
    "/account/totp",
    "/account/totp/remove",
    "/account/recovery-codes",
    "/login/passkey",
    "/login/passkey/begin",
    "/login/second-factor/passkey/begin",
    "/account/passkeys",
    "/account/passkeys/begin",
    "/account/passkeys/rename",
    "/account/passkeys/remove",
];

/// Body types that are not a form this server reads (`None`: no Content-Type at all).
const NOT_FORMS: &[Option<&str>] = &[
    None,
    Some("text/plain"),
    Some("text/plain; charset=utf-8"),
    Some("multipart/form-data; boundary=x"),
    Some("application/json"),
    Some("application/x-www-form-urlencoded; charset=iso-8859-1"),
];

/// An administrator signed in on a fresh browser, with the home page's CSRF token.
async fn signed_in_admin(app: &TestApp) -> (reqwest::Client, String) {
    app.add_user("alice", GOOD_PASSWORD, true).await;
    let browser = app.new_browser();
    assert_eq!(app.login_with(&browser, "alice", GOOD_PASSWORD).await.status(), 303);
    let csrf = app.home_csrf(&browser).await;
    (browser, csrf)
}

async fn post_as(client: &reqwest::Client, url: String, content_type: Option<&str>, body: String) -> reqwest::Response {
    let mut req = client.post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

/// A request another site's page sent (the browser's `Sec-Fetch-Site` is `cross-site` or
/// `same-site`) is refused at every route before anything, even with the right token: 403,
/// no cookie set or cleared, no quota spent, the session live, nothing recorded but the
/// password form's attempts, as `csrf` (review 170: an empty form on another site signed the
/// browser out, and its `fetch()`es held the address's sign-ins and passkey button at 429).
#[tokio::test]
async fn every_request_another_sites_page_sends_is_refused_before_anything() {
    let app = spawn_app().await;
    let (browser, csrf) = signed_in_admin(&app).await;
    let form =
        [("csrf", csrf.as_str()), ("username", "alice"), ("password", GOOD_PASSWORD), ("current", GOOD_PASSWORD)];
    // 36 of them, past the address's 20 sign-ins a minute had any been spent.
    for route in POST_ROUTES.iter().chain(&["/account/confirm", "/nowhere"]) {
        for site in ["cross-site", "same-site"] {
            let resp = browser.post(app.url(route)).header("sec-fetch-site", site).form(&form).send().await.unwrap();
            assert_eq!(resp.status(), 403, "{route} from a {site} page");
            assert!(resp.headers().get("set-cookie").is_none(), "{route}: {:?}", resp.headers());
            assert!(resp.text().await.unwrap().contains("page sent this form, so nothing was done"), "{route}");
        }
    }
    let home = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200, "still signed in");
    let records = app.records(FailureQuery::default()).await;
    assert!(records.iter().all(|r| r.reason.as_str() == "csrf" && r.username == "alice"), "{records:?}");
    assert!(!records.is_empty(), "the password form's attempts are recorded");
    let fails =
        app.log_lines().into_iter().filter(|l| l["event"].as_str().is_some_and(|e| e.starts_with("authn_login_fail")));
    assert!(fails.into_iter().all(|l| l["reason"] == "csrf"));
    let other = app.new_browser();
    assert_eq!(app.login_with(&other, "alice", GOOD_PASSWORD).await.status(), 303, "the address quota is whole");
    // This site's own pages, and clients that send no fetch metadata, are served.
    for site in [Some("same-origin"), Some("none"), None] {
        let csrf = app.home_csrf(&browser).await;
        let mut signing_out = browser.post(app.url("/logout")).form(&[("csrf", csrf.as_str())]);
        if let Some(site) = site {
            signing_out = signing_out.header("sec-fetch-site", site);
        }
        assert_eq!(signing_out.send().await.unwrap().status(), 303, "{site:?}");
        assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 303, "{site:?}: signed out");
        assert_eq!(app.login_with(&browser, "alice", GOOD_PASSWORD).await.status(), 303);
    }
}

/// A browser that sends no fetch metadata still names the sending page's origin in `Origin`:
/// another site's is refused as `Sec-Fetch-Site: cross-site` is, at every route and at the
/// password form (recorded `csrf`), even with the right token (review 206: only
/// `Sec-Fetch-Site` was read), and `null` too (review 208). This site's own origin, with its
/// port, or `public_url`'s go on to the tokens.
#[tokio::test]
async fn without_fetch_metadata_another_sites_origin_is_refused_as_its_fetch_metadata_is() {
    let app = spawn_app_with(|s| s.public_url = Some("https://login.example.com".into())).await;
    let (browser, csrf) = signed_in_admin(&app).await;
    let form =
        [("csrf", csrf.as_str()), ("username", "alice"), ("password", GOOD_PASSWORD), ("current", GOOD_PASSWORD)];
    let port = app.addr.port();
    let others = [
        "https://evil.example".to_string(),
        format!("https://127.0.0.1:{}", port + 1),
        format!("http://127.0.0.1:{port}"),
        "https://login.example.com:8443".to_string(),
        "not an origin".to_string(),
        "null".to_string(),
    ];
    for route in POST_ROUTES {
        for origin in &others {
            let resp = browser.post(app.url(route)).header("origin", origin).form(&form).send().await.unwrap();
            assert_eq!(resp.status(), 403, "{route} from {origin}");
            assert!(resp.text().await.unwrap().contains("page sent this form, so nothing was done"), "{route}");
        }
    }
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200, "still signed in");
    let records = app.records(FailureQuery::default()).await;
    assert!(!records.is_empty() && records.iter().all(|r| r.reason.as_str() == "csrf"), "{records:?}");
    for origin in [format!("https://127.0.0.1:{port}"), "https://login.example.com".to_string()] {
        let csrf = app.home_csrf(&browser).await;
        let resp =
            browser.post(app.url("/logout")).header("origin", &origin).form(&[("csrf", csrf.as_str())]).send().await;
        assert_eq!(resp.unwrap().status(), 303, "{origin}: signed out");
        assert_eq!(app.login_with(&browser, "alice", GOOD_PASSWORD).await.status(), 303);
    }
}

#[tokio::test]
async fn every_post_route_answers_415_with_the_error_page_for_a_body_that_is_not_a_form() {
    let app = spawn_app().await;
    let (browser, csrf) = signed_in_admin(&app).await;
    // A valid body in every other respect: only its declared type is wrong.
    let body = format!("csrf={csrf}&username=alice");
    for route in POST_ROUTES {
        for ct in NOT_FORMS {
            let resp = post_as(&browser, app.url(route), *ct, body.clone()).await;
            assert_eq!(resp.status(), 415, "{route} with {ct:?}");
            assert_eq!(resp.headers()["cache-control"], "no-store", "{route} with {ct:?}");
            assert!(resp.headers().contains_key("content-security-policy"), "{route}");
            assert!(resp.text().await.unwrap().contains("Not a form"), "{route} with {ct:?}");
        }
    }
    // None of them did anything: the session is still there (no logout, no end-others).
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    assert!(app.log_lines().iter().all(|l| l["event"] != "user_unlocked"), "unlock ran");
}

#[tokio::test]
async fn a_login_posted_as_text_plain_signs_nobody_in_and_costs_no_quota_or_record() {
    // One attempt per address per hour: any 415 that counted would shut out the real one.
    let app = spawn_app_with(|s| s.login_quota_per_ip = portcullis::config::parse_rate("1/1h").unwrap()).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let page = app.client.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
    let csrf = hidden_field(&page, "csrf").unwrap();
    let body =
        serde_urlencoded::to_string([("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", &csrf)]).unwrap();
    for ct in NOT_FORMS {
        let resp = post_as(&app.client, app.url("/login"), *ct, body.clone()).await;
        assert_eq!(resp.status(), 415, "{ct:?}");
        assert!(crate::helpers::cookie_value(&resp, "__Host-portcullis").is_none(), "{ct:?} signed in");
    }
    assert!(app.records(FailureQuery { limit: 100, ..Default::default() }).await.is_empty(), "a 415 was recorded");
    let resp = post_as(&app.client, app.url("/login"), Some("application/x-www-form-urlencoded"), body).await;
    assert_eq!(resp.status(), 303, "the 415s used up the quota");
}

#[tokio::test]
async fn a_form_is_accepted_in_any_case_with_or_without_a_utf8_charset() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    for ct in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-URLEncoded",
        "application/x-www-form-urlencoded; charset=UTF-8",
        "application/x-www-form-urlencoded;charset=\"utf-8\"",
    ] {
        let browser = app.new_browser();
        let csrf = app.login_csrf(&browser).await;
        let body =
            serde_urlencoded::to_string([("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", &csrf)]).unwrap();
        assert_eq!(post_as(&browser, app.url("/login"), Some(ct), body).await.status(), 303, "{ct}");
    }
}

#[tokio::test]
async fn every_405_lists_the_methods_its_route_has_in_allow() {
    let app = spawn_app().await;
    let routes: &[(&str, &[&str])] = &[
        ("/", &["GET", "HEAD"]),
        ("/login", &["GET", "HEAD", "POST"]),
        ("/logout", &["POST"]),
        ("/sessions/end-others", &["POST"]),
        ("/sessions/end", &["POST"]),
        ("/admin/failed-logins", &["GET", "HEAD"]),
        ("/admin/unlock", &["POST"]),
        ("/login/second-factor", &["GET", "HEAD", "POST"]),
        ("/account", &["GET", "HEAD"]),
        ("/account/password", &["GET", "HEAD", "POST"]),
        ("/account/totp", &["GET", "HEAD", "POST"]),
        ("/account/totp/remove", &["POST"]),
        ("/account/recovery-codes", &["GET", "HEAD", "POST"]),
        ("/login/passkey", &["POST"]),
        ("/login/passkey/begin", &["POST"]),
        ("/login/second-factor/passkey/begin", &["POST"]),
        ("/account/passkeys", &["GET", "HEAD", "POST"]),
        ("/account/passkeys/begin", &["POST"]),
        ("/account/passkeys/rename", &["POST"]),
        ("/account/passkeys/remove", &["POST"]),
        ("/healthz", &["GET", "HEAD"]),
        ("/static/style.css", &["GET", "HEAD"]),
    ];
    let all = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"];
    for (route, allowed) in routes {
        for method in all {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = app
                .client
                .request(m, app.url(route))
                .header("content-type", "application/x-www-form-urlencoded")
                .send()
                .await
                .unwrap();
            if allowed.contains(&method) {
                assert_ne!(resp.status(), 405, "{method} {route}");
                continue;
            }
            assert_eq!(resp.status(), 405, "{method} {route}");
            let allow = resp.headers().get("allow").unwrap_or_else(|| panic!("{method} {route}: no Allow"));
            let listed: Vec<&str> = allow.to_str().unwrap().split(',').map(str::trim).collect();
            assert_eq!(&listed, allowed, "{method} {route}");
            assert_eq!(resp.headers()["cache-control"], "no-store", "{method} {route}");
        }
    }
}

#[tokio::test]
async fn only_a_static_file_that_exists_may_be_cached() {
    let app = spawn_app().await;
    let found = app.client.get(app.url("/static/style.css")).send().await.unwrap();
    assert_eq!(found.status(), 200);
    assert!(found.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let missing = app.client.get(app.url("/static/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["cache-control"], "no-store");
    let wrong_method = app.client.post(app.url("/static/style.css")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["cache-control"], "no-store");
}

/// HEAD over HTTP/2 on a path with no route (404) or a route without GET (405) ended the
/// stream with PROTOCOL_ERROR after the status (found by a review): the error page's body was
/// sent on a HEAD answer. Every HEAD answer now carries the headers and no body, as poem's
/// HEAD on a GET route does.
#[tokio::test]
async fn head_over_http2_on_error_answers_ends_cleanly_with_the_headers() {
    let app = spawn_app().await;
    let h2 = crate::helpers::browser_builder(&app.settings.cert_dir).http2_prior_knowledge().build().unwrap();
    for (path, status) in [("/nonexistent", 404), ("/logout", 405), ("/account/totp/remove", 405), ("/login", 200)] {
        let resp = h2.head(app.url(path)).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "{path}");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(resp.headers()["x-frame-options"], "DENY", "{path}: the security headers");
        let body = resp.bytes().await;
        assert!(body.as_ref().is_ok_and(|b| b.is_empty()), "{path}: {body:?}");
    }
}

/// The status line of the answer to `request`, sent as it is on a new HTTP/1.1 connection
/// (which it should close: `Connection: close`).
async fn status_line(app: &crate::helpers::TestApp, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn =
        crate::stalls::tls(&app.settings.cert_dir, app.addr, "127.0.0.1".parse().unwrap(), &[b"http/1.1"]).await;
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_string()
}

/// An HTTP/1.1 request without a `Host`, or with two, is answered 400 (RFC 9112 §3.2: "MUST
/// respond with a 400"; review 175 got 200 for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_without_one_host_is_refused() {
    let app = spawn_app().await;
    let status = |head: String| {
        let request = format!("GET /healthz HTTP/1.1\r\n{head}Connection: close\r\n\r\n");
        let app = &app;
        async move { status_line(app, request.as_bytes()).await }
    };
    let none = status(String::new()).await;
    let two = status("Host: a\r\nHost: b\r\n".into()).await;
    let listed = status("Host: 127.0.0.1, evil.example\r\n".into()).await;
    // Not a host (review 180).
    for host in ["u@127.0.0.1", "127.0.0.1/x", "a;b", ""] {
        assert_eq!(status(format!("Host: {host}\r\n")).await, "HTTP/1.1 400 Bad Request", "{host:?}");
    }
    let one = status("Host: 127.0.0.1\r\n".into()).await;
    assert_eq!([none.as_str(), two.as_str(), listed.as_str()], ["HTTP/1.1 400 Bad Request"; 3]);
    assert_eq!(one, "HTTP/1.1 200 OK");
    // An absolute-form target names the host (RFC 9112 §3.2.2): another than `Host` is refused
    // (review 175 got 200), the same one served.
    for (target, want) in
        [("https://evil.example/healthz", "HTTP/1.1 400 Bad Request"), ("https://127.0.0.1/healthz", "HTTP/1.1 200 OK")]
    {
        let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        assert_eq!(status_line(&app, request.as_bytes()).await, want, "{target}");
    }
}

/// A body in a transfer coding other than one `chunked` is refused (RFC 9112 §6.1; review
/// 175: `chunked, chunked` was decoded once and the rest handed on as the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_coded_other_than_chunked_once_is_refused() {
    let app = spawn_app().await;
    let status = |coding: &'static str| {
        let request = format!("POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n{coding}Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n3\r\na=b\r\n0\r\n\r\n");
        let app = &app;
        async move { status_line(app, request.as_bytes()).await }
    };
    assert_eq!(status("Transfer-Encoding: chunked, chunked\r\n").await, "HTTP/1.1 400 Bad Request");
    assert_eq!(
        status("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(status("Transfer-Encoding: gzip, chunked\r\n").await, "HTTP/1.1 501 Not Implemented");
    // One chunked coding is read as ever: the form reaches the sign-in (no token: its 403).
    assert_eq!(status("Transfer-Encoding: Chunked\r\n").await, "HTTP/1.1 403 Forbidden");
}

/// An HTTP/2 request whose `Host` names another host than its `:authority` is answered 400
/// (RFC 9113 §8.3.1; review 175 got 200), one whose `Host` agrees is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_whose_host_is_not_its_authority_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // A frame (RFC 9113 §4.1) and an HPACK string literal (RFC 7541 §5.2, no Huffman coding).
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let mut f = vec![0, 0, payload.len() as u8, kind, flags, 0, 0, 0, u8::from(kind == 1)];
        f.extend_from_slice(payload);
        f
    };
    let literal = |s: &str| [&[s.len() as u8][..], s.as_bytes()].concat();
    let request = |authority: &str, host: Option<&str>| {
        let (certs, addr) = (app.settings.cert_dir.clone(), app.addr);
        // GET https (static 2, 7), :path and :authority by name (4, 1), then `host` by name.
        let block = [&[0x82, 0x87, 0x04][..], &literal("/healthz"), &[0x01], &literal(authority)].concat();
        let block = match host {
            Some(host) => [block, vec![0x00], literal("host"), literal(host)].concat(),
            None => block,
        };
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, &[]));
        out.extend(frame(0x1, 0x5, &block)); // HEADERS, END_STREAM | END_HEADERS, stream 1
        async move {
            let mut conn = crate::stalls::tls(&certs, addr, "127.0.0.1".parse().unwrap(), &[b"h2"]).await;
            conn.write_all(&out).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The first HEADERS frame on stream 1: its first byte is the status from the
            // static table (RFC 7541 Appendix A: 8 is 200, 12 is 400).
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before an answer");
                got.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while at + 9 <= got.len() {
                    let len = usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
                    if got[at + 3] == 0x1 && got[at + 8] == 1 && at + 9 < got.len() {
                        return got[at + 9] & 0x7f;
                    }
                    at += 9 + len;
                }
            }
        }
    };
    let status = |host: &str| request("127.0.0.1", Some(host));
    assert_eq!(status("evil.example").await, 12, "a Host of another host");
    assert_eq!(status("127.0.0.1").await, 8, "the same host");
    assert_eq!(status("127.0.0.1:443").await, 8, "the same host, with the default port (review 179)");
    // An :authority that is no host, without a Host (review 180).
    for authority in ["a,b", "u@evil.example"] {
        assert_eq!(request(authority, None).await, 12, "{authority}");
    }
    assert_eq!(request("127.0.0.1", None).await, 8, "a plain :authority");
}
