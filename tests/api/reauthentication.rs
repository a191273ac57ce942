//! Changing second factors needs a recent authentication (`/account/confirm`): a session
//! whose sign-in is older than `RECENT_AUTHENTICATION` cannot add or remove a TOTP app,
//! passkey or recovery codes until its password is typed again; the right one gives a cookie
//! signed for the session, a wrong one counts like a failed sign-in, and refusals are recorded
//! like the login form's.

use std::sync::Arc;
use std::time::Duration;

use portcullis::audit::FailureReason;
use portcullis::session::{SessionToken, MAX_SESSIONS_PER_USER, RECENT_AUTHENTICATION};
use portcullis::store::{now_ms, Factors, FailureQuery, Session, SessionCap};
use reqwest::StatusCode;

use crate::helpers::{browser_builder, cookie_value, hidden_field, TestApp, GOOD_PASSWORD};
use crate::passkeys::{passkey_app, register, signed_in_browser};

/// A browser holding a session for `user` that signed in `ago` before now (and was used just
/// now), as if its owner had stepped away, or a thief had taken the cookie.
/// Returns the browser and its cookie's value.
async fn browser_signed_in_ago(
    app: &TestApp,
    user: &str,
    ago: Duration,
    factors: Factors,
) -> (reqwest::Client, String) {
    let token = SessionToken::generate().unwrap();
    let now = now_ms();
    let record = Session {
        user_key: user.to_string(),
        created_at: now - ago.as_millis() as u64,
        last_seen_at: now,
        ip: "127.0.0.1".into(),
        user_agent: "portcullis-tests/1.0".into(),
        factors,
        password_changed_at: app.state.store.users.get(user).await.unwrap().unwrap().password_changed_at,
        passkey_id: None,
    };
    let cap = SessionCap { max_per_user: MAX_SESSIONS_PER_USER, idle_ms: 3_600_000, absolute_ms: 86_400_000 };
    app.state.store.sessions.start(None, &token.hash(), &record, cap, now).await.unwrap();
    (browser_signed_in_with_cookie(app, &token.encode()), token.encode())
}

/// Another password that passes the policy.
const NEW_PASSWORD: &str = "a whole new passphrase";

fn stale() -> Duration {
    RECENT_AUTHENTICATION + Duration::from_secs(60)
}

async fn csrf_of(browser: &reqwest::Client, url: String) -> String {
    let page = browser.get(url).send().await.unwrap().text().await.unwrap();
    hidden_field(&page, "csrf").expect("a csrf field")
}

async fn post(app: &TestApp, browser: &reqwest::Client, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser.post(app.url(path)).form(form).send().await.unwrap()
}

