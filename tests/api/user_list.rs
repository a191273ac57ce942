//! `portcullis user list` on both engines: each user's count of sessions still valid (expired
//! ones left out), read at once (on PostgreSQL one statement, not one more per user, counted by
//! `pg_stat_statements` where the throwaway cluster preloads it), and a store that cannot
//! read the sessions is a one-line error with a non-zero exit, never a list that says 0.

use std::collections::BTreeMap;
use std::path::Path;

use portcullis::postgres::url::DatabaseUrl;
use portcullis::store::conformance::{session, user, HASH_A};
use portcullis::store::{now_ms, Store};

use crate::child;
use crate::pg;

const MINUTE: u64 = 60_000;

/// alice: one valid session, one idle past the default 30 minutes, one older than the default
/// 12 hours; bob: two valid; carol: none; and a valid session of a key that is no user.
async fn users_and_sessions(store: &Store) {
    for key in ["alice", "bob", "carol"] {
        store.users.insert(&user(key), HASH_A).await.unwrap();
    }
    let now = now_ms();
    let s = &store.sessions;
    s.insert(&[1; 32], &session("alice", now - MINUTE, now - MINUTE)).await.unwrap();
    s.insert(&[2; 32], &session("alice", now - 120 * MINUTE, now - 120 * MINUTE)).await.unwrap();
    s.insert(&[3; 32], &session("alice", now - 13 * 60 * MINUTE, now - MINUTE)).await.unwrap();
    s.insert(&[4; 32], &session("bob", now - 5 * MINUTE, now - MINUTE)).await.unwrap();
    s.insert(&[5; 32], &session("bob", now - 2 * MINUTE, now - 2 * MINUTE)).await.unwrap();
    s.insert(&[6; 32], &session("ghost", now - MINUTE, now - MINUTE)).await.unwrap();
}

/// What `user list --json` printed: each username with its `active_sessions`.
fn counts(run: &child::Run) -> BTreeMap<String, u64> {
    run.assert_ok("user list --json");
    run.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["username"].as_str().unwrap().to_lowercase(), v["active_sessions"].as_u64().unwrap())
        })
        .collect()
}

fn expected() -> BTreeMap<String, u64> {
    [("alice", 1), ("bob", 2), ("carol", 0)].into_iter().map(|(k, n)| (k.to_string(), n)).collect()
}

/// `portcullis ARGS` in a directory of its own, on the database at `url`.
async fn cli_on(url: &DatabaseUrl, dir: &Path, args: &[&str]) -> child::Run {
    let mut cmd = child::command(dir);
    cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).args(args);
    child::run_cli(cmd, None).await
}

#[tokio::test]
async fn on_sled_user_list_counts_each_users_valid_sessions_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    users_and_sessions(&store).await;
    drop(store);
    let run = child::run_cli_when_released(dir.path(), &["user", "list", "--json"]).await;
    assert_eq!(counts(&run), expected(), "{run:?}");
}

/// The statements that read sessions since the last reset, with their texts.
const SESSION_READS: &str = "SELECT coalesce(sum(calls), 0)::bigint, coalesce(string_agg(query, ' | '), '')
     FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND query NOT LIKE '%pg_stat_statements%'
       AND query LIKE '%FROM sessions%'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_user_list_counts_valid_sessions_in_one_statement_for_all_users() {
    let Some(url) = pg::database().await else { return };
    let store = Store::connect(&url, "test").await.unwrap();
    users_and_sessions(&store).await;
    let db = portcullis::postgres::connect::connect(&url).await.unwrap();
    db.batch_execute("CREATE EXTENSION pg_stat_statements").await.unwrap();
    let counted = db.query_one(SESSION_READS, &[]).await.is_ok();
    if !counted {
        assert!(std::env::var_os(pg::REQUIRE_ALL).is_none(), "pg_stat_statements is not loaded");
        eprintln!("skipped counting statements: pg_stat_statements is not loaded");
    }
    let dir = tempfile::tempdir().unwrap();
    // A first run, so the one counted does only what every later one does.
    cli_on(&url, dir.path(), &["user", "list"]).await.assert_ok("user list");
    if counted {
        db.batch_execute(
            "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
        )
        .await
        .unwrap();
    }

    let run = cli_on(&url, dir.path(), &["user", "list", "--json"]).await;
    assert_eq!(counts(&run), expected(), "{run:?}");
    if counted {
        // The CLI has exited, so its statements have ended; a count can only trail, so wait
        // for the first to show.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut calls, mut queries) = (0, String::new());
        while calls == 0 && std::time::Instant::now() < deadline {
            let row = db.query_one(SESSION_READS, &[]).await.unwrap();
            (calls, queries) = (row.get::<_, i64>(0), row.get::<_, String>(1));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(calls, 1, "one statement reads the sessions of every user; it made: {queries}");
        assert!(queries.contains("users"), "the one statement lists the users too: {queries}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_user_list_fails_with_one_line_when_the_sessions_cannot_be_read() {
    let Some(url) = pg::database().await else { return };
    let store = Store::connect(&url, "test").await.unwrap();
    users_and_sessions(&store).await;
    drop(store);
    // The users can still be read; their sessions cannot.
    let db = portcullis::postgres::connect::connect(&url).await.unwrap();
    db.batch_execute("ALTER TABLE sessions RENAME TO sessions_elsewhere").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    for args in [&["user", "list"][..], &["user", "list", "--json"]] {
        let run = cli_on(&url, dir.path(), args).await;
        let line = run.assert_one_line_failure("user list without the sessions");
        assert!(run.stdout.is_empty(), "no listing with counts it could not read: {}", run.stdout);
        assert!(line.contains("database"), "{line}");
    }
}
