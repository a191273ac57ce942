//! A database that stops answering but keeps its sockets open (a hung server, or a network
//! partition) is a database that is down: `/readyz` and sign-ins answer 503 within the
//! statement limit instead of waiting for TCP to give up, the CLI fails with one line, and
//! everything answers again once the server does, without a restart (SPEC.md, "Several
//! instances, one truth").

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::child;
use crate::helpers::{spawn_app_with, TestApp, GOOD_PASSWORD};
use crate::pg::PrivateCluster;

/// Far above the 5 s limit (a pool wait, then a statement's) and far below the minutes a
/// hung connection waited before: generous for a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(30);

/// The cluster's postmaster and every process it forked, stopped with SIGSTOP: the kernel
/// still accepts connections and keeps the open ones, but nothing answers. Dropping it sends
/// SIGCONT, so a failing test never leaves a stopped cluster behind.
struct Frozen(Vec<libc::pid_t>);

impl Frozen {
    fn stop(cluster: &PrivateCluster) -> Frozen {
        let postmaster = cluster.postmaster_pid().expect("the private cluster runs");
        // The postmaster first, so it forks no new backend while its children are stopped.
        let mut pids = vec![postmaster];
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(postmaster, libc::SIGSTOP) };
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if ppid == Some(postmaster) {
                // SAFETY: a child of the postmaster this test started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                pids.push(pid);
            }
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: the processes stopped above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

async fn readyz(app: &TestApp, client: &reqwest::Client) -> StatusCode {
    client.get(app.url("/readyz")).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_gets_503_within_the_limit_and_everything_recovers_after_it_resumes() {
    let Some((cluster, url)) = PrivateCluster::with_database().await else { return };
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    // Open pooled connections: the fault was a statement sent on one that never answers.
    assert_eq!(readyz(&app, &app.client).await, StatusCode::OK);
    assert_eq!(app.login("alice", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    // Forms fetched while the database answers, posted while it does not.
    let mut forms = Vec::new();
    for _ in 0..3 {
        let client = app.new_browser();
        let csrf = app.login_csrf(&client).await;
        forms.push((client, csrf));
    }

    let frozen = Frozen::stop(&cluster);
    let started = Instant::now();
    let probes = (0..3).map(|_| async { (readyz(&app, &app.new_browser()).await, started.elapsed()) });
    let sign_ins = forms.iter().map(|(client, csrf)| async {
        let resp = client
            .post(app.url("/login"))
            .form(&[("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        (resp.status(), resp.headers().contains_key("retry-after"), started.elapsed())
    });
    let (probes, sign_ins) = tokio::time::timeout(
        BOUND * 2,
        futures_util::future::join(futures_util::future::join_all(probes), futures_util::future::join_all(sign_ins)),
    )
    .await
    .expect("every request answers while the database is stopped");
    for (status, took) in probes {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "/readyz while the database is stopped");
        assert!(took < BOUND, "/readyz answered after {took:?}");
    }
    for (status, retry_after, took) in sign_ins {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a sign-in while the database is stopped");
        assert!(retry_after, "a 503 says when to retry");
        assert!(took < BOUND, "a sign-in answered after {took:?}");
    }

    drop(frozen);
    let mut status = readyz(&app, &app.client).await;
    let resumed = Instant::now();
    while status != StatusCode::OK && resumed.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = readyz(&app, &app.client).await;
    }
    assert_eq!(status, StatusCode::OK, "ready again once the database answers");
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_command_against_a_database_that_stops_answering_fails_with_one_line_instead_of_hanging() {
    let Some((cluster, url)) = PrivateCluster::with_database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &'static [&'static str]| {
        let mut cmd = child::command(dir.path());
        cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).args(args);
        child::run_cli(cmd, None)
    };
    // A store in it (a read makes none).
    portcullis::store::Store::connect(&url, "test").await.expect("the schema is made");
    run(&["user", "list"]).await.assert_ok("the database answers");

    let frozen = Frozen::stop(&cluster);
    let started = Instant::now();
    let failed = run(&["user", "list"]).await;
    let took = started.elapsed();
    drop(frozen);
    let line = failed.assert_one_line_failure("user list with the database stopped");
    assert!(took < BOUND, "the CLI gave up after {took:?}");
    assert!(line.contains("database"), "{line}");

    run(&["user", "list"]).await.assert_ok("the database answers again");
}

/// The server process behind a pooled connection.
async fn backend(c: &portcullis::postgres::db::Conn) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_statement_past_the_limit_fails_as_unavailable_and_its_connection_never_returns_to_the_pool() {
    let Some(url) = crate::pg::database().await else { return };
    // One connection at most: a reused one would show the same server process.
    let pool = portcullis::postgres::connect::pool(&url, 1).unwrap();
    let c = pool.get().await.unwrap();
    let first = backend(&c).await;
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(backend(&c).await, first, "a connection that finished its calls is reused");

    let started = Instant::now();
    let err = c.query("SELECT pg_sleep(8)", &[]).await.unwrap_err();
    assert!(matches!(err, portcullis::postgres::PgError::Timeout(_)), "{err}");
    assert!(err.is_unavailable(), "answered 503, as a database that is down");
    assert!(started.elapsed() < Duration::from_secs(8), "the limit, not the statement, ended the wait");
    drop(c);
    let c = pool.get().await.unwrap();
    let second = backend(&c).await;
    assert_ne!(second, first, "the timed-out connection was dropped, not reused");
    // The database stops the statement too, a second after the client's limit, instead of
    // sleeping on to 8 s (PostgreSQL does not notice the closed socket while it sleeps).
    let still_running = || async {
        c.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", &[&first])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut waited = 0;
    while still_running().await > 0 && waited < 25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(still_running().await, 0, "the abandoned statement still runs {:?} after it began", started.elapsed());
    assert!(started.elapsed() < Duration::from_millis(7900));
    let limits = c
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((limits.get::<_, String>(0), limits.get::<_, String>(1)), ("6s".to_string(), "10s".to_string()));
    // Should the server's limit strike first (or an operator cancel the statement), the caller
    // still answers 503, not 500.
    c.simple_query("SET statement_timeout = 50").await.unwrap();
    let cancelled = c.query("SELECT pg_sleep(1)", &[]).await.unwrap_err();
    assert!(cancelled.is_unavailable(), "{cancelled}");
    c.simple_query("SET statement_timeout = 6000").await.unwrap();

    // A caller that gives up mid-call (its future dropped) leaves the same unknown state.
    let gave_up = tokio::time::timeout(Duration::from_millis(200), c.query("SELECT pg_sleep(3)", &[])).await;
    assert!(gave_up.is_err());
    drop(c);
    let c = pool.get().await.unwrap();
    assert_ne!(backend(&c).await, second, "an abandoned call's connection was dropped, not reused");
}