fn location(resp: &reqwest::Response) -> &str {
    resp.headers().get("location").map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_session_signed_in_long_ago_cannot_add_or_remove_a_second_factor_until_it_confirms_the_password() {
    let app = passkey_app().await;
    let fresh = signed_in_browser(&app, "alice").await;
    crate::totp::enrol(&app, &fresh, now_ms() / 1000 / 30).await;
    let (_device, added) = register(&app, &fresh, "laptop").await;
    assert_eq!(added.status(), StatusCode::SEE_OTHER, "a fresh sign-in adds a passkey at once");
    let before = app.state.factors.summary("alice").await.unwrap();
    assert!(before.totp && before.passkeys == 1 && before.recovery_codes == 10, "{before:?}");
    let passkey_id =
        hidden_field(&fresh.get(app.url("/account/passkeys")).send().await.unwrap().text().await.unwrap(), "id")
            .expect("the passkey's id in its remove form");

    let (thief, old_cookie) = browser_signed_in_ago(&app, "alice", stale(), Factors::Two).await;
    let csrf = csrf_of(&thief, app.url("/account")).await;
    let asked = |resp: &reqwest::Response, next: &str| {
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", resp.url());
        assert_eq!(location(resp), format!("/account/confirm{next}"), "{}", resp.url());
    };
    asked(&thief.get(app.url("/account/totp")).send().await.unwrap(), "?next=/account/totp");
    asked(&post(&app, &thief, "/account/totp/remove", &[("csrf", &csrf)]).await, "");
    asked(&post(&app, &thief, "/account/recovery-codes", &[("csrf", &csrf)]).await, "");
    let remove = [("csrf", csrf.as_str()), ("id", passkey_id.as_str())];
    asked(&post(&app, &thief, "/account/passkeys/remove", &remove).await, "?next=/account/passkeys");
    let begin = post(&app, &thief, "/account/passkeys/begin", &[("csrf", &csrf)]).await;
    assert_eq!(begin.status(), StatusCode::FORBIDDEN, "no registration ceremony begins");
    assert!(begin.text().await.unwrap().contains("confirm your password"));
    let finish = [("csrf", csrf.as_str()), ("credential", "{}"), ("name", "thief")];
    asked(&post(&app, &thief, "/account/passkeys", &finish).await, "?next=/account/passkeys");
    assert_eq!(app.state.factors.summary("alice").await.unwrap(), before, "nothing changed");
    let page = thief.get(app.url("/account/passkeys")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("href=\"/account/confirm?next=/account/passkeys\""), "the add button asks first: {page}");
    assert!(!page.contains("data-begin=\"/account/passkeys/begin\""), "{page}");
    // Nor a rename: the name is what the owner removes a passkey by (review 187 swapped them).
    let rename = [("csrf", csrf.as_str()), ("id", passkey_id.as_str()), ("name", "old laptop")];
    asked(&post(&app, &thief, "/account/passkeys/rename", &rename).await, "?next=/account/passkeys");
    assert_eq!(app.state.passkeys.list("alice").await.unwrap()[0].name, "laptop", "not renamed");

    // The confirmation page; a wrong password is refused and counted like a failed sign-in.
    let resp = thief.get(app.url("/account/confirm?next=/account/passkeys")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Confirm your password") && page.contains("autocomplete=\"current-password\""), "{page}");
    let csrf = hidden_field(&page, "csrf").unwrap();
    let wrong = [("csrf", csrf.as_str()), ("current", "not the password"), ("next", "/account/passkeys")];
    let resp = post(&app, &thief, "/account/confirm", &wrong).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let page = resp.text().await.unwrap();
    assert!(page.contains("That is not your password.") && page.contains("minutes ago"), "{page}");
    // A fresh session may post the form too (a wrong password is checked the same): its page
    // does not say it signed in long ago (review 133).
    let (fresh, _) = browser_signed_in_ago(&app, "alice", Duration::from_secs(5), Factors::One).await;
    let csrf_fresh = csrf_of(&fresh, app.url("/")).await;
    let wrong_fresh = [("csrf", csrf_fresh.as_str()), ("current", "not the password"), ("next", "/account/passkeys")];
    let page = post(&app, &fresh, "/account/confirm", &wrong_fresh).await.text().await.unwrap();
    assert!(page.contains("That is not your password.") && !page.contains("minutes ago"), "{page}");
    let failures = app.records(FailureQuery { user_key: Some("alice".into()), ..Default::default() }).await;
    assert!(failures.iter().any(|r| r.reason == FailureReason::BadPassword), "{failures:?}");
    assert!(app.log_lines().iter().any(|l| l["event"] == "authn_login_fail" && l["reason"] == "bad_password"));
    asked(&post(&app, &thief, "/account/totp/remove", &[("csrf", &csrf)]).await, "");

    // The right one: remembered for this session only, in a signed cookie; the session itself
    // (token, start, factors) stays as it was, so its absolute timeout still counts from the
    // sign-in and parallel confirmations make no new sessions.
    let right = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("next", "/account/passkeys")];
    let resp = post(&app, &thief, "/account/confirm", &right).await;
    assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, "/account/passkeys"));
    assert!(cookie_value(&resp, "__Host-portcullis").is_none(), "the session is not replaced");
    let confirmed = cookie_value(&resp, "__Host-portcullis-confirmed").expect("the confirmation's cookie");
    let set = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
    assert!(set.iter().any(|c| c.starts_with("__Host-portcullis-confirmed=") && c.contains("Max-Age=600")), "{set:?}");
    let line = app.log_lines().into_iter().find(|l| l["event"] == "authn_reauth_success").expect("logged");
    assert_eq!(line["username"], "alice");
    assert!(!app.log_text().contains(GOOD_PASSWORD), "the password is never logged");
    let sessions = app.sessions_of("alice").await;
    let same = sessions.iter().find(|s| s.record.created_at < now_ms() - RECENT_AUTHENTICATION.as_millis() as u64);
    assert!(same.is_some_and(|s| s.record.factors == Factors::Two), "the stale session is still the one: {sessions:?}");

    // The confirmation belongs to its session: another stale session of alice's that shows the
    // same cookie is still asked.
    let (_, other_cookie) = browser_signed_in_ago(&app, "alice", stale(), Factors::Two).await;
    let other = browser_with_cookies(
        &app,
        &[("__Host-portcullis", &other_cookie), ("__Host-portcullis-confirmed", &confirmed)],
    );
    let other_csrf = csrf_of(&other, app.url("/account")).await;
    asked(&post(&app, &other, "/account/totp/remove", &[("csrf", &other_csrf)]).await, "");
    assert!(app.state.factors.summary("alice").await.unwrap().totp);
    // Nor can the time in it be moved: a cookie with a later time and the old tag is ignored.
    let (_, tag) = confirmed.split_once('.').unwrap();
    let moved = format!("{}.{tag}", now_ms() + 1);
    let forged =
        browser_with_cookies(&app, &[("__Host-portcullis", &old_cookie), ("__Host-portcullis-confirmed", &moved)]);
    asked(&post(&app, &forged, "/account/totp/remove", &[("csrf", &csrf)]).await, "");

    // Now the changes go through.
    let page = thief.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    let resp =
        thief.post(app.url("/account/totp/remove")).form(&crate::totp::removal_form(&page)).send().await.unwrap();
    assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, "/account"));
    assert!(!app.state.factors.summary("alice").await.unwrap().totp);
    let again = thief.get(app.url("/account/confirm")).send().await.unwrap();
    assert_eq!((again.status(), location(&again)), (StatusCode::SEE_OTHER, "/account"), "nothing to confirm now");
}

