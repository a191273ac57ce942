//! The forward-auth endpoints asked directly (as a proxy would, without one): hostile peers,
//! contradictory headers, Caddy's extra query string, the two-factor rule, and that a verify
//! writes nothing on most requests. `proxies.rs` drives the same endpoints through real
//! nginx and Caddy.

use portcullis::access::Access;
use portcullis::config::{parse_net, CookieDomain, Settings};
use portcullis::factors::Asker;
use portcullis::store::Factors;
use reqwest::StatusCode;

use crate::helpers::{spawn_app_with, TestApp, GOOD_PASSWORD};

const RULES: &str = r#"
[access]
[[access.rules]]
path = ["^/public/"]
policy = "bypass"
[[access.rules]]
path = ["^/secure/"]
policy = "two_factor"
[[access.rules]]
domain = ["*.example.test"]
policy = "one_factor"
"#;

fn gated(s: &mut Settings, trusted: &str) {
    s.public_url = Some("https://login.example.test".into());
    s.cookie_domain = Some(CookieDomain::parse("example.test").unwrap());
    s.trusted_proxies = if trusted.is_empty() { vec![] } else { vec![parse_net(trusted).unwrap()] };
    s.access = Access::from_file(&RULES.parse().unwrap()).unwrap();
}

/// A session for alice with `factors`, as the cookie header a proxy would pass on.
async fn session_cookie(app: &TestApp, factors: Factors) -> String {
    if app.state.store.users.get("alice").await.unwrap().is_none() {
        app.add_user("alice", GOOD_PASSWORD, false).await;
    }
    let alice = app.state.store.users.get("alice").await.unwrap().unwrap();
    let token = app.state.sessions.create(&alice, factors, "127.0.0.1".parse().unwrap(), "test").await.unwrap();
    format!("__Secure-portcullis={}", token.encode())
}

/// A forward-auth request for `uri` on app.example.test with `extra` headers.
pub(crate) fn forward_auth(app: &TestApp, uri: &str, extra: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let mut req = app
        .client
        .get(app.url("/api/authz/forward-auth"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.test")
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-method", "GET")
        .header("accept", "text/html");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req
}

/// An auth-request (nginx) verify of a GET of `path` on app.example.test with `cookie`.
fn auth_request(app: &TestApp, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    app.client
        .get(app.url("/api/authz/auth-request"))
        .header("x-original-url", format!("https://app.example.test{path}"))
        .header("x-original-method", "GET")
        .header("cookie", cookie)
}

#[tokio::test]
async fn a_peer_that_is_not_a_trusted_proxy_gets_403_whatever_it_sends() {
    let app = spawn_app_with(|s| gated(s, "")).await;
    let cookie = session_cookie(&app, Factors::Two).await;
    for path in ["/api/authz/forward-auth", "/api/authz/auth-request"] {
        let resp = app
            .client
            .get(app.url(path))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example.test")
            .header("x-forwarded-uri", "/public/x")
            .header("x-forwarded-method", "GET")
            .header("x-original-url", "https://app.example.test/public/x")
            .header("x-original-method", "GET")
            .header("x-forwarded-for", "127.0.0.1")
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(resp.headers().get("remote-user").is_none(), "{path}: no identity leaks");
    }
}

#[tokio::test]
async fn missing_or_contradictory_headers_and_targets_off_the_gated_hosts_get_400() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let get = |path: &str| app.client.get(app.url(path));
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no headers", get("/api/authz/forward-auth")),
        ("no headers (nginx)", get("/api/authz/auth-request")),
        (
            "nginx's header at forward-auth",
            get("/api/authz/forward-auth")
                .header("x-original-url", "https://app.example.test/")
                .header("x-original-method", "GET"),
        ),
        ("no method", get("/api/authz/auth-request").header("x-original-url", "https://app.example.test/")),
        ("two hosts", forward_auth(&app, "/", &[]).header("x-forwarded-host", "evil.example.test")),
        (
            "the nginx URL disagrees",
            forward_auth(&app, "/", &[])
                .header("x-original-url", "https://other.example.test/")
                .header("x-original-method", "GET"),
        ),
        (
            "another method",
            forward_auth(&app, "/", &[("x-original-url", "https://app.example.test/"), ("x-original-method", "POST")]),
        ),
        (
            "plain http",
            get("/api/authz/auth-request")
                .header("x-original-url", "http://app.example.test/")
                .header("x-original-method", "GET"),
        ),
        (
            "off the domain",
            get("/api/authz/auth-request")
                .header("x-original-url", "https://evil-example.test/")
                .header("x-original-method", "GET"),
        ),
        (
            "user info",
            get("/api/authz/auth-request")
                .header("x-original-url", "https://a@app.example.test/")
                .header("x-original-method", "GET"),
        ),
        (
            "backslash",
            get("/api/authz/auth-request")
                .header("x-original-url", "https://app.example.test\\@evil.test/")
                .header("x-original-method", "GET"),
        ),
    ];
    // A scheme or host holding more than its part (a proxy that copies `Host` unchecked would
    // otherwise let `app.example.test/public/x?` put `/admin` in a bypassed query).
    let described = |proto: &str, host: &str| {
        get("/api/authz/forward-auth")
            .header("x-forwarded-proto", proto)
            .header("x-forwarded-host", host)
            .header("x-forwarded-uri", "/admin")
            .header("x-forwarded-method", "GET")
    };
    let mut cases = cases;
    cases.extend([
        ("a host with a query", described("https", "app.example.test/public/x?")),
        ("a host with a path", described("https", "app.example.test/public")),
        ("a host with a fragment", described("https", "app.example.test#")),
        ("a scheme with a host and path", described("https://app.example.test/public/x?a=", "app.example.test")),
        // A method header of the other set without its URL still describes the request.
        ("nginx's method alone disagrees", forward_auth(&app, "/", &[("x-original-method", "DELETE")])),
        ("forward-auth's method alone disagrees", auth_request(&app, "/", "").header("x-forwarded-method", "DELETE")),
    ]);
    for (what, req) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what}");
    }
    // The same headers, agreeing, are fine.
    let ok = forward_auth(
        &app,
        "/public/x",
        &[("x-original-url", "https://app.example.test/public/x"), ("x-original-method", "get")],
    );
    assert_eq!(ok.send().await.unwrap().status(), StatusCode::OK);
}

/// A target read too many ways is refused before its readings are written out: a crafted
/// 4 KB target (PHP scripts' names, full-width letters and blanks in every segment) cost 1.5 s
/// of CPU and about 700 MB in a release build, on the async workers, before this bound.
#[tokio::test]
async fn a_target_read_too_many_ways_is_refused_and_ordinary_long_ones_are_judged() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    // Signed in, on paths every reading of which one rule answers alike (`one_factor` on the
    // whole host), so that only the bound refuses.
    let cookie = session_cookie(&app, Factors::One).await;
    let crafted = format!(
        "//x/%C5%BF.php%20./{}/i.php%3Bx/{}.phpapp%20.?{}",
        "%EF%BD%85%20.%E2%88%95".repeat(20),
        "%C3%A9%3B%2B".repeat(20),
        "a.b[c]=%2563%20+%EF%B7%BA&!d=%EF%BD%83%C2%A0&".repeat(20)
    );
    let verify = |target: &str| {
        let (forward, nginx) =
            (forward_auth(&app, target, &[("cookie", &cookie)]), auth_request(&app, target, &cookie));
        async move { [forward.send().await.unwrap().status(), nginx.send().await.unwrap().status()] }
    };
    for target in ["/app/a.php/b.php/c.php/d.php/e.php/x", crafted.as_str()] {
        assert_eq!(verify(target).await, [StatusCode::BAD_REQUEST; 2], "{target:.40}");
    }
    // Four scripts' names, and a 4 KB shop filter with brackets, spaces and accents in every
    // parameter (the longest ordinary reading we found), are judged as the rules say.
    let shop = format!("/app/caf%C3%A9s?{}", "filter[brand][]=Caf%C3%A9+Noir&".repeat(125));
    assert!(shop.len() <= 4000);
    for target in ["/app/a.php/b.php/c.php/d.php/x", shop.as_str()] {
        assert_eq!(verify(target).await, [StatusCode::OK; 2], "{target:.40}");
    }
}

