//! The server and the CLI on PostgreSQL (`database_url`) end to end, each test on a fresh
//! database of the throwaway cluster (`pg.rs`; skipped without it unless
//! `PORTCULLIS_REQUIRE_ALL` is set): a sign-in, a sign-out and a failure recorded and read by
//! `portcullis audit` from the database itself; and two instances on one database sharing
//! sessions, sign-outs and the failure counts that demand a captcha; and, with one table held
//! locked, which read a 503 came from.

use portcullis::postgres::url::DatabaseUrl;
use portcullis::store::{FailureQuery, Store};
use reqwest::StatusCode;

use crate::child;
use crate::helpers::{shows_captcha, spawn_app_with, TestApp, GOOD_PASSWORD};
use crate::pg;

/// `portcullis ARGS` in a directory of its own (no store, no socket there), with only the
/// database in common with the servers.
async fn cli_on(url: &DatabaseUrl, args: &[&str]) -> child::Run {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = child::command(dir.path());
    cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).args(args);
    child::run_cli(cmd, None).await
}

/// Whether `client` is signed in on `app`: the home page answers, rather than sending it to
/// the sign-in form.
async fn signed_in(app: &TestApp, client: &reqwest::Client) -> bool {
    let resp = client.get(app.url("/")).send().await.unwrap();
    match resp.status() {
        StatusCode::OK => true,
        StatusCode::SEE_OTHER => {
            // `ended=session` when the browser still holds the session's cookie.
            let to = resp.headers()["location"].to_str().unwrap();
            assert!(matches!(to, "/login" | "/login?ended=session"), "{to}");
            false
        }
        other => panic!("GET / answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_sign_in_a_sign_out_and_a_failure_the_cli_reads_from_the_database() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    assert!(app.state.in_memory.is_none(), "the brute-force state is the database's");
    assert!(!app.settings.data_dir.join("db").exists() && !app.settings.data_dir.join("conf").exists());
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let db = Store::connect(&url, "test").await.unwrap();

    let resp = app.login("alice", "not the password at all").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "the form again, with an error");
    assert!(!signed_in(&app, &app.client).await);
    let records = app.records(FailureQuery::default()).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].username, "alice");

    let resp = app.login("alice", GOOD_PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(signed_in(&app, &app.client).await);
    assert_eq!(db.sessions.count().await.unwrap(), 1, "the session is in the database");
    app.logout_with(&app.client).await;
    assert!(!signed_in(&app, &app.client).await, "signed out");
    assert_eq!(db.sessions.count().await.unwrap(), 0);

    // The CLI, with nothing but the database_url: no admin socket, no data directory.
    let audit = cli_on(&url, &["audit", "--since", "1h"]).await;
    audit.assert_ok("audit on the database");
    assert!(audit.stdout.contains("alice") && audit.stdout.contains("bad_password"), "{audit:?}");
    let json = cli_on(&url, &["audit", "--json"]).await;
    json.assert_ok("audit --json");
    let users = cli_on(&url, &["user", "list"]).await;
    users.assert_ok("user list on the database");
    assert!(users.stdout.contains("alice") && users.stdout.contains("admin"), "{users:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_share_sessions_sign_outs_and_failure_counts() {
    let Some(url) = pg::database().await else { return };
    let one = spawn_app_with(|s| {
        s.database_url = Some(url.clone());
        s.captcha_after_failures = 2;
        s.instance_name = "web-1".into();
    })
    .await;
    // The second instance serves the same certificate, so one browser trusts both; its
    // cookies (host-only, no port) go to both, as behind one load balancer.
    let cert_dir = one.settings.cert_dir.clone();
    let two = crate::helpers::spawn_beside(&one, |s| {
        s.database_url = Some(url.clone());
        s.captcha_after_failures = 2;
        s.cert_dir = cert_dir;
        s.instance_name = "web-2".into();
    })
    .await;
    assert!(two.admin_password.is_empty(), "the first administrator is made once, by the first instance");
    one.add_user("alice", GOOD_PASSWORD, false).await;

    let browser = one.new_browser();
    assert_eq!(one.login_with(&browser, "alice", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    assert!(signed_in(&two, &browser).await, "a session made on one is valid on the other");
    // The sign-out form of the second instance carries a CSRF token the first would accept
    // too (one key, from the database).
    two.logout_with(&browser).await;
    assert!(!signed_in(&one, &browser).await, "a sign-out on one ends the session on both");
    assert!(!signed_in(&two, &browser).await);

    // One failure on each instance reaches the threshold of 2: the next attempt, on either,
    // must carry a solved captcha, even with the right password.
    let attacker = one.new_browser();
    assert_eq!(one.login_with(&attacker, "alice", "wrong guess number one").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(two.login_with(&attacker, "alice", "wrong guess number two").await.status(), StatusCode::UNAUTHORIZED);
    let resp = one.login_with(&attacker, "alice", GOOD_PASSWORD).await;
    assert_ne!(resp.status(), StatusCode::SEE_OTHER, "not signed in without the captcha");
    assert!(shows_captcha(&resp.text().await.unwrap()), "the captcha is demanded");
    assert!(!signed_in(&one, &attacker).await);
    let records = two.records(FailureQuery::default()).await;
    assert_eq!(records.len(), 3, "every instance's failures in one place: {records:?}");
    let db = portcullis::postgres::connect::connect(&url).await.unwrap();
    let by_instance: Vec<(String, i64)> = db
        .query("SELECT instance, count(*) FROM failures GROUP BY instance ORDER BY instance", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(by_instance, [("web-1".to_string(), 2), ("web-2".to_string(), 1)], "each record names its instance");
    two.stop().await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_database_is_gone_sign_ins_fail_closed_with_503_never_401_or_a_session() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    let csrf = app.login_csrf(&browser).await;
    let signed = app.new_browser();
    assert_eq!(app.login_with(&signed, "alice", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    let account = signed.get(app.url("/account")).send().await.unwrap().text().await.unwrap();
    let session_csrf = crate::helpers::hidden_field(&account, "csrf").expect("the account page's forms");

    // The database disappears under the running server (its connections are ended too).
    let cluster = pg::cluster().expect("the database above came from it");
    let admin = portcullis::postgres::connect::connect(&cluster.socket_url.with_dbname("postgres")).await.unwrap();
    admin.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", url.dbname())).await.unwrap();

    for password in [GOOD_PASSWORD, "not the password at all"] {
        let resp = browser
            .post(app.url("/login"))
            .form(&[("username", "alice"), ("password", password), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "fail closed, whatever the password");
    }
    let home = signed.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::SERVICE_UNAVAILABLE, "a signed-in visitor is not shown as signed out");
    // Nor by the one JSON route a signed-in page calls (it once said "Please sign in again").
    let begin =
        signed.post(app.url("/account/passkeys/begin")).form(&[("csrf", session_csrf.as_str())]).send().await.unwrap();
    assert_eq!(begin.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!begin.text().await.unwrap().contains("sign in again"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_first_started_together_on_an_empty_database_all_start_and_one_shows_the_admin_password() {
    let Some(url) = pg::database().await else { return };
    // One factor key, in place before the first start, as the README says to set up.
    let key = tempfile::tempdir().unwrap();
    std::fs::write(key.path().join("factor.key"), format!("{}\n", "5a".repeat(32))).unwrap();
    let start = || {
        let url = url.clone();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::helpers::test_settings(dir.path());
        crate::helpers::share_factor_key(key.path(), &settings.data_dir);
        settings.database_url = Some(url);
        crate::helpers::spawn_in(dir, settings)
    };
    let (a, b, c) = tokio::join!(start(), start(), start());
    let shown = [&a, &b, &c].iter().filter(|app| !app.admin_password.is_empty()).count();
    assert_eq!(shown, 1, "one first administrator, its password shown once");
    let db = Store::connect(&url, "test").await.unwrap();
    assert_eq!(db.users.count().await.unwrap(), 1);
    for app in [a, b, c] {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_nul_in_a_typed_username_is_an_unknown_user_recorded_not_a_database_fault() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    // PostgreSQL's text cannot hold U+0000: the lookup and the record must not reach it so.
    let resp = app.login("ali\0ce", GOOD_PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "an unknown user, as on sled");
    let records = app.records(FailureQuery::default()).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].reason.as_str(), "unknown_user");
    assert_eq!(records[0].username, "ali\u{FFFD}ce");
    assert!(!app.log_text().contains("works again"), "no database fault was logged");

    let admin = crate::review::admin_browser(&app).await;
    let page = admin.get(app.url("/admin/failed-logins?user=ali%00ce")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let text = page.text().await.unwrap();
    assert!(!text.contains("store error") && text.contains("unknown_user"), "{text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_review_page_answers_503_without_the_drivers_words_when_the_database_is_gone() {
    let Some((mut cluster, url)) = pg::PrivateCluster::with_database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    let admin = crate::review::admin_browser(&app).await;
    assert_eq!(admin.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), StatusCode::OK);
    tokio::task::block_in_place(|| cluster.stop_server());
    let resp = admin.get(app.url("/admin/failed-logins?user=alice")).send().await.unwrap();
    // The session itself cannot be read either: whichever read fails first, it is a 503.
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("database error") && !text.contains("store error"), "{text}");
    app.stop().await;
}

/// Holds `table` locked against every read, from a connection of its own, until the returned
/// client is dropped: a database that hangs on that table alone, so a test can tell which
/// read a request failed on.
async fn lock(url: &DatabaseUrl, table: &str) -> tokio_postgres::Client {
    let holder = portcullis::postgres::connect::connect(url).await.unwrap();
    holder.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await.unwrap();
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_review_page_answers_503_at_once_when_its_own_read_of_the_records_fails() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    let admin = crate::review::admin_browser(&app).await;
    assert_eq!(admin.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), StatusCode::OK);
    // The session (sessions, users) reads; the records (failures) hang past the 5 s limit.
    let holder = lock(&url, "failures").await;
    let started = std::time::Instant::now();
    let resp = admin.get(app.url("/admin/failed-logins?user=alice")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("database error") && !text.contains("store error"), "{text}");
    // One wait, not one per read (the page, its summary, its chart): 5 s, not 15.
    assert!(took < std::time::Duration::from_secs(9), "{took:?}");
    drop(holder);
    assert_eq!(admin.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_say_who_an_over_long_password_was_for_is_a_503_not_an_unknown_user() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let long = "x".repeat(1025);
    // The brute-force state answers; the lookup of who the password was for hangs.
    let holder = lock(&url, "users").await;
    let started = std::time::Instant::now();
    let resp = app.login("alice", &long).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // At the lookup's own limit (5 s). Had its failure been taken for an unknown user, the
    // refusal's record (which looks up the stored spelling of the name) would have waited a
    // second 5 s before a 503 from elsewhere.
    assert!(took < std::time::Duration::from_secs(9), "{took:?}");
    drop(holder);
    assert!(app.records(FailureQuery::default()).await.is_empty(), "no guess at the reason was recorded");
    // And with the store back, the same attempt is refused as a wrong password of alice's.
    let resp = app.login("alice", &long).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let records = app.records(FailureQuery::default()).await;
    assert_eq!(records.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(), ["bad_password"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_checked_before_a_password_change_and_stored_after_it_gets_no_session() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    // Hold the per-user lock a session's start takes, so the sign-in waits there: after its
    // password check, before its session is stored.
    let holder = portcullis::postgres::connect::connect(&url).await.unwrap();
    holder.batch_execute("SELECT pg_advisory_lock(2, hashtext('alice'))").await.unwrap();
    let browser = app.new_browser();
    let csrf = app.login_csrf(&browser).await;
    let (b, login_url) = (browser.clone(), app.url("/login"));
    let sign_in = tokio::spawn(async move {
        let form = [("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", csrf.as_str())];
        b.post(login_url).form(&form).send().await.unwrap().status()
    });
    assert_eq!(pg::advisory_lock_waiters(&holder).await, 1, "the sign-in waits at its session");
    let set = app.state.users.set_password(
        "alice",
        portcullis::password::Password::new("nimbus crater tulip 5531"),
        "test",
        None,
        None,
    );
    assert_eq!(set.await.unwrap().sessions_ended, 0, "the sign-in's session is not there yet to be ended");
    holder.batch_execute("SELECT pg_advisory_unlock(2, hashtext('alice'))").await.unwrap();
    assert_eq!(sign_in.await.unwrap(), StatusCode::SEE_OTHER);
    assert!(!signed_in(&app, &browser).await, "a session begun under the old password is over");
    assert!(app.sessions_of("alice").await.is_empty());
    app.stop().await;
}

/// On PostgreSQL no lock says a server runs: `store forget-factor-key` refuses while an
/// instance is connected (review 163: a server left running sealed new second factors under
/// the key being forgotten and recorded it again, so the next instance with a new key refused
/// to start), and runs once every instance is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_forget_factor_key_refuses_while_an_instance_is_connected() {
    use portcullis::factors::key::FINGERPRINT_NAME;
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let run = cli_on(&url, &["store", "forget-factor-key", "--yes"]).await;
    let err = run.assert_one_line_failure("beside a running instance");
    assert!(err.contains("connection(s) of portcullis") && err.contains("stop every instance first"), "{err}");
    assert!(app.state.store.secrets.get(FINGERPRINT_NAME).await.unwrap().is_some(), "the key is still recorded");
    app.stop().await;
    let run = cli_on(&url, &["store", "forget-factor-key", "--yes"]).await;
    run.assert_ok("with every instance stopped");
    let db = Store::connect(&url, "test").await.unwrap();
    assert!(db.secrets.get(FINGERPRINT_NAME).await.unwrap().is_none(), "forgotten");
}

/// A server's claim of a secret (its factor key's fingerprint at start) waits while `store
/// forget-factor-key` holds its lock, so no start reads or records a key in the middle of the
/// forgetting (review 165: 7 of 24 starts in the same instant ran with no key recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_claimed_only_once_forget_factor_key_lets_go() {
    let Some(url) = pg::database().await else { return };
    let db = Store::connect(&url, "test").await.unwrap();
    let (held, _) = portcullis::postgres::connect::lock_out_instances(&url).await.unwrap();
    let secrets = db.secrets.clone();
    let claim = tokio::spawn(async move { secrets.claim("a_secret", &[7; 32]).await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!claim.is_finished(), "the claim waits for the command");
    drop(held);
    assert_eq!(claim.await.unwrap(), [7; 32]);
}
