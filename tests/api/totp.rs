//! The second factor end to end over HTTPS: a person enrols an authenticator app from the page
//! (the test reads the secret there and computes codes as an app would), then signs in with
//! the password and a code at `/login/second-factor`. Reused codes, codes two steps old,
//! recovery codes (each once) and the counting of wrong codes like wrong passwords.

use std::sync::Arc;

use portcullis::audit::FailureReason;
use portcullis::client::AddressKey;
use portcullis::config::Settings;
use portcullis::factors::{totp, Asker, FactorKind, Proof, Verdict};
use portcullis::rate_limit::username_digest;
use portcullis::store::{now_ms, Factors, FailureQuery};

use crate::helpers::{
    cookie_value, hidden_field, set_cookies, shows_captcha, spawn_app_with, TestApp, Visitor, GOOD_PASSWORD,
};

/// The current TOTP time step, past the first 25 s of it (waiting for the next one if need
/// be), so that a test has a whole step before the server's clock moves on.
pub(crate) async fn fresh_step() -> u64 {
    let secs = now_ms() / 1000;
    if secs % totp::STEP_SECS >= 25 {
        tokio::time::sleep(std::time::Duration::from_secs(totp::STEP_SECS - secs % totp::STEP_SECS)).await;
    }
    now_ms() / 1000 / totp::STEP_SECS
}

/// The code an authenticator app shows for `secret` at time step `step`.
pub(crate) fn code(secret: &[u8], step: u64) -> String {
    totp::code_at(secret, step * totp::STEP_SECS).unwrap()
}

/// The texts of the `<code>` elements in a page's recovery-code list.
pub(crate) fn recovery_codes(page: &str) -> Vec<String> {
    let list = &page[page.find("class=\"codes\"").expect("a list of codes")..];
    let list = &list[..list.find("</ol>").unwrap()];
    list.split("<code>").skip(1).map(|c| c[..c.find("</code>").unwrap()].to_string()).collect()
}

/// Signs `browser` in with the password alone (the user has no second factor yet).
pub(crate) async fn sign_in(app: &TestApp, browser: &reqwest::Client, name: &str) {
    let resp = app.login_with(browser, name, GOOD_PASSWORD).await;
    assert_eq!(resp.status(), 303);
}

/// The authenticator form on `page` (`/account/totp`) filled in with the code `code_of` gives
/// for its secret, and the secret.
pub(crate) fn enrolment_form(page: &str, code_of: &dyn Fn(&[u8]) -> String) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let b32 = hidden_field(page, "secret").unwrap();
    let secret = totp::from_base32(&b32).unwrap().to_vec();
    let fields = vec![
        ("csrf", hidden_field(page, "csrf").unwrap()),
        ("secret", b32),
        ("tag", hidden_field(page, "tag").unwrap()),
        ("replacing", hidden_field(page, "replacing").unwrap_or_default()),
        ("code", code_of(&secret)),
    ];
    (secret, fields)
}

