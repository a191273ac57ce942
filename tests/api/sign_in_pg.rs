//! A sign-in's writes on PostgreSQL and their durability (migration 8, SECURITY.md
//! "PostgreSQL"): the reservation of a password check and its end on success commit without
//! waiting for the WAL flush; failures, failure records and sessions wait for it. These tests
//! check the split in the database itself, and that what matters survives a crash of the
//! database server right after the response would have gone out.

use std::time::Duration;

use portcullis::brute_force::conformance::ip;
use portcullis::brute_force::Retire;
use portcullis::failures::Asker;
use portcullis::rate_limit::username_digest;
use portcullis::store::conformance::{failure, session};
use portcullis::store::{SessionCap, Store};

use crate::pg;

/// The `synchronous_commit` a transaction would commit with after running `sql` (rolled back).
async fn commit_mode(client: &mut tokio_postgres::Client, sql: &str) -> String {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mode: String = tx.query_one("SELECT current_setting('synchronous_commit')", &[]).await.unwrap().get(0);
    tx.rollback().await.unwrap();
    mode
}

#[tokio::test]
async fn reservations_and_their_ends_commit_asynchronously_while_failures_and_sessions_wait_for_the_flush() {
    let Some(url) = pg::database().await else { return };
    Store::connect(&url, "test").await.expect("the schema is made");
    let mut c = portcullis::postgres::connect::connect(&url).await.unwrap();
    // The throwaway cluster runs with it off for speed; a real server has it on.
    c.batch_execute("SET synchronous_commit = on").await.unwrap();
    let (a, u) = (r"'\x0a000001'::bytea", r"'\x00112233445566778899aabbccddeeff'::bytea");
    let reserve = format!("SELECT bf_begin_check(NULL, {a}, {u}, 1000, 3, 60000)");
    assert_eq!(commit_mode(&mut c, &reserve).await, "off", "a reservation");
    let form = format!(r"SELECT bf_begin_check('\x01'::bytea, {a}, {u}, 1000, 3, 60000)");
    assert_eq!(commit_mode(&mut c, &form).await, "off", "a reservation with its form checked");
    let end = format!(r"SELECT bf_end_check({a}, {u}, '\x02'::bytea, 5000, {u}, 1000)");
    assert_eq!(commit_mode(&mut c, &end).await, "off", "a success's end of its check");
    let release = format!("SELECT bf_end_check({a}, {u}, NULL, NULL, NULL, 1000)");
    assert_eq!(commit_mode(&mut c, &release).await, "off", "a release");

    // Everything else a sign-in writes waits for the flush, as every statement did before.
    assert_eq!(commit_mode(&mut c, "SELECT 1").await, "on", "the server's setting is on");
    let fail = format!("SELECT bf_fail_held({a}, {u}, 1000, 60000, 3)");
    assert_eq!(commit_mode(&mut c, &fail).await, "on", "a failure of a reserved check");
    let fail = format!("SELECT bf_fail({a}, {u}, ARRAY[]::bigint[], 1000, 60000, 3)");
    assert_eq!(commit_mode(&mut c, &fail).await, "on", "a failure with a solved captcha");
    let fail = format!("SELECT bf_fail_counted({a}, {u}, false, 1000, 60000, 3)");
    assert_eq!(commit_mode(&mut c, &fail).await, "on", "a failure with the captcha demand");
    let start = r"SELECT session_start('\x01'::bytea, decode(repeat('ab', 32), 'hex'), 'alice', 1, 1, '192.0.2.1',
                                     'ua', 1::smallint, 64, 600000, 3600000, 1)";
    assert_eq!(commit_mode(&mut c, start).await, "on", "a session");
    let captcha = format!(
        "SELECT bf_fail({a}, {u}, ARRAY[]::bigint[], 1000, 60000, 1); SELECT bf_begin_check(NULL, {a}, {u}, 1000, 1, 60000)"
    );
    assert_eq!(commit_mode(&mut c, &captcha).await, "on", "a check refused for a captcha reserves nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusals_failure_count_and_a_successs_session_survive_a_database_crash_right_after() {
    let Some(mut cluster) = pg::PrivateCluster::start() else { return };
    let admin = portcullis::postgres::connect::connect(&cluster.socket_url).await.expect("the private cluster answers");
    // Commits wait for the WAL to reach the kernel, as on a real server (the throwaway
    // cluster turns it off for speed; a crash of the server process needs no fsync). And the
    // WAL writer's longest sleep: an asynchronous commit not written out by a later
    // synchronous one stays in the server's memory for seconds, so the crash below loses it.
    for sql in [
        "CREATE DATABASE portcullis",
        "ALTER DATABASE portcullis SET synchronous_commit = on",
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(admin);
    let url = cluster.socket_url.with_dbname("portcullis");
    let store = Store::connect(&url, "test").await.unwrap();
    let state = store.shared_brute_force(Duration::from_secs(900), 1).expect("PostgreSQL shares it");
    let (alice, bob) = (username_digest("alice"), username_digest("bob"));
    let now = portcullis::store::now_ms();
    let cap = SessionCap { max_per_user: 64, idle_ms: 600_000, absolute_ms: 3_600_000 };

    // A success, in the sign-in's order: its check reserved, ended with the form retired and
    // the failures cleared (asynchronous), then the session (synchronous).
    let r = state
        .reserve_for_form([1; 16], ip(1), alice, Asker::Stranger, now)
        .await
        .unwrap()
        .expect("not retired")
        .expect("reserved");
    let retire = Retire { id: [1; 16], expires_at_ms: now + 3_600_000 };
    assert_eq!(state.succeed(Some(r), Some(retire), Some(alice), now).await.unwrap(), Some(0));
    store.sessions.start(None, &[9; 32], &session("alice", now, now), cap, now).await.unwrap();
    // A refusal, last, so no later commit flushes it: the failure, then its record.
    let r = state
        .reserve_for_form([2; 16], ip(2), bob, Asker::Stranger, now)
        .await
        .unwrap()
        .expect("not retired")
        .expect("reserved");
    state.fail(r, now).await.unwrap();
    let record = failure(now, "192.0.2.2", "bob", portcullis::audit::FailureReason::BadPassword);
    store.failures.append(&record, "bob", None).await.unwrap();
    drop((state, store));

    tokio::task::block_in_place(|| {
        cluster.crash_server();
        cluster.start_server()
    })
    .expect("the database server starts again");
    let store = Store::connect(&url, "test").await.unwrap();
    let state = store.shared_brute_force(Duration::from_secs(900), 1).unwrap();
    assert!(state.needs_captcha(ip(3), Some(bob), now + 1).await.unwrap(), "the refusal's failure count survived");
    assert_eq!(store.failures.count().await.unwrap(), 1, "and its record");
    assert!(store.sessions.get(&[9; 32]).await.unwrap().is_some(), "the session survived");
    assert!(state.is_retired([1; 16]).await.unwrap(), "the form it signed in with stays retired");
    assert!(
        !state.needs_captcha(ip(3), Some(alice), now + 1).await.unwrap(),
        "the reservation's release survived with the session (a stranded one would still count)"
    );
}
