//! The login form's CSRF pair (pre-login cookie and token): only cookie values the server
//! issued are accepted, and a sign-in retires the pair.

use crate::helpers::{browser_builder, cookie_value, hidden_field, spawn_app, TestApp, GOOD_PASSWORD};

const PRE: &str = "__Host-portcullis-pre";

/// A client that sends only the cookies the test gives it.
fn bare(app: &TestApp) -> reqwest::Client {
    browser_builder(&app.settings.cert_dir).cookie_store(false).build().unwrap()
}

/// GET /login with an optional pre-login cookie; returns the cookie the server set (if any)
/// and the form's token.
async fn form(app: &TestApp, c: &reqwest::Client, pre: Option<&str>) -> (Option<String>, String) {
    let mut rb = c.get(app.url("/login"));
    if let Some(pre) = pre {
        rb = rb.header("cookie", format!("{PRE}={pre}"));
    }
    let resp = rb.send().await.unwrap();
    let set = cookie_value(&resp, PRE);
    (set, hidden_field(&resp.text().await.unwrap(), "csrf").unwrap())
}

async fn post(app: &TestApp, c: &reqwest::Client, pre: &str, csrf: &str, password: &str) -> reqwest::Response {
    c.post(app.url("/login"))
        .header("cookie", format!("{PRE}={pre}"))
        .form(&[("username", "alice"), ("password", password), ("csrf", csrf)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pre_login_cookie_the_client_chose_gets_no_token_and_is_replaced() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let c = bare(&app);
    // The old format (32 random bytes) and a well-formed value of the new length alike.
    for chosen in ["A".repeat(43), "A".repeat(54)] {
        let (set, csrf) = form(&app, &c, Some(&chosen)).await;
        let issued = set.expect("a value the server did not issue is replaced");
        assert_ne!(issued, chosen);
        let resp = post(&app, &c, &chosen, &csrf, GOOD_PASSWORD).await;
        assert_eq!(resp.status(), 403, "a token for a chosen cookie value signed in");
        // The server's own value works with the same token.
        let resp = post(&app, &c, &issued, &csrf, GOOD_PASSWORD).await;
        assert_eq!(resp.status(), 303);
    }
}

#[tokio::test]
async fn a_signed_in_forms_cookie_and_token_do_not_sign_in_again() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let c = bare(&app);
    let (pre, csrf) = form(&app, &c, None).await;
    let pre = pre.unwrap();
    assert_eq!(post(&app, &c, &pre, &csrf, GOOD_PASSWORD).await.status(), 303);
    let again = post(&app, &c, &pre, &csrf, GOOD_PASSWORD).await;
    assert_eq!(again.status(), 403);
    assert!(cookie_value(&again, "__Host-portcullis").is_none(), "no second session");
    // A new token for the retired cookie is not issued either: the form comes with a new one.
    let (set, _) = form(&app, &c, Some(&pre)).await;
    assert!(set.is_some_and(|v| v != pre));
}

/// On sled the retirements are in memory: a form that signed in and is re-sent after a
/// restart (a browser's history resubmitting it at a shared computer) is refused as an expired
/// form, not signed in again (review 189), and the refusal comes with a form that works.
#[tokio::test]
async fn on_sled_a_form_that_signed_in_does_not_sign_in_again_after_a_restart() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let c = bare(&app);
    let (pre, csrf) = form(&app, &c, None).await;
    let pre = pre.unwrap();
    assert_eq!(post(&app, &c, &pre, &csrf, GOOD_PASSWORD).await.status(), 303);
    let (unused, unused_csrf) = form(&app, &c, None).await;
    let (dir, settings) = app.stop().await;
    let app = crate::helpers::spawn_in(dir, settings).await;
    let again = post(&app, &c, &pre, &csrf, GOOD_PASSWORD).await;
    assert_eq!(again.status(), 403, "re-sent after the restart");
    assert!(cookie_value(&again, "__Host-portcullis").is_none(), "no session");
    // A form opened before the restart goes with it too (which of them signed in is forgotten).
    let unused = post(&app, &c, &unused.unwrap(), &unused_csrf, GOOD_PASSWORD).await;
    assert_eq!(unused.status(), 403);
    let fresh = cookie_value(&unused, PRE).expect("a new pre-login value with the refusal");
    let fresh_csrf = hidden_field(&unused.text().await.unwrap(), "csrf").unwrap();
    assert_eq!(post(&app, &c, &fresh, &fresh_csrf, GOOD_PASSWORD).await.status(), 303, "its form signs in");
}

#[tokio::test]
async fn two_sign_ins_sent_with_one_form_at_once_make_one_session() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let c = bare(&app);
    let (pre, csrf) = form(&app, &c, None).await;
    let pre = pre.unwrap();
    // Three: as many as may be checked at once without a captcha (`captcha_after_failures`).
    let statuses: Vec<u16> = futures_util::future::join_all((0..3).map(|_| post(&app, &c, &pre, &csrf, GOOD_PASSWORD)))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 303).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|&s| s == 303 || s == 403), "{statuses:?}");
}
