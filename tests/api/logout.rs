//! Signing out: the session ends on the server, the cookie is cleared, replay fails.

use crate::helpers::{cookie_value, set_cookies, spawn_app, GOOD_PASSWORD};

#[tokio::test]
async fn logout_ends_the_session_on_the_server_and_a_replayed_cookie_fails() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let token = cookie_value(&app.login("alice", GOOD_PASSWORD).await, "__Host-portcullis").unwrap();
    let resp = app.logout_with(&app.client).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login");
    let cleared = set_cookies(&resp).into_iter().find(|c| c.starts_with("__Host-portcullis=")).unwrap();
    assert!(cleared.contains("Max-Age=0") && cleared.contains("Secure") && cleared.contains("Path=/"), "{cleared}");
    // An attacker who copied the cookie before logout gets nothing.
    let replay = app.new_browser();
    let resp = replay.get(app.url("/")).header("cookie", format!("__Host-portcullis={token}")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login?ended=session");
}

/// The session's other cookies (a password confirmation, a notice) go with it: with
/// `cookie_domain` every gated host went on receiving them for minutes (review 183).
/// `/logout` typed in the address bar says how to sign out and ends nothing (review 196: a
/// bare "cannot be used that way").
#[tokio::test]
async fn logout_typed_in_the_address_bar_says_how_to_sign_out_and_ends_nothing() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let alice = app.new_browser();
    assert_eq!(app.login_with(&alice, "alice", GOOD_PASSWORD).await.status(), 303);
    let resp = alice.get(app.url("/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let page = resp.text().await.unwrap();
    assert!(page.contains("Not signed out") && page.contains("go to the home page and press Sign out there"), "{page}");
    assert_eq!(alice.get(app.url("/")).send().await.unwrap().status(), 200, "still signed in");
}

#[tokio::test]
async fn logout_clears_the_sessions_other_cookies_too() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.login("alice", GOOD_PASSWORD).await;
    let csrf = app.home_csrf(&app.client).await;
    let resp = app
        .client
        .post(app.url("/logout"))
        .header("cookie", "__Host-portcullis-confirmed=1.x; __Host-portcullis-flash=y")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let set = set_cookies(&resp);
    for name in ["__Host-portcullis=", "__Host-portcullis-confirmed=", "__Host-portcullis-flash="] {
        assert!(set.iter().any(|c| c.starts_with(name) && c.contains("Max-Age=0")), "{name}: {set:?}");
    }
}

