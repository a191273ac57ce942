//! `GET /readyz` for load balancers: 200 `ready` while the store answers, 503 while it does
//! not, and back to 200 without a restart once the database answers again.

use std::time::Duration;

use reqwest::StatusCode;

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
