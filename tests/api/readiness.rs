//! `GET /readyz` for load balancers: 200 `ready` while the store can take writes, 503 while
//! it cannot (the database is down, or answers reads but refuses every write: a hot standby,
//! `default_transaction_read_only`), with the reason logged, and back to 200 without a
//! restart once the database takes writes again.

use std::time::Duration;

use reqwest::StatusCode;

use portcullis::postgres::url::DatabaseUrl;

use crate::child::{self, ServerProcess};
use crate::helpers::{spawn_app, spawn_app_with, TestApp, GOOD_PASSWORD};
use crate::pg;

async fn readiness(app: &TestApp) -> (StatusCode, String) {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn on_the_embedded_store_the_server_is_ready_at_once() {
    let app = spawn_app().await;
    assert_eq!(readiness(&app).await, (StatusCode::OK, "ready".into()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_and_the_server_recovers_by_itself() {
    let Some(url) = pg::database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    assert_eq!(readiness(&app).await.0, StatusCode::OK);

    // The database stops taking connections and drops the ones it has.
    let cluster = pg::cluster().expect("the database above came from it");
    let admin = portcullis::postgres::connect::connect(&cluster.socket_url.with_dbname("postgres")).await.unwrap();
    let db = url.dbname();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';"
        ))
        .await
        .unwrap();
    assert_eq!(readiness(&app).await.0, StatusCode::SERVICE_UNAVAILABLE, "not ready without the database");
    let healthz = app.client.get(app.url("/healthz")).send().await.unwrap().status();
    assert_eq!(healthz, StatusCode::OK, "the process lives");

    // It comes back: ready again and signing in, with no restart.
    admin.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await.unwrap();
    let mut status = readiness(&app).await.0;
    for _ in 0..50 {
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = readiness(&app).await.0;
    }
    assert_eq!(status, StatusCode::OK, "ready again once the database answers");
    assert_eq!(app.login("alice", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

/// The real binary serving on `url` (its log lines on stderr are what an operator reads),
/// with `alice` added through the CLI.
async fn server_on(url: &DatabaseUrl, dir: &std::path::Path) -> ServerProcess {
    let mut add = child::command(dir);
    add.env("PORTCULLIS_DATABASE_URL", url.to_string())
        .envs([("PORTCULLIS_ARGON2_MEMORY_KIB", "256"), ("PORTCULLIS_ARGON2_ITERATIONS", "1")])
        .args(["user", "add", "alice", "--password-stdin"]);
    child::run_cli(add, Some(&format!("{GOOD_PASSWORD}\n"))).await.assert_ok("user add");
    ServerProcess::start_with(dir, child::QUICK, |cmd| {
        cmd.env("PORTCULLIS_DATABASE_URL", url.to_string());
    })
}

async fn status_of(server: &ServerProcess, client: &reqwest::Client) -> StatusCode {
    client.get(server.url("/readyz")).send().await.unwrap().status()
}

/// Polls `/readyz` until it answers `want` (and, if given, the server has logged `logged`);
/// fails past a generous deadline.
async fn until_ready_is(server: &ServerProcess, client: &reqwest::Client, want: StatusCode, logged: Option<&str>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of(server, client).await;
        if status == want && logged.is_none_or(|l| server.output().contains(l)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz answered {status}, never {want} ({logged:?}): {}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `/readyz` answers 503 every time for a while: not ready for good, not by the
/// chance of one dropped connection.
async fn stays_unready(server: &ServerProcess, client: &reqwest::Client) {
    for _ in 0..5 {
        assert_eq!(status_of(server, client).await, StatusCode::SERVICE_UNAVAILABLE, "{}", server.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_database_begins_every_transaction_read_only_and_200_once_it_takes_writes_again() {
    let Some(url) = pg::database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = server_on(&url, dir.path()).await;
    let client = server.browser();
    until_ready_is(&server, &client, StatusCode::OK, None).await;
    let signed_in = server.browser();
    assert_eq!(child::login(&server, &signed_in, "alice", GOOD_PASSWORD).await.0, 303);

    // As after a failover that left the instance on a server that takes no writes: every
    // connection it had is gone, and each new one begins read-only. Reads still work, so
    // `SELECT 1` would say ready.
    let cluster = pg::cluster().expect("the database above came from it");
    let admin = portcullis::postgres::connect::connect(&cluster.socket_url.with_dbname("postgres")).await.unwrap();
    let db = url.dbname();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_read_only = on;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';"
        ))
        .await
        .unwrap();
    until_ready_is(&server, &client, StatusCode::SERVICE_UNAVAILABLE, Some("default_transaction_read_only")).await;
    stays_unready(&server, &client).await;
    assert!(server.output().contains("the database takes no writes"), "the reason is logged: {}", server.output());
    let (status, cookie) = child::login(&server, &server.browser(), "alice", GOOD_PASSWORD).await;
    assert_eq!((status, cookie), (503, None), "no sign-in without its session written");
    // What only reads still works, as README says: a signed-in page (its activity unrecorded,
    // which can only bring the idle timeout sooner), and the CLI's reads, which a review found
    // refused because every command first tried to create the schema table.
    let home = signed_in.get(server.url("/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    let csrf = crate::helpers::hidden_field(&home.text().await.unwrap(), "csrf").unwrap();
    let out = signed_in.post(server.url("/logout")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::SERVICE_UNAVAILABLE, "no sign-out that was not written");
    assert!(out.headers().get("set-cookie").is_none(), "the cookie is kept for the next try");
    assert!(out.text().await.unwrap().contains("still signed in"), "and the page says so, not only \"busy\"");
    let others =
        signed_in.post(server.url("/sessions/end-others")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(others.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(others.text().await.unwrap().contains("still signed in"), "sign out everywhere else alike");
    for args in [&["user", "list"][..], &["audit"]] {
        let mut cmd = child::command(dir.path());
        cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).args(args);
        let run = child::run_cli(cmd, None).await;
        run.assert_ok(&format!("{args:?} on a database that takes no writes"));
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = child::command(elsewhere.path());
    cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).args(["user", "disable", "alice"]);
    let run = child::run_cli(cmd, None).await;
    let err = run.assert_one_line_failure("a change on a database that takes no writes");
    assert!(err.contains("read-only transaction"), "the database's own reason: {err}");
    assert!(
        err.contains("SQLSTATE 25006") && !err.contains("db error"),
        "its code, not the driver's bare words: {err}"
    );
    assert!(!elsewhere.path().join("logs").exists(), "a refused change left a log directory");

    // Writable again: ready again, and signing in, with no restart (the connections that
    // began read-only were not kept).
    admin.batch_execute(&format!("ALTER DATABASE {db} RESET default_transaction_read_only")).await.unwrap();
    until_ready_is(&server, &client, StatusCode::OK, None).await;
    let (status, cookie) = child::login(&server, &server.browser(), "alice", GOOD_PASSWORD).await;
    assert_eq!(status, 303, "{}", server.output());
    assert!(cookie.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_database_is_a_hot_standby_and_200_once_it_is_promoted() {
    let Some((mut cluster, url)) = pg::PrivateCluster::with_database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = server_on(&url, dir.path()).await;
    let client = server.browser();
    until_ready_is(&server, &client, StatusCode::OK, None).await;

    cluster.restart_as_standby().unwrap();
    until_ready_is(&server, &client, StatusCode::SERVICE_UNAVAILABLE, Some("in recovery")).await;
    stays_unready(&server, &client).await;
    let (status, _) = child::login(&server, &server.browser(), "alice", GOOD_PASSWORD).await;
    assert_eq!(status, 503, "no sign-in without its session written");

    let admin = portcullis::postgres::connect::connect(&cluster.socket_url).await.unwrap();
    admin.batch_execute("SELECT pg_promote()").await.unwrap();
    until_ready_is(&server, &client, StatusCode::OK, None).await;
    let (status, cookie) = child::login(&server, &server.browser(), "alice", GOOD_PASSWORD).await;
    assert_eq!(status, 303, "{}", server.output());
    assert!(cookie.is_some());
}

/// The server process behind a pooled connection.
async fn backend(c: &portcullis::postgres::db::Conn) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_connection_whose_write_was_refused_as_read_only_never_returns_to_the_pool() {
    let Some(url) = pg::database().await else { return };
    // One connection at most: a reused one would show the same server process.
    let pool = portcullis::postgres::connect::pool(&url, 1).unwrap();
    let c = pool.get().await.unwrap();
    let first = backend(&c).await;
    // This session stays read-only whatever the database's default becomes later.
    c.simple_query("SET default_transaction_read_only = on").await.unwrap();
    let refused = c.execute("CREATE TABLE t (a int)", &[]).await.unwrap_err();
    assert!(refused.is_unavailable(), "a read-only database is unavailable for writes: {refused}");
    drop(c);

    let c = pool.get().await.unwrap();
    assert_ne!(backend(&c).await, first, "a fresh connection, not the read-only one");
    assert_eq!(c.execute("CREATE TABLE t (a int)", &[]).await.unwrap(), 0, "which takes writes");
}

/// libfaketime, to run a server whose clock is off the database's; `None` (the test says so
/// and skips, or fails under `PORTCULLIS_REQUIRE_ALL`) where Debian's `faketime` is missing.
fn libfaketime() -> Option<std::path::PathBuf> {
    let found = std::fs::read_dir("/usr/lib").ok()?.flatten().find_map(|arch| {
        let lib = arch.path().join("faketime/libfaketime.so.1");
        lib.exists().then_some(lib)
    });
    if found.is_none() {
        assert!(std::env::var_os(pg::REQUIRE_ALL).is_none(), "libfaketime is missing and {} is set", pg::REQUIRE_ALL);
        eprintln!("skipped: libfaketime is missing (Debian's faketime package)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_on_a_host_whose_clock_is_more_than_a_minute_off_the_databases() {
    let Some(faketime) = libfaketime() else { return };
    let Some(url) = pg::database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // Two minutes behind: it would stamp sessions its peers take for stale, and end theirs as
    // stamped ahead.
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), child::QUICK, |cmd| {
            cmd.env("PORTCULLIS_DATABASE_URL", url.to_string())
                .env("LD_PRELOAD", &faketime)
                .env("FAKETIME", "-2m")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        })
    });
    let client = server.browser();
    stays_unready(&server, &client).await;
    let said = "s behind the database's (more than 30 s): check NTP on both";
    until_ready_is(&server, &client, StatusCode::SERVICE_UNAVAILABLE, Some(said)).await;
    // The same server with the right time is ready.
    drop(server);
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), child::QUICK, |cmd| {
            cmd.env("PORTCULLIS_DATABASE_URL", url.to_string());
        })
    });
    until_ready_is(&server, &server.browser(), StatusCode::OK, None).await;
}