#[tokio::test]
async fn logout_without_the_sessions_csrf_token_is_refused() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.login("alice", GOOD_PASSWORD).await;
    let resp = app.client.post(app.url("/logout")).form(&[("csrf", "forged")]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("still signed in") && page.contains("Go to the home page and press Sign out there"),
        "{page}"
    );
    assert_eq!(app.client.get(app.url("/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn logout_is_recorded_in_the_auth_log() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.login("alice", GOOD_PASSWORD).await;
    app.logout_with(&app.client).await;
    let lines = app.log_lines();
    assert!(lines.iter().any(|l| l["event"] == "authn_login_success" && l["username"] == "alice"));
    assert!(lines.iter().any(|l| l["event"] == "session_logout" && l["username"] == "alice"));
}

/// A sign-out while the same session changes its password (in another tab) wins: the change
/// goes on under a new token only from a stored record, and the sign-out removes it, also
/// when the change has already begun the new credential generation (review 129 kept such a
/// session alive under the change's new token). Here the change stops right after beginning
/// the generation; the sign-out comes; then the change goes on and is refused.
#[tokio::test]
async fn a_sign_out_during_a_password_change_of_the_same_session_wins() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let token = cookie_value(&app.login("alice", GOOD_PASSWORD).await, "__Host-portcullis").unwrap();
    let session = app.state.sessions.resolve(&token).await.unwrap().unwrap();
    let changed = app.state.store.users.set_password_hash("alice", "$argon2id$...", 2, None).await.unwrap().unwrap();
    // The session is over (another generation), so the form's token is not asked for.
    let resp = app.client.post(app.url("/logout")).form(&[("csrf", "")]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert!(app.state.store.sessions.get(&session.token_hash).await.unwrap().is_none(), "its record is gone");
    let went_on = app.state.sessions.renew(&session, &changed, "127.0.0.1".parse().unwrap(), "ua").await;
    assert!(matches!(went_on, Err(portcullis::session::StartError::SignedOut)), "{:?}", went_on.err());
    assert!(app.sessions_of("alice").await.is_empty(), "no session is left");
}

/// A sign-out sent with the token a password change in another tab has just replaced ends the
/// session under its new token too (review 131: the other tab's answer carried the new token,
/// which stayed valid, while this tab was told it was signed out).
#[tokio::test]
async fn a_sign_out_with_the_token_a_change_just_replaced_ends_the_new_one() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let old = cookie_value(&app.login("alice", GOOD_PASSWORD).await, "__Host-portcullis").unwrap();
    let page = app.client.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    let csrf = crate::helpers::hidden_field(&page, "csrf").unwrap();
    let new_password = "a tab changed it meanwhile 3390";
    let form = [("csrf", csrf.as_str()), ("current", GOOD_PASSWORD), ("new", new_password), ("repeat", new_password)];
    let changed = app.client.post(app.url("/account/password")).form(&form).send().await.unwrap();
    assert_eq!(changed.status(), 303);
    let new = cookie_value(&changed, "__Host-portcullis").unwrap();
    // The other tab, which still sends the old cookie.
    let other_tab = app.new_browser();
    let out = other_tab
        .post(app.url("/logout"))
        .header("cookie", format!("__Host-portcullis={old}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let home = app.new_browser().get(app.url("/")).header("cookie", format!("__Host-portcullis={new}")).send().await;
    assert_eq!(home.unwrap().status(), 303, "the new token is over too");
    assert!(app.sessions_of("alice").await.is_empty(), "no session is left");
    // Logged, naming the session it ended: the one under the new token (review 218).
    let new_hash = portcullis::session::SessionToken::parse(&new).unwrap().hash();
    let handle = portcullis::session::SessionHandle::of(&new_hash).encode();
    let lines = app.log_lines();
    let out = lines.iter().find(|l| l["event"] == "session_logout" && l["username"] == "alice").expect("logged");
    assert_eq!(out["session"], handle.as_str(), "{out}");
}

/// A tab showing a page from before another tab's *sign out everywhere else* or password
/// change sends the browser's one cookie, the new token, with the old page's form token: its
/// sign-out ends the session (review 179: it was refused and the browser stayed signed in).
#[tokio::test]
async fn a_stale_tabs_sign_out_after_a_change_of_token_ends_the_session() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    for change in ["sign out everywhere else", "password change"] {
        let browser = app.new_browser();
        assert_eq!(app.login_with(&browser, "alice", GOOD_PASSWORD).await.status(), 303);
        let stale = app.home_csrf(&browser).await;
        let new_password = "the other tab changed it 4471";
        let resp = if change == "password change" {
            let form =
                [("csrf", stale.as_str()), ("current", GOOD_PASSWORD), ("new", new_password), ("repeat", new_password)];
            browser.post(app.url("/account/password")).form(&form).send().await.unwrap()
        } else {
            browser.post(app.url("/sessions/end-others")).form(&[("csrf", stale.as_str())]).send().await.unwrap()
        };
        assert_eq!(resp.status(), 303, "{change}");
        // The jar now holds the new token; the stale tab posts its page's form token.
        let out = browser.post(app.url("/logout")).form(&[("csrf", stale.as_str())]).send().await.unwrap();
        assert_eq!(out.status(), 303, "{change}");
        assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 303, "{change}: signed out");
        assert!(app.sessions_of("alice").await.is_empty(), "{change}: no session is left");
        // A form token of no page of this session's still ends nothing.
        assert_eq!(
            app.login_with(&browser, "alice", if change == "password change" { new_password } else { GOOD_PASSWORD })
                .await
                .status(),
            303
        );
        let out = browser.post(app.url("/logout")).form(&[("csrf", "forged")]).send().await.unwrap();
        assert_eq!(out.status(), 403, "{change}");
        assert_eq!(app.sessions_of("alice").await.len(), 1, "{change}");
        let _ = app
            .state
            .users
            .set_password("alice", portcullis::password::Password::new(GOOD_PASSWORD), "test", None, None)
            .await;
    }
}

/// The link from an old token is followed only with that old session's form token: a cookie
/// alone (a thief's, say) ends no live session (review 132).
#[tokio::test]
async fn the_old_token_alone_without_its_form_token_ends_no_live_session() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let old = cookie_value(&app.login("alice", GOOD_PASSWORD).await, "__Host-portcullis").unwrap();
    let csrf = app.home_csrf(&app.client).await;
    let changed = app.client.post(app.url("/sessions/end-others")).form(&[("csrf", csrf.as_str())]).send().await;
    let new = cookie_value(&changed.unwrap(), "__Host-portcullis").unwrap();
    for forged in ["", "forged"] {
        let out = app
            .new_browser()
            .post(app.url("/logout"))
            .header("cookie", format!("__Host-portcullis={old}"))
            .form(&[("csrf", forged)])
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 303);
    }
    let home = app.new_browser().get(app.url("/")).header("cookie", format!("__Host-portcullis={new}")).send().await;
    assert_eq!(home.unwrap().status(), 200, "the new session stays");
}
