//! `BruteForceState` on PostgreSQL (`postgres::state`), through the trait as the sign-in
//! service uses it: the same checks S2 wrote for the in-memory state (which pass `now_ms`
//! where those let governor's clock run), and the point of it, two instances (two pools on
//! one database) enforcing what one would.

use std::sync::Arc;
use std::time::Duration;

use portcullis::brute_force::{conformance, BruteForceState, QuotaKey};
use portcullis::config::Rate;
use portcullis::failures::Asker;
use portcullis::postgres::connect::pool;
use portcullis::postgres::state::PgBruteForce;
use portcullis::postgres::url::DatabaseUrl;
use portcullis::rate_limit::username_digest;
use portcullis::store::Store;

use crate::pg;

type State = Arc<dyn BruteForceState>;

/// Two states on one fresh, migrated database, as two instances would hold them.
async fn two_instances(threshold: u32) -> Option<(State, State)> {
    two_instances_and_url(threshold).await.map(|(one, two, _)| (one, two))
}

/// [`two_instances`], and the database's URL.
async fn two_instances_and_url(threshold: u32) -> Option<(State, State, DatabaseUrl)> {
    let url = pg::database().await?;
    Store::connect(&url, "test").await.expect("the schema is made");
    let state =
        |_: ()| -> State { Arc::new(PgBruteForce::new(pool(&url, 16).unwrap(), Duration::from_secs(60), threshold)) };
    Some((state(()), state(()), url))
}

use conformance::ip;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_on_two_instances_get_at_most_the_threshold_of_checks() {
    let Some((one, two)) = two_instances(3).await else { return };
    conformance::concurrent_reservations_get_at_most_the_threshold(&one, &two).await;
}

#[tokio::test]
async fn a_released_or_dropped_reservation_is_given_back_on_every_instance() {
    let Some((one, two)) = two_instances(1).await else { return };
    conformance::released_or_dropped_reservations_are_given_back(&one, &two).await;
}

#[tokio::test]
async fn a_reservation_whose_release_never_comes_stops_counting_on_every_instance_after_its_lifetime() {
    let Some((one, two)) = two_instances(1).await else { return };
    conformance::a_stranded_reservation_stops_counting_after_its_lifetime(&one, &two).await;
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
    // A username's known browsers have their own quota, shared over the instances too.
    let (strangers, known) = (QuotaKey::Username(7), QuotaKey::KnownUsername(7));
    for s in [&one, &two, &one] {
        assert_eq!(s.take(strangers, rate, 1_000_000).await.unwrap(), Ok(()));
    }
    assert!(two.take(strangers, rate, 1_000_000).await.unwrap().is_err());
    for s in [&two, &one, &two] {
        assert_eq!(s.take(known, rate, 1_000_000).await.unwrap(), Ok(()), "apart from the strangers'");
    }
    assert!(one.take(known, rate, 1_000_000).await.unwrap().is_err(), "and as bounded");
    // Second-step codes too, strangers' and known browsers', each apart from the others.
    for codes in [QuotaKey::SecondStep(7), QuotaKey::KnownSecondStep(7)] {
        for s in [&one, &two, &one] {
            assert_eq!(s.take(codes, rate, 1_000_000).await.unwrap(), Ok(()), "{codes:?} apart");
        }
        assert!(two.take(codes, rate, 1_000_000).await.unwrap().is_err(), "{codes:?} as bounded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_taken_once_by_concurrent_takers_on_two_instances_and_not_after_it_expires() {
    let Some((one, two)) = two_instances(3).await else { return };
    conformance::a_challenge_is_taken_once_and_not_after_it_expires(&one, &two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_login_id_is_retired_once_by_concurrent_sign_ins_on_two_instances() {
    let Some((one, two)) = two_instances(3).await else { return };
    conformance::a_pre_login_id_is_retired_once(&one, &two).await;
    assert!(one.retire([6; 16], 2_000, 1000).await.unwrap());
    assert!(two.retire([6; 16], 9_000, 2_000).await.unwrap(), "a lapsed retirement not yet pruned is taken over");
}

#[tokio::test]
async fn a_success_ends_its_check_retires_its_form_once_and_counts_the_username_on_every_instance() {
    let Some((one, two)) = two_instances(3).await else { return };
    conformance::a_success_ends_its_check_retires_its_form_and_counts_the_username(&one, &two).await;
}

#[tokio::test]
async fn a_known_browser_meets_its_addresss_threshold_alone_on_every_instance() {
    let Some((one, two)) = two_instances(3).await else { return };
    conformance::a_known_browser_meets_its_addresss_threshold_alone(&one, &two).await;
}

#[tokio::test]
async fn a_failure_on_either_instance_says_whether_a_captcha_is_now_demanded_in_the_same_round_trip() {
    let Some((one, two)) = two_instances(3).await else { return };
    conformance::a_failure_that_says_whether_a_captcha_is_demanded_says_it_right(&one, &two).await;
    let counted = one.record_failure(ip(40), Some(username_digest("erin")), 1000).await.unwrap();
    assert_eq!(counted.captcha_demanded, Some(false), "PostgreSQL answers it with the failure");
}

#[tokio::test]
async fn failures_count_for_the_address_alone_when_they_name_no_username_and_stay_at_the_threshold_per_key() {
    let Some((one, two, url)) = two_instances_and_url(3).await else { return };
    conformance::failures_count_for_the_address_alone_and_stay_at_the_threshold(&one, &two).await;
    // In rows: an address flooded with failures keeps three, however many it sent.
    for i in 0..30 {
        one.record_failure(ip(7), None, 2000 + i).await.unwrap();
    }
    let c = portcullis::postgres::connect::connect(&url).await.unwrap();
    let most = "SELECT max(n) FROM (SELECT count(*) AS n FROM bf_attempts GROUP BY scope, key) k";
    let rows: i64 = c.query_one(most, &[]).await.unwrap().get(0);
    assert_eq!(rows, 3, "failure rows are bounded per key");
}

#[tokio::test]
async fn a_failure_with_a_solved_captcha_counts_without_a_reservation() {
    let Some((one, two)) = two_instances(2).await else { return };
    let bob = username_digest("bob");
    assert!(!one.record_failure(ip(1), Some(bob), 1000).await.unwrap().reached_threshold);
    assert!(two.record_failure(ip(2), Some(bob), 1000).await.unwrap().reached_threshold, "the second reaches 2");
    assert!(one.reserve(ip(3), bob, Asker::Stranger, 1000).await.unwrap().is_err());
    assert!(
        one.reserve(ip(3), bob, Asker::Stranger, 61_001).await.unwrap().is_ok(),
        "failures count for the window only"
    );
}
