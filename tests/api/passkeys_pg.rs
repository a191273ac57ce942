//! Passkeys on PostgreSQL with two instances: a ceremony begun on one is finished on the
//! other (its state is in the database, bound to the browser's cookie), and used once there.

use portcullis::store::Factors;
use reqwest::StatusCode;

use crate::helpers::spawn_app_with;
use crate::passkeys::{
    assert_with, begin_sign_in, factors_of, finish, json, login_csrf, on_localhost, register, signed_in_browser,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_sign_in_checked_before_a_factor_reset_and_stored_after_it_gets_no_session() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| {
        on_localhost(s);
        s.database_url = Some(url.clone());
    })
    .await;
    let owner = signed_in_browser(&app, "alice").await;
    let (mut device, _) = register(&app, &owner, "the lost key").await;
    // Whoever holds the lost key signs in; the session's start waits on the per-user lock
    // held here, after the passkey was checked.
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
    let (_, removed, _) = app.state.users.reset_factors("alice", "test").await.unwrap();
    assert_eq!(removed.passkeys, 1);
    holder.batch_execute("SELECT pg_advisory_unlock(2, hashtext('alice'))").await.unwrap();
    assert_eq!(sign_in.await.unwrap(), StatusCode::SEE_OTHER);
    let home = thief.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::SEE_OTHER, "the lost key's session is over");
    assert!(app.sessions_of("alice").await.is_empty());
    app.stop().await;
}
