//! An unknown username costs the same argon2 work as a known one, whatever parameters the
//! stored hashes were made with: compared by the work the hash pool did, not by time.

use portcullis::config::HashParams;

use crate::helpers::{spawn_app, spawn_in, TestApp, Visitor, GOOD_PASSWORD};

/// The argon2 work (KiB × passes) one wrong-password sign-in for `username` costs.
async fn work_of_a_wrong_password(app: &TestApp, username: &str) -> u64 {
    let before = app.state.pool.verify_work();
    let mut v = Visitor::new(app, None);
    let (status, _) = v.attempt(username, "wrong wrong wrong", None).await;
    assert_eq!(status, 401);
    app.state.pool.verify_work() - before
}

/// Creates alice with the test parameters, restarts on the same store with `changed`, and
/// returns the work of a wrong password for alice and for nobody.
async fn after_a_change_to(changed: HashParams) -> (u64, u64) {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let made_with = app.settings.argon2;
    let (dir, mut settings) = app.stop().await;
    settings.argon2 = changed;
    let app = spawn_in(dir, settings).await;
    let known = work_of_a_wrong_password(&app, "alice").await;
    let unknown = work_of_a_wrong_password(&app, "nobody").await;
    assert_eq!(known, u64::from(made_with.memory_kib * made_with.iterations), "alice's hash kept its parameters");
    (known, unknown)
}

#[tokio::test]
async fn after_raising_the_argon2_settings_an_unknown_username_costs_what_a_known_one_does() {
    let (known, unknown) = after_a_change_to(HashParams { memory_kib: 4096, iterations: 3, parallelism: 1 }).await;
    assert_eq!(unknown, known);
}

#[tokio::test]
async fn after_lowering_the_argon2_settings_an_unknown_username_costs_what_a_known_one_does() {
    let (known, unknown) = after_a_change_to(HashParams { memory_kib: 256, iterations: 1, parallelism: 1 }).await;
    assert_eq!(unknown, known);
}
