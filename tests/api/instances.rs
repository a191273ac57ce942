//! Three `portcullis serve` processes (the real binary) on one PostgreSQL database, as behind
//! a load balancer: each with its own data, log and certificate directories (the same
//! certificate copied into each, so one browser trusts all three) and its own
//! `instance_name`. What SPEC.md's "Several instances, one truth" promises, end to end:
//! sessions and sign-outs shared, an attacker spread over the instances held to what one
//! instance allows, `user passwd` ending sessions everywhere, acknowledged writes surviving a
//! `kill -9`, and fail-closed answers while the database server is down, with recovery and
//! no restart.
//!
//! No timing assertions: floods are counted, not timed, and every wait polls against a
//! generous deadline, so a loaded machine makes the tests slower, not flaky.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::postgres::url::DatabaseUrl;
use reqwest::StatusCode;

use crate::child::{self, ServerProcess, DEADLINE};
use crate::helpers::{hidden_field, set_cookies, shows_captcha, GOOD_PASSWORD};
use crate::pg;

/// The session cookie's name (no `cookie_domain` set).
const SESSION: &str = "__Host-portcullis";

/// Cheap argon2 for the servers and the CLI alike, so a sign-in never rehashes on upgrade.
const ARGON2: &[(&str, &str)] = &[("PORTCULLIS_ARGON2_MEMORY_KIB", "256"), ("PORTCULLIS_ARGON2_ITERATIONS", "1")];

/// Instances of `portcullis serve` on one database, and the directories they live in.
struct Instances {
    servers: Vec<ServerProcess>,
    url: DatabaseUrl,
    /// The first instance's certificate directory (all serve its certificate).
    certs: std::path::PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

impl Instances {
    /// Starts `n` instances named a, b, c … on `url`, with [`child::QUICK`]'s flags and
    /// `overrides`, one after the other (the first makes the schema, the certificate and the
    /// factor key, which the others get before they start, as README says).
    fn start(url: &DatabaseUrl, n: usize, overrides: &[(&'static str, &'static str)]) -> Instances {
        let args = child::quick_with(overrides);
        let mut servers: Vec<ServerProcess> = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            if let Some(first) = servers.first() {
                let certs = dir.path().join("certs");
                std::fs::create_dir(&certs).unwrap();
                for name in ["cert.pem", "key.pem"] {
                    std::fs::copy(first.dir.join("certs").join(name), certs.join(name)).unwrap();
                }
                crate::helpers::share_factor_key(&first.dir.join("data"), &dir.path().join("data"));
            }
            let name = ["a", "b", "c", "d"][i];
            let server = ServerProcess::start_with(dir.path(), &args, |cmd| {
                cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).env("PORTCULLIS_INSTANCE_NAME", name);
            });
            servers.push(server);
            dirs.push(dir);
        }
        let certs = servers[0].dir.join("certs");
        Instances { servers, url: url.clone(), certs, _dirs: dirs }
    }

    fn origins(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.origin.clone()).collect()
    }

    /// A client trusting the instances' certificate that keeps no cookies of its own.
    fn client(&self) -> reqwest::Client {
        crate::helpers::browser_builder(&self.certs).cookie_store(false).build().unwrap()
    }

    /// A browser (keeps cookies: one jar for all three, as the cookie has no port).
    fn browser(&self) -> reqwest::Client {
        crate::helpers::browser(&self.certs)
    }

    /// `portcullis ARGS` on the database only (a directory of its own, no admin socket).
    async fn cli(&self, args: &[&str], stdin: Option<&str>) -> child::Run {
        cli_on(&self.url, args, stdin).await
    }

    async fn add_user(&self, name: &str, password: &str) {
        self.cli(&["user", "add", name, "--password-stdin"], Some(password)).await.assert_ok("user add");
    }

    /// Every failed-login record in the database, as `audit --json` prints them.
    async fn audit_records(&self) -> Vec<serde_json::Value> {
        let run = self.cli(&["audit", "--json", "--since", "1d", "--limit", "10000"], None).await;
        run.assert_ok("audit --json");
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }
}

async fn cli_on(url: &DatabaseUrl, args: &[&str], stdin: Option<&str>) -> child::Run {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = child::command(dir.path());
    cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).envs(ARGON2.iter().copied()).args(args);
    child::run_cli(cmd, stdin.map(|s| format!("{s}\n")).as_deref()).await
}