#[tokio::test]
async fn past_the_captcha_threshold_no_password_is_checked_on_the_account_pages_even_in_parallel() {
    let app = passkey_app().await;
    app.add_user("dave", GOOD_PASSWORD, false).await;
    let (dave, _) = browser_signed_in_ago(&app, "dave", stale(), Factors::One).await;
    let csrf = csrf_of(&dave, app.url("/account/confirm")).await;
    // A burst at once: the threshold is reserved before each check, as at the login form.
    let guesses: Vec<_> = (0..12)
        .map(|i| {
            let (dave, url, csrf) = (dave.clone(), app.url("/account/confirm"), csrf.clone());
            tokio::spawn(async move {
                let guess = format!("guess number {i}");
                dave.post(url)
                    .form(&[("csrf", csrf.as_str()), ("current", guess.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut checked = 0;
    for g in guesses {
        match g.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(checked, app.settings.captcha_after_failures, "only the threshold's worth of passwords is checked");
    // Past it, not even the right one is checked without a captcha solved, as at the login
    // form. The session stays (its owner may be the one who mistyped), and is shown a picture.
    let resp = post(&app, &dave, "/account/confirm", &[("csrf", &csrf), ("current", GOOD_PASSWORD)]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(cookie_value(&resp, "__Host-portcullis-confirmed").is_none());
    let page = resp.text().await.unwrap();
    assert!(page.contains("the characters in the picture") && page.contains("src=\"data:image/png;base64,"), "{page}");
    // Which of the two it was is not said: a user whose account had none read it as an attack
    // on the account (review 161).
    assert!(page.contains("for this account or from this network"), "{page}");
    let fails = app.log_lines().into_iter().filter(|l| l["reason"] == "bad_password").count();
    assert_eq!(fails, app.settings.captcha_after_failures as usize);
    assert_eq!(dave.get(app.url("/account")).send().await.unwrap().status(), StatusCode::OK);
    let form = dave.get(app.url("/login")).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::SEE_OTHER, "still signed in");
}

/// Three wrong passwords typed for a username at the login form, from anywhere and with no
/// captcha, put it past the threshold; its owner, signed in, still changes the password and
/// confirms it by solving a captcha on the account forms, one check per solved picture, as
/// the login form asks (a review found the forms refused the owner for the failure window).
#[tokio::test]
async fn past_the_threshold_the_account_forms_check_a_password_with_a_solved_captcha() {
    let app = passkey_app().await;
    app.add_user("erin", GOOD_PASSWORD, false).await;
    let (erin, token) = browser_signed_in_ago(&app, "erin", stale(), Factors::One).await;
    for i in 0..app.settings.captcha_after_failures {
        let resp = app.login_with(&app.new_browser(), "erin", &format!("a stranger's guess {i}")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let key = portcullis::sign_in::account_captcha_key(&SessionToken::parse(&token).unwrap().hash());
    let answer = || app.state.captchas.answer_for_tests(&key).expect("a picture was drawn for the session");
    let csrf = csrf_of(&erin, app.url("/account/confirm")).await;
    let confirm = |fields: Vec<(&'static str, String)>| {
        let (erin, url) = (erin.clone(), app.url("/account/confirm"));
        async move { erin.post(url).form(&fields).send().await.unwrap() }
    };
    let with =
        |captcha: String| vec![("csrf", csrf.clone()), ("current", GOOD_PASSWORD.to_string()), ("captcha", captcha)];

    // No captcha: a picture, nothing checked. A wrong answer: another picture, nothing checked.
    let blank = confirm(with(String::new())).await;
    assert_eq!(blank.status(), StatusCode::FORBIDDEN);
    // So the field may be sent empty for a new picture, as its text says (review 196: it was
    // required, and the text asked for what the browser refused).
    let page = blank.text().await.unwrap();
    assert!(page.contains("send the form with this box empty for a new one"), "{page}");
    assert!(!page.contains(r#"maxlength="16" required"#), "{page}");
    let shown = answer();
    assert_eq!(confirm(with(String::new())).await.status(), StatusCode::FORBIDDEN);
    assert_ne!(answer(), shown, "a new picture");
    assert_eq!(confirm(with("wrong".into())).await.status(), StatusCode::FORBIDDEN);
    // A stolen session guessing with a solved picture gets one check for it, counted, and the
    // answer to the form comes with the next picture.
    let first = answer();
    let guess = vec![("csrf", csrf.clone()), ("current", "not her password".into()), ("captcha", first.clone())];
    let wrong = confirm(guess).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("name=\"captcha\""), "a picture at once");
    assert_ne!(answer(), first, "a new one");
    assert_eq!(confirm(with(first)).await.status(), StatusCode::FORBIDDEN, "one check per solved picture");
    // The owner: solved, confirmed.
    let resp = confirm(with(answer())).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(cookie_value(&resp, "__Host-portcullis-confirmed").is_some());
    let reasons: Vec<String> = app
        .log_lines()
        .iter()
        .filter(|l| l["event"].as_str().unwrap().starts_with("authn_login_fail") && l["username"] == "erin")
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    let want = [
        "bad_password",
        "bad_password",
        "bad_password",
        "captcha_required",
        "captcha_required",
        "bad_captcha",
        "bad_password",
        "bad_captcha",
    ];
    assert_eq!(reasons, want);

    // The password form alike: the picture comes with the form again, and solving it changes the password.
    let form = erin.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    let csrf = crate::helpers::hidden_field(&form, "csrf").unwrap();
    let change = |captcha: String| {
        let fields = vec![
            ("csrf", csrf.clone()),
            ("current", GOOD_PASSWORD.to_string()),
            ("new", NEW_PASSWORD.to_string()),
            ("repeat", NEW_PASSWORD.to_string()),
            ("captcha", captcha),
        ];
        let (erin, url) = (erin.clone(), app.url("/account/password"));
        async move { erin.post(url).form(&fields).send().await.unwrap() }
    };
    let resp = change(String::new()).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let page = resp.text().await.unwrap();
    assert!(page.contains("the characters in the picture") && page.contains("name=\"captcha\""), "{page}");
    let resp = change(answer()).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "changed");
    assert!(cookie_value(&resp, "__Host-portcullis").is_some(), "and the session renewed");
    let verified = app.state.auth.verify_current("erin", portcullis::password::Password::new(NEW_PASSWORD)).await;
    assert!(verified.unwrap(), "the new password is hers");
}

/// The account forms draw their pictures on the login form's per-address quota of drawings
/// (60 a minute): with the address quota off, a session past the threshold made the server
/// draw one per request without bound (a review drew 1000 in 3 s).
#[tokio::test]
async fn the_account_forms_draw_pictures_on_the_addresss_drawing_quota() {
    let app = crate::helpers::spawn_app_with(|s| {
        crate::passkeys::on_localhost(s);
        s.login_quota_per_ip = None;
        s.login_quota_per_user = None;
    })
    .await;
    app.add_user("gus", GOOD_PASSWORD, false).await;
    let (gus, _) = browser_signed_in_ago(&app, "gus", stale(), Factors::One).await;
    for i in 0..app.settings.captcha_after_failures {
        app.login_with(&app.new_browser(), "gus", &format!("a stranger's guess {i}")).await;
    }
    let csrf = csrf_of(&gus, app.url("/account/confirm")).await;
    // The quota refills by one a second while this runs: a few more than the burst.
    let burst = portcullis::rate_limit::CAPTCHA_DRAWS.burst as usize;
    let mut drawn = 0;
    loop {
        let resp = post(&app, &gus, "/account/confirm", &[("csrf", &csrf), ("current", GOOD_PASSWORD)]).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(resp.headers().contains_key("retry-after"));
            assert!(resp.text().await.unwrap().contains("Too many new pictures"), "not a generic page");
            break;
        }
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.text().await.unwrap().contains("data:image/png"));
        drawn += 1;
        assert!(drawn <= burst + 20, "no end to the pictures");
    }
    assert!(drawn >= burst, "{drawn}");
}

#[tokio::test]
async fn a_confirmation_goes_on_only_to_the_account_pages() {
    let app = passkey_app().await;
    app.add_user("bob", GOOD_PASSWORD, false).await;
    let (bob, _) = browser_signed_in_ago(&app, "bob", stale(), Factors::One).await;
    for next in ["https://evil.example/", "//evil.example/x", "/admin/unlock", "/logout"] {
        let page =
            bob.get(app.url(&format!("/account/confirm?next={next}"))).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("name=\"next\" value=\"/account\""), "{next}: {page}");
    }
    let csrf = csrf_of(&bob, app.url("/account/confirm")).await;
    let form = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("next", "https://evil.example/")];
    let resp = post(&app, &bob, "/account/confirm", &form).await;
    assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, "/account"));
}

#[tokio::test]
async fn the_confirmation_form_needs_its_csrf_token_and_a_session() {
    let app = passkey_app().await;
    app.add_user("carol", GOOD_PASSWORD, false).await;
    let (carol, _) = browser_signed_in_ago(&app, "carol", stale(), Factors::One).await;
    let forged = post(&app, &carol, "/account/confirm", &[("csrf", "forged"), ("current", GOOD_PASSWORD)]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(cookie_value(&forged, "__Host-portcullis").is_none(), "no new session for a forged form");
    // No password typed: a form not filled in (400), nothing checked or recorded.
    let csrf = csrf_of(&carol, app.url("/account/confirm")).await;
    let empty = post(&app, &carol, "/account/confirm", &[("csrf", csrf.as_str()), ("current", "")]).await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    assert!(app.records(portcullis::store::FailureQuery::default()).await.is_empty(), "nothing recorded");
    let nobody = app.new_browser();
    let resp = post(&app, &nobody, "/account/confirm", &[("csrf", "x"), ("current", GOOD_PASSWORD)]).await;
    assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, "/login?next=/account"));
    // A signed-out visit to a page behind the confirmation comes back to that page after the
    // sign-in (which is recent by then), not to /account (a review's nit).
    for (path, back) in [
        ("/account/totp", "/login?next=/account/totp"),
        ("/account/passkeys", "/login?next=/account/passkeys"),
        ("/account/confirm?next=/account/totp", "/login?next=/account/totp"),
        ("/account/confirm", "/login?next=/account"),
    ] {
        let resp = nobody.get(app.url(path)).send().await.unwrap();
        assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, back), "{path}");
    }
}

/// A browser that holds `cookie` as its session cookie.
fn browser_signed_in_with_cookie(app: &TestApp, cookie: &str) -> reqwest::Client {
    browser_with_cookies(app, &[("__Host-portcullis", cookie)])
}

/// A browser whose jar holds these cookies (name, value).
fn browser_with_cookies(app: &TestApp, cookies: &[(&str, &str)]) -> reqwest::Client {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let url: url::Url = app.url("/").parse().unwrap();
    for (name, value) in cookies {
        jar.add_cookie_str(&format!("{name}={value}; Secure; Path=/"), &url);
    }
    browser_builder(&app.settings.cert_dir).cookie_provider(jar).build().unwrap()
}

#[tokio::test]
async fn the_password_form_checks_no_password_past_the_captcha_threshold_either() {
    let app = passkey_app().await;
    app.add_user("erin", GOOD_PASSWORD, false).await;
    let (erin, _) = browser_signed_in_ago(&app, "erin", Duration::from_secs(5), Factors::One).await;
    let csrf = csrf_of(&erin, app.url("/account")).await;
    let new = "a new long passphrase 2231";
    let change = |current: String| {
        let form = [("csrf", csrf.as_str()), ("current", current.as_str()), ("new", new), ("repeat", new)];
        erin.post(app.url("/account/password")).form(&form).send()
    };
    for i in 0..app.settings.captcha_after_failures {
        assert_eq!(change(format!("guess {i}")).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(change(GOOD_PASSWORD.to_string()).await.unwrap().status(), StatusCode::FORBIDDEN);
    let unchanged = portcullis::password::Password::new(GOOD_PASSWORD);
    assert!(app.state.auth.verify_current("erin", unchanged).await.unwrap(), "the password is not changed");
}

#[tokio::test]
async fn a_password_change_gives_a_new_token_but_keeps_the_sessions_start_and_counts_as_a_confirmation() {
    let app = passkey_app().await;
    app.add_user("fay", GOOD_PASSWORD, false).await;
    let (fay, old) = browser_signed_in_ago(&app, "fay", stale(), Factors::Two).await;
    let started = app.sessions_of("fay").await[0].record.created_at;
    let csrf = csrf_of(&fay, app.url("/account")).await;
    let new = "a new long passphrase 7310";
    let form = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("new", new), ("repeat", new)];
    let resp = post(&app, &fay, "/account/password", &form).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_ne!(cookie_value(&resp, "__Host-portcullis").unwrap(), old, "a new token");
    assert!(cookie_value(&resp, "__Host-portcullis-confirmed").is_some(), "the password just typed counts");
    let sessions = app.sessions_of("fay").await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].record.created_at, started, "the absolute timeout still counts from the sign-in");
    assert_eq!(sessions[0].record.factors, Factors::Two);
    // Recent enough to change a factor without another prompt.
    assert_eq!(fay.get(app.url("/account/totp")).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn signing_out_everywhere_else_gives_a_new_token_that_is_as_recently_confirmed_as_the_old_no_more() {
    let app = passkey_app().await;
    app.add_user("gus", GOOD_PASSWORD, false).await;
    let (gus, old) = browser_signed_in_ago(&app, "gus", stale(), Factors::Two).await;
    let started = app.sessions_of("gus").await[0].record.created_at;
    let end_others = |csrf: String| {
        let gus = gus.clone();
        let url = app.url("/sessions/end-others");
        async move { gus.post(url).form(&[("csrf", csrf.as_str()), ("from", "account")]).send().await.unwrap() }
    };
    // Not confirmed: the new token is not either.
    let resp = end_others(csrf_of(&gus, app.url("/account")).await).await;
    assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, "/account"));
    let renewed = cookie_value(&resp, "__Host-portcullis").expect("a new token");
    assert_ne!(renewed, old);
    assert!(cookie_value(&resp, "__Host-portcullis-confirmed").is_none(), "no confirmation was made");
    let sessions = app.sessions_of("gus").await;
    assert_eq!(sessions.len(), 1, "the old token is removed: {sessions:?}");
    assert_eq!((sessions[0].record.created_at, sessions[0].record.factors), (started, Factors::Two));
    let asked = gus.get(app.url("/account/totp")).send().await.unwrap();
    assert_eq!(location(&asked), "/account/confirm?next=/account/totp");
    let left_behind = browser_signed_in_with_cookie(&app, &old);
    let resp = left_behind.get(app.url("/")).send().await.unwrap();
    assert_eq!(
        (resp.status(), location(&resp)),
        (StatusCode::SEE_OTHER, "/login?ended=session"),
        "the old token is over"
    );

    // Confirmed: the confirmation goes on with the new token, with its own time.
    let csrf = csrf_of(&gus, app.url("/account/confirm?next=/account/totp")).await;
    let right = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("next", "/account/totp")];
    assert_eq!(post(&app, &gus, "/account/confirm", &right).await.status(), StatusCode::SEE_OTHER);
    let confirmed_at = |cookie: String| cookie.split_once('.').unwrap().0.to_string();
    let resp = end_others(csrf_of(&gus, app.url("/")).await).await;
    assert_eq!((resp.status(), location(&resp)), (StatusCode::SEE_OTHER, "/account"));
    let carried = cookie_value(&resp, "__Host-portcullis-confirmed").expect("the confirmation carried over");
    assert_eq!(gus.get(app.url("/account/totp")).send().await.unwrap().status(), StatusCode::OK);
    // Re-signed for the new token, not moved forward: another end gives the same time.
    let resp = end_others(csrf_of(&gus, app.url("/")).await).await;
    let again = cookie_value(&resp, "__Host-portcullis-confirmed").unwrap();
    assert_eq!(confirmed_at(again.clone()), confirmed_at(carried.clone()));
    assert_ne!(again, carried, "signed for another token");

    // The carried cookie lasts what is left of the confirmation's time; one already over is
    // not carried at all.
    for (ago_secs, max_age) in [(570, Some(30)), (660, None)] {
        let (_, cookie) = browser_signed_in_ago(&app, "gus", stale(), Factors::Two).await;
        let hash = SessionToken::parse(&cookie).unwrap().hash();
        let at = now_ms() - ago_secs * 1000;
        let confirmed = format!("{at}.{}", app.state.csrf.notice_tag(&hash, format!("confirmed:{at}").as_bytes()));
        let browser =
            browser_with_cookies(&app, &[("__Host-portcullis", &cookie), ("__Host-portcullis-confirmed", &confirmed)]);
        let csrf = csrf_of(&browser, app.url("/")).await;
        let resp = post(&app, &browser, "/sessions/end-others", &[("csrf", &csrf)]).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let set: Vec<String> =
            resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().into()).collect();
        let carried = set.iter().find(|c| c.starts_with("__Host-portcullis-confirmed="));
        let seconds = carried.map(|c| c.split("Max-Age=").nth(1).unwrap().split(';').next().unwrap().parse::<u64>());
        match (max_age, seconds) {
            (Some(expected), Some(Ok(got))) => assert!(got.abs_diff(expected) <= 2, "{ago_secs} s ago: {set:?}"),
            (None, None) => {}
            _ => panic!("{ago_secs} s ago: {set:?}"),
        }
    }
}

