//! `BruteForceState` on PostgreSQL (`postgres::state`), through the trait as the sign-in
//! service uses it: the same checks S2 wrote for the in-memory state (which pass `now_ms`
//! where those let governor's clock run), and the point of it, two instances (two pools on
//! one database) enforcing what one would.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis::brute_force::{BruteForceState, Held, QuotaKey};
use portcullis::client::AddressKey;
use portcullis::config::Rate;
use portcullis::postgres::connect::pool;
use portcullis::postgres::state::PgBruteForce;
use portcullis::rate_limit::username_digest;
use portcullis::store::Store;

use crate::pg;

/// Two states on one fresh, migrated database, as two instances would hold them.
async fn two_instances(threshold: u32) -> Option<(Arc<dyn BruteForceState>, Arc<dyn BruteForceState>)> {
    let url = pg::database().await?;
    Store::connect(&url, "test").await.expect("the schema is made");
    let state = |_: ()| -> Arc<dyn BruteForceState> {
        Arc::new(PgBruteForce::new(pool(&url, 16).unwrap(), Duration::from_secs(60), threshold))
    };
    Some((state(()), state(())))
}

fn ip(n: u8) -> AddressKey {
    AddressKey::of(IpAddr::from([192, 0, 2, n]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_on_two_instances_get_at_most_the_threshold_of_checks() {
    let Some((one, two)) = two_instances(3).await else { return };
    let alice = username_digest("alice");
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let s = if i % 2 == 0 { Arc::clone(&one) } else { Arc::clone(&two) };
            tokio::spawn(async move { (i, s.reserve(ip(i), alice, 1000).await.unwrap()) })
        })
        .collect();
    let mut granted = Vec::new();
    for t in tasks {
        if let (i, Ok(r)) = t.await.unwrap() {
            granted.push((i, r));
        }
    }
    assert_eq!(granted.len(), 3, "three checks in flight over both instances, then a captcha");
    let mut crossings = 0;
    for (i, r) in granted {
        let s = if i % 2 == 0 { &two } else { &one };
        crossings += usize::from(s.fail(r, 1001).await.unwrap().reached_threshold);
    }
    assert_eq!(crossings, 1, "the crossing is reported once");
    assert!(one.needs_captcha(ip(200), Some(alice), 1002).await.unwrap());
    assert!(two.needs_captcha(ip(200), Some(alice), 1002).await.unwrap(), "the other instance sees it");
    assert!(!two.needs_captcha(ip(200), None, 1002).await.unwrap(), "another address, no username");
    assert_eq!(two.clear_username(alice).await.unwrap(), 3);
    assert!(!one.needs_captcha(ip(200), Some(alice), 1002).await.unwrap());
}

#[tokio::test]
async fn a_released_or_dropped_reservation_is_given_back_on_every_instance() {
    let Some((one, two)) = two_instances(1).await else { return };
    let alice = username_digest("alice");
    let r = one.reserve(ip(1), alice, 1000).await.unwrap().unwrap();
    assert!(two.reserve(ip(2), alice, 1000).await.unwrap().is_err(), "held across instances");
    two.release(r).await.unwrap();
    let r = two.reserve(ip(2), alice, 1000).await.unwrap().expect("given back");
    let held = Held::new(Arc::clone(&two), r);
    assert!(one.reserve(ip(3), alice, 1000).await.unwrap().is_err());
    drop(held);
    // The release runs as a task of its own: let it.
    for _ in 0..500 {
        if one.reserve(ip(3), alice, 1000).await.unwrap().is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reservation was never given back");
}

#[tokio::test]
async fn a_quota_allows_its_burst_over_both_instances_then_says_how_long_to_wait() {
    let Some((one, two)) = two_instances(3).await else { return };
    let rate = Rate { burst: 3, period: Duration::from_secs(60) };
    let key = QuotaKey::Address(ip(1));
    for s in [&one, &two, &one] {
        assert_eq!(s.take(key, rate, 1_000_000).await.unwrap(), Ok(()));
    }
    let wait = two.take(key, rate, 1_000_000).await.unwrap().unwrap_err();
    assert_eq!(wait.ms, 20_000, "one unit every 20 s, in milliseconds");
    assert_eq!(wait.retry_after_secs(), 20);
    assert_eq!(one.take(key, rate, 1_020_000).await.unwrap(), Ok(()), "refilled after the interval");
    assert_eq!(one.take(QuotaKey::Address(ip(2)), rate, 1_000_000).await.unwrap(), Ok(()), "keys are independent");
    let draws = QuotaKey::CaptchaDraws(ip(1));
    assert_eq!(one.take(draws, rate, 1_000_000).await.unwrap(), Ok(()), "quotas are independent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_taken_once_by_concurrent_takers_on_two_instances_and_not_after_it_expires() {
    let Some((one, two)) = two_instances(3).await else { return };
    one.open_challenge([1; 32], [7; 32], 5000, 1000).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = if i % 2 == 0 { Arc::clone(&one) } else { Arc::clone(&two) };
            tokio::spawn(async move { s.take_challenge([1; 32], 1001).await.unwrap() })
        })
        .collect();
    let mut got = 0;
    for t in tasks {
        got += usize::from(t.await.unwrap() == Some([7; 32]));
    }
    assert_eq!(got, 1);
    one.open_challenge([2; 32], [7; 32], 5000, 1000).await.unwrap();
    assert_eq!(two.take_challenge([2; 32], 5000).await.unwrap(), None, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_login_id_is_retired_once_by_concurrent_sign_ins_on_two_instances() {
    let Some((one, two)) = two_instances(3).await else { return };
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = if i % 2 == 0 { Arc::clone(&one) } else { Arc::clone(&two) };
            tokio::spawn(async move { s.retire([5; 16], 10_000, 1000).await.unwrap() })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        first += usize::from(t.await.unwrap());
    }
    assert_eq!(first, 1);
    assert!(two.is_retired([5; 16]).await.unwrap());
    assert!(one.retire([6; 16], 2_000, 1000).await.unwrap());
    assert!(two.retire([6; 16], 9_000, 2_000).await.unwrap(), "a lapsed retirement not yet pruned is taken over");
    one.prune(10_001).await.unwrap();
    assert!(!one.is_retired([5; 16]).await.unwrap(), "forgotten once it would have expired anyway");
}

#[tokio::test]
async fn a_failure_with_a_solved_captcha_counts_without_a_reservation() {
    let Some((one, two)) = two_instances(2).await else { return };
    let bob = username_digest("bob");
    assert!(!one.record_failure(ip(1), bob, 1000).await.unwrap().reached_threshold);
    assert!(two.record_failure(ip(2), bob, 1000).await.unwrap().reached_threshold, "the second reaches 2");
    assert!(one.reserve(ip(3), bob, 1000).await.unwrap().is_err());
    assert!(one.reserve(ip(3), bob, 61_001).await.unwrap().is_ok(), "failures count for the window only");
}