/// The cookies a response sets, as `name=value` pairs for a `Cookie` header.
fn cookies_set(resp: &reqwest::Response) -> Vec<String> {
    set_cookies(resp).iter().filter_map(|c| c.split(';').next().map(str::to_string)).collect()
}

/// What one sign-in attempt (GET the form, POST it) came to.
#[derive(Debug, Clone)]
enum Reply {
    /// 303 with this session cookie value.
    SignedIn(String),
    /// The form again: status and page.
    Refused(StatusCode, String, Option<u64>),
    /// 503 to the GET or the POST.
    Unavailable,
    /// No HTTP answer (connection refused or cut).
    NoAnswer,
    /// Anything else: the step, status (read in failure messages, through Debug).
    #[allow(dead_code)]
    Other(&'static str, StatusCode),
}

/// GET /login on `origin`, then POST it with the cookies the GET set and `cookies` besides.
async fn attempt(client: &reqwest::Client, origin: &str, user: &str, password: &str, cookies: &[String]) -> Reply {
    let jar = |extra: &[String]| cookies.iter().chain(extra).cloned().collect::<Vec<_>>().join("; ");
    let get = client.get(format!("{origin}/login")).header("cookie", jar(&[]));
    let Ok(form) = get.send().await else { return Reply::NoAnswer };
    match form.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE => return Reply::Unavailable,
        other => return Reply::Other("GET /login", other),
    }
    let pre = cookies_set(&form);
    let Ok(page) = form.text().await else { return Reply::NoAnswer };
    let csrf = hidden_field(&page, "csrf").unwrap_or_default();
    let post = client.post(format!("{origin}/login")).header("cookie", jar(&pre)).form(&[
        ("username", user),
        ("password", password),
        ("csrf", csrf.as_str()),
    ]);
    let Ok(resp) = post.send().await else { return Reply::NoAnswer };
    match resp.status() {
        StatusCode::SEE_OTHER => match crate::helpers::cookie_value(&resp, SESSION) {
            Some(cookie) => Reply::SignedIn(cookie),
            None => Reply::Other("POST /login: 303 without a session", StatusCode::SEE_OTHER),
        },
        StatusCode::SERVICE_UNAVAILABLE => Reply::Unavailable,
        status @ (StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS) => {
            let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
            match resp.text().await {
                Ok(page) => Reply::Refused(status, page, retry),
                Err(_) => Reply::NoAnswer,
            }
        }
        other => Reply::Other("POST /login", other),
    }
}

/// The status of the signed-in home page on `origin` for a request carrying only `cookie`.
async fn home(client: &reqwest::Client, origin: &str, cookie: &str) -> StatusCode {
    let resp = client.get(format!("{origin}/")).header("cookie", format!("{SESSION}={cookie}")).send().await.unwrap();
    if resp.status() == StatusCode::SEE_OTHER {
        assert_eq!(resp.headers()["location"], "/login?ended=session");
    }
    resp.status()
}

async fn readyz(client: &reqwest::Client, origin: &str) -> Option<StatusCode> {
    client.get(format!("{origin}/readyz")).send().await.ok().map(|r| r.status())
}

