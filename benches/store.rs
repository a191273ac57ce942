//! The store's hot paths: creating and resolving a session (every sign-in and every signed-in
//! page view), appending a failed-login record and reading a one-hour range of them (the
//! admin page), over stores filled to a realistic size.
//!
//! `cargo bench --bench store`. The one-million-record range query is slow to set up (it
//! fills a store first) and runs only with `PORTCULLIS_BENCH_1M=1`.
//!
//! Every store write is durable when it returns, so each measured write includes its share
//! of a group-commit fsync; stores are filled with many writes in flight, as a busy server
//! would make them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::join_all;
use portcullis::audit::FailureReason;
use portcullis::session::Sessions;
use portcullis::store::{Factors, FailureQuery, FailureRecord, Store, User};
use tokio::runtime::Runtime;

const HOUR_MS: u64 = 3_600_000;
const START_MS: u64 = 1_700_000_000_000;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

/// Writes in flight at once while filling a store.
const FILL_BATCH: u64 = 512;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn user(key: &str) -> User {
    User {
        key: key.into(),
        display_name: key.into(),
        admin: false,
        created_at: 1,
        password_changed_at: 1,
        last_login_at: None,
        disabled: false,
        groups: Vec::new(),
    }
}

/// Sessions for 1,000 users, 10 each, with one user to measure.
fn sessions(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Store::open(dir.path()).unwrap();
    let sessions = Sessions::new(store.clone(), Duration::from_secs(1800), Duration::from_secs(43_200));
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    rt.block_on(join_all((0..1000).map(|u| {
        let (store, sessions) = (store.clone(), sessions.clone());
        async move {
            let key = format!("user{u}");
            let user = user(&key);
            store.users.insert(&user, HASH).await.unwrap();
            for _ in 0..10 {
                sessions.create(&user, Factors::One, ip, "Mozilla/5.0 (X11; Linux x86_64) bench").await.unwrap();
            }
        }
    })));
    let mut g = c.benchmark_group("session");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    g.bench_function("create", |b| {
        b.iter(|| {
            rt.block_on(sessions.create(
                black_box(&user("user7")),
                Factors::One,
                ip,
                "Mozilla/5.0 (X11; Linux x86_64) bench",
            ))
            .unwrap()
        })
    });
    let token = rt.block_on(sessions.create(&user("user8"), Factors::One, ip, "bench")).unwrap().encode();
    g.bench_function("resolve", |b| b.iter(|| rt.block_on(sessions.resolve(black_box(&token))).unwrap().unwrap()));
    g.bench_function("resolve_unknown", |b| {
        b.iter(|| rt.block_on(sessions.resolve(black_box("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))).unwrap())
    });
    g.finish();
}

fn record(i: u64, spacing_ms: u64) -> (FailureRecord, String) {
    let name = format!("user{}", i % 5000);
    let record = FailureRecord {
        time: START_MS + i * spacing_ms,
        ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        username: name.clone(),
        reason: FailureReason::BadPassword,
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) bench".into(),
        count: 1,
        typed: None,
        instance: String::new(),
        known_browser: false,
    };
    (record, name)
}

/// Fills `n` records spread over 30 days; returns the store.
fn filled(rt: &Runtime, dir: &std::path::Path, n: u64) -> Store {
    let store = Store::open(dir).unwrap();
    let spacing = (30 * 24 * HOUR_MS / n).max(1);
    for start in (0..n).step_by(FILL_BATCH as usize) {
        rt.block_on(join_all((start..n.min(start + FILL_BATCH)).map(|i| {
            let store = store.clone();
            async move {
                let (r, key) = record(i, spacing);
                store.failures.append(&r, &key, None).await.unwrap();
            }
        })));
    }
    store
}

/// A one-hour window in the middle of the data, newest first, first page of 100.
fn hour_query() -> FailureQuery {
    let since = START_MS + 15 * 24 * HOUR_MS;
    FailureQuery { since: Some(since), until: Some(since + HOUR_MS), limit: 100, ..Default::default() }
}

fn failures(c: &mut Criterion) {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = filled(&rt, dir.path(), N);
    let mut g = c.benchmark_group("failures_100k");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let mut i = N;
    g.bench_function("append", |b| {
        b.iter(|| {
            i += 1;
            let (r, key) = record(i, 1);
            rt.block_on(store.failures.append(black_box(&r), &key, None)).unwrap()
        })
    });
    let q = hour_query();
    g.bench_function("range_1h_limit100", |b| b.iter(|| rt.block_on(store.failures.query(black_box(&q))).unwrap()));
    let by_user = FailureQuery { user_key: Some("user42".into()), limit: 100, ..Default::default() };
    g.bench_function("by_user_limit100", |b| {
        b.iter(|| rt.block_on(store.failures.query(black_box(&by_user))).unwrap())
    });
    g.finish();
}

/// One million records (about 1,400 an hour over 30 days), a one-hour page of 100.
fn audit_range_1m(c: &mut Criterion) {
    if std::env::var_os("PORTCULLIS_BENCH_1M").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = filled(&rt, dir.path(), 1_000_000);
    let mut g = c.benchmark_group("audit_range_1m");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let q = hour_query();
    assert_eq!(rt.block_on(store.failures.query(&q)).unwrap().len(), 100);
    g.bench_function("range_1h_limit100", |b| b.iter(|| rt.block_on(store.failures.query(black_box(&q))).unwrap()));
    g.finish();
}

/// Beginning a passkey registration (one open per user: the user's previous one ends) while
/// 20,000 discoverable sign-in ceremonies are open, as anyone may open them from `/login`.
fn ceremonies(c: &mut Criterion) {
    use portcullis::store::passkeys::{Ceremony, CeremonyKind};
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Store::open(dir.path()).unwrap();
    let far = START_MS * 2;
    let open = |kind, owner: Option<&str>| Ceremony {
        kind,
        owner: owner.map(str::to_string),
        state: "{}".into(),
        expires_at: far,
    };
    for batch in 0..(20_000 / FILL_BATCH) {
        rt.block_on(join_all((0..FILL_BATCH).map(|i| {
            let store = store.clone();
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(batch * FILL_BATCH + i).to_be_bytes());
            let ceremony = open(CeremonyKind::SignIn, None);
            async move { store.passkeys.put_ceremony(&key, &ceremony).await.unwrap() }
        })));
    }
    let mut g = c.benchmark_group("ceremony");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let mut n = 0u64;
    g.bench_function("register_begin_among_20k_open", |b| {
        b.iter(|| {
            n += 1;
            let mut key = [0xffu8; 32];
            key[..8].copy_from_slice(&n.to_be_bytes());
            rt.block_on(store.passkeys.put_ceremony(black_box(&key), &open(CeremonyKind::Register, Some("alice"))))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, sessions, failures, ceremonies, audit_range_1m);
criterion_main!(benches);
