//! Passkeys, the device cookie, forward auth's redirects and the admin page on a phone in a real browser: starts the
//! server and runs `tests/browser/passkeys.mjs`, `gated.mjs` or `phone.mjs` (headless Chromium through
//! playwright-core, with Chrome's virtual authenticator). Needs `node`, Chromium (`/usr/bin/chromium`, or
//! `PORTCULLIS_CHROMIUM`) and `npm ci` run in `tests/browser`; without them the test says
//! why and passes as skipped, unless `PORTCULLIS_REQUIRE_ALL` is set (as `.ci/run` does).
//! Set `PORTCULLIS_SCREENSHOTS=DIR` to keep screenshots of the pages with passkey buttons at
//! desktop and phone widths.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, GOOD_PASSWORD};
use crate::passkeys::passkey_app;
use crate::pg::REQUIRE_ALL;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("PORTCULLIS_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if Command::new("node").arg("--version").output().map_or(true, |o| !o.status.success()) {
        return Some("node is not installed".into());
    }
    if !chromium().exists() {
        return Some(format!("{} is missing (Debian package chromium)", chromium().display()));
    }
    if !browser_dir().join("node_modules/playwright-core/package.json").exists() {
        return Some("playwright-core is not installed: run `npm ci` in tests/browser".into());
    }
    None
}

/// Whether the browser tests can run here; says why not (and fails under `.ci/run`).
fn can_run() -> bool {
    let Some(why) = missing() else { return true };
    if std::env::var_os(REQUIRE_ALL).is_some() {
        panic!("the browser test cannot run and {REQUIRE_ALL} is set: {why}");
    }
    eprintln!("skipped: {why}");
    false
}

/// Runs `tests/browser/{script}` with `cmd`'s environment; returns its stdout once it passed.
async fn run_script(script: &str, app: &TestApp, user: &str, configure: impl FnOnce(&mut Command)) -> String {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(browser_dir())
        .env("PORTCULLIS_CHROMIUM", chromium())
        .env("PORTCULLIS_URL", app.settings.public_url.clone().expect("a public_url the browser opens"))
        .env("PORTCULLIS_USER", user)
        .env("PORTCULLIS_PASSWORD", GOOD_PASSWORD);
    configure(&mut cmd);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("node runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("step: done"), "{stdout}\n{stderr}");
    stdout.into_owned()
}

#[tokio::test]
async fn a_passkey_registered_in_chromium_signs_in_with_no_password_and_no_captcha() {
    if !can_run() {
        return;
    }
    let app = passkey_app().await;
    app.add_user("carol", GOOD_PASSWORD, false).await;
    run_script("passkeys.mjs", &app, "carol", |cmd| {
        cmd.env("PORTCULLIS_SECOND_FACTOR", if SECOND_FACTOR_PAGE { "1" } else { "0" });
    })
    .await;
    let lines = app.log_lines();
    assert!(lines.iter().any(|l| l["event"] == "mfa_added" && l["kind"] == "passkey"), "registration logged");
    let removed = lines.iter().find(|l| l["event"] == "mfa_removed" && l["kind"] == "passkey");
    assert_eq!(removed.map(|l| l["sessions"].clone()), Some(1.into()), "the removal ended the copy's session");
    let passkey_ok = lines.iter().filter(|l| l["method"] == "passkey").count();
    assert!(passkey_ok >= 1, "the passkey sign-in is logged");
    assert!(
        lines.iter().any(|l| l["event"] == "authn_login_fail" && l["reason"] == "bad_password"),
        "the three wrong passwords were counted"
    );
}

/// Also sign in with the password and the passkey as the second factor.
const SECOND_FACTOR_PAGE: bool = true;

/// A gated application's round trip (SPEC.md, "Gating other applications"): sign in on
/// login.example.test with `rd` naming wiki.example.test, land there; sign out with `rd`,
/// land there. Chromium checks each redirect of a form's navigation against the page's
/// `form-action`, which with `'self'` alone stopped it on the login host (found by a review;
/// an HTTP client follows the 303 whatever the policy says).
#[tokio::test]
async fn in_chromium_sign_in_and_sign_out_with_rd_land_on_the_gated_host() {
    if !can_run() {
        return;
    }
    let port = crate::helpers::free_port();
    let app = crate::helpers::spawn_app_with(|s| {
        s.https_addr = format!("127.0.0.1:{port}").parse().unwrap();
        s.public_url = Some(format!("https://login.example.test:{port}"));
        s.cookie_domain = Some(portcullis::config::CookieDomain::parse("example.test").unwrap());
    })
    .await;
    app.add_user("dave", GOOD_PASSWORD, false).await;
    // The gated "application" is this server's /healthz under another host name: any HTTPS
    // page on a host under the cookie domain will do.
    run_script("gated.mjs", &app, "dave", |cmd| {
        cmd.env("PORTCULLIS_RD", format!("https://wiki.example.test:{port}/healthz?from=sign-in"))
            .env("PORTCULLIS_RD_OUT", format!("https://wiki.example.test:{port}/healthz?from=sign-out"))
            .env("PORTCULLIS_RESOLVE", "*.example.test");
    })
    .await;
    let lines = app.log_lines();
    assert!(lines.iter().any(|l| l["event"] == "authn_login_success" && l["username"] == "dave"), "signed in");
    assert!(lines.iter().any(|l| l["event"] == "session_logout" && l["username"] == "dave"), "signed out");
}

/// The administrator's page on a phone: nothing scrolls the page sideways, and the records
/// keep every column (a rule meant for the sessions' browser column hid their reason; found by
/// a review of every page at 390 px).
#[tokio::test]
async fn on_a_phone_the_failed_logins_page_fits_and_shows_every_column() {
    if !can_run() {
        return;
    }
    // The failures below come from this machine too: no captcha for the browser after them.
    let app = crate::helpers::spawn_app_with(|s| {
        crate::passkeys::on_localhost(s);
        s.captcha_after_failures = 1000;
    })
    .await;
    app.add_user("root", GOOD_PASSWORD, true).await;
    let long = format!("{}@example.com", "x".repeat(80));
    for name in [long.as_str(), "mallory", "eve"] {
        let mut visitor = crate::helpers::Visitor::new(&app, Some("198.51.100.7"));
        assert_eq!(visitor.attempt(name, "not the password at all", None).await.0, 401);
    }
    run_script("phone.mjs", &app, "root", |_| {}).await;
}
