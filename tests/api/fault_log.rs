//! A database outage in the server's log: the first fault of each kind at once, then at most
//! one line per kind per 10 s saying how many were left out, and one line when the database
//! works again, while every request still gets its 503 with `Retry-After` (`fault_log`).
//! The real binary on a PostgreSQL cluster of the test's own, which it stops and starts.

use std::time::{Duration, Instant};

use crate::child::{self, ServerProcess};
use crate::pg::PrivateCluster;

/// Far more than the test needs on a loaded machine, so a failure is an answer, not a hang.
const BOUND: Duration = Duration::from_secs(60);

/// The lines of `stderr` written for faults of kind `what`, and the faults they account for:
/// one for the line itself when it carries an error, plus the count it says was left out.
fn accounted(stderr: &[String], what: &str) -> (usize, u64) {
    let lines: Vec<&String> = stderr.iter().filter(|l| l.contains(what)).collect();
    let mut faults = 0;
    for line in &lines {
        let after = line.split(what).nth(1).unwrap_or("");
        let count = after
            .trim_start()
            .trim_start_matches('(')
            .trim_start_matches("and ")
            .split(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| after.contains("more like it in the last"))
            .unwrap_or(0);
        // A line with the error is one fault written; a line of counts only is not.
        faults += count + u64::from(line.contains(" error="));
    }
    (lines.len(), faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_logs_each_kind_of_fault_once_per_interval_with_the_count_and_once_when_it_is_over() {
    let Some((mut cluster, url)) = PrivateCluster::with_database().await else { return };
    let url = url.to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), child::QUICK, |cmd| {
            cmd.env("PORTCULLIS_DATABASE_URL", &url);
        })
    });
    let client = server.browser();
    assert_eq!(client.get(server.url("/login")).send().await.unwrap().status(), 200);
    // Forms fetched while the database answers, posted while it does not.
    let page = client.get(server.url("/login")).send().await.unwrap().text().await.unwrap();
    let csrf = crate::helpers::hidden_field(&page, "csrf").unwrap();
    // A browser signed in before, to sign out while the database is down.
    let admin = server.browser();
    let password = crate::store_copy::first_admin_password(&server).await;
    assert_eq!(child::login(&server, &admin, "admin", &password).await.0, 303);
    let home = admin.get(server.url("/")).send().await.unwrap().text().await.unwrap();
    let home_csrf = crate::helpers::hidden_field(&home, "csrf").unwrap();

    tokio::task::block_in_place(|| cluster.stop_server());
    let stopped = Instant::now();
    // Past one interval (10 s), so that a line must carry a count: 20 forms a second.
    let mut pages = 0u64;
    while stopped.elapsed() < Duration::from_secs(12) || pages < 150 {
        let resp = client.get(server.url("/login")).send().await.unwrap();
        assert_eq!(resp.status(), 503, "the form while the database is down");
        assert!(resp.headers().contains_key("retry-after"), "a 503 says when to retry");
        pages += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const SIGN_INS: u64 = 40;
    for _ in 0..SIGN_INS {
        let resp = client
            .post(server.url("/login"))
            .form(&[("username", "alice"), ("password", "a password of some length"), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "a sign-in while the database is down");
        assert!(resp.headers().contains_key("retry-after"), "a 503 says when to retry");
    }
    for _ in 0..20 {
        assert_eq!(client.get(server.url("/readyz")).send().await.unwrap().status(), 503);
    }
    // A sign-out that could not be made says the browser is still signed in, not "busy".
    let out = admin.post(server.url("/logout")).form(&[("csrf", home_csrf.as_str())]).send().await.unwrap();
    assert_eq!(out.status(), 503);
    assert!(out.headers().get("set-cookie").is_none(), "the cookie is kept for the next try");
    assert!(out.text().await.unwrap().contains("still signed in"));
    // Sign out everywhere else alike, though here the session itself could not be read.
    let others =
        admin.post(server.url("/sessions/end-others")).form(&[("csrf", home_csrf.as_str())]).send().await.unwrap();
    assert_eq!(others.status(), 503);
    let page = others.text().await.unwrap();
    assert!(page.contains("Other sessions not signed out") && page.contains("still signed in"), "{page}");

    tokio::task::block_in_place(|| cluster.start_server()).expect("the database starts again");
    let recovered = loop {
        let lines = server.stderr.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("the store works again")) {
            break lines;
        }
        assert!(stopped.elapsed() < BOUND, "no line said the store works again: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outage = stopped.elapsed();
    // Answers again, with no restart.
    assert_eq!(client.get(server.url("/login")).send().await.unwrap().status(), 200);

    // At once, then once per 10 s at most, then the counts still owed when it ended.
    let most = 2 + outage.as_secs() as usize / 10;
    for (what, faults) in [("cannot read the failure counts", pages), ("sign-in not judged", SIGN_INS)] {
        let (lines, accounted) = accounted(&recovered, what);
        assert!((1..=most).contains(&lines), "{lines} lines for `{what}` over {outage:?}: {recovered:#?}");
        assert_eq!(accounted, faults, "every `{what}` is written or counted: {recovered:#?}");
    }
    let counted = recovered.iter().any(|l| l.contains("cannot read the failure counts (and ") && l.contains(" error="));
    assert!(counted, "a fault past the interval is written with the count before it: {recovered:#?}");
    let (readyz, _) = accounted(&recovered, "not ready: the store cannot take writes");
    assert!((1..=most).contains(&readyz), "{recovered:#?}");
    let ends: Vec<&String> = recovered.iter().filter(|l| l.contains("the store works again")).collect();
    assert_eq!(ends.len(), 1, "{ends:#?}");
    assert!(ends[0].contains(" WARN "), "{}", ends[0]);
    // Each line with an error says why, not only what: the brute-force state's and the pool's
    // wrappers alone ("the brute-force state cannot be used", "db error") named no cause.
    for line in recovered.iter().filter(|l| l.contains(" error=")) {
        let error = line.split(" error=").nth(1).unwrap_or("");
        let error = error.split(" instance=").next().unwrap_or("").split(" suppressed=").next().unwrap_or("");
        let bare = ["the brute-force state cannot be used", "db error"].iter().any(|w| error.trim_end().ends_with(w));
        assert!(!bare, "an error without its cause: {line}");
    }
    // A line that counts faults says why too (the last one's error), not only how many.
    for line in recovered.iter().filter(|l| l.contains("more like it in the last")) {
        assert!(line.contains(" error=") || line.contains(" last_error="), "a count without its cause: {line}");
    }
    let total = recovered.iter().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).count();
    assert!(total < 30, "{total} error and warning lines for {} requests: {recovered:#?}", pages + SIGN_INS + 20);
    drop(server);
}

/// An outage of the authentication log alone (its file is /dev/full: every line fails, as on a
/// full disk) ends with a line that names the log, once the log takes lines again, not with
/// "the store works again" for a store that never failed (review 136).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_an_outage_of_the_log_says_the_log_works_again() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let now = portcullis::store::now_ms();
    for ms in [now, now + 86_400_000] {
        let day = &portcullis::audit::rfc3339(ms)[..10];
        std::os::unix::fs::symlink("/dev/full", logs.join(format!("auth.log.{day}"))).unwrap();
    }
    let server = tokio::task::block_in_place(|| ServerProcess::start_with(dir.path(), child::QUICK, |_| {}));
    let client = server.browser();
    let refused = child::login_response(&server, &client, "mallory", "not the password at all").await;
    assert_eq!(refused.status(), 503, "a refusal the log did not take was answered as usual");
    let failed = Instant::now();
    let ended = loop {
        let lines = server.stderr.lock().unwrap().clone();
        if let Some(line) = lines.iter().find(|l| l.contains("works again") || l.contains("work again")) {
            break line.clone();
        }
        assert!(failed.elapsed() < BOUND, "no line said the outage is over: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ended.contains("the store and the authentication log work again"), "{ended}");
    // Not before the log's hold of 30 s ran out: until then /readyz said it was not ready.
    assert!(failed.elapsed() >= Duration::from_secs(29), "{ended} after {:?}", failed.elapsed());
}
