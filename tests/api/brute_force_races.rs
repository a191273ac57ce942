//! Brute-force defences under simultaneous attempts, and one client address whatever form
//! it arrives in: the captcha threshold, its `authn_login_fail_max` line, and IPv6 /64s.

use portcullis::store::FailureQuery;

use crate::helpers::{shows_captcha, spawn_app_with, TestApp, Visitor, GOOD_PASSWORD};

/// An app behind a trusted proxy (so visitors can play many addresses), captchas after
/// three failures, and quotas high enough not to interfere.
async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.captcha_after_failures = 3;
        s.login_quota_per_ip = None;
        s.login_quota_per_user = None;
        // One worker: the checks queue behind each other, the widest window for a race.
        s.hash_workers = 1;
    })
    .await
}

/// Ten fresh visitors, each with its own pre-login cookie and form, post a wrong password
/// for `alice` at the same moment; returns how many reasons of each kind were recorded.
async fn ten_at_once(app: &TestApp, addresses: impl Fn(usize) -> String) -> (usize, usize) {
    let mut visitors = Vec::new();
    for i in 0..10 {
        let mut v = Visitor::new(app, Some(&addresses(i)));
        let (_, page) = v.get("/login").await;
        assert!(!shows_captcha(&page));
        visitors.push((v, page));
    }
    let statuses = futures_util::future::join_all(
        visitors.iter_mut().map(|(v, page)| async move { v.submit(page, "alice", "wrong wrong wrong", None).await }),
    )
    .await
    .into_iter()
    .map(|r| r.status().as_u16())
    .collect::<Vec<_>>();
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    let records = app.records(FailureQuery::default()).await;
    let count = |reason: &str| records.iter().filter(|r| r.reason.as_str() == reason).count();
    (count("bad_password"), count("captcha_required"))
}

fn fail_max_lines(app: &TestApp) -> usize {
    app.log_lines().iter().filter(|l| l["event"] == "authn_login_fail_max").count()
}

#[tokio::test]
async fn simultaneous_wrong_passwords_from_one_address_get_at_most_three_checks() {
    let app = app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let (checked, captcha) = ten_at_once(&app, |_| "198.51.100.30".into()).await;
    assert_eq!((checked, captcha), (3, 7));
    assert_eq!(fail_max_lines(&app), 1, "authn_login_fail_max marks the one crossing");
}

#[tokio::test]
async fn simultaneous_wrong_passwords_for_one_username_from_ten_addresses_get_at_most_three_checks() {
    let app = app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let (checked, captcha) = ten_at_once(&app, |i| format!("192.0.2.{}", 10 + i)).await;
    assert_eq!((checked, captcha), (3, 7));
    assert_eq!(fail_max_lines(&app), 1);
}

#[tokio::test]
async fn failures_past_the_threshold_with_solved_captchas_write_no_new_fail_max_line() {
    let app = app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let mut v = Visitor::new(&app, Some("198.51.100.31"));
    let mut page = String::new();
    for _ in 0..3 {
        page = v.attempt("alice", "wrong wrong wrong", None).await.1;
    }
    for _ in 0..2 {
        let answer = v.captcha_answer().expect("a challenge is open");
        let resp = v.submit(&page, "alice", "still wrong wrong", Some(&answer)).await;
        assert_eq!(resp.status(), 401);
        page = resp.text().await.unwrap();
    }
    let reasons: Vec<String> =
        app.records(FailureQuery::default()).await.iter().map(|r| r.reason.as_str().to_string()).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "bad_password").count(), 5, "{reasons:?}");
    assert_eq!(fail_max_lines(&app), 1);
}

#[tokio::test]
async fn six_usernames_from_one_ipv6_64_meet_a_captcha_after_three() {
    let app = app().await;
    let mut shown = Vec::new();
    for i in 1..=6 {
        let mut v = Visitor::new(&app, Some(&format!("2001:db8:1:2::{i}")));
        let (status, page) = v.attempt(&format!("user{i}"), "wrong wrong wrong", None).await;
        assert_eq!(status, 401);
        shown.push(shows_captcha(&page));
    }
    assert_eq!(shown, [false, false, true, true, true, true]);
    let reasons: Vec<String> =
        app.records(FailureQuery::default()).await.iter().rev().map(|r| r.reason.as_str().to_string()).collect();
    assert_eq!(reasons[3..], ["captcha_required"; 3], "{reasons:?}");
    // The form shown on arrival agrees: the whole /64 is flagged, another /64 is not.
    let (_, page) = Visitor::new(&app, Some("2001:db8:1:2:ffff::9")).get("/login").await;
    assert!(shows_captcha(&page));
    let (_, page) = Visitor::new(&app, Some("2001:db8:1:3::1")).get("/login").await;
    assert!(!shows_captcha(&page));
}