/// Polls `/readyz` on every origin until each answers `want`; fails past [`DEADLINE`].
async fn wait_ready(client: &reqwest::Client, origins: &[String], want: StatusCode) {
    let until = Instant::now() + DEADLINE;
    for origin in origins {
        loop {
            let got = readyz(client, origin).await;
            if got == Some(want) {
                break;
            }
            assert!(Instant::now() < until, "{origin}/readyz answered {got:?}, never {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls until `done` or fails past [`DEADLINE`] saying `what`.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < until, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_instance_works_on_another_and_a_sign_out_on_a_third_ends_it_on_all() {
    let Some(url) = pg::database().await else { return };
    let three = Instances::start(&url, 3, &[]);
    three.add_user("alice", GOOD_PASSWORD).await;
    let [a, b, c] = <[String; 3]>::try_from(three.origins()).unwrap();
    let plain = three.client();

    let browser = three.browser();
    let Reply::SignedIn(cookie) = attempt(&browser, &a, "alice", GOOD_PASSWORD, &[]).await else {
        panic!("alice signs in on the first instance")
    };
    assert_eq!(home(&plain, &b, &cookie).await, StatusCode::OK, "the session made on a is valid on b");

    // The browser signs out on c: its home page's CSRF token, its sign-out form.
    let page = plain
        .get(format!("{c}/"))
        .header("cookie", format!("{SESSION}={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_field(&page, "csrf").expect("c shows the signed-in page with its sign-out form");
    let out = plain
        .post(format!("{c}/logout"))
        .header("cookie", format!("{SESSION}={cookie}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER, "signed out on c");

    // The old cookie, sent again at once: refused by the instances that did not sign it out.
    assert_eq!(home(&plain, &a, &cookie).await, StatusCode::SEE_OTHER, "a refuses the ended session");
    assert_eq!(home(&plain, &b, &cookie).await, StatusCode::SEE_OTHER, "b refuses the ended session");
    assert_eq!(home(&plain, &c, &cookie).await, StatusCode::SEE_OTHER);
}

/// An attacker from one address sending `n` wrong passwords for `alice`, attempt `i` to
/// `origins[i % len]`: per attempt its status, whether the page demands a captcha, and
/// `Retry-After`.
async fn attack(three: &Instances, origins: &[String], n: usize) -> Vec<(u16, bool, Option<u64>)> {
    let browser = three.browser();
    let mut seen = Vec::new();
    for i in 0..n {
        let wrong = format!("wrong guess number {i}");
        match attempt(&browser, &origins[i % origins.len()], "alice", &wrong, &[]).await {
            Reply::Refused(status, page, retry) => seen.push((status.as_u16(), shows_captcha(&page), retry)),
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_spreading_attempts_over_three_instances_meets_the_quota_captcha_and_retry_after_of_one() {
    let (Some(one_db), Some(three_db)) = (pg::database().await, pg::database().await) else { return };
    // Quota of 6 an hour per address (one every 600 s), captcha after 3 failures.
    let limits = [("--login-quota-per-ip", "6/1h"), ("--captcha-after-failures", "3")];
    let one = Instances::start(&one_db, 1, &limits);
    let three = Instances::start(&three_db, 3, &limits);
    one.add_user("alice", GOOD_PASSWORD).await;
    three.add_user("alice", GOOD_PASSWORD).await;

    let alone = attack(&one, &one.origins(), 10).await;
    let spread = attack(&three, &three.origins(), 10).await;

    let shape =
        |seen: &[(u16, bool, Option<u64>)]| seen.iter().map(|(s, c, r)| (*s, *c, r.is_some())).collect::<Vec<_>>();
    assert_eq!(shape(&spread), shape(&alone), "the same answers, attempt by attempt: {alone:?} / {spread:?}");
    let first_captcha = alone.iter().position(|(_, captcha, _)| *captcha);
    assert_eq!(first_captcha, Some(2), "the captcha is demanded after the third failure: {alone:?}");
    let refused: Vec<usize> = (0..alone.len()).filter(|&i| alone[i].0 == 429).collect();
    assert_eq!(refused.first(), Some(&6), "the seventh attempt is over the quota of 6: {alone:?}");
    for (i, (status, _, retry)) in spread.iter().enumerate() {
        if *status == 429 {
            let (mine, theirs) = (retry.expect("Retry-After"), alone[i].2.expect("Retry-After"));
            // One unit every 600 s; the two runs are seconds apart, never minutes.
            assert!((540..=600).contains(&mine) && mine.abs_diff(theirs) <= 60, "{mine} against {theirs}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_passwd_on_the_database_ends_the_users_sessions_on_all_three_instances() {
    let Some(url) = pg::database().await else { return };
    let three = Instances::start(&url, 3, &[]);
    three.add_user("alice", GOOD_PASSWORD).await;
    let origins = three.origins();
    let plain = three.client();
    let mut cookies = Vec::new();
    for origin in &origins {
        let Reply::SignedIn(cookie) = attempt(&plain, origin, "alice", GOOD_PASSWORD, &[]).await else {
            panic!("alice signs in on {origin}")
        };
        cookies.push(cookie);
    }
    for cookie in &cookies {
        for origin in &origins {
            assert_eq!(home(&plain, origin, cookie).await, StatusCode::OK);
        }
    }

    let new_password = "a brand new orchard lantern";
    three.cli(&["user", "passwd", "alice", "--password-stdin"], Some(new_password)).await.assert_ok("user passwd");

    for cookie in &cookies {
        for origin in &origins {
            assert_eq!(
                home(&plain, origin, cookie).await,
                StatusCode::SEE_OTHER,
                "every session ended, on every instance"
            );
        }
    }
    assert!(matches!(
        attempt(&plain, &origins[1], "alice", GOOD_PASSWORD, &[]).await,
        Reply::Refused(StatusCode::UNAUTHORIZED, ..)
    ));
    assert!(matches!(attempt(&plain, &origins[2], "alice", new_password, &[]).await, Reply::SignedIn(_)));
}

/// One answered (or unanswered) attempt of a flood.
#[derive(Debug, Clone)]
struct Outcome {
    instance: usize,
    /// The password was right (`user`), or the name is unknown (`ghost…`).
    right: bool,
    username: String,
    sent: Instant,
    answered: Instant,
    answer: Reply,
}

/// A login flood: `workers` tasks, each alternating a right password for its own user
/// (`user{w}`) and an unknown user (`ghost{w}x{i}`), instance after instance, until `stop`
/// is set or `max_each` attempts; every outcome kept.
struct Flood {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    fn start(three: &Instances, workers: usize, max_each: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let origins = three.origins();
        let tasks = (0..workers)
            .map(|w| {
                let (stop, acknowledged, outcomes) = (stop.clone(), acknowledged.clone(), outcomes.clone());
                let (origins, client) = (origins.clone(), three.client());
                tokio::spawn(async move {
                    for i in 0..max_each {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let instance = (w + i) % origins.len();
                        let right = i % 2 == 0;
                        let username = if right { format!("user{w}") } else { format!("ghost{w}x{i}") };
                        let password = if right { GOOD_PASSWORD } else { "not anyone's password" };
                        let sent = Instant::now();
                        let answer = attempt(&client, &origins[instance], &username, password, &[]).await;
                        if matches!(answer, Reply::SignedIn(_) | Reply::Refused(..)) {
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        if matches!(answer, Reply::NoAnswer | Reply::Unavailable) {
                            // Connection refused and 503 come back at once: do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let answered = Instant::now();
                        outcomes.lock().unwrap().push(Outcome { instance, right, username, sent, answered, answer });
                    }
                })
            })
            .collect();
        Flood { stop, acknowledged, outcomes, tasks }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        outcomes
    }
}

/// Every acknowledged write of `outcomes` is there: each 303's session opens the home page
/// on `survivor`, each 401 has its failure record in `audit --json`; and no attempt was
/// answered wrongly (a right password refused, an unknown user signed in, an error other
/// than 503).
async fn assert_every_acknowledged_write_is_there(three: &Instances, survivor: &str, outcomes: &[Outcome]) {
    let plain = three.client();
    let records = three.audit_records().await;
    let recorded: BTreeSet<&str> = records.iter().filter_map(|r| r["username"].as_str()).collect();
    let (mut sessions, mut failures) = (0, 0);
    for o in outcomes {
        match &o.answer {
            Reply::SignedIn(cookie) => {
                assert!(o.right, "an unknown user was signed in: {o:?}");
                assert_eq!(home(&plain, survivor, cookie).await, StatusCode::OK, "a 303 without its session: {o:?}");
                sessions += 1;
            }
            Reply::Refused(status, ..) => {
                assert_eq!(*status, StatusCode::UNAUTHORIZED, "{o:?}");
                assert!(!o.right, "a right password answered 401: {o:?}");
                assert!(recorded.contains(o.username.as_str()), "a 401 without its failure record: {o:?}");
                failures += 1;
            }
            Reply::Unavailable | Reply::NoAnswer => {}
            Reply::Other(..) => panic!("a wrong answer: {o:?}"),
        }
    }
    assert!(sessions > 0 && failures > 0, "the flood made {sessions} sessions and {failures} failures");
}

async fn add_flood_users(three: &Instances, workers: usize) {
    for w in 0..workers {
        three.add_user(&format!("user{w}"), GOOD_PASSWORD).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_during_a_login_flood_loses_no_acknowledged_write_and_the_others_keep_serving() {
    let Some(url) = pg::database().await else { return };
    let mut three = Instances::start(&url, 3, &[]);
    let workers = 4;
    add_flood_users(&three, workers).await;
    // At most 50 sign-ins a user: under the cap of 64 sessions, so none is ended for room.
    let flood = Flood::start(&three, workers, 100);
    wait_for("12 answers before the kill", || flood.acknowledged() >= 12).await;
    three.servers[0].sigkill();
    let killed_at = Instant::now();
    let at_kill = flood.acknowledged();
    wait_for("24 answers after the kill", || flood.acknowledged() >= at_kill + 24).await;
    let outcomes = flood.finish().await;

    for o in &outcomes {
        if o.instance != 0 {
            assert!(!matches!(o.answer, Reply::NoAnswer | Reply::Unavailable), "a survivor failed to answer: {o:?}");
        } else if o.answered < killed_at {
            assert!(!matches!(o.answer, Reply::NoAnswer | Reply::Unavailable), "before the kill: {o:?}");
        }
    }
    let after = outcomes.iter().filter(|o| o.sent > killed_at && o.instance != 0).count();
    assert!(after >= 12, "the survivors kept serving: {after} answers after the kill");
    assert_every_acknowledged_write_is_there(&three, &three.servers[1].origin, &outcomes).await;
    for s in &mut three.servers[1..] {
        assert!(s.child.try_wait().unwrap().is_none(), "a survivor exited: {}", s.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_server_stopped_during_a_flood_only_503s_then_everything_recovers_without_a_restart() {
    let Some((mut cluster, url)) = pg::PrivateCluster::with_database().await else { return };
    let mut three = Instances::start(&url, 3, &[]);
    let workers = 4;
    add_flood_users(&three, workers).await;
    let origins = three.origins();
    let plain = three.client();
    wait_ready(&plain, &origins, StatusCode::OK).await;

    let flood = Flood::start(&three, workers, usize::MAX);
    wait_for("8 answers before the database stops", || flood.acknowledged() >= 8).await;
    let stopping = Instant::now();
    tokio::task::block_in_place(|| cluster.stop_server());
    let down = Instant::now();
    wait_ready(&plain, &origins, StatusCode::SERVICE_UNAVAILABLE).await;
    for origin in &origins {
        let healthz = plain.get(format!("{origin}/healthz")).send().await.unwrap().status();
        assert_eq!(healthz, StatusCode::OK, "the process lives");
    }
    // A few seconds down, and attempts made wholly inside them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = flood.outcomes.clone();
    wait_for("attempts while the database is down", || {
        outcomes.lock().unwrap().iter().filter(|o| o.sent >= down).count() >= 8
    })
    .await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| cluster.start_server()).expect("the database server starts again");
    wait_ready(&plain, &origins, StatusCode::OK).await;
    let recovered = Instant::now();
    let at_recovery = flood.acknowledged();
    wait_for("12 answers after the recovery", || flood.acknowledged() >= at_recovery + 12).await;
    let outcomes = flood.finish().await;

    let while_down: Vec<&Outcome> = outcomes.iter().filter(|o| o.sent >= down && o.answered < restarting).collect();
    assert!(!while_down.is_empty());
    for o in &while_down {
        assert!(matches!(o.answer, Reply::Unavailable), "only 503 while the database is down: {o:?}");
    }
    // Attempts answered before the stop began, or sent once every instance was ready again;
    // those in flight across a change may be either.
    for o in outcomes.iter().filter(|o| o.answered < stopping || o.sent >= recovered) {
        assert!(!matches!(o.answer, Reply::NoAnswer | Reply::Unavailable), "while the database was up: {o:?}");
    }
    let signed_in_after =
        outcomes.iter().filter(|o| o.sent >= recovered && matches!(o.answer, Reply::SignedIn(_))).count();
    assert!(signed_in_after > 0, "sign-ins work again");
    assert_every_acknowledged_write_is_there(&three, &origins[2], &outcomes).await;
    for s in &mut three.servers {
        assert!(s.child.try_wait().unwrap().is_none(), "no instance exited or was restarted");
    }
}

/// `RUST_LOG=debug` on PostgreSQL writes no statement's parameters: the database client logs
/// them at DEBUG, and they hold the CSRF and captcha keys and password hashes (review 148
/// read the keys off the terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_debug_writes_no_statements_parameters_to_the_terminal() {
    let Some(url) = pg::database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &child::quick_with(&[]), |cmd| {
        cmd.env("PORTCULLIS_DATABASE_URL", url.to_string()).env("RUST_LOG", "debug,tokio_postgres::query=trace");
    });
    let origin = server.origin.clone();
    let reply = attempt(&server.browser(), &origin, "nobody", "wrong password", &[]).await;
    assert!(matches!(reply, Reply::Refused(..)), "a sign-in ran its statements");
    let (_, _, stderr) = server.terminate_with_output();
    let text = stderr.join("\n");
    assert!(text.contains("DEBUG"), "RUST_LOG=debug took effect: {text}");
    assert!(!text.contains("with parameters"), "a statement's parameters were logged");
}
