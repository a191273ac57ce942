//! Transport and headers: security headers on every kind of response, the HTTP redirect,
//! health, and a friendly 404.

use crate::helpers::{spawn_app, GOOD_PASSWORD};

fn assert_security_headers(resp: &reqwest::Response, what: &str) {
    let h = resp.headers();
    let hsts = h.get("strict-transport-security").unwrap_or_else(|| panic!("{what}: no HSTS")).to_str().unwrap();
    let max_age: u64 = hsts.split(';').find_map(|p| p.trim().strip_prefix("max-age=")).unwrap().parse().unwrap();
    assert!(max_age >= 31_536_000, "{what}: {hsts}");
    let csp = h.get("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP")).to_str().unwrap();
    for d in ["object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
        assert!(csp.contains(d), "{what}: {csp}");
    }
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert!(h.contains_key("referrer-policy"), "{what}");
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
}

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let c = &app.client;
    assert_security_headers(&c.get(app.url("/login")).send().await.unwrap(), "login page");
    assert_security_headers(&c.get(app.url("/")).send().await.unwrap(), "redirect");
    assert_security_headers(&c.get(app.url("/healthz")).send().await.unwrap(), "healthz");
    assert_security_headers(&c.get(app.url("/static/style.css")).send().await.unwrap(), "static");
    assert_security_headers(&c.get(app.url("/nope")).send().await.unwrap(), "404");
    assert_security_headers(&c.delete(app.url("/login")).send().await.unwrap(), "405");
    let big =
        c.post(app.url("/login")).header("content-type", "application/x-www-form-urlencoded").body("x".repeat(100_000));
    assert_security_headers(&big.send().await.unwrap(), "413");
    assert_security_headers(&c.post(app.url("/login")).body("csrf=x").send().await.unwrap(), "415");
    assert_security_headers(&c.post(app.url("/login")).form(&[("csrf", "x")]).send().await.unwrap(), "403");
    assert_security_headers(&app.login("alice", "wrong password!!").await, "401");
    assert_security_headers(&app.login("alice", GOOD_PASSWORD).await, "303 after login");
    let home = c.get(app.url("/")).send().await.unwrap();
    assert_security_headers(&home, "home");
    assert_eq!(home.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn plain_http_is_redirected_to_the_same_path_on_https() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = client.get(format!("http://{}/login?next=/x", app.http_addr)).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], format!("https://{}/login?next=/x", app.addr));
    let resp = client.post(format!("http://{}/login", app.http_addr)).body("username=a").send().await.unwrap();
    assert_eq!(resp.status(), 308);
}

#[tokio::test]
async fn healthz_answers_ok_without_a_session() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn an_unknown_page_gets_a_friendly_404() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/no/such/page")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(resp.text().await.unwrap().contains("Page not found"));
}

#[tokio::test]
async fn the_stylesheet_is_served_from_the_binary() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/static/style.css")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/css"));
}