#[tokio::test]
async fn password_checks_refused_on_the_account_pages_are_recorded_like_the_login_forms_refusals() {
    let app = crate::helpers::spawn_app_with(|s| {
        crate::passkeys::on_localhost(s);
        s.captcha_after_failures = 3;
        s.login_quota_per_user = Some(portcullis::config::Rate { burst: 2, period: Duration::from_secs(900) });
    })
    .await;
    app.add_user("frank", GOOD_PASSWORD, false).await;
    let (frank, _) = browser_signed_in_ago(&app, "frank", stale(), Factors::One).await;
    let csrf = csrf_of(&frank, app.url("/account/confirm")).await;
    let guess = |n: u32| {
        let g = format!("guess number {n}");
        let frank = frank.clone();
        let (url, csrf) = (app.url("/account/confirm"), csrf.clone());
        async move { frank.post(url).form(&[("csrf", csrf.as_str()), ("current", g.as_str())]).send().await.unwrap() }
    };
    for n in 0..2 {
        assert_eq!(guess(n).await.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = guess(2).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    let reasons = |app: &TestApp| {
        let lines = app.log_lines();
        let mut r: Vec<String> = lines
            .iter()
            .filter(|l| l["event"] == "authn_login_fail" && l["username"] == "frank")
            .map(|l| l["reason"].as_str().unwrap().to_string())
            .collect();
        r.sort();
        r
    };
    assert_eq!(reasons(&app), ["bad_password", "bad_password", "rate_limited"]);
    let records = app.records(FailureQuery::default()).await;
    assert!(records.iter().any(|r| r.reason == FailureReason::RateLimited && r.username == "frank"));

    // Past the captcha threshold (a third failure, here from the login form), the refusal
    // names the captcha, in the log and in the store.
    app.state
        .brute_force
        .record_failure(
            portcullis::client::AddressKey::of(std::net::IpAddr::from([127, 0, 0, 1])),
            Some(portcullis::rate_limit::username_digest("frank")),
            now_ms(),
        )
        .await
        .unwrap();
    let refused = guess(3).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(reasons(&app).contains(&"captcha_required".to_string()), "{:?}", reasons(&app));
    let records = app.records(FailureQuery::default()).await;
    assert!(records.iter().any(|r| r.reason == FailureReason::CaptchaRequired && r.username == "frank"));
}

#[tokio::test]
async fn a_session_hammering_the_account_forms_past_the_threshold_is_held_to_the_address_quota() {
    // The login form's bound on what one address can make the server record: its quota.
    let app = crate::helpers::spawn_app_with(|s| {
        crate::passkeys::on_localhost(s);
        s.captcha_after_failures = 3;
        s.login_quota_per_ip = Some(portcullis::config::Rate { burst: 6, period: Duration::from_secs(3600) });
    })
    .await;
    app.add_user("gina", GOOD_PASSWORD, false).await;
    let (gina, _) = browser_signed_in_ago(&app, "gina", stale(), Factors::One).await;
    let csrf = csrf_of(&gina, app.url("/account/confirm")).await;
    let mut statuses = Vec::new();
    for n in 0..40 {
        let g = format!("guess number {n}");
        let form = [("csrf", csrf.as_str()), ("current", g.as_str()), ("next", "/account")];
        let path = if n % 2 == 0 { "/account/confirm" } else { "/account/password" };
        let form: Vec<(&str, &str)> = if path == "/account/password" {
            vec![("csrf", csrf.as_str()), ("current", g.as_str()), ("new", "x"), ("repeat", "x")]
        } else {
            form.to_vec()
        };
        statuses.push(post(&app, &gina, path, &form).await.status().as_u16());
    }
    // 3 wrong passwords, 3 refusals past the threshold, then 429 only.
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 34, "{statuses:?}");
    let records = app.records(FailureQuery::default()).await;
    // One record per check or refusal within the quota, and one for the minute's 429s.
    assert!(records.len() <= 8, "{} records for 40 requests: {records:?}", records.len());
    assert_eq!(records.iter().filter(|r| r.reason == FailureReason::RateLimited).count(), 1);
}

/// A passkey a thief adds with a copied session signs in alone, and outlives the owner's
/// *Sign out everywhere else* and password change (review 187): the page those answer with
/// names the passkeys added lately, and asks that one not the owner's be removed.
#[tokio::test]
async fn signing_out_everywhere_else_names_the_passkeys_added_lately() {
    let app = passkey_app().await;
    let owner = signed_in_browser(&app, "alice").await;
    let (_mine, added) = register(&app, &owner, "mine").await;
    assert_eq!(added.status(), StatusCode::OK, "the first factor, with its recovery codes");
    // A copy of a session of two factors, 30 s after its sign-in, adds one whose name reads as
    // more of a sentence (review 191).
    let (thief, _) = browser_signed_in_ago(&app, "alice", Duration::from_secs(30), Factors::Two).await;
    let forged = "Phone\u{201d} (2025-03-01 08:12 UTC), set up by you";
    let (_device, added) = register(&app, &thief, forged).await;
    assert_eq!(added.status(), StatusCode::SEE_OTHER);
    let page = owner.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    let csrf = hidden_field(&page, "csrf").unwrap();
    // From the home page too (review 191: its notice said nothing): to the account page, where
    // they are listed.
    let resp = owner.post(app.url("/sessions/end-others")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!((resp.status(), resp.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/account"));
    let page = owner.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    let alert =
        page.split("<p class=\"alert\" role=\"alert\">").nth(1).expect("an alert").split("</p>").next().unwrap();
    assert!(
        alert.contains("2 passkeys were added in the last 30 days: they are marked added lately under Passkeys below."),
        "{alert}"
    );
    assert!(!alert.contains("set up by you") && !alert.contains("mine"), "no name in the sentence: {alert}");
    // Names can have been swapped by whoever added one (review 193).
    assert!(alert.contains("Go by when each was added and last used, not by its name"), "{alert}");
    assert_eq!(page.matches("<span class=\"tag\">added lately</span>").count(), 2, "{page}");
    // Said once: the next visit shows the page as it is.
    let page = owner.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("added in the last 30 days") && !page.contains("added lately"), "{page}");
}

/// Three wrong passwords a stranger typed for the name, from elsewhere, do not put the
/// owner's own browser, which signed in as the user before, behind a picture on the account
/// forms, as at the login form (review 190: a user who cannot solve pictures could neither
/// change a leaked password nor remove a lost passkey); a session's browser without such a
/// cookie (a copied session cookie) meets the picture.
#[tokio::test]
async fn failures_others_typed_for_the_name_ask_no_picture_of_the_owners_own_browser_on_the_account_forms() {
    let app = crate::helpers::spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.add_user("erin", GOOD_PASSWORD, false).await;
    let erin = app.new_browser();
    assert_eq!(app.login_with(&erin, "erin", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    let (copy, _) = browser_signed_in_ago(&app, "erin", Duration::from_secs(30), Factors::One).await;
    for i in 0..app.settings.captcha_after_failures {
        let stranger = app.new_browser();
        let from = format!("203.0.113.{i}");
        let page = stranger.get(app.url("/login")).header("x-forwarded-for", &from).send().await.unwrap();
        let csrf = hidden_field(&page.text().await.unwrap(), "csrf").unwrap();
        let guess = format!("a stranger's guess {i}");
        let form = [("username", "erin"), ("password", guess.as_str()), ("csrf", csrf.as_str())];
        let resp = stranger.post(app.url("/login")).header("x-forwarded-for", &from).form(&form).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let change = |browser: &reqwest::Client, new: &'static str| {
        let (browser, app) = (browser.clone(), &app);
        async move {
            let csrf = csrf_of(&browser, app.url("/account")).await;
            let form = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("new", new), ("repeat", new)];
            browser.post(app.url("/account/password")).form(&form).send().await.unwrap()
        }
    };
    let resp = change(&copy, "plum tractor velvet orbit 42 quasar").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "a browser that never signed in as erin: a picture");
    assert!(resp.text().await.unwrap().contains("src=\"data:image/png;base64,"));
    let resp = change(&erin, "plum tractor velvet orbit 42 quasar").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "her own browser: no picture");
}
