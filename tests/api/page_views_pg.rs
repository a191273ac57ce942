//! What a signed-in page view costs the database (issue 12's page-view target): on PostgreSQL
//! `GET /` is one statement, the session, its user and the user's sessions in one join
//! (`SessionStore::resolve`), not three. Counted by `pg_stat_statements`, which the throwaway
//! cluster (`pg.rs`) preloads where it is installed; skipped otherwise, unless
//! `PORTCULLIS_REQUIRE_ALL` is set.

use reqwest::StatusCode;

use crate::helpers::{spawn_app_with, GOOD_PASSWORD};
use crate::pg;

/// The statements a signed-in request can make: each looks one identity up (a session by its
/// token hash, a user or a user's rows by key). The server's background work (counts, purges
/// by time) never does, so it cannot be counted here by chance.
const PER_REQUEST: &str = "SELECT coalesce(sum(calls), 0)::bigint, coalesce(string_agg(query, ' | '), '')
     FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND query NOT LIKE '%pg_stat_statements%'
       AND (query LIKE '%token_hash = $1%' OR query LIKE '%key = $1%')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_signed_in_home_page_is_one_statement() {
    let Some(url) = pg::database().await else { return };
    let db = portcullis::postgres::connect::connect(&url).await.unwrap();
    db.batch_execute("CREATE EXTENSION pg_stat_statements").await.unwrap();
    if let Err(e) = db.query_one(PER_REQUEST, &[]).await {
        assert!(std::env::var_os(pg::REQUIRE_ALL).is_none(), "pg_stat_statements is not loaded: {e}");
        eprintln!("skipped: pg_stat_statements is not loaded ({e})");
        return;
    }
    let app = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    assert_eq!(app.login("alice", GOOD_PASSWORD).await.status(), StatusCode::SEE_OTHER);
    // A first view, so what is counted is a view like every later one.
    assert_eq!(app.client.get(app.url("/")).send().await.unwrap().status(), StatusCode::OK);

    db.batch_execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
    )
    .await
    .unwrap();
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Hello, alice"), "the signed-in home page");

    // A statement is counted when its backend finishes it, which can trail the reply the
    // server already had: wait for the first to show, then allow the rest time to. Waiting
    // can only let a wrong count be seen, never make a right one fail.
    let count = || async {
        let row = db.query_one(PER_REQUEST, &[]).await.unwrap();
        (row.get::<_, i64>(0), row.get::<_, String>(1))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await.0 == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (calls, queries) = count().await;
    assert_eq!(calls, 1, "GET / is one statement; it made: {queries}");
    assert!(queries.contains("JOIN"), "the one statement is the join: {queries}");
}
