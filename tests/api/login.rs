//! Signing in: the form, post/redirect/get, `next`, identical failures, CSRF, body limits.

use crate::helpers::{cookie_value, hidden_field, set_cookies, spawn_app, GOOD_PASSWORD};

#[tokio::test]
async fn the_login_page_has_the_form_the_spec_promises() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains(r#"<form method="post" action="/login""#), "{body}");
    assert!(body.contains(r#"name="username""#) && body.contains(r#"name="password""#));
    assert!(hidden_field(&body, "csrf").is_some());
    // Plain `username`: `webauthn` promised passkey autofill, which the page never starts
    // (found by a review).
    assert!(body.contains(r#"autocomplete="username" "#), "{body}");
}

#[tokio::test]
async fn a_right_password_redirects_home_with_a_fresh_session_cookie() {
    let app = spawn_app().await;
    app.add_user("Alice", GOOD_PASSWORD, false).await;
    let resp = app.login("alice", GOOD_PASSWORD).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    assert!(cookie_value(&resp, "__Host-portcullis").is_some_and(|v| v.len() == 43));
    let home = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("Hello, Alice"));
}

#[tokio::test]
async fn the_session_cookie_has_every_protective_attribute() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let resp = app.login("alice", GOOD_PASSWORD).await;
    let cookie = set_cookies(&resp).into_iter().find(|c| c.starts_with("__Host-portcullis=")).unwrap();
    let attrs: Vec<String> = cookie.split(';').skip(1).map(|a| a.trim().to_ascii_lowercase()).collect();
    for wanted in ["secure", "httponly", "path=/"] {
        assert!(attrs.iter().any(|a| a == wanted), "{wanted} missing in {cookie}");
    }
    assert!(attrs.iter().any(|a| a == "samesite=lax" || a == "samesite=strict"), "{cookie}");
    assert!(!attrs.iter().any(|a| a.starts_with("domain")), "{cookie}");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let wrong = app.login("alice", "not the right password").await;
    let (s1, b1) = (wrong.status(), wrong.text().await.unwrap());
    let unknown = app.login("mallory", "not the right password").await;
    let (s2, b2) = (unknown.status(), unknown.text().await.unwrap());
    assert_eq!(s1, 401);
    assert_eq!(s1, s2);
    let strip = |b: &str, user: &str| {
        let token = hidden_field(b, "csrf").unwrap();
        b.replace(&token, "TOKEN").replace(user, "USER")
    };
    assert_eq!(strip(&b1, "alice"), strip(&b2, "mallory"));
    assert!(b1.contains("Incorrect username or password."));
    assert!(b1.contains("id=\"login-error\"") && b1.contains("aria-describedby=\"login-error\""), "{b1}");
}

/// Past the threshold, a form sent with the picture's characters is answered with one
/// message that names the picture too, whatever was wrong: the right password with a wrong
/// answer (no password checked) was told "Incorrect username or password" (review 209), and
/// a wrong password or an unknown name with the right answer reads the same.
#[tokio::test]
async fn with_the_picture_answered_the_one_message_names_the_picture_too() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let mut visitor = crate::helpers::Visitor::new(&app, Some("198.51.100.20"));
    for _ in 0..3 {
        assert_eq!(visitor.attempt("alice", "not the right password", None).await.0, 401);
    }
    let said = "Incorrect username, password or picture characters.";
    let (status, page) = visitor.attempt("alice", GOOD_PASSWORD, Some("zzzzz")).await;
    assert_eq!(status, 401);
    assert!(page.contains(said) && !page.contains("Incorrect username or password."), "{page}");
    // Whoever cannot see the picture is told what else lifts it (review 209, WCAG 1.1.1).
    assert!(page.contains("aria-describedby=\"captcha-help\"") && page.contains("Cannot see the picture?"), "{page}");
    for (name, password) in [("alice", "not the right password"), ("mallory", "not the right password")] {
        let (_, page) = visitor.get("/login").await;
        let answer = visitor.captcha_answer().expect("a picture is open");
        let resp = visitor.submit(&page, name, password, Some(&answer)).await;
        assert_eq!(resp.status(), 401);
        assert!(resp.text().await.unwrap().contains(said), "{name}");
    }
}

#[tokio::test]
async fn next_takes_you_to_a_same_origin_path_and_nowhere_else() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    for (next, expected) in [
        ("/account?tab=1", "/account?tab=1"),
        ("https://evil.example/", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
    ] {
        let client = app.new_browser();
        let page = client.get(app.url("/login")).query(&[("next", next)]).send().await.unwrap().text().await.unwrap();
        let csrf = hidden_field(&page, "csrf").unwrap();
        let carried = hidden_field(&page, "next").unwrap_or_default();
        let resp = client
            .post(app.url("/login"))
            .form(&[("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", &csrf), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        assert_eq!(resp.headers()["location"], expected, "next={next}");
        if expected != "/" {
            assert_eq!(carried.replace("&amp;", "&"), next);
        }
    }
}

#[tokio::test]
async fn a_post_without_a_valid_csrf_token_is_refused() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    // No token at all.
    let resp = app
        .client
        .post(app.url("/login"))
        .form(&[("username", "alice"), ("password", GOOD_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A token from another visitor's form.
    let other = app.new_browser();
    let foreign = app.login_csrf(&other).await;
    let _ = app.login_csrf(&app.client).await;
    let resp = app
        .client
        .post(app.url("/login"))
        .form(&[("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", foreign.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(cookie_value(&resp, "__Host-portcullis").is_none());
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let app = spawn_app().await;
    let csrf = app.login_csrf(&app.client).await;
    let big = "x".repeat(64 * 1024);
    let resp = app
        .client
        .post(app.url("/login"))
        .form(&[("username", big.as_str()), ("password", "p"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Also without a Content-Length (chunked).
    let stream = futures_stream(big.into_bytes());
    let resp = app
        .client
        .post(app.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

fn futures_stream(bytes: Vec<u8>) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect::<Vec<_>>())
}

#[tokio::test]
async fn malformed_forms_get_a_4xx_never_a_5xx() {
    let app = spawn_app().await;
    let csrf = app.login_csrf(&app.client).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"%%%%".to_vec(),
        b"username=a&username=b".to_vec(),
        vec![0xff, 0xfe, b'=', 0x80],
        format!("csrf={csrf}&username=%00%0a&password=").into_bytes(),
        format!("csrf={csrf}").into_bytes(),
        b"username[]=x&password[x]=y".to_vec(),
    ];
    for body in bodies {
        let resp = app
            .client
            .post(app.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{:?} gave {}", String::from_utf8_lossy(&body), resp.status());
    }
}

/// A field given twice is refused as it stands (which one was meant is not guessed), before
/// any quota is spent or anything recorded, as README's `POST /login` row says.
#[tokio::test]
async fn a_field_given_twice_is_a_400_that_costs_and_records_nothing() {
    let app = spawn_app().await;
    app.add_user("alice", "quartz lantern velvet 8127 orbit", false).await;
    for body in ["username=alice&username=bob&password=x", "username=alice&password=x&password=y"] {
        let csrf = app.login_csrf(&app.client).await;
        let resp = app
            .client
            .post(app.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&{body}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
    }
    assert!(app.records(portcullis::store::FailureQuery::default()).await.is_empty(), "nothing recorded");
    assert!(!app.log_text().contains("authn_login_fail"), "nor logged");
    // The form, sent right, still signs in: no quota or failure count was spent on the above.
    assert_eq!(app.login("alice", "quartz lantern velvet 8127 orbit").await.status(), 303);
}

/// Posts the login form from a cookie-less client, sending `extra_cookie` alongside the
/// pre-login cookie, as a browser that already holds a session (or a planted one) would.
async fn login_carrying(app: &crate::helpers::TestApp, extra_cookie: &str) -> reqwest::Response {
    let bare = crate::helpers::browser_builder(&app.settings.cert_dir).cookie_store(false).build().unwrap();
    let form = bare.get(app.url("/login")).send().await.unwrap();
    let pre = cookie_value(&form, "__Host-portcullis-pre").unwrap();
    let csrf = hidden_field(&form.text().await.unwrap(), "csrf").unwrap();
    bare.post(app.url("/login"))
        .header("cookie", format!("__Host-portcullis-pre={pre}; {extra_cookie}"))
        .form(&[("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn signing_in_again_replaces_the_session_token_and_ends_the_old_one() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let first = cookie_value(&app.login("alice", GOOD_PASSWORD).await, "__Host-portcullis").unwrap();
    let resp = login_carrying(&app, &format!("__Host-portcullis={first}")).await;
    assert_eq!(resp.status(), 303);
    let second = cookie_value(&resp, "__Host-portcullis").unwrap();
    assert_ne!(first, second);
    let stale = app.new_browser();
    let resp = stale.get(app.url("/")).header("cookie", format!("__Host-portcullis={first}")).send().await.unwrap();
    assert_eq!(resp.status(), 303, "the pre-login session must be gone");
}

#[tokio::test]
async fn a_planted_session_token_is_not_adopted_at_login() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let planted = "A".repeat(43);
    let resp = login_carrying(&app, &format!("__Host-portcullis={planted}")).await;
    assert_eq!(resp.status(), 303);
    assert_ne!(cookie_value(&resp, "__Host-portcullis").unwrap(), planted);
}

#[tokio::test]
async fn usernames_match_whatever_the_case_width_or_spaces() {
    let app = spawn_app().await;
    app.add_user("Alice", GOOD_PASSWORD, false).await;
    for typed in ["alice", " ALICE ", "ＡＬＩＣＥ"] {
        let client = app.new_browser();
        assert_eq!(app.login_with(&client, typed, GOOD_PASSWORD).await.status(), 303, "{typed}");
    }
}

#[tokio::test]
async fn a_signed_in_visitor_is_sent_on_from_the_login_page() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.login("alice", GOOD_PASSWORD).await;
    let resp = app.client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
}

/// The auth log's file removed or renamed while the server runs (logrotate's rename, an
/// operator's `rm -r`): the next line goes to a new file at today's name, not to the old one
/// until midnight (review 194: sign-ins answered 303 with nothing on the record).
#[tokio::test]
async fn a_log_file_removed_or_renamed_while_serving_is_made_again_with_the_next_line() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let logs = app.settings.log_dir.clone();
    let today = || {
        let mut files: Vec<_> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.pop().unwrap()
    };
    let signed_in = |text: String| text.lines().filter(|l| l.contains("\"event\":\"authn_login_success\"")).count();
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 303);
    let file = today();
    assert_eq!(signed_in(std::fs::read_to_string(&file).unwrap()), 1);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(&file, elsewhere.path().join("rotated")).unwrap();
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(today(), file, "made again at its name");
    assert_eq!(signed_in(std::fs::read_to_string(&file).unwrap()), 1, "this sign-in's line");
    assert_eq!(signed_in(std::fs::read_to_string(elsewhere.path().join("rotated")).unwrap()), 1, "none added");
    std::fs::remove_dir_all(&logs).unwrap();
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(signed_in(std::fs::read_to_string(today()).unwrap()), 1, "the directory too");
}
