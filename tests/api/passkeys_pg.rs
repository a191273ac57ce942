//! Passkeys on PostgreSQL with two instances: a ceremony begun on one is finished on the
//! other (its state is in the database, bound to the browser's cookie), and used once there.

use portcullis::store::Factors;
use reqwest::StatusCode;

use crate::helpers::spawn_app_with;
use crate::passkeys::{
    assert_with, begin_sign_in, factors_of, finish, json, login_csrf, on_localhost, register, remove_passkey,
    signed_in_browser,
};
use crate::pg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_sign_in_begun_on_one_instance_finishes_on_another_once() {
    let Some(url) = pg::database().await else { return };
    let one = spawn_app_with(|s| {
        on_localhost(s);
        s.database_url = Some(url.clone());
    })
    .await;
    let (public_url, cert_dir) = (one.settings.public_url.clone(), one.settings.cert_dir.clone());
    let two = crate::helpers::spawn_beside(&one, |s| {
        s.database_url = Some(url.clone());
        s.cert_dir = cert_dir;
        // Both instances serve one site: the same origin and relying party.
        s.public_url = public_url;
    })
    .await;
    let browser = signed_in_browser(&one, "alice").await;
    let (mut device, resp) = register(&one, &browser, "key").await;
    assert_eq!(resp.status(), StatusCode::OK, "the first factor: its recovery codes");

    // One browser (cookies go to both: same host), two instances.
    let visitor = one.new_browser();
    let form = visitor.get(one.url("/login")).send().await.unwrap();
    let pre = crate::helpers::cookie_value(&form, "__Host-portcullis-pre").unwrap();
    let csrf = crate::helpers::hidden_field(&form.text().await.unwrap(), "csrf").unwrap();
    let begun = begin_sign_in(&one, &visitor, &csrf).await;
    let sealed = crate::helpers::cookie_value(&begun, "__Host-portcullis-webauthn").unwrap();
    let credential = assert_with(&one, &mut device, json(begun).await);
    let resp = finish(&two, &visitor, &csrf, &credential).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "finished on the other instance");
    assert!(factors_of(&two, "alice").await.contains(&Factors::Two));
    // Sent again, whole, to the first instance: its form is retired on both.
    let replay = one
        .new_browser()
        .post(one.url("/login/passkey"))
        .header("cookie", format!("__Host-portcullis-pre={pre}; __Host-portcullis-webauthn={sealed}"))
        .form(&[("csrf", csrf.as_str()), ("credential", credential.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::FORBIDDEN);
    assert_eq!(two.sessions_of("alice").await.iter().filter(|s| s.record.factors == Factors::Two).count(), 1);
}

/// A PostgreSQL server and alice, with a passkey registered by her browser (`owner`), whose
/// copy a thief answers a sign-in with: the sign-in (`thief`, its status awaited from
/// `sign_in`) has checked the passkey and waits to store its session at the per-user lock
/// `holder` holds.
struct HeldSignIn {
    app: crate::helpers::TestApp,
    owner: reqwest::Client,
    device: crate::passkeys::Device,
    thief: reqwest::Client,
    holder: tokio_postgres::Client,
    sign_in: tokio::task::JoinHandle<StatusCode>,
}

async fn held_passkey_sign_in() -> Option<HeldSignIn> {
    let url = pg::database().await?;
    let app = spawn_app_with(|s| {
        on_localhost(s);
        s.database_url = Some(url.clone());
    })
    .await;
    let owner = signed_in_browser(&app, "alice").await;
    let (mut device, _) = register(&app, &owner, "the lost key").await;
    let holder = portcullis::postgres::connect::connect(&url).await.unwrap();
    holder.batch_execute("SELECT pg_advisory_lock(2, hashtext('alice'))").await.unwrap();
    let thief = app.new_browser();
    let csrf = login_csrf(&app, &thief).await;
    let options = json(begin_sign_in(&app, &thief, &csrf).await).await;
    let credential = assert_with(&app, &mut device, options);
    let (t, base) = (thief.clone(), app.url("/login/passkey"));
    let sign_in = tokio::spawn(async move {
        t.post(base)
            .form(&[("csrf", csrf.as_str()), ("credential", credential.as_str())])
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(pg::advisory_lock_waiters(&holder).await, 1, "the sign-in waits at its session");
    Some(HeldSignIn { app, owner, device, thief, holder, sign_in })
}

impl HeldSignIn {
    /// Lets the held sign-in go on; its status.
    async fn release(mut self) -> (StatusCode, Self) {
        self.holder.batch_execute("SELECT pg_advisory_unlock(2, hashtext('alice'))").await.unwrap();
        let status = (&mut self.sign_in).await.unwrap();
        (status, self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_sign_in_checked_before_a_factor_reset_and_stored_after_it_gets_no_session() {
    let Some(held) = held_passkey_sign_in().await else { return };
    let (_, removed, _) = held.app.state.users.reset_factors("alice", "test").await.unwrap();
    assert_eq!(removed.passkeys, 1);
    let (status, HeldSignIn { app, thief, .. }) = held.release().await;
    // The passkey is gone once the session is stored: the sign-in ends it and is refused as
    // any removed passkey is.
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let home = thief.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::SEE_OTHER, "the lost key's session is over");
    assert!(app.sessions_of("alice").await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_sign_in_checked_before_its_passkey_was_removed_and_stored_after_gets_no_session() {
    // As above, but the owner removes the key on the account page.
    let Some(held) = held_passkey_sign_in().await else { return };
    let removed = remove_passkey(&held.app, &held.owner, &held.device).await;
    assert_eq!(removed.status(), StatusCode::SEE_OTHER);
    let (status, HeldSignIn { app, thief, owner, .. }) = held.release().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a removed passkey signs nobody in");
    assert_eq!(thief.get(app.url("/")).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    assert_eq!(app.sessions_of("alice").await.len(), 1, "the owner's session alone");
    assert_eq!(owner.get(app.url("/")).send().await.unwrap().status(), StatusCode::OK);
    app.stop().await;
}

/// A PostgreSQL server (its database's URL) and alice, signed in in `owner`'s browser with a
/// passkey registered there, whose copy signed in `thief`'s.
async fn thief_signed_in_with_a_copy() -> Option<(
    portcullis::postgres::url::DatabaseUrl,
    crate::helpers::TestApp,
    reqwest::Client,
    crate::passkeys::Device,
    reqwest::Client,
)> {
    let url = pg::database().await?;
    let app = spawn_app_with(|s| {
        on_localhost(s);
        s.database_url = Some(url.clone());
    })
    .await;
    let owner = signed_in_browser(&app, "alice").await;
    let (mut device, _) = register(&app, &owner, "lost key").await;
    let thief = app.new_browser();
    let csrf = login_csrf(&app, &thief).await;
    let credential = assert_with(&app, &mut device, json(begin_sign_in(&app, &thief, &csrf).await).await);
    assert_eq!(finish(&app, &thief, &csrf, &credential).await.status(), StatusCode::SEE_OTHER);
    Some((url, app, owner, device, thief))
}

/// A passkey removed whose sessions cannot then be ended (the failure made by a trigger in the
/// real database): the page says it is removed and that its sessions are still signed in,
/// not a bare "busy" that reads as nothing done, and the removal is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_removed_whose_sessions_cannot_be_ended_says_so() {
    let Some((url, app, owner, device, _thief)) = thief_signed_in_with_a_copy().await else { return };
    let db = portcullis::postgres::connect::connect(&url).await.unwrap();
    db.batch_execute(
        "CREATE FUNCTION refused_by_the_test() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER no_session_ends BEFORE DELETE ON sessions FOR EACH ROW
             EXECUTE FUNCTION refused_by_the_test();",
    )
    .await
    .unwrap();
    let resp = remove_passkey(&app, &owner, &device).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Passkey removed, its sessions not signed out"), "{page}");
    assert!(page.contains("they are still signed in"), "{page}");
    assert!(app.state.passkeys.list("alice").await.unwrap().is_empty(), "removed");
    assert!(app.log_lines().iter().any(|l| l["event"] == "mfa_removed" && l["sessions"] == 0), "logged");
    db.batch_execute("DROP TRIGGER no_session_ends ON sessions").await.unwrap();
    app.stop().await;
}

/// *Sign out everywhere else* from a session signed in with a passkey that is removed while
/// the new token is being stored (held here at the per-user lock of its start): no new token,
/// and the page says this session is over too, and why (a review saw such a token outlive
/// the removal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_everywhere_else_while_its_passkey_is_removed_leaves_no_session() {
    let Some((url, app, _owner, device, thief)) = thief_signed_in_with_a_copy().await else { return };
    let holder = portcullis::postgres::connect::connect(&url).await.unwrap();
    holder.batch_execute("SELECT pg_advisory_lock(2, hashtext('alice'))").await.unwrap();
    let home_csrf = app.home_csrf(&thief).await;
    let (t, base) = (thief.clone(), app.url("/sessions/end-others"));
    let click = tokio::spawn(async move {
        let resp = t.post(base).form(&[("csrf", home_csrf.as_str())]).send().await.unwrap();
        (resp.status(), resp.headers().get("set-cookie").is_some(), resp.text().await.unwrap())
    });
    assert_eq!(pg::advisory_lock_waiters(&holder).await, 1, "the new token waits at its start");
    let removed = app.state.passkeys.remove("alice", &device.credential_id, &[0; 32]).await.unwrap();
    assert!(removed.is_some());
    holder.batch_execute("SELECT pg_advisory_unlock(2, hashtext('alice'))").await.unwrap();
    let (status, cookie_set, page) = click.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!cookie_set, "no new token");
    assert!(page.contains("the passkey it was signed in with was removed meanwhile"), "{page}");
    assert!(app.sessions_of("alice").await.is_empty(), "no session is left");
    assert_eq!(thief.get(app.url("/")).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgresql_one_answer_sent_twice_at_once_signs_in_once_and_flags_nothing() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| {
        on_localhost(s);
        s.database_url = Some(url.clone());
        s.login_quota_per_ip = None;
    })
    .await;
    crate::passkeys::answers_sent_twice_sign_in_once(&app).await;
}
