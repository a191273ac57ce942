//! Under load: a saturated hash pool refuses the excess politely and leaves the rest of the
//! server responsive, and browsers that signed in before still get through; connections past
//! the cap wait for a slot.
//!
//! No assertion here is about how long something takes (this runs on small shared
//! machines); latencies are printed for whoever is curious.

use std::time::{Duration, Instant};

use portcullis::config::HashParams;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::helpers::{set_cookies, spawn_app_with, GOOD_PASSWORD};

const LOGINS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_the_hash_pool_is_saturated_and_the_excess_gets_503() {
    let app = spawn_app_with(|s| {
        s.argon2 = HashParams { memory_kib: 8192, iterations: 3, parallelism: 1 };
        s.hash_workers = 1;
        s.hash_queue = 8;
        // Only the pool may turn logins away here.
        s.login_quota_per_ip = None;
        s.login_quota_per_user = None;
        s.captcha_after_failures = 1000;
        // Each of the 60 browsers holds a connection, all from 127.0.0.1.
        s.max_connections_per_ip = 128;
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let app = std::sync::Arc::new(app);

    // Every browser loads the form first, so the burst below is only password checks.
    let mut forms = JoinSet::new();
    for _ in 0..LOGINS {
        let app = std::sync::Arc::clone(&app);
        forms.spawn(async move {
            let browser = app.new_browser();
            let csrf = app.login_csrf(&browser).await;
            (browser, csrf)
        });
    }
    let browsers = forms.join_all().await;

    let mut logins = JoinSet::new();
    for (browser, csrf) in browsers {
        let url = app.url("/login");
        logins.spawn(async move {
            let form = [("username", "alice"), ("password", GOOD_PASSWORD), ("csrf", csrf.as_str())];
            let resp = browser.post(url).form(&form).send().await?;
            let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or("?").to_string());
            let status = resp.status();
            resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after))
        });
    }

    // While the burst is being worked off, the cheap routes keep answering.
    let busy_until = Instant::now() + Duration::from_secs(20);
    while app.state.pool.waiting() <= app.state.pool.workers() && !logins.is_empty() && Instant::now() < busy_until {
        tokio::task::yield_now().await;
    }
    let mut probes = Vec::new();
    for _ in 0..5 {
        let waiting = app.state.pool.waiting();
        let started = Instant::now();
        let resp = app.client.get(app.url("/healthz")).send().await.expect("healthz answers under load");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
        probes.push((waiting, started.elapsed()));
    }
    println!("healthz while saturated (jobs waiting, latency): {probes:?}");

    let mut ok = 0;
    let mut busy = 0;
    while let Some(result) = logins.join_next().await {
        let (status, retry_after) = result.unwrap().expect("every login gets an answer, no connection is dropped");
        match status.as_u16() {
            303 => ok += 1,
            503 => {
                busy += 1;
                let secs: u64 = retry_after.expect("503 carries Retry-After").parse().expect("Retry-After in seconds");
                assert!(secs >= 1);
            }
            other => panic!("a login under load got {other}"),
        }
    }
    println!("{LOGINS} concurrent logins: {ok} signed in, {busy} told to retry");
    assert!(ok >= 1, "nobody got through");
    assert!(busy >= 1, "the queue of 8 never overflowed with {LOGINS} logins at once");
    // The queue drains completely (the count drops just after each answer is handed over).
    let until = Instant::now() + Duration::from_secs(20);
    while app.state.pool.waiting() > 0 {
        assert!(Instant::now() < until, "{} jobs still counted as waiting", app.state.pool.waiting());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And once the burst is over, logging in works again for everyone.
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_for_a_slot_instead_of_failing() {
    let app = spawn_app_with(|s| s.max_connections = 4).await;

    // Four clients that connect and say nothing take every slot (until the handshake timeout).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let client = app.new_browser();
    let url = app.url("/healthz");
    let mut waiting = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    // Not answered while every slot is taken (waiting longer only makes this more certain)...
    let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
    assert!(early.is_err(), "a fifth connection was served while four held every slot: {early:?}");
    assert!(!waiting.is_finished());

    // ...and served, not refused, once they leave.
    drop(idle);
    let status = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting request is served once slots free up")
        .unwrap()
        .expect("the waiting request succeeds");
    assert_eq!(status, 200);

    // Many more clients than slots, each making one request and leaving: all are served.
    let mut clients = JoinSet::new();
    for _ in 0..24 {
        let client = app.new_browser();
        let url = app.url("/healthz");
        clients.spawn(async move {
            let status = client.get(url).send().await.map(|r| r.status());
            drop(client); // closes its connection, freeing the slot
            status
        });
    }
    for status in clients.join_all().await {
        assert_eq!(status.expect("served after waiting for a slot"), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_signed_in_before_gets_past_a_flood_that_fills_the_pool() {
    let app = spawn_app_with(|s| {
        s.hash_workers = 1;
        s.hash_queue = 2;
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.add_user("bob", GOOD_PASSWORD, false).await;

    let known = app.new_browser();
    let first = app.login_with(&known, "alice", GOOD_PASSWORD).await;
    assert_eq!(first.status(), 303);
    let device = set_cookies(&first).into_iter().find(|c| c.starts_with("__Host-portcullis-device="));
    let device = device.expect("a sign-in sets a device cookie");
    assert!(device.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=7776000"), "{device}");
    // It names the browser, not the session: signing out keeps it.
    let out = app.logout_with(&known).await;
    assert!(!set_cookies(&out).iter().any(|c| c.starts_with("__Host-portcullis-device=")));
    // A signed-in user elsewhere, whose password checks are known too.
    let signed_in = app.new_browser();
    assert_eq!(app.login_with(&signed_in, "bob", GOOD_PASSWORD).await.status(), 303);
    let session_csrf = app.home_csrf(&signed_in).await;

    // Strangers' checks hold the one worker and fill the open queue.
    let flood = crate::helpers::flood_one_worker(&app.state.pool).await;
    let change = [
        ("current", "not bob's password at all"),
        ("new", "a brand new passphrase 4417"),
        ("repeat", "a brand new passphrase 4417"),
        ("csrf", session_csrf.as_str()),
    ];
    let check = signed_in.post(app.url("/account/password")).form(&change).send();
    let stranger = app.new_browser();
    assert_eq!(
        app.login_with(&stranger, "alice", GOOD_PASSWORD).await.status(),
        503,
        "a new browser waits out the flood"
    );
    assert_eq!(app.login_with(&known, "bob", GOOD_PASSWORD).await.status(), 503, "alice's cookie does nothing for bob");
    let (checked, again) = tokio::join!(check, app.login_with(&known, "alice", GOOD_PASSWORD));
    assert_eq!(again.status(), 303, "the known browser gets through");
    assert_eq!(checked.unwrap().status(), 401, "a signed-in user's password is checked, not turned away");
    assert!(
        set_cookies(&again).iter().any(|c| c.starts_with("__Host-portcullis-device=")),
        "and its cookie is renewed"
    );
    assert!(flood.iter().any(|f| !f.is_finished()), "the flood outlasted the sign-in");
    for check in flood {
        assert!(!check.await.unwrap().unwrap().valid);
    }
}

#[tokio::test]
async fn one_browser_stays_known_for_each_username_it_signed_in_as() {
    let app = spawn_app_with(|_| {}).await;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.add_user("bob", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    let mut last = None;
    for user in ["alice", "bob", "alice"] {
        let resp = app.login_with(&browser, user, GOOD_PASSWORD).await;
        assert_eq!(resp.status(), 303);
        last = crate::helpers::cookie_value(&resp, "__Host-portcullis-device");
        assert_eq!(app.logout_with(&browser).await.status(), 303);
    }
    let cookie = last.expect("a device cookie");
    assert_eq!(cookie.split('.').count(), 2, "alice's second sign-in replaced her first token: {cookie}");
    assert!(app.state.csrf.is_known_device(&cookie, "alice", now()));
    assert!(app.state.csrf.is_known_device(&cookie, "bob", now()));
}
