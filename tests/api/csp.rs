//! Scripts only where a passkey button is (SPEC.md, "Second factors"): every page's
//! Content-Security-Policy is scanned, signed out and signed in, with passkeys on.

use reqwest::StatusCode;

use crate::helpers::GOOD_PASSWORD;
use crate::passkeys::passkey_app;

/// Pages that have a passkey button, and so may load `/static/passkey.js`.
const WITH_PASSKEY_BUTTON: &[&str] = &["/login", "/login?next=/account/passkeys", "/account", "/account/passkeys"];

/// Every other GET route, and error pages.
const WITHOUT: &[&str] = &[
    "/",
    "/account/totp",
    "/admin/failed-logins",
    "/admin/failed-logins?reason=bad_passkey",
    "/healthz",
    "/readyz",
    "/static/style.css",
    "/static/favicon.svg",
    "/static/passkey.js",
    "/static/nothing-here.js",
    "/no-such-page",
    "/logout",
    "/login/passkey",
    "/login/second-factor",
    "/account/passkeys/begin",
];

fn script_tags(html: &str) -> Vec<String> {
    html.match_indices("<script").map(|(i, _)| html[i..].chars().take_while(|c| *c != '>').collect()).collect()
}

#[tokio::test]
async fn only_pages_with_a_passkey_button_allow_a_script_and_only_the_static_one() {
    let app = passkey_app().await;
    app.add_user("root", GOOD_PASSWORD, true).await;
    let signed_in = app.new_browser();
    assert_eq!(app.login_with(&signed_in, "root", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    let signed_out = app.new_browser();
    for (who, browser) in [("signed in", &signed_in), ("signed out", &signed_out)] {
        for path in WITH_PASSKEY_BUTTON.iter().chain(WITHOUT) {
            let resp = browser.get(app.url(path)).send().await.unwrap();
            let status = resp.status();
            let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
            let body = resp.text().await.unwrap();
            let tags = script_tags(&body);
            let has_button = WITH_PASSKEY_BUTTON.contains(path) && body.contains("data-passkey");
            if has_button {
                // Forms may end on public_url's host at any port, where `rd` may send them.
                let expected = portcullis::routes::PASSKEY_CSP
                    .replace("form-action 'self'", "form-action 'self' https://localhost:*");
                assert_eq!(csp, expected, "{who} {path}");
                assert_eq!(tags, ["<script src=\"/static/passkey.js\" defer"], "{who} {path}: one external script");
            } else {
                assert!(!csp.contains("script-src"), "{who} {path} ({status}): {csp}");
                assert!(csp.contains("default-src 'none'"), "{who} {path}: {csp}");
                if !path.ends_with(".js") {
                    assert!(tags.is_empty(), "{who} {path}: no script tag: {tags:?}");
                }
            }
            for directive in ["object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
                assert!(csp.contains(directive), "{who} {path}: {csp}");
            }
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{who} {path}: {csp}");
        }
    }
}
