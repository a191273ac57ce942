//! Passkeys and the device cookie in a real browser: starts the server on
//! https://localhost:PORT and runs `tests/browser/passkeys.mjs` (headless Chromium through
//! playwright-core, with Chrome's virtual authenticator). Needs `node`, Chromium (`/usr/bin/chromium`, or
//! `PORTCULLIS_CHROMIUM`) and `npm ci` run in `tests/browser`; without them the test says
//! why and passes as skipped, unless `PORTCULLIS_REQUIRE_ALL` is set (as `.ci/run` does).
//! Set `PORTCULLIS_SCREENSHOTS=DIR` to keep screenshots of the pages with passkey buttons at
//! desktop and phone widths.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::GOOD_PASSWORD;
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

#[tokio::test]
async fn a_passkey_registered_in_chromium_signs_in_with_no_password_and_no_captcha() {
    if let Some(why) = missing() {
        if std::env::var_os(REQUIRE_ALL).is_some() {
            panic!("the browser test cannot run and {REQUIRE_ALL} is set: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let app = passkey_app().await;
    app.add_user("carol", GOOD_PASSWORD, false).await;
    let mut cmd = Command::new("node");
    cmd.arg("passkeys.mjs")
        .current_dir(browser_dir())
        .env("PORTCULLIS_URL", app.settings.public_url.as_deref().unwrap())
        .env("PORTCULLIS_USER", "carol")
        .env("PORTCULLIS_PASSWORD", GOOD_PASSWORD)
        .env("PORTCULLIS_CHROMIUM", chromium())
        .env("PORTCULLIS_SECOND_FACTOR", if SECOND_FACTOR_PAGE { "1" } else { "0" });
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("node runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("step: done"), "{stdout}\n{stderr}");
    let lines = app.log_lines();
    assert!(lines.iter().any(|l| l["event"] == "mfa_added" && l["kind"] == "passkey"), "registration logged");
    let passkey_ok = lines.iter().filter(|l| l["method"] == "passkey").count();
    assert!(passkey_ok >= 1, "the passkey sign-in is logged");
    assert!(
        lines.iter().any(|l| l["event"] == "authn_login_fail" && l["reason"] == "bad_password"),
        "the three wrong passwords were counted"
    );
}

/// Also sign in with the password and the passkey as the second factor.
const SECOND_FACTOR_PAGE: bool = true;
