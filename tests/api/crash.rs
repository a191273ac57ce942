//! Crash safety: the real binary is SIGKILLed at a random moment while sign-ins, sign-outs,
//! password changes and user additions are in flight, then restarted on the same directory.
//! Whatever it acknowledged must have survived: the store opens, every acknowledged user
//! exists and signs in, every acknowledged password change holds (the old password fails),
//! and every session whose sign-out was acknowledged stays dead.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child::{self, ServerProcess};

const ROUNDS: usize = 4;
/// Users whose sessions are opened and closed (their passwords never change).
const SESSION_USERS: usize = 4;
/// Users whose passwords are changed.
const PASSWD_USERS: usize = 4;

fn password_for(label: &str) -> String {
    // The label spelt out with dashes: a password may not hold the username itself.
    let spelt: Vec<String> = label.chars().map(String::from).collect();
    format!("{} plum tractor velvet", spelt.join("-"))
}

/// A user whose password is being changed: what must work and what must not.
#[derive(Clone, Debug)]
struct Changing {
    current: String,
    /// A change in flight when the server died: either password may be the one that holds.
    attempted: Option<String>,
    /// Passwords replaced by acknowledged changes: must fail.
    stale: Vec<String>,
}

#[derive(Default)]
struct Ledger {
    /// Users whose `user add` was acknowledged (exit 0), with their password.
    added: BTreeMap<String, String>,
    changing: BTreeMap<String, Changing>,
    /// Session cookies whose sign-out was acknowledged (303 after a valid session).
    dead_sessions: Vec<(String, String)>,
    /// Operations that were in flight when the server died (not acknowledged).
    unacknowledged: usize,
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// A client that keeps no cookies, so every request says exactly which session it carries.
fn client(server: &ServerProcess) -> reqwest::Client {
    crate::helpers::browser_builder(&server.dir.join("certs"))
        .cookie_store(false)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Signs in (GET the form, POST it); `Ok(Some(session cookie))` on 303, `Ok(None)` on 401.
async fn sign_in(
    server: &ServerProcess,
    c: &reqwest::Client,
    user: &str,
    password: &str,
) -> reqwest::Result<Option<String>> {
    let resp = c.get(server.url("/login")).send().await?;
    let pre = crate::helpers::cookie_value(&resp, "__Host-portcullis-pre").unwrap_or_default();
    let csrf = crate::helpers::hidden_field(&resp.text().await?, "csrf").unwrap_or_default();
    let resp = c
        .post(server.url("/login"))
        .header("cookie", format!("__Host-portcullis-pre={pre}"))
        .form(&[("username", user), ("password", password), ("csrf", csrf.as_str())])
        .send()
        .await?;
    match resp.status().as_u16() {
        303 => Ok(crate::helpers::cookie_value(&resp, "__Host-portcullis")),
        401 => Ok(None),
        other => panic!("sign-in as {user} answered {other}"),
    }
}

/// GET / with a session cookie: `Some(csrf token)` when the session is alive.
async fn home(server: &ServerProcess, c: &reqwest::Client, session: &str) -> reqwest::Result<Option<String>> {
    let resp = c.get(server.url("/")).header("cookie", format!("__Host-portcullis={session}")).send().await?;
    match resp.status().as_u16() {
        200 => Ok(crate::helpers::hidden_field(&resp.text().await?, "csrf")),
        303 => {
            assert_eq!(resp.headers()["location"], "/login?ended=session");
            Ok(None)
        }
        other => panic!("GET / answered {other}"),
    }
}

/// Signs in, checks the session, signs out; records the session as dead once the sign-out is
/// acknowledged. Stops at the first network error (the server has been killed).
async fn session_worker(server: Arc<ServerProcess>, user: String, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let c = client(&server);
    let password = password_for(&user);
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(session)) = sign_in(&server, &c, &user, &password).await else { return };
        let Ok(Some(csrf)) = home(&server, &c, &session).await else { return };
        let resp = c
            .post(server.url("/logout"))
            .header("cookie", format!("__Host-portcullis={session}"))
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 303 => ledger.lock().unwrap().dead_sessions.push((user.clone(), session)),
            Ok(r) => panic!("sign-out answered {}", r.status()),
            Err(_) => {
                ledger.lock().unwrap().unacknowledged += 1;
                return;
            }
        }
    }
}

/// Adds users through the CLI (the server's admin socket, or the store itself once the server
/// is gone).
async fn add_worker(dir: &Path, round: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("r{round}n{i}");
        let password = password_for(&name);
        let run = child::cli(dir, &["user", "add", &name, "--password-stdin"], Some(&password)).await;
        let mut l = ledger.lock().unwrap();
        if run.ok {
            l.added.insert(name, password);
        } else {
            l.unacknowledged += 1;
        }
        i += 1;
    }
}

