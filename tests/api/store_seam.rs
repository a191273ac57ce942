//! The store seam seen from outside: every write the server acknowledges is on disk when it
//! answers, because the store makes each write durable before it returns (no caller flushes).

use crate::child::{self, ServerProcess};
use crate::helpers::GOOD_PASSWORD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_handed_out_survives_a_kill_right_after_the_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| ServerProcess::start(dir.path(), child::QUICK));
    let run = child::cli(dir.path(), &["user", "add", "alice", "--password-stdin"], Some(GOOD_PASSWORD)).await;
    assert!(run.ok, "{run:?}");
    let (status, cookie) = child::login(&server, &server.browser(), "alice", GOOD_PASSWORD).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    // No shutdown and no flush: only what was on disk when the 303 left survives. (Sessions
    // used to be written without a flush, so sled's own 500 ms flush decided.)
    server.sigkill();
    drop(server);

    let server = tokio::task::block_in_place(|| ServerProcess::start(dir.path(), child::QUICK));
    let client = crate::helpers::browser_builder(&dir.path().join("certs")).cookie_store(false).build().unwrap();
    let home =
        client.get(server.url("/")).header("cookie", format!("__Host-portcullis={cookie}")).send().await.unwrap();
    assert_eq!(home.status(), 200, "the session was lost");
    assert!(home.text().await.unwrap().contains("alice"));
    server.terminate();
}