#[tokio::test]
async fn caddys_query_string_on_the_verify_request_is_tolerated_and_never_trusted() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let plain = forward_auth(&app, "/page?a=1", &[]).send().await.unwrap();
    let with_query = app
        .client
        .get(app.url("/api/authz/forward-auth?rd=https://evil.test/&x-forwarded-host=evil.test&a=1"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.test")
        .header("x-forwarded-uri", "/page?a=1")
        .header("x-forwarded-method", "GET")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::FOUND);
    assert_eq!(with_query.status(), StatusCode::FOUND);
    assert_eq!(plain.headers()["location"], with_query.headers()["location"]);
    assert_eq!(
        plain.headers()["location"],
        "https://login.example.test/login?rd=https%3A%2F%2Fapp.example.test%2Fpage%3Fa%3D1"
    );
}

#[tokio::test]
async fn a_two_factor_rule_never_allows_a_one_factor_session() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let one = session_cookie(&app, Factors::One).await;
    let two = session_cookie(&app, Factors::Two).await;
    let ask = |cookie: &str, flavour: &str| {
        let req = if flavour == "nginx" {
            app.client
                .get(app.url("/api/authz/auth-request"))
                .header("x-original-url", "https://app.example.test/secure/x")
                .header("x-original-method", "GET")
        } else {
            forward_auth(&app, "/secure/x", &[])
        };
        req.header("cookie", cookie.to_string()).send()
    };
    for flavour in ["nginx", "caddy"] {
        let refused = ask(&one, flavour).await.unwrap();
        assert_ne!(refused.status(), StatusCode::OK, "{flavour}");
        assert!(refused.headers()["location"].to_str().unwrap().contains("/login?rd="), "{flavour}");
        let allowed = ask(&two, flavour).await.unwrap();
        assert_eq!(allowed.status(), StatusCode::OK, "{flavour}: two factors pass");
        assert_eq!(allowed.headers()["remote-user"], "alice");
    }
    // The one-factor session is fine where one factor is asked.
    let page = forward_auth(&app, "/page", &[("cookie", &one)]).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["remote-groups"], "");
}

#[tokio::test]
async fn a_verify_writes_nothing_within_the_activity_grain() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let cookie = session_cookie(&app, Factors::One).await;
    let token = portcullis::session::SessionToken::parse(cookie.split_once('=').unwrap().1).unwrap();
    let before = app.state.store.sessions.get(&token.hash()).await.unwrap().unwrap();
    for _ in 0..50 {
        let resp = forward_auth(&app, "/page", &[("cookie", &cookie)]).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let after = app.state.store.sessions.get(&token.hash()).await.unwrap().unwrap();
    // The idle timeout is 30 min, so its grain is 30 s: no touch within the loop.
    assert_eq!(after.last_seen_at, before.last_seen_at, "50 verifies wrote the session");
}

#[tokio::test]
async fn a_signed_in_visitor_is_sent_to_rd_at_once_and_a_bad_rd_goes_home() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let cookie = session_cookie(&app, Factors::One).await;
    let go = |rd: &str| app.client.get(app.url("/login")).query(&[("rd", rd)]).header("cookie", cookie.clone()).send();
    let resp = go("https://app.example.test/p?q=1&r=%2F").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "https://app.example.test/p?q=1&r=%2F");
    // A fragment stays in the browser (the proxy never sees it), and a path the proxy's check
    // refuses is its answer to give: both are sent on, as after a sign-in, not to enrol a
    // second factor the address does not need.
    for rd in ["https://app.example.test/x#/dashboard", "https://app.example.test/a%2Fb"] {
        let resp = go(rd).await.unwrap();
        assert_eq!(resp.headers()["location"], rd);
    }
    for bad in [
        "https://evil-example.test/",
        "http://app.example.test/",
        "https://evil.test\\@app.example.test/",
        "//app.example.test/",
    ] {
        let resp = go(bad).await.unwrap();
        assert_eq!(resp.headers()["location"], "/", "{bad}");
    }
}

#[tokio::test]
async fn an_invalid_rule_or_cookie_domain_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    let serve = ["serve", "--https-addr", "127.0.0.1:0", "--http-addr", "off"];
    std::fs::write(
        &config,
        "public_url = \"https://login.example.test\"\n[access]\n[[access.rules]]\npolicy = \"bypass\"\n\
         [[access.rules]]\npath = [\"^/(unclosed\"]\npolicy = \"deny\"\n",
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(serve);
    let run = crate::child::cli(dir.path(), &args, None).await;
    let err = run.assert_one_line_failure("a bad rule");
    assert!(err.contains("access.rules #2 path"), "{err}");
    for (public, domain) in
        [("https://login.example.co.uk", "co.uk"), ("https://login.evil-example.test", "example.test")]
    {
        let mut args = serve.to_vec();
        args.extend(["--public-url", public, "--cookie-domain", domain]);
        let elsewhere = tempfile::tempdir().unwrap();
        let run = crate::child::cli(elsewhere.path(), &args, None).await;
        assert!(run.assert_one_line_failure(domain).contains("cookie_domain"), "{run:?}");
    }
}

#[tokio::test]
async fn with_a_cookie_domain_forms_may_end_on_its_hosts_and_without_one_on_this_origin_only() {
    // Chromium holds the 303 to `rd` after a form to `form-action` (tests/api/browser.rs).
    let app = spawn_app_with(|s| gated(s, "")).await;
    for path in ["/login", "/login?rd=https%3A%2F%2Fwiki.example.test%2F"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("form-action 'self' https://example.test:* https://*.example.test:*;"), "{path}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
    }
    let plain = crate::helpers::spawn_app().await;
    let resp = plain.client.get(plain.url("/login")).send().await.unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("form-action 'self';"), "an address as public_url: this origin only: {csp}");
}

#[tokio::test]
async fn with_a_cookie_domain_every_cookie_but_the_device_cookie_is_secure_prefixed_with_the_domain() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let resp = app.client.get(app.url("/login")).send().await.unwrap();
    let cookies: Vec<String> =
        resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(!cookies.is_empty());
    for c in &cookies {
        assert!(c.starts_with("__Secure-portcullis") && c.ends_with("; Domain=example.test"), "{c}");
        assert!(c.contains("; Secure; HttpOnly; SameSite=Lax"), "{c}");
    }
    // A signed-in request is read under the same name; the host-only name is not read.
    let cookie = session_cookie(&app, Factors::One).await;
    let host_only = cookie.replace("__Secure-", "__Host-");
    let ok = forward_auth(&app, "/page", &[("cookie", &cookie)]).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let ignored = forward_auth(&app, "/page", &[("cookie", &host_only)]).send().await.unwrap();
    assert_eq!(ignored.status(), StatusCode::FOUND);

    // The device cookie stays host-only: only this host's login form reads it, so no gated
    // application gets it, and no sibling host can set one over it.
    // (session_cookie above added alice)
    let mut browser = crate::helpers::Visitor::new(&app, None);
    let (_, page) = browser.get("/login").await;
    let resp = browser.submit(&page, "alice", GOOD_PASSWORD, None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = crate::helpers::set_cookies(&resp);
    let device = set.iter().find(|c| c.contains("portcullis-device=")).expect("a device cookie");
    assert!(device.starts_with("__Host-portcullis-device=") && !device.contains("Domain="), "{device}");
    assert!(set.iter().any(|c| c.starts_with("__Secure-portcullis=") && c.ends_with("; Domain=example.test")));
    let value = device.split(';').next().unwrap().trim_start_matches("__Host-portcullis-device=");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(app.state.csrf.is_known_device(value, "alice", now));
}