/// Changes the passwords of the `p*` users one after another through the CLI.
async fn passwd_worker(dir: &Path, round: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        let user = format!("p{}", turn % PASSWD_USERS);
        let new = password_for(&format!("{user} round {round} turn {turn}"));
        ledger.lock().unwrap().changing.get_mut(&user).unwrap().attempted = Some(new.clone());
        let run = child::cli(dir, &["user", "passwd", &user, "--password-stdin"], Some(&new)).await;
        let mut l = ledger.lock().unwrap();
        let c = l.changing.get_mut(&user).unwrap();
        if run.ok {
            let old = std::mem::replace(&mut c.current, new);
            c.stale.push(old);
            c.attempted = None;
        } else {
            l.unacknowledged += 1;
            // Left as `attempted`: the change may or may not have landed before the crash.
            return;
        }
        turn += 1;
    }
}

/// After a restart: everything acknowledged holds.
async fn verify(server: &ServerProcess, ledger: &mut Ledger) -> usize {
    let c = client(server);
    let mut checks = 0;

    let run = child::cli(&server.dir, &["user", "list", "--json"], None).await;
    assert!(run.ok, "user list after a restart: {run:?}");
    let listed: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["username"].as_str().unwrap().to_string())
        .collect();
    for (name, password) in &ledger.added {
        assert!(listed.contains(name), "acknowledged user {name} is missing after the crash");
        assert!(
            sign_in(server, &c, name, password).await.unwrap().is_some(),
            "acknowledged user {name} cannot sign in"
        );
        checks += 2;
    }

    for (name, ch) in ledger.changing.iter_mut() {
        let current_works = sign_in(server, &c, name, &ch.current).await.unwrap().is_some();
        match ch.attempted.take() {
            None => assert!(current_works, "{name}: the acknowledged password does not work"),
            Some(attempted) => {
                // Not acknowledged: exactly one of the two holds.
                let attempted_works = sign_in(server, &c, name, &attempted).await.unwrap().is_some();
                assert!(
                    current_works != attempted_works,
                    "{name}: old works {current_works}, new works {attempted_works}"
                );
                if attempted_works {
                    let old = std::mem::replace(&mut ch.current, attempted);
                    ch.stale.push(old);
                } else {
                    ch.stale.push(attempted);
                }
                checks += 1;
            }
        }
        for stale in &ch.stale {
            assert!(
                sign_in(server, &c, name, stale).await.unwrap().is_none(),
                "{name}: a replaced password still works"
            );
            checks += 1;
        }
        checks += 1;
    }

    for (user, session) in &ledger.dead_sessions {
        assert!(home(server, &c, session).await.unwrap().is_none(), "{user}: a signed-out session came back to life");
        checks += 1;
    }
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let started = Instant::now();

    // Users for the session and password workers, made on the stopped store.
    let mut ledger = Ledger::default();
    for i in 0..SESSION_USERS {
        let name = format!("s{i}");
        let run = child::cli(&d, &["user", "add", &name, "--password-stdin"], Some(&password_for(&name))).await;
        assert!(run.ok, "{run:?}");
    }
    for i in 0..PASSWD_USERS {
        let name = format!("p{i}");
        let password = password_for(&name);
        let run = child::cli(&d, &["user", "add", &name, "--password-stdin"], Some(&password)).await;
        assert!(run.ok, "{run:?}");
        ledger.changing.insert(name, Changing { current: password, attempted: None, stale: Vec::new() });
    }
    let ledger = Arc::new(Mutex::new(ledger));

    let mut server = Arc::new(tokio::task::block_in_place(|| ServerProcess::start(&d, child::QUICK)));
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for i in 0..SESSION_USERS {
            workers.spawn(session_worker(Arc::clone(&server), format!("s{i}"), Arc::clone(&ledger), Arc::clone(&stop)));
        }
        {
            let (d, ledger, stop) = (d.clone(), Arc::clone(&ledger), Arc::clone(&stop));
            workers.spawn(async move { add_worker(&d, round, ledger, stop).await });
        }
        {
            let (d, ledger, stop) = (d.clone(), Arc::clone(&ledger), Arc::clone(&stop));
            workers.spawn(async move { passwd_worker(&d, round, ledger, stop).await });
        }

        // Kill at a random moment while all of that is going on.
        let after = Duration::from_millis(300 + random_below(1200));
        tokio::time::sleep(after).await;
        server.sigkill();
        stop.store(true, Ordering::Relaxed);
        while workers.join_next().await.transpose().unwrap().is_some() {}
        drop(server);

        // Restart on the same directory: it must open, and everything acknowledged must hold.
        server = Arc::new(tokio::task::block_in_place(|| ServerProcess::start(&d, child::QUICK)));
        let mut taken = std::mem::take(&mut *ledger.lock().unwrap());
        let checks = verify(&server, &mut taken).await;
        println!(
            "crash round {}: SIGKILL after {after:?}; {} users added, {} password changes, {} sign-outs acknowledged so \
             far; {} operations cut short; {checks} checks passed after the restart",
            round + 1,
            taken.added.len(),
            taken.changing.values().map(|c| c.stale.len()).sum::<usize>(),
            taken.dead_sessions.len(),
            taken.unacknowledged,
        );
        *ledger.lock().unwrap() = taken;
    }
    let l = ledger.lock().unwrap();
    assert!(!l.added.is_empty() && !l.dead_sessions.is_empty(), "the rounds acknowledged nothing to check");
    drop(l);
    Arc::try_unwrap(server).ok().expect("no worker is left").terminate();
    println!("crash safety: {ROUNDS} rounds in {:?}", started.elapsed());
}
