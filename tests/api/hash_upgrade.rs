//! Simultaneous sign-ins with the right password while the stored hash is being upgraded to
//! new argon2 settings: every one signs in (an upgrade is no password change), and none is
//! counted as a failure.

use portcullis::config::HashParams;

use crate::helpers::{spawn_app, spawn_in, Visitor, GOOD_PASSWORD};

#[tokio::test]
async fn right_passwords_that_race_a_hash_upgrade_all_sign_in() {
    let app = spawn_app().await;
    app.add_user("dave", GOOD_PASSWORD, false).await;
    let (dir, mut settings) = app.stop().await;
    // One worker and a costlier upgrade: each sign-in reads the old hash long before the
    // first upgrade is written.
    settings.argon2 = HashParams { memory_kib: 4096, iterations: 2, parallelism: 1 };
    settings.hash_workers = 1;
    settings.trusted_proxies = vec![portcullis::config::parse_net("127.0.0.1").unwrap()];
    let app = spawn_in(dir, settings).await;

    // As many at once as the captcha threshold lets through for one username.
    let mut visitors: Vec<Visitor> = (1..=3).map(|i| Visitor::new(&app, Some(&format!("198.51.100.{i}")))).collect();
    let mut pages = Vec::new();
    for v in &mut visitors {
        pages.push(v.get("/login").await.1);
    }
    let attempts = visitors.iter_mut().zip(&pages).map(|(v, page)| v.submit(page, "dave", GOOD_PASSWORD, None));
    let statuses: Vec<u16> =
        futures_util::future::join_all(attempts).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, vec![303, 303, 303], "every right password signs in");

    let failures = app.records(portcullis::store::FailureQuery::default()).await;
    assert!(failures.is_empty(), "no sign-in was recorded as a failure: {failures:?}");
    let (_dir, settings) = app.stop().await;
    let store = portcullis::store::Store::open(&settings.data_dir).unwrap();
    let stored = store.users.credential("dave").await.unwrap().unwrap();
    assert!(stored.password_hash.contains("m=4096,t=2"), "the hash was upgraded: {}", stored.password_hash);
}