#[tokio::test]
async fn every_verify_is_counted_in_the_authz_metrics_under_what_it_answered() {
    use crate::metrics::{delta, samples, scrape_text, with_metrics};
    let app = with_metrics(|s| {
        gated(s, "127.0.0.1/32");
        let rules =
            RULES.replace("[access]\n", "[access]\n[[access.rules]]\npath = [\"^/closed/\"]\npolicy = \"deny\"\n");
        s.access = Access::from_file(&rules.parse().unwrap()).unwrap();
    })
    .await;
    let one = session_cookie(&app, Factors::One).await;
    let before = samples(&scrape_text(&app).await);
    let answers = [
        forward_auth(&app, "/anything", &[("cookie", &one)]).send().await.unwrap().status(),
        forward_auth(&app, "/anything", &[]).send().await.unwrap().status(),
        forward_auth(&app, "/secure/x", &[("cookie", &one)]).send().await.unwrap().status(),
        app.client.get(app.url("/api/authz/forward-auth")).send().await.unwrap().status(),
        forward_auth(&app, "/closed/x", &[("cookie", &one)]).send().await.unwrap().status(),
    ];
    let after = samples(&scrape_text(&app).await);
    let authz =
        |result: &str| delta(&before, &after, &format!("portcullis_authz_requests_total{{result=\"{result}\"}}"));
    let statuses: Vec<u16> = answers.iter().map(|s| s.as_u16()).collect();
    assert_eq!(statuses, [200, 302, 302, 400, 403], "{statuses:?}");
    assert_eq!(authz("allowed"), 1.0, "{statuses:?}");
    assert_eq!(authz("unauthenticated"), 2.0, "{statuses:?}");
    assert_eq!(authz("bad_request"), 1.0);
    assert_eq!(authz("forbidden"), 1.0);
    assert_eq!(delta(&before, &after, "portcullis_authz_duration_seconds_count"), 5.0);
}

/// A gate with a `bypass` on `bypassed`, a `deny` on `denied` (path regexes) and `one_factor`
/// for the rest of `*.example.test`.
fn gated_with_rules(s: &mut Settings, bypassed: &str, denied: &str) {
    gated(s, "127.0.0.1");
    let rules = format!(
        "[access]\n[[access.rules]]\npath = [\"{bypassed}\"]\npolicy = \"bypass\"\n\
         [[access.rules]]\npath = [\"{denied}\"]\npolicy = \"deny\"\n\
         [[access.rules]]\ndomain = [\"*.example.test\"]\npolicy = \"one_factor\"\n"
    );
    s.access = Access::from_file(&rules.parse().unwrap()).unwrap();
}

/// An application gating `*.example.test` with one rule of `policy` on `paths` (a TOML list of
/// path patterns), and `one_factor` for the rest.
async fn with_one_rule(paths: &str, policy: &str) -> TestApp {
    with_rules(format!("[[access.rules]]\npath = {paths}\npolicy = \"{policy}\"\n")).await
}

/// A gate with `rules` (`[[access.rules]]` tables), then `one_factor` for every gated host.
async fn with_rules(rules: String) -> TestApp {
    let rules = format!("{rules}[[access.rules]]\ndomain = [\"*.example.test\"]\npolicy = \"one_factor\"\n");
    spawn_app_with(move |s| {
        gated(s, "127.0.0.1");
        s.access = Access::from_file(&rules.parse().unwrap()).unwrap();
    })
    .await
}

/// A grant on one value of a parameter is not given to a query that repeats the parameter
/// with another value, which applications that keep the first or the last read instead
/// (review 160: `fmt=csv&fmt=pdf` passed, and PHP served `fmt=pdf`).
#[tokio::test]
async fn a_grant_on_a_parameters_value_is_not_given_when_the_parameter_repeats_with_another() {
    let app = with_rules(
        "[[access.rules]]\npath = [\"^/report\\\\?(.*&)?fmt=csv(&|$)\"]\npolicy = \"one_factor\"\n\
         [[access.rules]]\npath = [\"^/report\"]\npolicy = \"deny\"\n"
            .to_string(),
    )
    .await;
    let cookie = session_cookie(&app, Factors::One).await;
    let nginx = |path: &str| auth_request(&app, path, &cookie).send();
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    for path in ["/report?fmt=csv", "/report?x=1&fmt=csv&x=2", "/report?fmt=csv&fmt=csv"] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::OK, "auth-request {path}");
    }
    assert_eq!(nginx("/report?fmt=pdf").await.unwrap().status(), StatusCode::FORBIDDEN);
    for path in [
        "/report?fmt=csv&fmt=pdf",
        "/report?fmt=pdf&fmt=csv",
        "/report?fmt=csv&fmt[]=pdf",
        "/report?fmt=csv&FMT=pdf",
        "/report?fmt=csv&x=1&fmt=",
        // A value in the middle, which applications reading every value see (review 162).
        "/report?fmt=csv&fmt=pdf&fmt=csv",
        "/report?fmt=csv&FMT=pdf&x=1&fmt=csv",
        "/report?fmt=csv&fmt[]=pdf&fmt=csv",
    ] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
}

/// A short target whose judging costs more than a few milliseconds where it arrives (rules
/// whose patterns make each byte costly) is judged again on the blocking pool, and answered as
/// the rules say, not refused: judged on an async worker, it held every request behind it.
#[tokio::test]
async fn a_short_target_costly_to_judge_is_answered_from_the_pool_as_the_rules_say() {
    let heavy: String = (0..300)
        .map(|i| {
            format!(
                "[[access.rules]]\npath = ['(?i)[^/?]{{1,20}}[0-9a-f]{{4,12}}x{i}[[:alnum:]]{{0,16}}']\npolicy = 'deny'\n"
            )
        })
        .collect();
    let app = with_rules(format!("{heavy}[[access.rules]]\npath = ['^/public/']\npolicy = 'bypass'\n")).await;
    let cookie = session_cookie(&app, Factors::One).await;
    let nginx = |path: &str| auth_request(&app, path, &cookie).send();
    assert_eq!(nginx("/public/a").await.unwrap().status(), StatusCode::OK, "the bypass");
    assert_eq!(nginx("/notes/a-deadbeefx17zz").await.unwrap().status(), StatusCode::FORBIDDEN, "rule 18");
    assert_eq!(nginx("/notes/today").await.unwrap().status(), StatusCode::OK, "the last rule: signed in");
}

/// A gate with a `deny` on `^/admin` and a `bypass` on `^/public/`.
fn gated_with_admin_denied(s: &mut Settings) {
    gated_with_rules(s, "^/public/", "^/admin");
}