/// Enrols an authenticator app on `/account/totp` as a person does, with the code of the
/// step before `step` (one step of drift is allowed), so that `step` itself is still unused.
/// Returns the secret and the recovery codes shown once.
pub(crate) async fn enrol(app: &TestApp, browser: &reqwest::Client, step: u64) -> (Vec<u8>, Vec<String>) {
    let resp = browser.get(app.url("/account/totp")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_no_script(&resp);
    let page = resp.text().await.unwrap();
    let b32 = hidden_field(&page, "secret").expect("the secret is in the form");
    assert!(page.contains("data:image/svg+xml;base64,"), "a QR code drawn by the server");
    assert!(page.contains("otpauth://totp/") && page.contains(&format!("secret={b32}")), "the otpauth URI");
    assert!(page.contains("autocomplete=\"one-time-code\"") && page.contains("inputmode=\"numeric\""));
    let secret = totp::from_base32(&b32).unwrap().to_vec();
    let form = |code: String| {
        vec![
            ("csrf", hidden_field(&page, "csrf").unwrap()),
            ("secret", b32.clone()),
            ("tag", hidden_field(&page, "tag").unwrap()),
            ("code", code),
        ]
    };
    // A wrong code changes nothing.
    let wrong = browser.post(app.url("/account/totp")).form(&form("000000".into())).send().await.unwrap();
    assert_eq!(wrong.status(), 400);
    let wrong_page = wrong.text().await.unwrap();
    assert!(wrong_page.contains("not right"), "{wrong_page}");
    let resp = browser.post(app.url("/account/totp")).form(&form(code(&secret, step - 1))).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the first time, the recovery codes are shown");
    assert_no_script(&resp);
    assert_eq!(resp.headers()["cache-control"], "no-store", "codes shown once are not cached");
    let codes = recovery_codes(&resp.text().await.unwrap());
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// The password step: the form and its answer.
async fn password_step(app: &TestApp, browser: &reqwest::Client, name: &str) -> reqwest::Response {
    let resp = app.login_with(browser, name, GOOD_PASSWORD).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login/second-factor");
    resp
}

/// The page's Content-Security-Policy allows no script (only pages with a passkey button may).
fn assert_no_script(resp: &reqwest::Response) {
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
}

/// The second step's form token.
async fn second_csrf(app: &TestApp, browser: &reqwest::Client) -> String {
    // (No CSP check here: the passkey button may bring `script-src 'self'` to this page.)
    let resp = browser.get(app.url("/login/second-factor")).send().await.unwrap();
    let page = resp.text().await.unwrap();
    hidden_field(&page, "csrf").expect("the second-factor form")
}

async fn submit(app: &TestApp, browser: &reqwest::Client, field: &str, value: &str) -> reqwest::Response {
    let csrf = second_csrf(app, browser).await;
    browser.post(app.url("/login/second-factor")).form(&[("csrf", csrf.as_str()), (field, value)]).send().await.unwrap()
}

/// Password then `value` in `field`: the second step's answer.
pub(crate) async fn two_steps(
    app: &TestApp,
    name: &str,
    field: &str,
    value: &str,
) -> (reqwest::Client, reqwest::Response) {
    let browser = app.new_browser();
    password_step(app, &browser, name).await;
    let resp = submit(app, &browser, field, value).await;
    (browser, resp)
}

async fn reasons(app: &TestApp, user: &str) -> Vec<FailureReason> {
    let q = FailureQuery { user_key: Some(user.into()), ..FailureQuery::default() };
    app.records(q).await.into_iter().map(|r| r.reason).collect()
}

#[tokio::test]
async fn an_authenticator_app_enrolled_from_the_page_signs_in_and_each_code_and_step_works_once() {
    // Many sign-ins for one user: the quotas are not what this test is about.
    let app = spawn_app_with(|s| {
        s.captcha_after_failures = 100;
        s.login_quota_per_user = None;
        s.login_quota_per_ip = None;
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let step = fresh_step().await;
    let (secret, codes) = enrol(&app, &first, step).await;
    let log = app.log_lines();
    assert!(log.iter().any(|l| l["event"] == "mfa_added" && l["kind"] == "totp" && l["username"] == "alice"));
    assert!(log.iter().any(|l| l["event"] == "mfa_added" && l["kind"] == "recovery_codes"));

    // The password alone now gives no session, only the short-lived second-step cookie.
    let last_sign_in = || async { app.state.store.users.get("alice").await.unwrap().unwrap().last_login_at };
    let signed_in_before = last_sign_in().await;
    let browser = app.new_browser();
    let resp = password_step(&app, &browser, "alice").await;
    assert!(cookie_value(&resp, "__Host-portcullis").is_none(), "no session before the second factor");
    assert!(cookie_value(&resp, "__Host-portcullis-device").is_none(), "nor a device cookie");
    assert_eq!(last_sign_in().await, signed_in_before, "nobody signed in yet: LAST LOGIN unchanged");
    // The right password is on record even if nobody ever gives the code (a sign that
    // someone else knows it), and it is no success.
    let log = app.log_lines();
    let last = log.last().unwrap();
    assert_eq!(
        (&last["event"], &last["username"], &last["ip"]),
        (&"authn_login_mfa_pending".into(), &"alice".into(), &"127.0.0.1".into())
    );
    let successes = |log: &[serde_json::Value]| log.iter().filter(|l| l["event"] == "authn_login_success").count();
    let successes_before = successes(&log);
    let mfa = set_cookies(&resp).into_iter().find(|c| c.starts_with("__Host-portcullis-mfa=")).unwrap();
    // Kept an hour past the step's 5 minutes, so a step finished late is told it ran out
    // (`/login?ended=step`) rather than shown a bare form (review 209).
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=3900"] {
        assert!(mfa.contains(attr), "{mfa}");
    }
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 303, "not signed in yet");
    // A pasted code with a space in the middle, as apps show it.
    let now = code(&secret, step);
    let pasted = format!("{} {}", &now[..3], &now[3..]);
    let csrf = second_csrf(&app, &browser).await;
    let pending_cookie = cookie_value(&resp, "__Host-portcullis-mfa").unwrap();
    let resp = browser
        .post(app.url("/login/second-factor"))
        .form(&[("csrf", csrf.as_str()), ("code", pasted.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let session = cookie_value(&resp, "__Host-portcullis").expect("a session cookie");
    let device_cookie = cookie_value(&resp, "__Host-portcullis-device").expect("a device cookie");
    assert!(app.state.csrf.is_known_device(&device_cookie, "alice", now_ms()), "set at the second step");
    let active = app.state.sessions.resolve(&session).await.unwrap().unwrap();
    assert_eq!(active.record.factors, Factors::Two, "signed in with two factors");
    assert_eq!(successes(&app.log_lines()), successes_before + 1, "the sign-in is logged once, at the second step");
    let signed_in = app.log_lines().into_iter().rfind(|l| l["event"] == "authn_login_success").unwrap();
    assert_eq!((&signed_in["method"], &signed_in["recovery_codes_left"]), (&"totp".into(), &serde_json::Value::Null));
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    assert!(last_sign_in().await > signed_in_before, "the sign-in happened with the second factor");

    // The pending sign-in was single use: its cookie and form are worth nothing now.
    let replay = app
        .new_browser()
        .post(app.url("/login/second-factor"))
        .header("cookie", format!("__Host-portcullis-mfa={pending_cookie}"))
        .form(&[("csrf", csrf.as_str()), ("code", code(&secret, step + 1).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 303);
    assert_eq!(replay.headers()["location"], "/login?ended=step");

    // The same code (its step) again: refused as reused, on another browser too.
    let (_, resp) = two_steps(&app, "alice", "code", &now).await;
    assert_eq!(resp.status(), 401);
    let page = resp.text().await.unwrap();
    assert!(page.contains("not right, or was already used"));
    // The error is the code fields' description, for a screen reader on the field.
    assert!(
        page.contains("id=\"factor-error\"") && page.matches("aria-describedby=\"factor-error\"").count() == 2,
        "{page}"
    );
    // A code two steps old: refused.
    let (_, resp) = two_steps(&app, "alice", "code", &code(&secret, step - 2)).await;
    assert_eq!(resp.status(), 401);
    // The next step's code (one step of drift) works once.
    let (_, resp) = two_steps(&app, "alice", "code", &code(&secret, step + 1)).await;
    assert_eq!(resp.status(), 303);
    let mut got = reasons(&app, "alice").await;
    got.reverse();
    assert_eq!(got, [FailureReason::ReusedCode, FailureReason::BadSecondFactor]);

    // Recovery codes: each once, typed in either field, in upper case too.
    let (browser, resp) = two_steps(&app, "alice", "recovery_code", &codes[0].to_uppercase()).await;
    assert_eq!(resp.status(), 303);
    // The next page says how many are left (review 197: only the account page did), counted
    // when it is shown: a code someone else spent meanwhile is not among them (review 199).
    let (_, elsewhere) = two_steps(&app, "alice", "recovery_code", &codes[9]).await;
    assert_eq!(elsewhere.status(), 303);
    let home = browser.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("You signed in with a recovery code: 8 are left."), "{home}");
    let (_, resp) = two_steps(&app, "alice", "recovery_code", &codes[0]).await;
    assert_eq!(resp.status(), 401, "a recovery code works once");
    let (_, resp) = two_steps(&app, "alice", "code", &codes[1]).await;
    assert_eq!(resp.status(), 303, "a recovery code typed in the code field");
    let summary = app.state.factors.summary("alice").await.unwrap();
    assert_eq!(summary.recovery_codes, 7);
    let log = app.log_lines();
    // Each recovery code spent is on the line that signed in with it, with what is left.
    let spent: Vec<_> = log
        .iter()
        .filter(|l| l["event"].as_str().unwrap().starts_with("authn_login_success") && l["method"] == "recovery_code")
        .map(|l| l["recovery_codes_left"].as_u64().unwrap())
        .collect();
    let mut spent = spent;
    spent.sort_unstable();
    assert_eq!(spent, [7, 8, 9]);
    let fails: Vec<_> = log.iter().filter(|l| l["event"] == "authn_login_fail").map(|l| l["reason"].clone()).collect();
    assert_eq!(
        fails,
        ["reused_code", "bad_second_factor", "reused_code"],
        "the recovery code used twice is a reused code"
    );
    let text = app.log_text();
    assert!(!text.contains(&codes[0]) && !text.contains(&now), "no code in the log");

    // New recovery codes void the old ones.
    let page = first.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("7 unused recovery codes left"), "{page}");
    let form = [("csrf", hidden_field(&page, "csrf").unwrap()), ("seen", hidden_field(&page, "seen").unwrap())];
    let resp = first.post(app.url("/account/recovery-codes")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let fresh = recovery_codes(&resp.text().await.unwrap());
    let (_, resp) = two_steps(&app, "alice", "recovery_code", &codes[2]).await;
    assert_eq!(resp.status(), 401, "an old code after new ones were made");
    let (_, resp) = two_steps(&app, "alice", "recovery_code", &fresh[0]).await;
    assert_eq!(resp.status(), 303);

    // The count reads as English, and the last codes say to make new ones.
    app.state.store.factors.set_recovery_codes("alice", &[[7u8; 32]], None).await.unwrap();
    let page = first.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("1 unused recovery code left") && page.contains("consider making new ones"), "{page}");
    app.state.store.factors.set_recovery_codes("alice", &[], None).await.unwrap();
    let page = first.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("No unused recovery codes left"), "{page}");
}

#[tokio::test]
async fn wrong_codes_count_toward_the_captcha_threshold_and_the_right_password_alone_clears_nothing() {
    let app = spawn_app_with(|s| s.captcha_after_failures = 3).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let step = fresh_step().await;
    let (secret, _) = enrol(&app, &first, step).await;
    let digest = username_digest("alice");
    let elsewhere = AddressKey::of("192.0.2.200".parse().unwrap());

    // One wrong password, then the right one: the failure stays counted.
    let browser = app.new_browser();
    assert_eq!(app.login_with(&browser, "alice", "not the password at all").await.status(), 401);
    password_step(&app, &browser, "alice").await;
    let resp = submit(&app, &browser, "code", "123456").await;
    assert_eq!(resp.status(), 401);
    assert!(!app.state.brute_force.needs_captcha(elsewhere, Some(digest), now_ms()).await.unwrap());
    let resp = submit(&app, &browser, "code", "654321").await;
    assert_eq!(resp.status(), 401);
    assert!(
        app.state.brute_force.needs_captcha(elsewhere, Some(digest), now_ms()).await.unwrap(),
        "a wrong password and two wrong codes reach the threshold of 3 for the username"
    );
    // Past the threshold even the right code is not checked without the picture solved; the
    // pending sign-in stays, and the page shows the picture.
    let resp = submit(&app, &browser, "code", &code(&secret, step)).await;
    assert_eq!(resp.status(), 401);
    assert!(!set_cookies(&resp).iter().any(|c| c.starts_with("__Host-portcullis-mfa=;")), "the sign-in goes on");
    let page = resp.text().await.unwrap();
    assert!(page.contains("type the characters in the picture") && shows_captcha(&page), "{page}");
    assert!(page.contains("for this account or from this network"), "{page}");
    let got = reasons(&app, "alice").await;
    assert_eq!(got[0], FailureReason::CaptchaRequired);
    assert_eq!(got.iter().filter(|r| **r == FailureReason::BadSecondFactor).count(), 2);
}

/// Past the threshold the second step asks for its own picture instead of sending the user
/// back to the password: three wrong passwords typed for the name by a stranger used to end
/// a two-step sign-in under way (as a review found for passkeys). Each code checked there
/// costs one solved picture, as at the login form and on `/account/confirm`.
#[tokio::test]
async fn past_the_threshold_the_second_step_checks_one_code_per_solved_picture() {
    let (app, step, secret, _) = alice_with_an_authenticator_behind_a_threshold_of_3().await;
    let mut alice = Visitor::new(&app, Some("203.0.113.5"));
    let (status, page) = alice.attempt("alice", GOOD_PASSWORD, None).await;
    assert_eq!(status, 303, "below the threshold: no captcha at the password\n{page}");
    let (_, page) = alice.get("/login/second-factor").await;
    assert!(!shows_captcha(&page), "no picture below the threshold");
    let csrf = hidden_field(&page, "csrf").unwrap();
    let mut stranger = Visitor::new(&app, Some("198.51.100.66"));
    for _ in 0..3 {
        assert_eq!(stranger.attempt("alice", "not the password at all", None).await.0, 401);
    }
    // The page shows a picture now; the right code alone is not checked.
    let (_, page) = alice.get("/login/second-factor").await;
    assert!(shows_captcha(&page), "{page}");
    // A new picture is asked for by a link, as on the login form: the field is required, and
    // "send the form again" (as its text said) took a guess (review 196).
    assert!(page.contains(r#"<a class="new-challenge" href="/login/second-factor">Show a new picture</a>"#), "{page}");
    assert!(page.contains("If you cannot read it, ask for a new one."), "{page}");
    let first = alice.second_step_captcha_answer().unwrap();
    let (_, page) = alice.get("/login/second-factor").await;
    assert!(shows_captcha(&page));
    assert_ne!(alice.second_step_captcha_answer().unwrap(), first, "the link's page draws a new one");
    let right = code(&secret, step);
    let resp = alice.post("/login/second-factor", &[("csrf", &csrf), ("code", &right)]).await;
    assert_eq!(resp.status(), 401);
    // A wrong answer to the picture: the code is not checked either, and a new picture comes.
    let answer = alice.second_step_captcha_answer().expect("a picture is open");
    let resp = alice.post("/login/second-factor", &[("csrf", &csrf), ("code", &right), ("captcha", "wrong")]).await;
    assert_eq!(resp.status(), 401);
    let page = resp.text().await.unwrap();
    assert!(page.contains("did not match the picture") && shows_captcha(&page), "{page}");
    assert_ne!(alice.second_step_captcha_answer().unwrap(), answer, "a new picture");
    // Solved, with a wrong code: counted, and the next code needs the next picture.
    let answer = alice.second_step_captcha_answer().unwrap();
    let resp = alice.post("/login/second-factor", &[("csrf", &csrf), ("code", "000000"), ("captcha", &answer)]).await;
    assert_eq!(resp.status(), 401);
    assert!(shows_captcha(&resp.text().await.unwrap()));
    let resp = alice.post("/login/second-factor", &[("csrf", &csrf), ("code", &right), ("captcha", &answer)]).await;
    assert_eq!(resp.status(), 401, "one check per picture: the solved one is spent");
    // Solved, with the right code: signed in, no password asked again.
    let answer = alice.second_step_captcha_answer().unwrap();
    let resp = alice.post("/login/second-factor", &[("csrf", &csrf), ("code", &right), ("captcha", &answer)]).await;
    assert_eq!(resp.status(), 303);
    assert!(alice.has_session());
    let got = reasons(&app, "alice").await;
    let count = |reason| got.iter().filter(|r| **r == reason).count();
    assert_eq!(
        (
            count(FailureReason::CaptchaRequired),
            count(FailureReason::BadCaptcha),
            count(FailureReason::BadSecondFactor)
        ),
        (1, 2, 1),
        "asked for once, answered wrong and spent once each, one wrong code: {got:?}"
    );
}

/// Alice on an app with `configure`d settings, signed in and with an authenticator app set up
/// from the page (one password check spent): the app, the app's secret and her recovery codes.
async fn alice_enrolled(configure: impl FnOnce(&mut Settings)) -> (TestApp, Vec<u8>, Vec<String>) {
    let app = spawn_app_with(configure).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let (secret, codes) = enrol(&app, &first, fresh_step().await).await;
    (app, secret, codes)
}

/// `n` new browsers past alice's password, each with its second step's form token.
async fn at_the_second_step(app: &TestApp, n: usize) -> Vec<(reqwest::Client, String)> {
    let mut browsers = Vec::new();
    for _ in 0..n {
        let browser = app.new_browser();
        password_step(app, &browser, "alice").await;
        let csrf = second_csrf(app, &browser).await;
        browsers.push((browser, csrf));
    }
    browsers
}

/// Alice with an authenticator app, under a captcha threshold of 100 and `configure`d
/// settings, and a browser past her password (two password sign-ins spent).
async fn alice_at_the_second_step(configure: impl FnOnce(&mut Settings)) -> (TestApp, reqwest::Client) {
    let (app, _, _) = alice_enrolled(|s| {
        s.captcha_after_failures = 100;
        configure(s);
    })
    .await;
    let browser = app.new_browser();
    password_step(&app, &browser, "alice").await;
    (app, browser)
}

/// NIST SP 800-63B §5.2.2: past 100 wrong codes in a row no code is checked, the right one
/// neither (429 without a `Retry-After`, recorded `rate_limited`), until the user's next
/// sign-in or credential generation: a sign-in with a code in between starts the count again,
/// and a new password lifts it (review 207: whoever had the password guessed 3 codes every 15
/// minutes without pictures, for ever). Counted with the factors, not from the failure
/// records, which others' failures push out (review 208: with `audit_max_records` at 50, 250
/// wrong codes in a row were all checked).
#[tokio::test]
async fn past_a_hundred_wrong_codes_in_a_row_no_code_is_checked_until_a_new_password() {
    use portcullis::password::Password;
    let (app, secret, codes) = alice_enrolled(|s| {
        s.captcha_after_failures = 1000;
        s.login_quota_per_user = None;
        s.login_quota_per_ip = None;
        s.audit_max_records = 50;
    })
    .await;
    let wrong = |browser: reqwest::Client, n: usize| {
        let app = &app;
        async move {
            for _ in 0..n {
                assert_eq!(submit(app, &browser, "code", "12345").await.status(), 401);
            }
        }
    };
    let browser = app.new_browser();
    password_step(&app, &browser, "alice").await;
    wrong(browser.clone(), 99).await;
    let resp = submit(&app, &browser, "recovery_code", &codes[0]).await;
    assert_eq!(resp.status(), 303, "99 in a row, then the right code");

    let browser = app.new_browser();
    password_step(&app, &browser, "alice").await;
    wrong(browser.clone(), 100).await;
    let resp = submit(&app, &browser, "code", &code(&secret, now_ms() / 1000 / totp::STEP_SECS)).await;
    assert_eq!(resp.status(), 429, "the right code, past 100 wrong ones in a row");
    assert!(!resp.headers().contains_key("retry-after"), "no wait ends it");
    let page = resp.text().await.unwrap();
    assert!(page.contains("Codes are no longer accepted for this account"), "{page}");
    // No field for a code is offered under that (review 211); *Cancel* stays.
    for field in [r#"name="code""#, r#"name="recovery_code""#] {
        assert!(!page.contains(field), "{field}: {page}");
    }
    assert!(page.contains("Cancel and start again"), "{page}");
    assert_eq!(submit(&app, &browser, "recovery_code", &codes[1]).await.status(), 429, "nor a recovery code");
    // The step's page says so before a code is typed (review 208), without the code fields.
    let shown = browser.get(app.url("/login/second-factor")).send().await.unwrap().text().await.unwrap();
    assert!(shown.contains("Codes are no longer accepted for this account"), "{shown}");
    assert!(!shown.contains(r#"name="code""#) && !shown.contains(r#"name="recovery_code""#), "{shown}");
    assert_eq!(reasons(&app, "alice").await[0], FailureReason::RateLimited);

    let new = Password::new("a different passphrase 4417 tundra");
    app.state.users.set_password("alice", new, "test", None, None).await.unwrap();
    let browser = app.new_browser();
    let resp = app.login_with(&browser, "alice", "a different passphrase 4417 tundra").await;
    assert_eq!(resp.headers()["location"], "/login/second-factor");
    let resp = submit(&app, &browser, "recovery_code", &codes[1]).await;
    assert_eq!(resp.status(), 303, "a new password starts the count again");
}

/// Codes sent at once cannot pass the cap on wrong codes in a row together: each is counted
/// before it is checked (review 210 saw 114 checked against 100 with 16 in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_sent_at_once_near_the_cap_are_checked_no_more_than_it_allows() {
    let (app, _, _) = alice_enrolled(|s| {
        s.captcha_after_failures = 1000;
        s.login_quota_per_user = None;
        s.login_quota_per_ip = None;
    })
    .await;
    let browsers = at_the_second_step(&app, 12).await;
    let user = app.state.store.users.get("alice").await.unwrap().unwrap();
    let run = user.last_login_at.unwrap_or(0).max(user.password_changed_at);
    for _ in 0..96 {
        app.state.store.factors.add_wrong_code("alice", run).await.unwrap();
    }
    let sends = browsers.iter().map(|(browser, csrf)| {
        let form = [("csrf", csrf.clone()), ("code", "12345".to_string())];
        browser.post(app.url("/login/second-factor")).form(&form).send()
    });
    let statuses: Vec<u16> =
        futures_util::future::join_all(sends).await.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(checked, 4, "four codes left of the hundred: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 8, "{statuses:?}");
}

/// The owner is told, at the sign-in after, how many wrong codes were typed in other sign-ins
/// since their last one: whoever typed them had the password (review 207: nothing said so).
/// Their own wrong code in this sign-in is not among them, and the next sign-in says nothing.
#[tokio::test]
async fn the_next_sign_in_says_how_many_wrong_codes_others_typed_since_the_last() {
    // One failure record kept: neither the count nor the owner's own typos are read from the
    // records, which others' failures push out (reviews 210, 211).
    let (app, _, codes) = alice_enrolled(|s| {
        s.captcha_after_failures = 100;
        s.audit_max_records = 1;
    })
    .await;
    let thief = app.new_browser();
    password_step(&app, &thief, "alice").await;
    for wrong in ["12345", "67890"] {
        assert_eq!(submit(&app, &thief, "code", wrong).await.status(), 401);
    }
    let owner = app.new_browser();
    password_step(&app, &owner, "alice").await;
    assert_eq!(submit(&app, &owner, "code", "11111").await.status(), 401, "the owner's own typo");
    assert_eq!(submit(&app, &owner, "recovery_code", &codes[0]).await.status(), 303);
    let home = owner.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(
        home.contains("Since your last sign-in, 2 wrong codes were typed for your account in other sign-ins")
            && home.contains("role=\"alert\""),
        "{home}"
    );
    let (again, resp) = two_steps(&app, "alice", "recovery_code", &codes[1]).await;
    assert_eq!(resp.status(), 303);
    let home = again.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(!home.contains("wrong code") && home.contains("recovery code"), "{home}");
    // The owner's own typos alone: no alert (review 211 saw them told as another's).
    let owner = app.new_browser();
    password_step(&app, &owner, "alice").await;
    for typo in ["11111", "22222", "33333"] {
        assert_eq!(submit(&app, &owner, "code", typo).await.status(), 401);
    }
    assert_eq!(submit(&app, &owner, "recovery_code", &codes[2]).await.status(), 303);
    let home = owner.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(!home.contains("wrong code"), "{home}");
}

/// Codes have a quota of `login_quota_per_user` of their own: wrong codes spend it, past it
/// a code is refused 429 with `Retry-After`, and the password checks' quota is left alone.
#[tokio::test]
async fn wrong_codes_spend_the_per_username_quota_of_codes() {
    let (app, browser) = alice_at_the_second_step(|s| {
        s.login_quota_per_user =
            Some(portcullis::config::Rate { burst: 3, period: std::time::Duration::from_secs(3600) });
    })
    .await;
    for code in ["111111", "222222", "333333"] {
        assert_eq!(submit(&app, &browser, "code", code).await.status(), 401);
    }
    let resp = submit(&app, &browser, "code", "444444").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // Two password checks spent of three: one more is checked.
    let resp = password_step(&app, &app.new_browser(), "alice").await;
    assert_eq!(resp.headers()["location"], "/login/second-factor");
}

/// A sign-in with two steps spends one unit of the password checks' quota and one of the
/// codes': a user signs in with a code as often as the quota says, not half as often (review
/// 190: a two-step user's third sign-in within a quota of four got 429 after the right
/// password).
#[tokio::test]
async fn two_step_sign_ins_get_the_whole_per_username_quota() {
    let (app, _, codes) = alice_enrolled(|s| {
        s.captcha_after_failures = 100;
        s.login_quota_per_user =
            Some(portcullis::config::Rate { burst: 4, period: std::time::Duration::from_secs(3600) });
    })
    .await;
    // One password check spent: three sign-ins with both steps, each from a new browser.
    for code in &codes[..3] {
        let (_, resp) = two_steps(&app, "alice", "recovery_code", code).await;
        assert_eq!(resp.status(), 303, "a two-step sign-in within the quota");
    }
    let resp = app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await;
    assert_eq!(resp.status(), 429, "the fifth password check in the hour");
}

#[tokio::test]
async fn the_second_step_without_a_pending_sign_in_or_with_a_foreign_token_goes_nowhere() {
    let app = spawn_app_with(|_| {}).await;
    let browser = app.new_browser();
    let resp = browser.get(app.url("/login/second-factor")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/login"));
    let resp = browser
        .post(app.url("/login/second-factor"))
        .header("cookie", "__Host-portcullis-mfa=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .form(&[("csrf", "x"), ("code", "123456")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(app.records(FailureQuery::default()).await.is_empty(), "nothing was tried, nothing recorded");
}

#[tokio::test]
async fn resetting_the_users_factors_ends_a_pending_second_step() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("nora", GOOD_PASSWORD, false).await;
    let nora = app.new_browser();
    sign_in(&app, &nora, "nora").await;
    enrol(&app, &nora, fresh_step().await).await;
    let browser = app.new_browser();
    password_step(&app, &browser, "nora").await;
    assert_eq!(browser.get(app.url("/login/second-factor")).send().await.unwrap().status(), 200);
    let (_, _, ended) = app.state.users.reset_factors("nora", "test").await.unwrap();
    // Counted and said as `user passwd` says it (review 197: only it named the sign-ins).
    assert_eq!(ended, portcullis::users::Ended { sessions: 1, pending: 1 });
    assert_eq!(ended.to_string(), "1 session(s) and 1 sign-in(s) waiting for a second step ended");
    // No factor is left to give: the step is over, as after a password change.
    let resp = browser.get(app.url("/login/second-factor")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/login?ended=step"));
}

/// `user disable` and `user del` end a sign-in waiting for its second step, and say so, as
/// `user passwd` does (review 197).
#[tokio::test]
async fn disabling_or_deleting_a_user_ends_and_counts_a_pending_second_step() {
    let app = spawn_app_with(|_| {}).await;
    for name in ["nora", "omar"] {
        app.add_user(name, GOOD_PASSWORD, false).await;
        let own = app.new_browser();
        sign_in(&app, &own, name).await;
        enrol(&app, &own, fresh_step().await).await;
        password_step(&app, &app.new_browser(), name).await;
    }
    let (_, ended) = app.state.users.set_disabled("nora", true, "test").await.unwrap();
    assert_eq!(ended, portcullis::users::Ended { sessions: 1, pending: 1 });
    let (_, ended) = app.state.users.delete("omar", "test").await.unwrap();
    assert_eq!(ended, portcullis::users::Ended { sessions: 1, pending: 1 });
    let (_, ended) = app.state.users.set_disabled("nora", false, "test").await.unwrap();
    assert_eq!(ended, portcullis::users::Ended::default(), "enabling ends nothing");
}

/// "Cancel and start again" and `POST /logout` end a sign-in waiting for its second step on
/// the server: on a shared computer, whoever held the phone or a recovery code could
/// otherwise still finish it without the password (found by a review).
#[tokio::test]
async fn cancelling_or_signing_out_at_the_second_step_ends_the_pending_sign_in() {
    let app = spawn_app_with(|s| s.captcha_after_failures = 100).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    enrol(&app, &first, fresh_step().await).await;
    let pending_of = |resp: &reqwest::Response| {
        let set = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string());
        let mfa = set.into_iter().find(|c| c.starts_with("__Host-portcullis-mfa=")).unwrap();
        mfa.split(';').next().unwrap().to_string()
    };
    let replayed = |cookie: String| {
        let app = &app;
        async move {
            let other = app.new_browser();
            let resp = other.get(app.url("/login/second-factor")).header("cookie", cookie).send().await.unwrap();
            resp.status().as_u16()
        }
    };

    let browser = app.new_browser();
    let pending = pending_of(&password_step(&app, &browser, "alice").await);
    let page = browser.get(app.url("/login/second-factor")).send().await.unwrap().text().await.unwrap();
    let cancel = page.split("<form").find(|f| f.contains("Cancel and start again")).expect("a cancel form");
    assert!(cancel.contains(r#"method="post" action="/logout""#), "a POST, never a link: {cancel}");
    let csrf = hidden_field(cancel, "csrf").unwrap();
    // A form from elsewhere ends nothing.
    let resp = browser.post(app.url("/logout")).form(&[("csrf", "forged")]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(replayed(pending.clone()).await, 200);
    let resp = browser.post(app.url("/logout")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/login"));
    let cleared = resp.headers().get_all("set-cookie").iter().any(|v| {
        let v = v.to_str().unwrap();
        v.starts_with("__Host-portcullis-mfa=;") && v.contains("Max-Age=0")
    });
    assert!(cleared, "the cookie goes");
    assert_eq!(replayed(pending).await, 303, "and the sign-in with it, on the server");

    // Of two pending sign-ins' cookies in one request (another host under `cookie_domain` can
    // toss one for the second step's path), neither is picked; one among values naming none is
    // that one.
    let mine = pending_of(&password_step(&app, &app.new_browser(), "alice").await);
    let theirs = pending_of(&password_step(&app, &app.new_browser(), "alice").await);
    assert_eq!(replayed(format!("{theirs}; {mine}")).await, 303);
    assert_eq!(replayed(format!("__Host-portcullis-mfa=garbage; {mine}")).await, 200);

    // An administrator's `user passwd` ends a waiting sign-in too, and says so.
    let pending = pending_of(&password_step(&app, &app.new_browser(), "alice").await);
    let new = portcullis::password::Password::new("a whole new passphrase");
    let set = app.state.users.set_password("alice", new, "test", None, None).await.unwrap();
    assert_eq!(set.pending_ended, 3);
    assert_eq!(replayed(pending).await, 303);
}

#[tokio::test]
async fn signing_out_everywhere_else_ends_a_pending_second_step_and_says_one_was_waiting() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("nora", GOOD_PASSWORD, false).await;
    app.add_user("omar", GOOD_PASSWORD, false).await;
    let nora = app.new_browser();
    sign_in(&app, &nora, "nora").await;
    let (secret, _) = enrol(&app, &nora, fresh_step().await).await;
    let omar = app.new_browser();
    sign_in(&app, &omar, "omar").await;
    enrol(&app, &omar, fresh_step().await).await;
    // Someone with Nora's password, at the second step; and Omar, at his.
    let thief = app.new_browser();
    password_step(&app, &thief, "nora").await;
    let csrf = second_csrf(&app, &thief).await;
    let omars_other = app.new_browser();
    password_step(&app, &omars_other, "omar").await;

    let home_csrf = app.home_csrf(&nora).await;
    let resp = nora.post(app.url("/sessions/end-others")).form(&[("csrf", home_csrf.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let page = nora.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains(r#"<p class="alert" role="alert">No other session was signed in, but this ended 1 sign-in"#)
            && page.contains("that had your password and was waiting for the second step. If you did not start it, change your password."),
        "{page}"
    );

    // The right code no longer signs the thief in; the step is over.
    let step = fresh_step().await;
    let resp = thief
        .post(app.url("/login/second-factor"))
        .form(&[("csrf", csrf.as_str()), ("code", code(&secret, step).as_str())])
        .send()
        .await
        .unwrap();
    // Sent back to the password with a word on why (review 196: the form came bare).
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/login?ended=step"));
    let again = thief.get(app.url("/login?ended=step")).send().await.unwrap().text().await.unwrap();
    assert!(again.contains("Your sign-in was not finished within 5 minutes, or was ended meanwhile."), "{again}");
    assert_eq!(thief.get(app.url("/")).send().await.unwrap().status(), 303, "not signed in");
    // Another user's second step is untouched.
    assert_eq!(omars_other.get(app.url("/login/second-factor")).send().await.unwrap().status(), 200);
    let log = app.log_lines();
    let ended = log.iter().find(|l| l["event"] == "session_revoked").expect("logged");
    assert_eq!((ended["count"].as_u64(), ended["pending"].as_u64()), (Some(0), Some(1)), "{ended}");
}

/// A password change that ends a sign-in waiting at its second step says so, as *sign out
/// everywhere else* does (review 207: the notice said only the sessions ended).
#[tokio::test]
async fn a_password_change_says_it_ended_a_sign_in_waiting_for_its_second_step() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("nora", GOOD_PASSWORD, false).await;
    let nora = app.new_browser();
    sign_in(&app, &nora, "nora").await;
    enrol(&app, &nora, fresh_step().await).await;
    let thief = app.new_browser();
    password_step(&app, &thief, "nora").await;
    let page = nora.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    let csrf = hidden_field(&page, "csrf").unwrap();
    let new = "marble orchard quietly 4471";
    let form = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("new", new), ("repeat", new)];
    let resp = nora.post(app.url("/account/password")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let page = nora.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains(
            "role=\"alert\">Your password is changed. No other session was signed in, and 1 sign-in that \
             had your old password and was waiting for the second step was ended. If you did not start it, someone \
             knew your old password."
        ),
        "{page}"
    );
    assert_eq!(thief.get(app.url("/login/second-factor")).send().await.unwrap().status(), 303, "its step is over");
}

#[tokio::test]
async fn a_second_step_form_from_elsewhere_is_refused_as_csrf() {
    let app = spawn_app_with(|s| s.captcha_after_failures = 100).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let step = fresh_step().await;
    enrol(&app, &first, step).await;
    let browser = app.new_browser();
    password_step(&app, &browser, "alice").await;
    let resp = browser
        .post(app.url("/login/second-factor"))
        .form(&[("csrf", "forged"), ("code", "123456")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(reasons(&app, "alice").await, [FailureReason::Csrf]);
}

#[tokio::test]
async fn forged_second_step_forms_spend_the_per_address_quota() {
    let (app, browser) = alice_at_the_second_step(|s| {
        s.login_quota_per_ip =
            Some(portcullis::config::Rate { burst: 12, period: std::time::Duration::from_secs(3600) });
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let form = [("csrf", "forged"), ("code", "123456")];
        statuses
            .push(browser.post(app.url("/login/second-factor")).form(&form).send().await.unwrap().status().as_u16());
    }
    // Every attempt counts, a forged one too: the quota runs out before the loop does.
    assert_eq!(statuses.first(), Some(&403), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

/// CPU seconds this process has used (user + system).
fn cpu_secs() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: a valid out-pointer; getrusage fills it when it returns 0.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

#[tokio::test]
async fn a_two_step_sign_in_costs_one_argon2_verify_like_a_password_only_one() {
    const N: usize = 12;
    let app = spawn_app_with(|s| {
        s.captcha_after_failures = 1000;
        s.login_quota_per_ip = None;
        s.login_quota_per_user = None;
        // The default (OWASP) parameters, so the figure below means what it says.
        s.argon2 = portcullis::config::Settings::default().argon2;
    })
    .await;
    let step = fresh_step().await;
    let mut secrets = Vec::new();
    for i in 0..N {
        let (plain, two) = (format!("plain{i}"), format!("twostep{i}"));
        app.add_user(&plain, GOOD_PASSWORD, false).await;
        app.add_user(&two, GOOD_PASSWORD, false).await;
        let secret = totp::new_secret().unwrap().to_vec();
        assert_eq!(
            app.state
                .factors
                .enrol_totp(
                    &Asker::in_generation(&two, app.generation(&two).await),
                    &secret,
                    &code(&secret, step - 1),
                    None
                )
                .await
                .unwrap(),
            portcullis::factors::Enrolment::Enrolled
        );
        secrets.push(secret);
    }
    let pool = &app.state.pool;

    let (work, cpu) = (pool.verify_work(), cpu_secs());
    for i in 0..N {
        let resp = app.login_with(&app.new_browser(), &format!("plain{i}"), GOOD_PASSWORD).await;
        assert_eq!(resp.headers()["location"], "/");
    }
    let (plain_work, plain_cpu) = (pool.verify_work() - work, cpu_secs() - cpu);

    let (work, cpu) = (pool.verify_work(), cpu_secs());
    for (i, secret) in secrets.iter().enumerate() {
        let (_, resp) = two_steps(&app, &format!("twostep{i}"), "code", &code(secret, step)).await;
        assert_eq!(resp.status(), 303);
    }
    let (two_work, two_cpu) = (pool.verify_work() - work, cpu_secs() - cpu);
    assert!(plain_work > 0);
    assert_eq!(two_work, plain_work, "the same argon2 work: one verify per sign-in, none for the code");
    // A figure for the report, not a check (the machine is shared): CPU of the whole process,
    // test client and TLS included.
    println!(
        "CPU per sign-in: password only {:.1} ms, password + TOTP {:.1} ms (n = {N})",
        plain_cpu * 1000.0 / N as f64,
        two_cpu * 1000.0 / N as f64
    );
}

#[tokio::test]
async fn a_server_whose_factor_key_does_not_open_the_stores_second_factors_refuses_to_start() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let secret = totp::new_secret().unwrap();
    let now = now_ms() / 1000;
    assert_eq!(
        app.state
            .factors
            .enrol_totp(
                &Asker::in_generation("alice", app.generation("alice").await),
                &secret,
                &totp::code_at(&secret, now).unwrap(),
                None
            )
            .await
            .unwrap(),
        portcullis::factors::Enrolment::Enrolled
    );
    let (dir, settings) = app.stop().await;
    let key = settings.data_dir.join("factor.key");
    assert!(!std::fs::read_to_string(&key).unwrap().contains(totp::base32(&secret).as_str()));
    // Started without the key that sealed them (a new instance, a lost file): a new key is
    // made, and the server says what is wrong instead of failing every TOTP sign-in.
    std::fs::remove_file(&key).unwrap();
    let err = match crate::helpers::build_when_released(&settings).await {
        Err(e) => e,
        Ok(_) => panic!("started with the wrong factor key"),
    };
    assert!(err.contains("factor.key") && err.contains("copy"), "{err}");
    drop(dir);
}

#[tokio::test]
async fn a_new_user_never_inherits_factors_written_for_a_deleted_namesake() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("dana", GOOD_PASSWORD, false).await;
    // What a request that checked dana still existed just before `user del` could leave: a
    // second factor stored after the delete cleared them (the store's delete alone here).
    assert!(app.state.store.factors.set_recovery_codes("dana", &[[7u8; 32]; 10], None).await.unwrap());
    assert!(app.state.store.users.delete("dana").await.unwrap());
    assert_eq!(app.state.store.factors.summary("dana").await.unwrap().recovery_codes, 10, "left behind");
    app.add_user("dana", GOOD_PASSWORD, false).await;
    let summary = app.state.factors.summary("dana").await.unwrap();
    assert!(!summary.has_second_factor() && summary.recovery_codes == 0, "{summary:?}");
    assert_eq!(app.login("dana", GOOD_PASSWORD).await.headers()["location"], "/", "signed in with the password alone");
}

/// The second step past the threshold draws its picture only for a page this site's pages
/// or the user asked for: another site's navigations (which bring the `Lax` mfa cookie) get a
/// link that draws it, as do a sibling host's `<img>`, a prefetch and a `HEAD` (review 170: a
/// script's navigations spent the address's pictures, and the user's own page got 429).
#[tokio::test]
async fn past_the_threshold_the_second_step_draws_pictures_only_for_this_sites_pages() {
    let (app, _, _, _) = alice_with_an_authenticator_behind_a_threshold_of_3().await;
    let mut alice = Visitor::new(&app, Some("203.0.113.7"));
    assert_eq!(alice.attempt("alice", GOOD_PASSWORD, None).await.0, 303);
    let mut stranger = Visitor::new(&app, Some("198.51.100.67"));
    for _ in 0..3 {
        assert_eq!(stranger.attempt("alice", "not the password at all", None).await.0, 401);
    }
    let ask = |method: reqwest::Method, headers: &'static [(&'static str, &'static str)]| {
        let mut rb = alice.request(method, "/login/second-factor");
        for (name, value) in headers {
            rb = rb.header(*name, *value);
        }
        async move { rb.send().await.unwrap() }
    };
    let led_here: &[(&str, &str)] = &[("sec-fetch-dest", "document"), ("sec-fetch-site", "cross-site")];
    let embedded: &[(&str, &str)] = &[("sec-fetch-dest", "image"), ("sec-fetch-site", "same-site")];
    let prefetched: &[(&str, &str)] =
        &[("sec-fetch-dest", "document"), ("sec-fetch-site", "none"), ("sec-purpose", "prefetch")];
    for _ in 0..25 {
        let page = ask(reqwest::Method::GET, led_here).await.text().await.unwrap();
        assert!(!shows_captcha(&page), "{page}");
        assert!(
            page.contains(r#"<a class="new-challenge" href="/login/second-factor">Show the picture</a>"#),
            "{page}"
        );
        // A prerendered page may be shown later: it offers the link too (review 172).
        for headers in [embedded, prefetched] {
            let page = ask(reqwest::Method::GET, headers).await.text().await.unwrap();
            assert!(!shows_captcha(&page) && page.contains("Show the picture"), "{headers:?}: {page}");
        }
        assert_eq!(ask(reqwest::Method::HEAD, &[]).await.status(), 200);
    }
    // 100 asked, none drawn: the address's 60 a minute are there for the link and after it.
    let mut drawn = 0;
    for _ in 0..55 {
        let page =
            ask(reqwest::Method::GET, &[("sec-fetch-dest", "document"), ("sec-fetch-site", "same-origin")]).await;
        drawn += usize::from(shows_captcha(&page.text().await.unwrap()));
    }
    assert_eq!(drawn, 55);
}

/// A server with a captcha threshold of 3 that believes `X-Forwarded-For` from the tests,
/// and `alice` with an authenticator app: the app, the enrolment's time step, the secret and
/// the recovery codes.
async fn alice_with_an_authenticator_behind_a_threshold_of_3() -> (TestApp, u64, Vec<u8>, Vec<String>) {
    let app = spawn_app_with(|s| {
        s.captcha_after_failures = 3;
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let step = fresh_step().await;
    let (secret, recovery) = enrol(&app, &first, step).await;
    (app, step, secret, recovery)
}

/// Past the threshold, solves the captcha and gives the right password as `visitor`; returns
/// the second step's CSRF token.
pub(crate) async fn password_with_captcha(visitor: &mut Visitor<'_>) -> String {
    let (status, page) = visitor.attempt("alice", GOOD_PASSWORD, None).await;
    assert_eq!(status, 401);
    assert!(shows_captcha(&page), "the threshold is reached: {page}");
    let answer = visitor.captcha_answer().unwrap();
    let resp = visitor.submit(&page, "alice", GOOD_PASSWORD, Some(&answer)).await;
    assert_eq!(resp.headers()["location"], "/login/second-factor");
    let (_, page) = visitor.get("/login/second-factor").await;
    assert!(!shows_captcha(&page), "the solved captcha's one check needs no other picture");
    hidden_field(&page, "csrf").expect("the second-factor form")
}

/// Three wrong passwords typed for alice by a stranger, or three failures of colleagues
/// behind her address, once kept her from ever finishing a password-and-code sign-in: the
/// second step refused every code past the threshold and sent her back to the captcha, which
/// changed nothing (found by a review). A solved captcha now carries the code check.
#[tokio::test]
async fn failures_others_caused_never_keep_a_two_factor_user_who_solved_the_captcha_out() {
    let (app, step, secret, recovery) = alice_with_an_authenticator_behind_a_threshold_of_3().await;
    let digest = username_digest("alice");

    // The username's count, by a stranger from elsewhere.
    let mut stranger = Visitor::new(&app, Some("198.51.100.66"));
    for _ in 0..3 {
        assert_eq!(stranger.attempt("alice", "not the password at all", None).await.0, 401);
    }
    let mut alice = Visitor::new(&app, Some("203.0.113.5"));
    let csrf = password_with_captcha(&mut alice).await;
    let status = alice.post_form("/login/second-factor", &[("csrf", &csrf), ("code", &code(&secret, step))]).await;
    assert_eq!(status, 303, "password, captcha and the right code sign in");
    assert!(alice.has_session());
    let elsewhere = AddressKey::of("192.0.2.200".parse().unwrap());
    assert!(
        app.state.brute_force.needs_captcha(elsewhere, Some(digest), now_ms()).await.unwrap(),
        "the completed sign-in leaves the username's failures to lapse (review 181)"
    );
    // (Unlocked, as `user unlock` does, so what follows meets the address's count alone.)
    app.state.brute_force.clear_username(digest).await.unwrap();

    // The address's count, by colleagues behind one address failing for other names.
    let colleagues = "198.51.100.10";
    let mut colleague = Visitor::new(&app, Some(colleagues));
    for name in ["bob", "carol", "dave"] {
        assert_eq!(colleague.attempt(name, "not the password at all", None).await.0, 401);
    }
    let mut alice = Visitor::new(&app, Some(colleagues));
    let csrf = password_with_captcha(&mut alice).await;
    // (This time step's code is used: a recovery code.)
    let status = alice.post_form("/login/second-factor", &[("csrf", &csrf), ("recovery_code", &recovery[0])]).await;
    assert_eq!(status, 303, "password, captcha and a recovery code sign in behind a failing address too");
}

/// Recovery codes sent at once for one pending sign-in: one signs in, and only its code is
/// spent (review 189: both were, the second without a record of it).
#[tokio::test]
async fn of_recovery_codes_sent_at_once_only_the_one_that_signs_in_is_spent() {
    let app = spawn_app_with(|s| s.captcha_after_failures = 100).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let (_, codes) = enrol(&app, &first, fresh_step().await).await;
    let before = app.state.factors.summary("alice").await.unwrap().recovery_codes;
    let browser = app.new_browser();
    password_step(&app, &browser, "alice").await;
    let csrf = second_csrf(&app, &browser).await;
    let send = |code: &str| {
        let form = [("csrf", csrf.clone()), ("recovery_code", code.to_string())];
        browser.post(app.url("/login/second-factor")).form(&form).send()
    };
    let answers = futures_util::future::join_all(codes[..4].iter().map(|c| send(c))).await;
    let mut to: Vec<String> =
        answers.iter().map(|r| r.as_ref().unwrap().headers()["location"].to_str().unwrap().to_string()).collect();
    to.sort();
    assert_eq!(
        to,
        ["/", "/login?ended=step", "/login?ended=step", "/login?ended=step"],
        "one signs in, the others start again"
    );
    let after = app.state.factors.summary("alice").await.unwrap().recovery_codes;
    assert_eq!(after, before - 1, "one code spent");
    let log = app.log_lines();
    let signed_in = log.iter().rfind(|l| l["event"] == "authn_login_success").unwrap();
    assert_eq!(signed_in["recovery_codes_left"], after, "{signed_in}");
}

/// One recovery code sent at once from several browsers, each past the password: one signs
/// in, the others are refused as a used code and keep no session. The code is used up with
/// the session it signs in (review 200), so each may find it unused and store a session;
/// only the one that uses it up keeps its session.
#[tokio::test]
async fn one_recovery_code_sent_at_once_from_several_browsers_signs_in_once() {
    let (app, _, codes) = alice_enrolled(|s| {
        s.captcha_after_failures = 100;
        s.login_quota_per_user = None;
    })
    .await;
    let browsers = at_the_second_step(&app, 6).await;
    let sends = browsers.iter().map(|(browser, csrf)| {
        let form = [("csrf", csrf.clone()), ("recovery_code", codes[0].clone())];
        browser.post(app.url("/login/second-factor")).form(&form).send()
    });
    let mut statuses: Vec<u16> =
        futures_util::future::join_all(sends).await.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [303, 401, 401, 401, 401, 401], "one signs in");
    assert_eq!(app.state.factors.summary("alice").await.unwrap().recovery_codes, 9, "one code spent");
    let mut home = Vec::new();
    for (browser, _) in &browsers {
        home.push(browser.get(app.url("/")).send().await.unwrap().status().as_u16());
    }
    home.sort_unstable();
    assert_eq!(home, [200, 303, 303, 303, 303, 303], "one session among them");
    let sessions = app.state.store.sessions.list_for_user("alice").await.unwrap();
    assert_eq!(sessions.len(), 2, "the first browser's and the winner's, no other stored");
    let refused = reasons(&app, "alice").await;
    assert_eq!(refused, [FailureReason::ReusedCode; 5], "the others are told the code was used");
}

/// A solved captcha buys one code check past the threshold, not a pending sign-in to guess
/// codes with: a wrong code ends it (the password and a captcha again), and two requests sent
/// at once with it get one check between them.
#[tokio::test]
async fn past_the_threshold_each_code_check_costs_a_solved_captcha() {
    let (app, step, secret, _) = alice_with_an_authenticator_behind_a_threshold_of_3().await;
    let mut thief = Visitor::new(&app, Some("198.51.100.66"));
    for _ in 0..3 {
        assert_eq!(thief.attempt("alice", "not the password at all", None).await.0, 401);
    }

    // One wrong code: counted, recorded, and the pending sign-in is over.
    let csrf = password_with_captcha(&mut thief).await;
    let resp = thief.post_form_as_is("/login/second-factor", &[("csrf", &csrf), ("code", "000000")]).await;
    assert_eq!(resp.status(), 401);
    assert!(set_cookies(&resp).iter().any(|c| c.starts_with("__Host-portcullis-mfa=;")), "the pending sign-in ends");
    let page = resp.text().await.unwrap();
    assert!(page.contains("sign in again with your password"), "{page}");
    let resp = thief.post_form_as_is("/login/second-factor", &[("csrf", &csrf), ("code", &code(&secret, step))]).await;
    assert_eq!(resp.status(), 303, "its cookie checks nothing more");
    assert_eq!(resp.headers()["location"], "/login?ended=step");
    let got = reasons(&app, "alice").await;
    assert_eq!(got[0], FailureReason::BadSecondFactor, "{got:?}");
    assert_eq!(got.iter().filter(|r| **r == FailureReason::BadPassword).count(), 3, "{got:?}");
    assert_eq!(got.len(), 5, "three wrong passwords, the captcha asked for, one wrong code: {got:?}");

    // Two codes at once with one solved captcha: one is checked, the other finds it used.
    let mut thief = Visitor::new(&app, Some("198.51.100.66"));
    let csrf = password_with_captcha(&mut thief).await;
    let fields_a = [("csrf", csrf.as_str()), ("code", "111111")];
    let fields_b = [("csrf", csrf.as_str()), ("code", "222222")];
    let (a, b) = tokio::join!(
        thief.post_form_as_is("/login/second-factor", &fields_a),
        thief.post_form_as_is("/login/second-factor", &fields_b)
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [303, 401], "one check, one restart");
    let got = reasons(&app, "alice").await;
    assert_eq!(got.iter().filter(|r| **r == FailureReason::BadSecondFactor).count(), 2, "{got:?}");
}

/// Two windows enrolling at once: one authenticator is stored, and the other window is told
/// so (409) instead of being shown recovery codes that would never work (found by a review:
/// both said "turned on", and the codes of one did not sign in). Replacing still works, from
/// the state the page was shown in.
#[tokio::test]
async fn of_two_windows_enrolling_at_once_one_is_stored_and_the_other_told_so() {
    let app = spawn_app_with(|s| s.login_quota_per_user = None).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    sign_in(&app, &browser, "alice").await;
    let step = fresh_step().await;
    let page = |app: &TestApp, browser: &reqwest::Client| {
        let (app, browser) = (app.url("/account/totp"), browser.clone());
        async move { browser.get(app).send().await.unwrap().text().await.unwrap() }
    };
    let (first, second) = (page(&app, &browser).await, page(&app, &browser).await);
    let (secret_a, form_a) = enrolment_form(&first, &|s| code(s, step - 1));
    let (secret_b, form_b) = enrolment_form(&second, &|s| code(s, step - 1));
    let a = browser.post(app.url("/account/totp")).form(&form_a).send().await.unwrap();
    assert_eq!(a.status(), 200, "the first is set up, with codes");
    let codes = recovery_codes(&a.text().await.unwrap());
    let b = browser.post(app.url("/account/totp")).form(&form_b).send().await.unwrap();
    assert_eq!(b.status(), 409);
    let text = b.text().await.unwrap();
    assert!(text.contains("changed in another window") && !text.contains("class=\"codes\""), "{text}");
    // Which authenticator is stored: its code for a later step is accepted (that step is
    // then used, so each check takes its own).
    let accepted = |secret: Vec<u8>, at: u64| {
        let factors = app.state.factors.clone();
        async move {
            let proof = Proof::Totp(code(&secret, at).into());
            factors.verify("alice", &[0; 32], &proof, at * totp::STEP_SECS).await.unwrap()
                == Verdict::Accepted(FactorKind::Totp, None)
        }
    };
    assert!(accepted(secret_a.clone(), step + 1).await, "the first window's authenticator");
    assert!(!accepted(secret_b, step + 2).await, "not the second's");

    // Replacing, from a page shown now: stored; a page from before the replacement: refused.
    let (stale, fresh) = (first, page(&app, &browser).await);
    assert!(fresh.contains("keeps working until this one is confirmed"), "the page says it replaces");
    let (secret_c, form_c) = enrolment_form(&fresh, &|s| code(s, step));
    let c = browser.post(app.url("/account/totp")).form(&form_c).send().await.unwrap();
    // A new phone for the same factor: the printed codes stay good, no new set replaces them
    // (a review found them silently voided).
    assert_eq!((c.status().as_u16(), c.headers()["location"].to_str().unwrap()), (303, "/account"), "replaced");
    let kept = app
        .state
        .factors
        .verify("alice", &[0; 32], &Proof::RecoveryCode(codes[0].clone().into()), step * totp::STEP_SECS)
        .await;
    assert!(matches!(kept.unwrap(), Verdict::RecoveryCodeUnused(_)), "the codes from before still work");
    let (_, form_stale) = enrolment_form(&stale, &|s| code(s, step));
    let late = browser.post(app.url("/account/totp")).form(&form_stale).send().await.unwrap();
    assert_eq!(late.status(), 409, "a page from before the replacement");
    assert!(accepted(secret_c, step + 3).await, "the replacement is stored");

    // A mistyped code shows the page again for the state its enrolment began from, so a
    // window overtaken meanwhile still gets the 409 (found by a source review: the page read
    // the store again and turned into a replacement of the other window's authenticator).
    let (one, two) = (page(&app, &browser).await, page(&app, &browser).await);
    let (_, form_one) = enrolment_form(&one, &|s| code(s, step));
    assert!(browser.post(app.url("/account/totp")).form(&form_one).send().await.unwrap().status().as_u16() < 400);
    let (_, mistyped) = enrolment_form(&two, &|_| "000000".into());
    let again = browser.post(app.url("/account/totp")).form(&mistyped).send().await.unwrap();
    assert_eq!(again.status(), 400);
    let again = again.text().await.unwrap();
    assert_eq!(hidden_field(&again, "replacing"), hidden_field(&two, "replacing"), "the state it began from");
    let (_, retyped) = enrolment_form(&again, &|s| code(s, step));
    let late = browser.post(app.url("/account/totp")).form(&retyped).send().await.unwrap();
    assert_eq!(late.status(), 409, "overtaken, whatever was mistyped on the way");
}

/// The same enrolment form sent twice (a double click): the second answer says the app is
/// set up and to keep its entry (review 129 was told it was not set up and to delete the
/// entry that worked, the answer a browser shows being the last).
#[tokio::test]
async fn the_same_enrolment_sent_twice_says_the_app_is_set_up() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    sign_in(&app, &browser, "alice").await;
    let step = fresh_step().await;
    let page = browser.get(app.url("/account/totp")).send().await.unwrap().text().await.unwrap();
    let (secret, form) = enrolment_form(&page, &|s| code(s, step));
    let first = browser.post(app.url("/account/totp")).form(&form).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = browser.post(app.url("/account/totp")).form(&form).send().await.unwrap();
    assert_eq!(second.status(), 409);
    let text = second.text().await.unwrap();
    assert!(
        text.contains("Your authenticator app is set up: this form was sent twice") && text.contains("keep the entry"),
        "{text}"
    );
    let proof = Proof::Totp(code(&secret, step + 1).into());
    let verdict = app.state.factors.verify("alice", &[0; 32], &proof, (step + 1) * totp::STEP_SECS).await.unwrap();
    assert_eq!(verdict, Verdict::Accepted(FactorKind::Totp, None), "that secret is the one stored");
}

/// Two sessions setting up the user's first authenticator at once: the one that loses was
/// ended by the winner's first factor, and is told its app was not set up and to sign in
/// again, not offered a new secret as if still signed in (review 131).
#[tokio::test]
async fn the_loser_of_two_first_enrolments_is_told_it_was_signed_out() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let generation = app.state.store.users.get("alice").await.unwrap().unwrap().password_changed_at;
    let now = now_ms() / 1000;
    let (winner, loser) = ([1u8; 20], [2u8; 20]);
    let asker = portcullis::factors::Asker::in_generation("alice", generation);
    let won = app.state.factors.enrol_totp(&asker, &winner, &code(&winner, now / totp::STEP_SECS), None).await;
    assert_eq!(won.unwrap(), portcullis::factors::Enrolment::Enrolled);
    // The winner's first factor moves the user on, as its page does.
    app.state.store.users.renew_generation("alice", now_ms(), None).await.unwrap().unwrap();
    let lost = app.state.factors.enrol_totp(&asker, &loser, &code(&loser, now / totp::STEP_SECS), None).await;
    assert_eq!(lost.unwrap(), portcullis::factors::Enrolment::Superseded);
}

/// New recovery codes are made in place of the set the page showed: a page shown before
/// another tab made new ones, or the same click sent twice, is told so (409) and makes none,
/// so no set is shown and then found void (a review saw two 200s at once and one set void).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_recovery_codes_replace_only_the_set_the_page_showed() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    sign_in(&app, &browser, "alice").await;
    enrol(&app, &browser, fresh_step().await).await;
    let form = || async {
        let page = browser.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
        [("csrf", hidden_field(&page, "csrf").unwrap()), ("seen", hidden_field(&page, "seen").unwrap())]
    };
    let post = |form: [(&'static str, String); 2]| browser.post(app.url("/account/recovery-codes")).form(&form).send();
    let works = |code: String| {
        let factors = app.state.factors.clone();
        async move {
            let proof = Proof::RecoveryCode(code.into());
            matches!(factors.verify("alice", &[0; 32], &proof, 0).await.unwrap(), Verdict::RecoveryCodeUnused(_))
        }
    };

    // Two tabs showing the same codes: the first makes new ones, the second is told.
    let (tab_a, tab_b) = (form().await, form().await);
    let a = post(tab_a).await.unwrap();
    assert_eq!(a.status(), 200);
    let printed = recovery_codes(&a.text().await.unwrap());
    let b = post(tab_b).await.unwrap();
    assert_eq!(b.status(), 409);
    let text = b.text().await.unwrap();
    assert!(text.contains("Recovery codes not made") && !text.contains("class=\"codes\""), "{text}");
    assert!(works(printed[0].clone()).await, "the printed set still works");

    // The same form sent eight times at once: one set made, seven told.
    let same = form().await;
    let asks: Vec<_> = (0..8).map(|_| tokio::spawn(post(same.clone()))).collect();
    let mut statuses = Vec::new();
    let mut shown = Vec::new();
    for ask in asks {
        let answer = ask.await.unwrap().unwrap();
        statuses.push(answer.status().as_u16());
        if answer.status() == 200 {
            shown = recovery_codes(&answer.text().await.unwrap());
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    assert!(works(shown[0].clone()).await, "the set shown is the one stored");

    // A form without `seen` (a page from before the field, a hand-made request) cannot say
    // which set it replaces: none made (review 101 saw two such at once both answered 200),
    // and said as a form that lacks it, not as another window's change.
    let [csrf, _] = form().await;
    let resp = browser.post(app.url("/account/recovery-codes")).form(&[csrf]).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn an_authenticator_set_up_again_with_no_recovery_codes_left_brings_a_fresh_set() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    sign_in(&app, &browser, "alice").await;
    let step = fresh_step().await;
    enrol(&app, &browser, step).await;
    // Every code used up (or never printed): a user must not be left without any.
    app.state.store.factors.set_recovery_codes("alice", &[], None).await.unwrap();
    let page = browser.get(app.url("/account/totp")).send().await.unwrap().text().await.unwrap();
    assert!(hidden_field(&page, "replacing").is_some(), "the page replaces an authenticator");
    let (_, form) = enrolment_form(&page, &|s| code(s, step));
    let resp = browser.post(app.url("/account/totp")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200, "codes shown");
    assert_eq!(recovery_codes(&resp.text().await.unwrap()).len(), 10);
}

/// The second step renews the browser's device cookie without losing its other usernames.
#[tokio::test]
async fn the_second_step_keeps_the_device_cookies_other_usernames() {
    let app = spawn_app_with(|s| s.captcha_after_failures = 100).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.add_user("bob", GOOD_PASSWORD, false).await;
    let first = app.new_browser();
    sign_in(&app, &first, "alice").await;
    let step = fresh_step().await;
    let (secret, _) = enrol(&app, &first, step).await;
    let browser = app.new_browser();
    sign_in(&app, &browser, "bob").await;
    assert_eq!(app.logout_with(&browser).await.status(), 303);
    password_step(&app, &browser, "alice").await;
    let resp = submit(&app, &browser, "code", &code(&secret, step)).await;
    assert_eq!(resp.status(), 303);
    let device = cookie_value(&resp, "__Host-portcullis-device").expect("a device cookie");
    for user in ["alice", "bob"] {
        assert!(app.state.csrf.is_known_device(&device, user, now_ms()), "{user}: {device}");
    }
}

/// A flood aimed at one username spends its strangers' quota; the owner's browser, known by
/// its device cookie, spends the username's known browsers' quota at both steps and signs in.
#[tokio::test]
async fn a_known_browser_signs_in_with_both_steps_after_others_spent_the_usernames_quota() {
    let app = spawn_app_with(|s| {
        s.captcha_after_failures = 100;
        s.login_quota_per_user =
            Some(portcullis::config::Rate { burst: 3, period: std::time::Duration::from_secs(3600) });
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let own = app.new_browser();
    sign_in(&app, &own, "alice").await; // 1
    let step = fresh_step().await;
    let (secret, _) = enrol(&app, &own, step).await;
    assert_eq!(app.logout_with(&own).await.status(), 303);
    let stranger = app.new_browser();
    assert_eq!(app.login_with(&stranger, "alice", "not her password at all").await.status(), 401); // 2
    assert_eq!(app.login_with(&stranger, "alice", "not her password either").await.status(), 401); // 3
    assert_eq!(app.login_with(&stranger, "alice", GOOD_PASSWORD).await.status(), 429, "alice's quota is spent");
    password_step(&app, &own, "alice").await;
    let right = code(&secret, step);
    let wrong = if right == "123456" { "654321" } else { "123456" };
    assert_eq!(submit(&app, &own, "code", wrong).await.status(), 401);
    let resp = submit(&app, &own, "code", &right).await;
    assert_eq!(resp.status(), 303, "her own browser signs in, code and all");
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 429, "strangers still wait");
    // Her mistyped code is recorded as her browser's; the strangers' tries are not (their two
    // refusals from one address in one minute are one record of count 2).
    let records = app.records(portcullis::store::FailureQuery::default()).await;
    let seen: Vec<(&str, bool)> = records.iter().map(|r| (r.reason.as_str(), r.known_browser)).collect();
    let want = [("bad_second_factor", true), ("rate_limited", false), ("bad_password", false), ("bad_password", false)];
    assert_eq!(seen, want, "newest first");
}

/// A browser the user signed in with before meets no picture for the name's failures at the
/// second step, but its own wrong codes end that past `captcha_after_failures` (review 187:
/// whoever held the password and a copied device cookie guessed codes without pictures for
/// ever): then each code costs a picture, as for a stranger.
#[tokio::test]
async fn a_known_browsers_wrong_codes_bring_the_picture_at_the_second_step() {
    let app = spawn_app_with(|s| {
        s.captcha_after_failures = 3;
        s.login_quota_per_user = None;
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let own = app.new_browser();
    sign_in(&app, &own, "alice").await;
    let step = fresh_step().await;
    let (secret, _) = enrol(&app, &own, step).await;
    assert_eq!(app.logout_with(&own).await.status(), 303);
    let right = code(&secret, step + 1);
    let wrong = if right == "123456" { "654321" } else { "123456" };
    // Each try from an address of its own, so no address reaches the threshold: the password,
    // then a code, from the browser that holds the device cookie.
    let mut addresses = (1..).map(|i| format!("198.51.100.{i}"));
    let mut try_code = |code: String| {
        let (app, own, from) = (&app, &own, addresses.next().unwrap());
        async move {
            let page = own.get(app.url("/login")).header("x-forwarded-for", &from).send().await.unwrap();
            let csrf = hidden_field(&page.text().await.unwrap(), "csrf").unwrap();
            let form = [("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", csrf.as_str())];
            let resp = own.post(app.url("/login")).header("x-forwarded-for", &from).form(&form).send().await.unwrap();
            assert_eq!(resp.headers()["location"], "/login/second-factor");
            let page = own.get(app.url("/login/second-factor")).header("x-forwarded-for", &from).send().await.unwrap();
            let page = page.text().await.unwrap();
            let csrf = hidden_field(&page, "csrf").unwrap();
            let form = [("csrf", csrf.as_str()), ("code", code.as_str())];
            let resp = own.post(app.url("/login/second-factor")).header("x-forwarded-for", &from).form(&form);
            (shows_captcha(&page), resp.send().await.unwrap().status())
        }
    };
    for _ in 0..3 {
        assert_eq!(
            try_code(wrong.to_string()).await,
            (false, reqwest::StatusCode::UNAUTHORIZED),
            "checked without a picture"
        );
    }
    let got = reasons(&app, "alice").await;
    assert_eq!(got, [FailureReason::BadSecondFactor; 3], "{got:?}");
    // The fourth is not checked without one, the right code neither.
    assert_eq!(try_code(right).await, (true, reqwest::StatusCode::UNAUTHORIZED));
    let got = reasons(&app, "alice").await;
    assert_eq!(got[0], FailureReason::CaptchaRequired, "{got:?}");
    assert_eq!(got.iter().filter(|r| **r == FailureReason::BadSecondFactor).count(), 3, "{got:?}");
}

/// A password sign-in at the very moment the same user sets up a first authenticator app in
/// another browser: whatever the interleaving, it leaves no password-only session that works
/// once the app is set up (review 136: about 4 in 9 kept one, its summary read after the
/// setup's new generation began and before the app was stored, so its session was of the new
/// generation and the setup's sweep had already passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_sign_in_racing_the_first_authenticator_keeps_no_session() {
    const RACES: usize = 24;
    let app = Arc::new(
        spawn_app_with(|s| {
            s.login_quota_per_ip = None;
            s.login_quota_per_user = None;
            s.captcha_after_failures = 1000;
        })
        .await,
    );
    let step = fresh_step().await;
    let mut kept = Vec::new();
    for i in 0..RACES {
        let name = format!("racer{i}");
        app.add_user(&name, GOOD_PASSWORD, false).await;
        let owner = app.new_browser();
        sign_in(&app, &owner, &name).await;
        let page = owner.get(app.url("/account/totp")).send().await.unwrap().text().await.unwrap();
        let (_, form) = enrolment_form(&page, &|s| code(s, step));
        let other = app.new_browser();
        let login = other.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let csrf = hidden_field(&login, "csrf").unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let setup = {
            let (app, owner, barrier) = (Arc::clone(&app), owner.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                owner.post(app.url("/account/totp")).form(&form).send().await.unwrap().status().as_u16()
            })
        };
        let sign_in_meanwhile = {
            let (app, other, barrier, name) = (Arc::clone(&app), other.clone(), Arc::clone(&barrier), name.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let form = [("username", name.as_str()), ("password", GOOD_PASSWORD), ("csrf", csrf.as_str())];
                other.post(app.url("/login")).form(&form).send().await.unwrap().status().as_u16()
            })
        };
        let (set_up, signed_in) = (setup.await.unwrap(), sign_in_meanwhile.await.unwrap());
        assert_eq!(set_up, 200, "the setup, race {i}");
        assert!([303, 409].contains(&signed_in), "the sign-in, race {i}: {signed_in}");
        let home = other.get(app.url("/")).send().await.unwrap().status().as_u16();
        if home == 200 {
            kept.push(i);
        }
    }
    assert!(kept.is_empty(), "password-only sessions kept after the first authenticator, races {kept:?} of {RACES}");
}

/// The account page's removal form for the authenticator app, as the page shows it.
pub(crate) fn removal_form(account_page: &str) -> Vec<(&'static str, String)> {
    let form = &account_page[account_page.find("action=\"/account/totp/remove\"").expect("a removal form")..];
    let form = &form[..form.find("</form>").unwrap()];
    vec![("csrf", hidden_field(form, "csrf").unwrap()), ("enrolled_at", hidden_field(form, "enrolled_at").unwrap())]
}

/// Replacing or removing the authenticator app signs out the other sessions its codes (or a
/// recovery code) signed in, as removing a passkey does: review 137 kept a thief's session,
/// signed in with the lost phone, passing `two_factor` rules after the owner removed the app.
/// And a page shown before the app was replaced in another window removes nothing.
/// New recovery codes void the old set, and the sessions a code of it signed in with it
/// (review 187: one a leaked code opened stayed signed in); the owner's own session goes on,
/// and the page and the log say how many ended.
#[tokio::test]
async fn new_recovery_codes_sign_out_the_sessions_a_code_signed_in() {
    let app = spawn_app_with(|s| s.login_quota_per_user = None).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let owner = app.new_browser();
    sign_in(&app, &owner, "alice").await;
    let (_, codes) = enrol(&app, &owner, fresh_step().await).await;
    let (thief, resp) = two_steps(&app, "alice", "recovery_code", &codes[0]).await;
    assert_eq!(resp.status(), 303, "signed in with a leaked code");
    let signed_in = |browser: &reqwest::Client| {
        let (url, browser) = (app.url("/"), browser.clone());
        async move { browser.get(url).send().await.unwrap().status() == 200 }
    };
    assert!(signed_in(&thief).await);
    let page = owner.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("sign out your other sessions that signed in with a code"), "{page}");
    let form = [("csrf", hidden_field(&page, "csrf").unwrap()), ("seen", hidden_field(&page, "seen").unwrap())];
    let made = owner.post(app.url("/account/recovery-codes")).form(&form).send().await.unwrap();
    assert_eq!(made.status(), 200);
    let text = made.text().await.unwrap();
    assert!(text.contains("Your 1 other session signed in with a code, so it is now signed out."), "{text}");
    assert!(!signed_in(&thief).await, "the leaked code's session is over");
    assert!(signed_in(&owner).await, "the owner's goes on");
    let log = app.log_lines();
    let removed = log.iter().rfind(|l| l["event"] == "mfa_removed").unwrap();
    assert_eq!((&removed["kind"], &removed["sessions"]), (&"recovery_codes".into(), &1.into()), "{removed}");
}

#[tokio::test]
async fn replacing_or_removing_the_app_signs_out_the_sessions_its_codes_signed_in() {
    let app = spawn_app_with(|s| s.login_quota_per_user = None).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let owner = app.new_browser();
    sign_in(&app, &owner, "alice").await;
    let step = fresh_step().await;
    let (secret, codes) = enrol(&app, &owner, step).await;
    let account = |browser: &reqwest::Client| {
        let (url, browser) = (app.url("/account"), browser.clone());
        async move { browser.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let signed_in = |browser: &reqwest::Client| {
        let (url, browser) = (app.url("/"), browser.clone());
        async move { browser.get(url).send().await.unwrap().status() == 200 }
    };
    let (thief, resp) = two_steps(&app, "alice", "code", &code(&secret, step)).await;
    assert_eq!(resp.status(), 303, "signed in with the lost phone's code");
    let (recovered, resp) = two_steps(&app, "alice", "recovery_code", &codes[0]).await;
    assert_eq!(resp.status(), 303, "signed in with a recovery code");
    let stale = account(&owner).await;
    assert!(stale.contains("other sessions signed in with them (or with a recovery code) are signed out"), "{stale}");

    // A new phone: the old one's sessions end, the owner's stays.
    let page = owner.get(app.url("/account/totp")).send().await.unwrap().text().await.unwrap();
    let (_, form) = enrolment_form(&page, &|s| code(s, step + 1));
    let replaced = owner.post(app.url("/account/totp")).form(&form).send().await.unwrap();
    assert_eq!(replaced.status(), 303, "replaced");
    // Said on the page and in the log as the old app's removal (review 139: it read as a
    // first setup, and its sign-outs were in no record).
    let notice = account(&owner).await;
    assert!(notice.contains("the 2 other sessions signed in with them or recovery codes are signed out"), "{notice}");
    let removal =
        app.log_lines().into_iter().rev().find(|l| l["event"] == "mfa_removed").expect("the old app's removal");
    assert_eq!((&removal["kind"], &removal["sessions"]), (&"totp".into(), &2.into()), "{removal}");
    assert!(!signed_in(&thief).await, "the old phone's session outlived its replacement");
    assert!(!signed_in(&recovered).await, "the recovery code's session outlived the replacement");
    assert!(signed_in(&owner).await, "the owner's own session ends with it");

    // The page from before the replacement names the old app: nothing is removed (a new page
    // from the owner's account, above, took the notice; this one was shown before).
    let refused = owner.post(app.url("/account/totp/remove")).form(&removal_form(&stale)).send().await.unwrap();
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await.unwrap().contains("replaced in another window"));
    assert!(app.state.factors.summary("alice").await.unwrap().totp, "the new app was removed from an old page");
    let bare = owner.post(app.url("/account/totp/remove")).form(&removal_form(&stale)[..1]).send().await.unwrap();
    assert_eq!(bare.status(), 400, "a form that names no app removes none");

    // A thief with a recovery code (they outlive a new phone), then the owner removes the app
    // from a fresh page.
    let (thief, resp) = two_steps(&app, "alice", "recovery_code", &codes[1]).await;
    assert_eq!(resp.status(), 303);
    let removed = owner.post(app.url("/account/totp/remove")).form(&removal_form(&account(&owner).await)).send().await;
    let removed = removed.unwrap();
    assert_eq!((removed.status().as_u16(), removed.headers()["location"].to_str().unwrap()), (303, "/account"));
    let notice = account(&owner).await;
    assert!(notice.contains("the other session signed in with its code or a recovery code is signed out"), "{notice}");
    assert!(!signed_in(&thief).await, "the thief's session outlived the removal");
    let line = app.log_lines().into_iter().rev().find(|l| l["event"] == "mfa_removed" && l["kind"] == "totp").unwrap();
    assert_eq!(line["sessions"], 1, "{line}");
}