#[tokio::test]
async fn doubled_slashes_params_and_encoded_separators_never_slip_past_a_path_rule() {
    let app = spawn_app_with(gated_with_admin_denied).await;
    let cookie = session_cookie(&app, Factors::Two).await;
    let nginx = |path: &str| auth_request(&app, path, &cookie).send();
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    // `/admin` however an application reads them (decoding, merging and dropping `;params`
    // first, or routing on the path as sent): denied.
    for path in ["/admin;jsessionid=1/secret", "/admin//x", "/admin/%73ecret"] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::FORBIDDEN, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::FORBIDDEN, "forward-auth {path}");
    }
    // `/admin` to one reading, another path to the other: no answer is right for both.
    for path in ["//admin/secret", "//admin", "///admin", "/%61dmin//x"] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    // Case-insensitive routers (Express's default) serve `/ADMIN` from `/admin`; WHATWG's
    // `new URL("//x/admin", base)` (Node's documented way) reads `x` as a host and routes
    // `/admin` (found by a review, signed in as a one-factor user).
    // WHATWG skips every leading slash before the host, and an application may decode the
    // path it gets (found by the next verifier).
    for path in
        ["/ADMIN/users", "/Admin", "//x/admin/users", "//x/ADMIN", "///x/admin/users", "////x:80/admin", "//x/%61dmin"]
    {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    // Routers that decode and then ignore case by Unicode's rules (ASP.NET Core) read
    // full-width `Ａ` as `a` (found by a review, with `ſ` for `s` through real nginx and Caddy);
    // Java's `equalsIgnoreCase` and Python's `re.IGNORECASE` read `İ` as `i` (the next review).
    // An application that decomposes reads `/admiń` as `/admin` and a combining accent (the one
    // after that).
    // One that folds accents reads `/admín/x` as `/admin/x` (review 108).
    for path in [
        "/%EF%BC%A1dmin/users",
        "/\u{ff21}DMIN",
        "/adm%C4%B0n",
        "/ADM\u{130}N/users",
        "/admi%C5%84/users",
        "/adm%C3%ADn/x",
        "/a%CC%81dmin/x",
        "/%C3%A1dmin/x",
        // Windows' best-fit mapping makes the division and fraction slashes `/` for a program
        // that takes paths in the system's code page.
        "/x/..%E2%88%95admin/users",
        // A PHP front controller routes the path after its script (review 147).
        "/index.php/admin",
        "/app.PHP/admin/users",
        "/index.php/%61dmin",
        "/x/index.php//admin",
        // ... also once the script's name is read otherwise (review 149).
        "/index.php./admin",
        "/index.php%20/admin",
        "/index.php::$DATA/admin",
        "/index.php%3Bx/admin",
        // Symfony takes the script's name as a prefix, `/` or not; other PHP extensions
        // (review 151).
        "/index.phpadmin",
        "/index.php%61dmin",
        "/index.phtml/admin",
        "/index.php5/admin",
        // CodeIgniter routes a query that begins with `/` on the root or its script (151).
        "/?/admin",
        "/index.php?/admin",
        "/index.php?/admin&x=1",
        // ... also on the `/` left once the script's name is taken off, and other extensions
        // (review 153).
        "/index.php/?/admin",
        "/%69ndex.php/?/admin/users",
        "/index.phtml/?/admin",
        "/index.php/%3F/admin",
        // ... with the route's own query after a second `?` (review 154).
        "/?/admin?x=1",
        "/index.php3/admin",
        "/index.php4/admin",
        "/index.pht/admin",
        // Every leading `?`, which PHP's built-in server drops, and CGI's front controllers
        // (review 156).
        "/??/admin",
        "/index.php???/admin",
        // ... and as a decoding rewrite hands them on (review 158).
        "/%3F%3F/admin",
        "/?%3F/admin",
        "/index.php%3F%3F/admin",
        "/app.fcgi/admin",
        "/index.cgi/admin",
        "/app.py/admin",
        "/index.PL/admin",
        "/site.wsgi/admin",
        "/app.dll/admin",
    ] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    for path in [
        "/Docs/Page",
        "//docs/page",
        "/PUBLIC/x",
        "/D%C3%96cs/%C3%A9t%C3%A9",
        "/index.php/docs",
        "/docs/x.php",
        "/?/docs/page",
        "/?next=/admin",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::OK, "forward-auth {path}");
    }
    // Anonymous: under the bypass rule to one reading, not to the other (an application that
    // routes on the path as sent matches no `/public/` route and may serve a catch-all).
    // Windows' best fit reads the fraction slash as `/`.
    // The yen and won signs and the set minus are `\` to it (review 149).
    for path in [
        "/%70ublic/x",
        "/public;x/secret",
        "//public/x",
        "/public%E2%81%84x",
        "/public/..%C2%A5admin/x",
        "/public/..%E2%82%A9admin/x",
        "/public/..%E2%88%96admin",
        "/public%C2%A5x",
    ] {
        assert_eq!(forward_auth(&app, path, &[]).send().await.unwrap().status(), StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(forward_auth(&app, "/public/x;v=1", &[]).send().await.unwrap().status(), StatusCode::OK);
    // Names outside ASCII under a rule stay under it: applications that ignore case are judged
    // with the rules ignoring case too (a review saw every such name refused when the upper-
    // cased reading was judged as a case-sensitive application would).
    for path in [
        "/public/caf%C3%A9",
        "/public/%E6%9D%B1%E4%BA%AC",
        "/public/%F0%9F%98%80.png",
        "/public/Stra%C3%9Fe",
        "/public/a%2Bb",
    ] {
        assert_eq!(forward_auth(&app, path, &[]).send().await.unwrap().status(), StatusCode::OK, "{path}");
    }
    // Read differently by different servers: refused, never matched as under `/public/`.
    for path in [
        "/public/..;/admin",
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/%2fadmin",
        "/public/..%5cadmin",
        "/public//../admin",
        // Dot segments: Go's servers resolve them, Flask and Express route them as sent.
        "/admin/../public/x",
        "/public/../admin",
        "/admin/%2e%2e/public/x",
        "/admin/./x",
        // Control characters: trimmed by some applications, ending a regex's `.` in others.
        "/%0aadmin",
        "/%09admin",
        "/admin%0d%0a/x",
        "/public/%00/../admin",
        "/%7Fadmin",
        // nginx passes a `#` in the request line on as it is; Go's servers resolve what follows.
        "/public/x#/../../admin",
        "/public/x#",
        // Overlong UTF-8: `.` to decoders that accept it (review 108).
        "/public/%C0%AE%C0%AE/admin/x",
        "/public/%E0%80%AE%E0%80%AE/admin/x",
        // Segments trimmed of spaces (Spring's `trimTokens`) or of trailing dots, spaces and
        // `::$DATA` (Windows): a dot segment there, or a blank one merged away (review 142).
        "/public/..%20/admin",
        "/public/%20../admin",
        "/public/..::$DATA/admin",
        "/%20/admin",
        "/.%20/admin",
        "/%20./admin",
        // Both trims one after the other, Unicode's blanks, a directory's stream, and C1
        // controls (review 143).
        "/public/%20..%20./admin",
        "/public/%20%2e%2e%20%2e/admin",
        "/public/..%E2%80%A8/admin",
        "/public/..%C2%85/admin",
        "/public/..%85/admin",
        "/public/..::$INDEX_ALLOCATION/admin",
        "/%20admin./x",
        "/%E2%80%A8admin",
        "/%E1%9A%80admin",
    ] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    // And the plain readings still pass: a trailing dot or space means nothing to a rule here.
    assert_eq!(caddy("//public//x").await.unwrap().status(), StatusCode::OK);
    assert_eq!(caddy("/wiki/Washington,_D.C.").await.unwrap().status(), StatusCode::OK);
    assert_eq!(caddy("/wiki/%E2%80%A6").await.unwrap().status(), StatusCode::OK, "an ellipsis, `...` by NFKC");
    assert_eq!(caddy("/files/a%20b%20/c.").await.unwrap().status(), StatusCode::OK);
    assert_eq!(nginx("/admin.").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(nginx("/page;v=1").await.unwrap().status(), StatusCode::OK);
}

/// Routers decode `+`, `@`, `(` and the like before they route (Go's `net/http`, Flask), in
/// whatever path their server hands them: as sent, or with unreserved escapes decoded, slashes
/// merged and `;params` dropped. Review 105 reached `/plus/a+b` past a rule for it with
/// `/plus/a%2Bb`; review 106, after that was fixed, with one more spelling in the same path.
#[tokio::test]
async fn a_rule_naming_a_reserved_character_holds_however_the_path_spells_it() {
    let app = spawn_app_with(|s| gated_with_rules(s, "^/public/", r"^/plus/a\\+b")).await;
    let cookie = session_cookie(&app, Factors::Two).await;
    let nginx = |path: &str| auth_request(&app, path, &cookie).send();
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    assert_eq!(nginx("/plus/a+b").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(caddy("/plus/a+b").await.unwrap().status(), StatusCode::FORBIDDEN);
    for path in [
        "/plus//a+b",
        "/%70lus/a+b",
        "/plus/a%2Bb",
        "/%70lus/a%2Bb",
        "/plu%73/a%2bb",
        "/plus/%61%2Bb",
        "/plus/a%2B%62",
        "//plus/a%2Bb",
        "/plus;x/a%2Bb",
        "/plus;jsessionid=1/a%2Bb",
        "/%50lus/a%2Bb",
    ] {
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    // A server that decodes `%3B` before it drops `;params` reads `/%3Bx/plus/a+b` as the
    // denied path, Flask reads `/plus/a%3Bb` as `/plus/a;b`.
    assert_eq!(caddy("/%3Bx/plus/a+b").await.unwrap().status(), StatusCode::BAD_REQUEST);
    // Names with reserved characters elsewhere are no one's business.
    for path in ["/files/a%2Bb%281%29%2Cc.pdf", "/users/john%40example.com", "/x/a|b", "/plus/a%3Bb"] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::OK, "forward-auth {path}");
    }
}

/// An application behind a rewrite that decodes the path (Apache's `mod_rewrite` without
/// `[B]`) reads an encoded `?` there as the query's start and an encoded `#` as the end
/// (review 144 reached `/exact` past `^/exact$` with `/exact%3Fx`).
#[tokio::test]
async fn an_encoded_question_mark_or_hash_in_the_path_is_read_as_a_decoding_rewrite_reads_it() {
    let app = with_one_rule(r#"["^/exact$", "^/export\\?(.*&)?fmt=csv(&|$)"]"#, "deny").await;
    let cookie = session_cookie(&app, Factors::Two).await;
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    let nginx = |path: &str| auth_request(&app, path, &cookie).send();
    assert_eq!(caddy("/exact").await.unwrap().status(), StatusCode::FORBIDDEN);
    for path in [
        "/exact%3Fx",
        "/exact%3F",
        "/exact%23x",
        "/export%3Ffmt=csv",
        "/export%3Fa=1%26fmt=csv",
        "/export%3Fa%3Fb?fmt=csv",
        // With every other reading of what the rewrite hands on (review 145).
        "/exact%20%3F",
        "/exact.%23",
        "/export;x%3Ffmt=csv",
        "/export.%3Ffmt=csv",
        "/export%3Ffmt[]=csv",
        "/export%3Ffmt=csv%20",
        "/export%3Fx=1;fmt=csv",
        // As an application that decodes the request URI, routes what comes before either,
        // and reads the request's own query (review 149).
        "/export%23?fmt=csv",
        "/export%23x?fmt=csv",
        "/export%3Fx?fmt=csv",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
        assert_eq!(nginx(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "auth-request {path}");
    }
    for path in [
        "/wiki/C%23",
        "/wiki/C%23?lang=en",
        "/wiki/Why%3F",
        "/exactly%3F",
        "/export%3Ffmt=pdf",
        "/search?q=100%25AB&ids[]=1&utm_source=a%2520b",
        // A backslash in the query is data, which browsers send as it is (review 146).
        "/search?q=a\\b",
        "/x?a=C:\\Users&b=[1]",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::OK, "forward-auth {path}");
    }
}

/// Rules match the path and query: frameworks hand parameters to applications decoded, so a
/// rule on the query holds against escapes of it (review 108 reached a real Flask's
/// `/export?fmt=csv` with `/export?fmt=%63sv`).
#[tokio::test]
async fn a_rule_on_the_query_holds_however_the_query_spells_it() {
    let app = spawn_app_with(|s| gated_with_rules(s, "^/public/", r"^/export\\?fmt=csv")).await;
    let cookie = session_cookie(&app, Factors::Two).await;
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    assert_eq!(caddy("/export?fmt=csv").await.unwrap().status(), StatusCode::FORBIDDEN);
    for path in ["/export?fmt=%63sv", "/export?%66mt=csv", "/%65xport?fm%74=c%73v"] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    // And as applications that trim values read it (review 112: `fmt=%09csv`; review 113:
    // Unicode's whitespace, which Python's `strip` removes too).
    for path in [
        "/export?fmt=%09csv",
        "/export?fmt=+csv",
        "/export?fmt=%00csv",
        "/export?fmt=%C2%A0csv",
        "/export?fmt=%E3%80%80csv",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    assert_eq!(caddy("/export?fmt=pdf").await.unwrap().status(), StatusCode::OK);
    // CodeIgniter's query route with the route's own query after a second `?` (review 154).
    for path in ["/?/export?fmt=csv", "/index.php?/export?fmt=csv", "/index.php/?/export?x=1&fmt=c%73v"] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    assert_eq!(caddy("/search?q=%63%2B%2B").await.unwrap().status(), StatusCode::OK, "no rule names it");
    // As an application that decodes twice reads it (review 139: `csv` there).
    for path in [
        "/export?fmt=%2563sv",
        "/export?fmt=%2563%2573v",
        "/export?%2566mt=csv",
        "/export?fmt=%25%36%33sv",
        // A `%` that makes an escape once the others are read; IIS's `%u`; an overlong `c`;
        // (below, Latin-1's no-break space and NEL trimmed as `strip()` reads them; review 144).
        "/export?fmt=%%36%33sv",
        "/export?fmt=%6%33sv",
        "/export?fmt=%u0063sv",
        "/export?f%u006Dt=csv",
        "/export?fmt=%C1%A3sv",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    // A `%` in a value is ordinary where no rule tells its readings apart (a search for `100%AB`).
    for path in ["/search?q=100%25AB", "/export?fmt=pdf&q=%2563", "/export?fmt=100%25"] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::OK, "forward-auth {path}");
    }

    // Two of those at once, as a framework that decodes and splits at `;` hands over values
    // its application strips (review 114), also with the path read otherwise.
    let rules = r#"["^/dl\\?(.*&)?f=x@y\\.z(&|$)", "^/export\\?(.*&)?fmt=csv(&|$)", "^/user\\?(.*&)?user_id=1(&|$)"]"#;
    let app = with_one_rule(rules, "deny").await;
    let cookie = session_cookie(&app, Factors::Two).await;
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    assert_eq!(caddy("/dl?f=x@y.z").await.unwrap().status(), StatusCode::FORBIDDEN);
    for path in [
        "/dl?f=x%40y.z+",
        "/dl?f=%20x%40y.z",
        "/dl?f=x%40y.z%C2%A0",
        "/dl?f=x%40y.z;y=2",
        "/export?x=1;fmt=+csv",
        "/export?fmt=csv%C2%A0;y=2",
        "/export?fmt=+%EF%BD%83sv",
        "/export?x=1;fmt=%EF%BD%83sv",
        "/%EF%BD%85xport?fmt=%EF%BD%83sv",
        "/export?fmt=csv%A0",
        "/export?fmt=csv%85",
        // Array names, as PHP, Rails and `qs` read them (review 144).
        "/export?fmt[]=csv",
        "/export?fmt%5B%5D=csv",
        "/export?x=1&fmt[0]=csv",
        // Each of those with the others, and decoded once more (review 145).
        "/export?fmt[]x=csv",
        "/export?fmt[]=%2563sv",
        "/export?fmt[]=csv%A0",
        "/export?fmt=csv%2520",
        "/export?%2520fmt=csv",
        "/export?fmt=csv%25A0",
        "/export?fmt=csv%2B",
        "/export?x=1%3Bfmt=csv",
        "/export?fmt%255B%255D=csv",
        "/export?fmt=%25EF%25BD%2583sv",
        // Brackets before the name, as `qs` and Rack read them; a name trimmed after its
        // brackets go (review 146).
        "/export?[fmt]=csv",
        "/export?%5Bfmt%5D=csv",
        "/export?a=1&[fmt][]=csv",
        "/export?]fmt=csv",
        "/export?fmt%20[]=csv",
        // A second `?`, which Node's `URLSearchParams` drops (review 146).
        "/export??fmt=csv",
        "/export?%3Ffmt=csv",
        // Every leading `?`, which PHP's built-in server drops (review 156).
        "/export???fmt=csv",
        "/export????fmt=csv",
        "/export??%3Ffmt=csv",
        "/%3F%3F/export?fmt=csv",
        // Spring's default marker, which sets `fmt` when the request has none.
        "/export?!fmt=csv",
        "/export?%21fmt=csv",
        "/export?!fmt[]=csv",
        // PHP's names: `.`, a space and an unmatched `[` are `_`.
        "/user?user.id=1",
        "/user?user+id=1",
        "/user?user%20id=1",
        "/user?user[id=1",
        "/user?%20user.id[]=1",
        // ASP.NET Core's prefixed and nested model properties (review 147).
        "/export?req.fmt=csv",
        "/export?req[fmt]=csv",
        "/export?a[0].fmt=csv",
        // A control character in a name, where PHP cuts it (review 147).
        "/export?fmt%00x=csv",
        "/export?x=1&+fmt%00x=csv",
        "/export?fmt%2500x=csv",
        "/export?fmt%0Ax=pdf",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::BAD_REQUEST, "forward-auth {path}");
    }
    assert_eq!(caddy("/user?user_id=1").await.unwrap().status(), StatusCode::FORBIDDEN);
    for path in [
        "/dl?f=a%40b.c+",
        "/export?fmt=pdf%C2%A0",
        "/export?q=caf%C3%A9+au+lait",
        "/export?!fmt=pdf",
        "/export?q=a%0D%0Ab",
        "/user?user.id=2",
        "/user?user.name=x",
        "/export?filter[status]=open&page[size]=10",
    ] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::OK, "forward-auth {path}");
    }

    // Form decoding: `+` and `%20` are both a space, so a rule must name both; older parsers
    // split at `;` (review 109 passed a rule naming `\+` with `%20`).
    let app =
        spawn_app_with(|s| gated_with_rules(s, r"\\.(css|js)(\\?.*)?$", r"^/dl\\?(.*&)?f=a(\\+|%20)b(&|$)")).await;
    let cookie = session_cookie(&app, Factors::Two).await;
    let caddy = |path: &str| forward_auth(&app, path, &[("cookie", &cookie)]).send();
    for path in ["/dl?f=a+b", "/dl?f=a%20b", "/dl?x=1&f=a%20b&y"] {
        assert_eq!(caddy(path).await.unwrap().status(), StatusCode::FORBIDDEN, "forward-auth {path}");
    }
    assert_eq!(caddy("/dl?x=1;f=a+b").await.unwrap().status(), StatusCode::BAD_REQUEST);
    // One naming a single spelling of the space would never decide: refused at start.
    let plus_only = "[[access.rules]]\npath = [\"^/dl\\\\?f=a\\\\+b\"]\npolicy = \"deny\"";
    let err = Access::from_file(&plus_only.parse().unwrap()).unwrap_err();
    assert!(err.contains("names a space in the query one way only"), "{err}");
    // Text in the query grants nothing: a rule is also matched against the path alone, as
    // applications route, and the stricter answer holds (an anonymous `/assets/x?.css` passed a
    // bypass for `\.(css|js)$` in review 109, `/admin/x?.png` one for `\.png(\?.*)?$` in 111).
    let anonymous = |path: &str| forward_auth(&app, path, &[]).send();
    for path in ["/assets/x?.css", "/admin/x?v=1.js", "/%61dmin/x?.css"] {
        let status = anonymous(path).await.unwrap().status();
        assert!(matches!(status, StatusCode::FOUND | StatusCode::BAD_REQUEST), "{path}: {status}");
    }
    assert_eq!(anonymous("/assets/a.css?v=3").await.unwrap().status(), StatusCode::OK);
    assert_eq!(anonymous("/assets/a.css").await.unwrap().status(), StatusCode::OK);

    // A rule naming the query's `?` names the separator, not one inside the query (review 112
    // reached `/admin/x` with `?.css?v=1` past a bypass for `\.(css|js)\?v=[0-9]+$`); and a
    // page's bypass holds whatever the query (`/?utm_source=x`, the same review).
    let app = with_one_rule(r#"["^/$", "\\.(css|js)\\?v=[0-9]+$"]"#, "bypass").await;
    let anonymous = |path: &str| forward_auth(&app, path, &[]).send();
    for path in ["/admin/x?.css?v=1", "/admin/x?a=1&b=.js?v=22", "/admin/x?%3F.css?v=1"] {
        let status = anonymous(path).await.unwrap().status();
        assert!(matches!(status, StatusCode::FOUND | StatusCode::BAD_REQUEST), "{path}: {status}");
    }
    for path in ["/a.css?v=1", "/?utm_source=newsletter&utm_medium=email", "/"] {
        assert_eq!(anonymous(path).await.unwrap().status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_user_the_second_factor_policy_sends_to_enrol_reaches_no_application_first() {
    use portcullis::config::SecondFactorPolicy;
    let app = spawn_app_with(|s| {
        gated(s, "127.0.0.1");
        s.second_factor = SecondFactorPolicy::All;
    })
    .await;
    let cookie = session_cookie(&app, Factors::One).await;
    // A verify answers as for no session: the sign-in redirect, or 401 to nginx.
    let caddy = forward_auth(&app, "/page", &[("cookie", &cookie)]).send().await.unwrap();
    assert_eq!(caddy.status(), StatusCode::FOUND);
    assert!(caddy.headers()["location"].to_str().unwrap().contains("/login?rd="));
    assert!(caddy.headers().get("remote-user").is_none());
    let nginx = app
        .client
        .get(app.url("/api/authz/auth-request"))
        .header("x-original-url", "https://app.example.test/page")
        .header("x-original-method", "GET")
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(nginx.status(), StatusCode::UNAUTHORIZED);
    // A bypass stays a bypass: it asks nobody to be signed in.
    let public = forward_auth(&app, "/public/x", &[("cookie", &cookie)]).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::OK);
    // /login?rd= sends them to enrol, not on to the application.
    let rd = "https://app.example.test/page";
    let resp =
        app.client.get(app.url("/login")).query(&[("rd", rd)]).header("cookie", cookie.clone()).send().await.unwrap();
    assert_eq!((resp.status(), resp.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/account"));
    // And so does a sign-in that carries rd.
    // By hand, as the jar keeps no `Domain=example.test` cookie for this test server's address.
    let form = app.client.get(app.url("/login")).query(&[("rd", rd)]).send().await.unwrap();
    let prelogin: Vec<String> = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let csrf = crate::helpers::hidden_field(&form.text().await.unwrap(), "csrf").unwrap();
    let resp = app
        .client
        .post(app.url("/login"))
        .header("cookie", prelogin.join("; "))
        .form(&[("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", &csrf), ("rd", rd)])
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status(), resp.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/account"));
}

#[tokio::test]
async fn with_second_factor_admins_only_an_administrator_without_one_is_kept_from_applications() {
    use portcullis::config::SecondFactorPolicy;
    let app = spawn_app_with(|s| {
        gated(s, "127.0.0.1");
        s.second_factor = SecondFactorPolicy::Admins;
    })
    .await;
    app.add_user("root", GOOD_PASSWORD, true).await;
    let user = app.state.store.users.get("root").await.unwrap().unwrap();
    let token = app.state.sessions.create(&user, Factors::One, "127.0.0.1".parse().unwrap(), "test").await.unwrap();
    let root = format!("__Secure-portcullis={}", token.encode());
    let alice = session_cookie(&app, Factors::One).await;
    assert_eq!(forward_auth(&app, "/page", &[("cookie", &alice)]).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(forward_auth(&app, "/page", &[("cookie", &root)]).send().await.unwrap().status(), StatusCode::FOUND);
}

#[tokio::test]
async fn a_one_factor_session_sent_back_from_a_two_factor_page_signs_in_again_only_if_it_can() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let cookie = session_cookie(&app, Factors::One).await;
    let rd = "https://app.example.test/secure/x";
    let go = || app.client.get(app.url("/login")).query(&[("rd", rd)]).header("cookie", cookie.clone()).send();
    // No second factor to sign in with: the sign-in form would give one factor again, and the
    // application would send the browser back for ever. The account page says what to do.
    let resp = go().await.unwrap();
    assert_eq!((resp.status(), resp.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/account"));
    let notice = crate::helpers::set_cookies(&resp)
        .into_iter()
        .find(|c| c.starts_with("__Secure-portcullis-flash="))
        .expect("a notice for the account page");
    let notice = notice.split(';').next().unwrap();
    let page = app
        .client
        .get(app.url("/account"))
        .header("cookie", format!("{cookie}; {notice}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("role=\"alert\">The page you opened needs a second factor, and your account has none yet"),
        "shown as something to do, not as news: {page}"
    );

    // With an authenticator app set up since, signing in again is the way: the form, saying so.
    let secret = portcullis::factors::totp::new_secret().unwrap();
    let step = portcullis::store::now_ms() / 1000 / portcullis::factors::totp::STEP_SECS;
    let code = portcullis::factors::totp::code_at(&secret, step * portcullis::factors::totp::STEP_SECS).unwrap();
    assert_eq!(
        app.state
            .factors
            .enrol_totp(&Asker::in_generation("alice", app.generation("alice").await), &secret, &code, None)
            .await
            .unwrap(),
        portcullis::factors::Enrolment::Enrolled
    );
    let resp = go().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("That page needs you to sign in with a second factor."));
}

/// Rules written with capital letters (an ASP.NET application's PascalCase paths) apply as
/// written: a case-insensitive router is one more reading of the rules, not a lower-cased
/// path (found by a review: the lower-cased path met no rule, and the application's own
/// sign-in page answered 400).
#[tokio::test]
async fn rules_with_capital_letters_apply_and_other_cases_of_their_paths_are_refused() {
    let app = spawn_app_with(|s| gated_with_rules(s, "^/Account/Login", "^/Admin")).await;
    let anonymous = |path: &'static str| {
        let app = &app;
        async move { forward_auth(app, path, &[]).send().await.unwrap().status() }
    };
    assert_eq!(anonymous("/Account/Login").await, StatusCode::OK, "the bypass as written");
    assert_eq!(anonymous("/Account/Login?ReturnUrl=%2F").await, StatusCode::OK);
    assert_eq!(anonymous("/Home/Index").await, StatusCode::FOUND, "sign in first");
    // Another case of a rule's path: the bypass to a case-insensitive router, the default to
    // a case-sensitive one.
    assert_eq!(anonymous("/account/login").await, StatusCode::BAD_REQUEST);
    let cookie = session_cookie(&app, Factors::Two).await;
    let signed_in = |path: &'static str| {
        let (app, cookie) = (&app, cookie.clone());
        async move { forward_auth(app, path, &[("cookie", &cookie)]).send().await.unwrap().status() }
    };
    assert_eq!(signed_in("/Admin/Users").await, StatusCode::FORBIDDEN);
    assert_eq!(signed_in("/admin/users").await, StatusCode::BAD_REQUEST, "denied to a case-insensitive router");
    assert_eq!(signed_in("/Home/Index").await, StatusCode::OK);
}

/// A host under `cookie_domain` can set a session cookie of its own for a path of its
/// choosing, which browsers send before ours (cookie tossing, found by a review: signed in as
/// alice, the victim was mallory under `/wiki`, and signing in again did not mend it).
#[tokio::test]
async fn a_session_cookie_another_host_tossed_is_never_picked_and_is_cleared() {
    let app = spawn_app_with(|s| gated(s, "127.0.0.1")).await;
    let alice = session_cookie(&app, Factors::One).await;
    app.add_user("mallory", GOOD_PASSWORD, false).await;
    let mallory = app.state.store.users.get("mallory").await.unwrap().unwrap();
    let token = app.state.sessions.create(&mallory, Factors::One, "127.0.0.1".parse().unwrap(), "test").await.unwrap();
    let mallory = format!("__Secure-portcullis={}", token.encode());
    let gate = &app;
    let verify = |cookie: String| async move {
        let resp = forward_auth(gate, "/wiki/page", &[("cookie", &cookie)]).send().await.unwrap();
        let user = resp.headers().get("remote-user").map(|v| v.to_str().unwrap().to_string());
        (resp.status(), user)
    };
    // Two live sessions: neither, whichever comes first.
    for cookie in [format!("{mallory}; {alice}"), format!("{alice}; {mallory}")] {
        let (status, user) = verify(cookie.clone()).await;
        assert_eq!((status, user), (StatusCode::FOUND, None), "{cookie}");
    }
    // The verify itself clears nothing: the cookies it sees are for the application's path.
    let resp = forward_auth(&app, "/wiki/page", &[("cookie", &format!("{mallory}; {alice}"))]).send().await.unwrap();
    assert!(resp.headers().get("set-cookie").is_none());
    // One live session among cookies that are not: that one (a tossed value that is no session
    // cannot sign a browser out), repeats of it too.
    let garbage = "__Secure-portcullis=garbage";
    let expired = "__Secure-portcullis=".to_string() + &"A".repeat(43);
    for cookie in [format!("{garbage}; {alice}"), format!("{expired}; {alice}; {garbage}"), format!("{alice}; {alice}")]
    {
        assert_eq!(verify(cookie.clone()).await, (StatusCode::OK, Some("alice".to_string())), "{cookie}");
    }
    // More than are looked up: none.
    let many: Vec<String> = (0..4).map(|i| format!("__Secure-portcullis=x{i}")).collect();
    assert_eq!(verify(format!("{}; {alice}", many.join("; "))).await.0, StatusCode::FOUND);

    // The gate sends such a browser to sign in, where only ours is sent (`Path=/`): it is sent
    // back with the application path's own session cookies removed, or it would loop.
    let rd = "https://app.example.test/wiki/page?x=1";
    let resp = app
        .client
        .get(app.url(&format!("/login?rd={}", urlencoding(rd))))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], rd);
    let cleared: Vec<&str> = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    for path in ["/wiki", "/wiki/", "/wiki/page"] {
        let want = format!(
            "__Secure-portcullis=; Path={path}; Secure; HttpOnly; SameSite=Lax; Max-Age=0; Domain=example.test"
        );
        assert!(cleared.contains(&want.as_str()), "{path}: {cleared:?}");
    }
    assert!(!cleared.iter().any(|c| c.contains("Path=/;")), "ours stays: {cleared:?}");
    // However the path begins: `//x` once cleared `Path=/`, ours, at any site's navigation
    // (review 195).
    for rd in ["https://app.example.test//x", "https://app.example.test//", "https://app.example.test/.//x?y=/"] {
        let resp = app
            .client
            .get(app.url(&format!("/login?rd={}", urlencoding(rd))))
            .header("cookie", &alice)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let cleared: Vec<&str> = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert!(!cleared.iter().any(|c| c.contains("Path=/;")), "{rd}: ours stays: {cleared:?}");
    }
    assert_eq!(verify(alice.clone()).await, (StatusCode::OK, Some("alice".to_string())), "still signed in");

    // On this server's own pages the request that sends two clears the path's copies itself.
    let resp =
        app.client.get(app.url("/account/totp")).header("cookie", format!("{mallory}; {alice}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "signed out, not mallory");
    let cleared: Vec<&str> = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    for path in ["/account", "/account/", "/account/totp"] {
        let want = format!(
            "__Secure-portcullis=; Path={path}; Secure; HttpOnly; SameSite=Lax; Max-Age=0; Domain=example.test"
        );
        assert!(cleared.contains(&want.as_str()), "{path}: {cleared:?}");
    }
    // A browser sending one sets off nothing.
    let resp = app.client.get(app.url("/account/totp")).header("cookie", &alice).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("set-cookie").is_none());

    // Signing out with a copy planted for `Path=/logout` ends every session the browser holds
    // once the form is one of theirs, not none while the browser forgets its cookie.
    let token = |cookie: &str| cookie.split_once('=').unwrap().1.to_string();
    let hash = |cookie: &str| portcullis::session::SessionToken::parse(&token(cookie)).unwrap().hash();
    let sessions = &app.state.sessions;
    let live = |cookie: String| async move { sessions.resolve(&token(&cookie)).await.unwrap().is_some() };
    let both = format!("{mallory}; {alice}");
    let logout =
        |csrf: String| app.client.post(app.url("/logout")).header("cookie", &both).form(&[("csrf", csrf)]).send();
    assert_eq!(logout("forged".into()).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert!(live(alice.clone()).await && live(mallory.clone()).await, "a forged form ends nothing");
    let resp = logout(app.state.csrf.session_token(&hash(&alice))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(!live(alice.clone()).await && !live(mallory.clone()).await, "both ended");
}

/// `s` percent-encoded for a query value.
fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Denied targets cost the log what refused logins do (review 177: anonymous 4 KB denials
/// filled a log disk at 68 GB an hour and every sign-in got 503, and spent the day's
/// `audit_log_mib_per_day` so that password guesses went unlogged): one line per address and
/// minute with a count, the path cut, anonymous ones within a quarter of the day's budget.
#[tokio::test]
async fn a_flood_of_denied_targets_costs_the_log_one_line_a_minute_and_leaves_guesses_their_room() {
    let app = spawn_app_with(|s| {
        gated_with_admin_denied(s);
        s.audit_log_bytes_per_day = 40_000;
    })
    .await;
    let long = format!("/admin/{}", "A".repeat(3000));
    for _ in 0..100 {
        assert_eq!(auth_request(&app, &long, "").send().await.unwrap().status(), StatusCode::FORBIDDEN);
    }
    let denied = |app: &TestApp| -> Vec<serde_json::Value> {
        app.log_lines()
            .into_iter()
            .filter(|l| l["event"].as_str().is_some_and(|e| e.starts_with("authz_denied")))
            .collect()
    };
    let one = denied(&app);
    // (Two when the minute turned over during the loop.)
    assert!((1..=2).contains(&one.len()), "{one:?}");
    assert_eq!(one[0]["path"].as_str().unwrap().chars().count(), 256, "{}", one[0]);
    // From many addresses (through a trusted proxy), a quarter of the day's budget at most.
    for i in 0..100 {
        let from = format!("198.51.100.{i}");
        let resp = auth_request(&app, &long, "").header("x-forwarded-for", &from).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    let bytes: usize = denied(&app).iter().map(|l| l.to_string().len() + 1).sum();
    assert!(bytes < 10_000 + 1_000, "a quarter of 40,000 bytes, at most a line over: {bytes}");
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    // Password guesses after it are logged in full (recorded as the sign-in records them:
    // this gate's `public_url` is another origin than the test client's).
    let guesser =
        portcullis::audit::Client { ip: "203.0.113.9".parse().unwrap(), user_agent: "x".into(), session: None };
    let reason = portcullis::audit::FailureReason::BadPassword;
    app.state.audit.record_failure("carol", &guesser, reason, false, false).await.unwrap();
    let last = app.log_lines().pop().unwrap();
    assert_eq!((last["username"].as_str(), last.get("short")), (Some("carol"), None), "{last}");
}

/// A server set up for forward auth with an empty `trusted_proxies` says so at start, and says
/// once a minute, not once a request, that a peer not listed asked (review 213: a proxy left out
/// got a bare 403 for every gated request, and nothing told its operator why).
#[tokio::test]
async fn a_proxy_left_out_of_trusted_proxies_is_told_of_at_start_and_once_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), RULES).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: &'static str = Box::leak(format!("127.0.0.1:{port}").into_boxed_str());
    let args = crate::child::quick_with(&[("--https-addr", addr)]);
    let server = crate::child::ServerProcess::start_with(dir.path(), &args, |cmd| {
        cmd.env("PORTCULLIS_PUBLIC_URL", "https://login.example.test").env("PORTCULLIS_COOKIE_DOMAIN", "example.test");
    });
    assert!(server
        .output()
        .contains("forward auth is set up (cookie_domain or [access]) but trusted_proxies is empty"));
    let client = server.browser();
    for _ in 0..5 {
        let resp = client.get(format!("https://{addr}/api/authz/auth-request")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    let said = server.output().matches("came from a peer not in trusted_proxies").count();
    assert_eq!(said, 1, "{}", server.output());
    let line = server.output().lines().find(|l| l.contains("not in trusted_proxies and was")).unwrap().to_string();
    assert!(line.contains("127.0.0.1"), "{line}");
}
