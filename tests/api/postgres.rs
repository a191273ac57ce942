//! The PostgreSQL engine's building blocks against a real server (`pg.rs`): connecting with
//! each `sslmode`, migrations racing at start, and the shared brute-force operations, each
//! with its concurrency test (N tasks at once on one key get exactly what one would allow).

use std::sync::Arc;
use std::time::Duration;

use portcullis::config::Rate;
use portcullis::postgres::brute_force as bf;
use portcullis::postgres::connect::{connect, pool};
use portcullis::postgres::migrate::{migrate, LATEST};
use portcullis::postgres::url::DatabaseUrl;
use portcullis::postgres::PgError;

use crate::pg;

/// A fresh database with the schema, and a pool on it.
async fn migrated() -> Option<(DatabaseUrl, portcullis::postgres::db::Db)> {
    let url = pg::database().await?;
    migrate(&mut connect(&url).await.unwrap()).await.unwrap();
    let pool = pool(&url, 32).unwrap();
    Some((url, pool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_migrating_one_fresh_database_at_once_apply_each_version_once() {
    let Some(url) = pg::database().await else { return };
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { migrate(&mut connect(&url).await.unwrap()).await })
        })
        .collect();
    let mut found = Vec::new();
    for t in tasks {
        found.push(t.await.unwrap().expect("every migrator succeeds"));
    }
    found.sort();
    assert_eq!(found, vec![0, LATEST, LATEST, LATEST], "one applied, three found it done");
    let client = connect(&url).await.unwrap();
    let versions: Vec<i32> = client
        .query("SELECT version FROM portcullis_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=LATEST).collect::<Vec<_>>());
    let tables: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tables >= 8, "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_whose_default_isolation_is_stricter_is_still_used_read_committed() {
    use portcullis::brute_force::{conformance, BruteForceState};
    for level in ["repeatable read", "serializable"] {
        let Some(url) = pg::database().await else { return };
        let admin = connect(&url).await.unwrap();
        let name: String = admin.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
        let alter = format!("ALTER DATABASE {name} SET default_transaction_isolation = '{level}'");
        admin.batch_execute(&alter).await.unwrap();
        // Migrators starting together each wait for the one before, and see what it made.
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { migrate(&mut connect(&url).await.unwrap()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap_or_else(|e| panic!("{level}: a migrator failed: {e}"));
        }
        // The captcha threshold holds across two instances' pools (no snapshot from before
        // the lock, no serialization failures).
        let state = || -> Arc<dyn BruteForceState> {
            Arc::new(portcullis::postgres::state::PgBruteForce::new(
                pool(&url, 16).unwrap(),
                Duration::from_secs(60),
                3,
            ))
        };
        conformance::concurrent_reservations_get_at_most_the_threshold(&state(), &state()).await;
    }
}

#[tokio::test]
async fn a_database_ahead_of_this_build_is_refused_and_left_alone() {
    let Some(url) = pg::database().await else { return };
    let mut client = connect(&url).await.unwrap();
    assert_eq!(migrate(&mut client).await.unwrap(), 0);
    assert_eq!(migrate(&mut client).await.unwrap(), LATEST, "a second start finds nothing to do");
    client.execute("INSERT INTO portcullis_schema (version) VALUES ($1)", &[&(LATEST + 1)]).await.unwrap();
    let err = migrate(&mut client).await.unwrap_err();
    assert!(matches!(err, PgError::SchemaTooNew { found, known } if found == LATEST + 1 && known == LATEST), "{err}");
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    let Some(url) = pg::database().await else { return };
    let mut client = connect(&url).await.unwrap();
    // A table in the way of migration 1: the whole transaction must roll back.
    client.batch_execute("CREATE TABLE bf_captchas (x int)").await.unwrap();
    assert!(migrate(&mut client).await.is_err());
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('users', 'portcullis_schema')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no half-applied schema");
}

#[tokio::test]
async fn sessions_from_before_v9_take_their_users_password_generation_and_v8_binaries_still_start_sessions() {
    let Some(url) = pg::database().await else { return };
    let mut client = connect(&url).await.unwrap();
    // A database at v8 with a user and a session, as an older build left it.
    client.batch_execute("CREATE TABLE portcullis_schema (version integer PRIMARY KEY)").await.unwrap();
    for (i, sql) in portcullis::postgres::migrate::MIGRATIONS[..8].iter().enumerate() {
        client.batch_execute(sql).await.unwrap();
        client.execute("INSERT INTO portcullis_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await.unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO users (key, display_name, admin, created_at_ms, password_changed_at_ms, password_hash)
             VALUES ('alice', 'alice', false, 1, 77, 'h');
             INSERT INTO sessions (token_hash, user_key, created_at_ms, last_seen_at_ms, ip, user_agent)
             VALUES (decode(repeat('01', 32), 'hex'), 'alice', 5, 6, '127.0.0.1', 'ua'),
                    (decode(repeat('02', 32), 'hex'), 'gone', 5, 6, '127.0.0.1', 'ua')",
        )
        .await
        .unwrap();
    assert_eq!(migrate(&mut client).await.unwrap(), 8);
    let generation = |hash: u8| {
        let client = &client;
        async move {
            let sql = "SELECT password_changed_at_ms FROM sessions WHERE token_hash = $1";
            let hash = vec![hash; 32];
            client.query_one(sql, &[&hash]).await.unwrap().get::<_, i64>(0)
        }
    };
    assert_eq!((generation(1).await, generation(2).await), (77, 0), "a session without a user is of no generation");
    // An older binary's call during a rolling upgrade: the generation is the user's.
    client
        .execute(
            "SELECT session_start(NULL, decode(repeat('03', 32), 'hex'), 'alice', 9, 9, '127.0.0.1', 'ua',
                                  1::smallint, 10, 1000, 1000, 9)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(generation(3).await, 77);
}

/// Two begins of one user's passkey registration at once keep one ceremony: the second waits
/// for the first's turn to end, then its delete sees the first's row (schema v11). v6's single
/// statement let each miss the other's row, and both stayed (found by a review; this order is
/// held open deterministically rather than hoped for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_concurrent_ceremony_puts_take_turns_and_keep_one() {
    let Some(url) = pg::database().await else { return };
    let mut first = connect(&url).await.unwrap();
    migrate(&mut first).await.unwrap();
    let second = connect(&url).await.unwrap();
    let watcher = connect(&url).await.unwrap();
    let put = "SELECT ceremony_put_one_per_user(decode(repeat($1, 32), 'hex'), 'register', 'alice', 's', 9)";
    let tx = first.transaction().await.unwrap();
    tx.execute(put, &[&"01"]).await.unwrap();
    let racing = tokio::spawn(async move { second.execute(put, &[&"02"]).await.map(|_| ()) });
    assert_eq!(pg::advisory_lock_waiters(&watcher).await, 1, "the second begin waits for the first's turn");
    tx.commit().await.unwrap();
    racing.await.unwrap().unwrap();
    let open: i64 = watcher
        .query_one("SELECT count(*) FROM webauthn_ceremonies WHERE kind = 'register' AND user_key = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "one open registration");
}

/// Whether the server sees this connection as TLS.
async fn uses_tls(client: &dyn portcullis::postgres::db::Statements) -> bool {
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn each_sslmode_does_what_libpq_does() {
    let Some(cluster) = pg::cluster() else { return };
    let db = pg::create_database(cluster).await;
    let ca = cluster.ca_file.display().to_string();
    let other = cluster.other_ca_file.display().to_string();
    let url = |host: &str, query: &str| {
        let base = cluster.tcp_base.replace("127.0.0.1", host);
        DatabaseUrl::parse(&format!("{base}/{db}?{query}")).unwrap()
    };
    for (u, tls) in [
        (url("127.0.0.1", "sslmode=disable"), false),
        (url("127.0.0.1", "sslmode=prefer"), true),
        (url("127.0.0.1", "sslmode=require"), true),
        (url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")), true),
        (url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")), true),
        (url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), true),
    ] {
        let client = connect(&u).await.unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(uses_tls(&client).await, tls, "{u}");
        // The pool connects the same way.
        let p = pool(&u, 1).unwrap();
        assert_eq!(uses_tls(&p.get().await.unwrap()).await, tls, "{u}");
    }
    // A certificate from another CA is refused by the verifying modes (and by require with a
    // root file, which libpq treats as verify-ca), accepted by require alone.
    for q in [
        format!("sslmode=verify-ca&sslrootcert={other}"),
        format!("sslmode=verify-full&sslrootcert={other}"),
        format!("sslmode=require&sslrootcert={other}"),
    ] {
        let u = url("127.0.0.1", &q);
        let err = connect(&u).await.err().unwrap_or_else(|| panic!("{u} was accepted")).to_string();
        assert!(err.contains("not issued by a certificate in sslrootcert"), "{u}: what to do: {err}");
    }
    // A root file with no certificate in it is said to be one (it said "set sslrootcert").
    let empty = cluster.ca_file.with_file_name("not-pem.txt");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let u = url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", empty.display()));
    let err = pool(&u, 1).err().expect("refused").to_string();
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

#[tokio::test]
async fn a_wrong_database_password_fails_without_the_password_in_the_error() {
    let Some(cluster) = pg::cluster() else { return };
    let base = cluster.tcp_base.replace("postgres:pw-", "postgres:wrongpw-");
    let u = DatabaseUrl::parse(&format!("{base}/postgres?sslmode=disable")).unwrap();
    let err = connect(&u).await.unwrap_err();
    let shown = format!("{err} {err:?} {u} {u:?}");
    assert!(!shown.contains("wrongpw"), "{shown}");
    let pool_err = pool(&u, 1).unwrap().get().await.unwrap_err();
    assert!(!format!("{pool_err} {pool_err:?}").contains("wrongpw"));
    // None at all, where the database asks for one: said to belong in the URL, since the
    // variables and the file libpq reads are not read (found by a review).
    let host_and_port = &cluster.tcp_base[cluster.tcp_base.rfind('@').unwrap() + 1..];
    let base = format!("postgres://postgres@{host_and_port}");
    let u = DatabaseUrl::parse(&format!("{base}/postgres?sslmode=disable")).unwrap();
    let err = connect(&u).await.unwrap_err().to_string();
    assert!(err.contains("password missing") && err.contains("PGPASSWORD and ~/.pgpass are not read"), "{err}");
}

#[tokio::test]
async fn an_unreachable_database_is_an_unavailable_error_within_the_timeout() {
    // A port nothing listens on: refused at once, and classed as unavailable (answer 503).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let u = DatabaseUrl::parse(&format!("postgres://x:y@127.0.0.1:{port}/db?sslmode=disable")).unwrap();
    let err = pool(&u, 1).unwrap().get().await.map(|_| ()).unwrap_err();
    assert!(err.is_unavailable());
}

const MINUTE: Rate = Rate { burst: 3, period: Duration::from_secs(60) };

#[tokio::test]
async fn the_gcra_quota_allows_a_burst_then_refills_one_unit_per_interval() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    let t0 = 1_700_000_000_000u64;
    for _ in 0..3 {
        assert_eq!(bf::take_quota(&c, "per_address", b"k", MINUTE, t0).await.unwrap(), Ok(()));
    }
    // Burst used: the next unit is one interval (20 s) away.
    assert_eq!(bf::take_quota(&c, "per_address", b"k", MINUTE, t0).await.unwrap(), Err(20));
    assert_eq!(bf::take_quota(&c, "per_address", b"k", MINUTE, t0 + 15_500).await.unwrap(), Err(5));
    assert_eq!(bf::take_quota(&c, "per_username", b"k", MINUTE, t0).await.unwrap(), Ok(()), "quotas are separate");
    assert_eq!(bf::take_quota(&c, "per_address", b"other", MINUTE, t0).await.unwrap(), Ok(()), "keys are separate");
    // One interval later: exactly one unit.
    assert_eq!(bf::take_quota(&c, "per_address", b"k", MINUTE, t0 + 20_000).await.unwrap(), Ok(()));
    assert!(bf::take_quota(&c, "per_address", b"k", MINUTE, t0 + 20_000).await.unwrap().is_err());
    // A full period idle: the whole burst again, and no more.
    let later = t0 + 20_000 + 60_000;
    for _ in 0..3 {
        assert_eq!(bf::take_quota(&c, "per_address", b"k", MINUTE, later).await.unwrap(), Ok(()));
    }
    assert!(bf::take_quota(&c, "per_address", b"k", MINUTE, later).await.unwrap().is_err());
}

/// Instances whose clocks differ count quotas and failure windows on the database's clock:
/// an address that spent its burst on one has none left on another whose clock runs 20 s
/// ahead, and is told to wait as long there (review 163: that one gave 7 more attempts at
/// once, its quota refilled by its own clock).
#[tokio::test]
async fn an_instance_whose_clock_runs_ahead_gives_no_more_of_a_quota() {
    use portcullis::brute_force::{BruteForceState, QuotaKey};
    use portcullis::postgres::state::PgBruteForce;
    let Some((_url, pool)) = migrated().await else { return };
    fn on_time() -> u64 {
        portcullis::store::now_ms()
    }
    fn ahead() -> u64 {
        portcullis::store::now_ms() + 20_000
    }
    let instance =
        |clock: fn() -> u64| PgBruteForce::new(pool.clone(), Duration::from_secs(60), 3).with_local_clock(clock);
    let (a, e) = (instance(on_time), instance(ahead));
    let rate = Rate { burst: 20, period: Duration::from_secs(60) };
    let key = QuotaKey::Address(portcullis::client::AddressKey::of("192.0.2.7".parse().unwrap()));
    for n in 0..20 {
        assert!(a.take(key, rate, on_time()).await.unwrap().is_ok(), "unit {n} of the burst");
    }
    let there = a.take(key, rate, on_time()).await.unwrap().expect_err("the burst is spent");
    let ahead_of_it = e.take(key, rate, ahead()).await.unwrap().expect_err("spent on every instance");
    assert!(ahead_of_it.ms.abs_diff(there.ms) < 1_000, "{ahead_of_it:?} against {there:?}");
    // Its failure records are stamped on the database's clock too (review 166: 25 s apart
    // from another instance's made in the same second).
    let (stamped, database) = (e.on_shared_clock(ahead()), on_time());
    assert!(stamped.abs_diff(database) < 1_000, "{stamped} against {database}");
}

/// An instance whose clock is stepped while it runs measures its offset again at once: an
/// address's burst there is not recorded on the clock's old reading (review 165: stepped back
/// 20 s by NTP, an instance went on with its old offset, and another then gave the address 6
/// more attempts).
#[tokio::test]
async fn an_instance_whose_clock_is_stepped_measures_its_offset_again() {
    use portcullis::brute_force::{BruteForceState, QuotaKey};
    use portcullis::postgres::state::PgBruteForce;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STEP: AtomicU64 = AtomicU64::new(20_000);
    let Some((_url, pool)) = migrated().await else { return };
    fn on_time() -> u64 {
        portcullis::store::now_ms()
    }
    fn stepped() -> u64 {
        portcullis::store::now_ms() + STEP.load(Ordering::Relaxed)
    }
    let instance =
        |clock: fn() -> u64| PgBruteForce::new(pool.clone(), Duration::from_secs(60), 3).with_local_clock(clock);
    let (a, e) = (instance(on_time), instance(stepped));
    let rate = Rate { burst: 20, period: Duration::from_secs(60) };
    let other = QuotaKey::Address(portcullis::client::AddressKey::of("192.0.2.8".parse().unwrap()));
    assert!(e.take(other, rate, stepped()).await.unwrap().is_ok(), "e measures its clock 20 s ahead");
    STEP.store(0, Ordering::Relaxed);
    let key = QuotaKey::Address(portcullis::client::AddressKey::of("192.0.2.9".parse().unwrap()));
    for n in 0..20 {
        assert!(e.take(key, rate, stepped()).await.unwrap().is_ok(), "unit {n} of the burst");
    }
    a.take(key, rate, on_time()).await.unwrap().expect_err("the burst was counted on the database's clock");
}

/// A take refused by a take that committed while it waited is told the wait the newest row
/// gives, not the one its statement's older snapshot would (review 163: refused clients of a
/// burst were told `Retry-After: 1` where the wait was 90 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_refused_by_one_committed_meanwhile_is_told_the_whole_wait() {
    let Some((url, pool)) = migrated().await else { return };
    let rate = Rate { burst: 2, period: Duration::from_secs(120) };
    let t0 = 1_700_000_000_000u64;
    let c = pool.get().await.unwrap();
    assert_eq!(bf::take_quota(&c, "per_username", b"alice", rate, t0).await.unwrap(), Ok(()));
    // Another instance takes the last unit in a transaction that commits only once this
    // one's take is waiting on the row.
    let mut other = connect(&url).await.unwrap();
    let taken = take_while_another_commits(c, &mut other, "alice", rate, t0).await;
    assert_eq!(taken, Err(60), "one interval (60 s) until the next unit");

    // A snapshot that alone refuses too, with a short wait: its clock half a second ahead of
    // this take's, the first unit was taken at t0 + 0.5 s (review 165: `Retry-After: 1`).
    let c = pool.get().await.unwrap();
    let first = t0 as i64 + 60_500;
    c.execute("INSERT INTO bf_quotas (quota, key, tat_ms) VALUES ('per_username', 'bob', $1)", &[&first])
        .await
        .unwrap();
    let taken = take_while_another_commits(c, &mut other, "bob", rate, t0).await;
    assert_eq!(taken, Err(61), "the newest row's wait, not the snapshot's half second");
}

/// `key`'s take at `now_ms` on `c`, while `other` takes a unit of it in a transaction that
/// commits once this take waits on the row.
async fn take_while_another_commits(
    c: portcullis::postgres::db::Conn,
    other: &mut tokio_postgres::Client,
    key: &'static str,
    rate: Rate,
    now_ms: u64,
) -> Result<(), u64> {
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "UPDATE bf_quotas SET tat_ms = tat_ms + 60000 WHERE quota = 'per_username' AND key = $1::text::bytea",
        &[&key],
    )
    .await
    .unwrap();
    let waiting =
        tokio::spawn(async move { bf::take_quota(&c, "per_username", key.as_bytes(), rate, now_ms).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the take waits for the other's row");
    tx.commit().await.unwrap();
    waiting.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_takes_at_once_on_one_key_get_exactly_the_burst() {
    let Some((_, pool)) = migrated().await else { return };
    let rate = Rate { burst: 5, period: Duration::from_secs(3600) };
    let barrier = Arc::new(tokio::sync::Barrier::new(24));
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = pool.get().await.unwrap();
                barrier.wait().await;
                bf::take_quota(&c, "per_username", b"alice", rate, 1_000_000).await.unwrap().is_ok()
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 5);
}

const WINDOW: u64 = 15 * 60_000;

#[tokio::test]
async fn reservations_and_failures_demand_a_captcha_at_the_threshold_until_the_window_passes() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    let addr = bf::address_key(portcullis::client::AddressKey::of("192.0.2.1".parse().unwrap()));
    let (alice, bob) = (bf::username_key("alice"), bf::username_key("bob"));
    let t = 10_000_000u64;
    let r1 = bf::reserve_check(&c, &addr, &alice, t, 3).await.unwrap().unwrap();
    let r2 = bf::reserve_check(&c, &addr, &alice, t, 3).await.unwrap().unwrap();
    let r3 = bf::reserve_check(&c, &addr, &bob, t, 3).await.unwrap().unwrap();
    assert!(
        bf::reserve_check(&c, &addr, &bf::username_key("carol"), t, 3).await.unwrap().is_none(),
        "the address is full"
    );
    assert!(bf::needs_captcha(&c, &addr, &bob, t, 3).await.unwrap());
    // A success gives its place back.
    bf::release_check(&c, r3).await.unwrap();
    assert!(!bf::needs_captcha(&c, &addr, &bob, t, 3).await.unwrap());
    // Failures count; the third one reaches the threshold, and says so once.
    assert!(!bf::fail_check(&c, &addr, &alice, Some(r1), t + 1, WINDOW, 3).await.unwrap());
    assert!(!bf::fail_check(&c, &addr, &alice, Some(r2), t + 2, WINDOW, 3).await.unwrap());
    assert!(bf::fail_check(&c, &addr, &alice, None, t + 3, WINDOW, 3).await.unwrap(), "the crossing");
    assert!(!bf::fail_check(&c, &addr, &alice, None, t + 4, WINDOW, 3).await.unwrap(), "reported once");
    let other_addr = bf::address_key(portcullis::client::AddressKey::of("192.0.2.2".parse().unwrap()));
    assert!(bf::reserve_check(&c, &other_addr, &alice, t + 5, 3).await.unwrap().is_none(), "alice is flagged");
    // A success for alice clears her failures (not the address's).
    // Four failures, of which the key keeps the threshold (as the in-memory count does).
    assert_eq!(bf::clear_username(&c, &alice, t + 6).await.unwrap(), 3);
    assert!(bf::reserve_check(&c, &other_addr, &alice, t + 7, 3).await.unwrap().is_some());
    assert!(bf::needs_captcha(&c, &addr, &bob, t + 7, 3).await.unwrap(), "the address still is");
    // Past the window nothing counts.
    assert!(!bf::needs_captcha(&c, &addr, &bob, t + 4 + WINDOW, 3).await.unwrap());
}

#[tokio::test]
async fn a_reservation_never_reported_back_lapses() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    let t = 5_000_000u64;
    for _ in 0..2 {
        let _lost = bf::reserve_check(&c, b"a", b"u", t, 2).await.unwrap().unwrap();
    }
    assert!(bf::reserve_check(&c, b"a", b"u", t, 2).await.unwrap().is_none());
    assert!(bf::reserve_check(&c, b"a", b"u", t + bf::RESERVATION_HOLD_MS, 2).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_checks_at_once_for_one_username_reserve_exactly_the_threshold() {
    let Some((_, pool)) = migrated().await else { return };
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = pool.get().await.unwrap();
                barrier.wait().await;
                // Every attempt from its own address: only the username can stop them.
                let r = bf::reserve_check(&c, &[10, 0, 0, i], &bf::username_key("alice"), 1_000, 3).await.unwrap();
                r.is_some()
            })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        reserved += usize::from(t.await.unwrap());
    }
    assert_eq!(reserved, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_challenge_is_taken_once_even_by_many_at_once() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    bf::put_captcha(&c, &[1; 32], &[2; 32], 10_000).await.unwrap();
    assert_eq!(bf::take_captcha(&c, &[1; 32], 5_000).await.unwrap(), Some([2; 32]));
    assert_eq!(bf::take_captcha(&c, &[1; 32], 5_000).await.unwrap(), None, "single use");
    // A late answer consumes the challenge and gets nothing.
    bf::put_captcha(&c, &[1; 32], &[3; 32], 10_000).await.unwrap();
    assert_eq!(bf::take_captcha(&c, &[1; 32], 10_000).await.unwrap(), None);
    assert_eq!(bf::take_captcha(&c, &[1; 32], 5_000).await.unwrap(), None);
    // A new challenge replaces the open one.
    bf::put_captcha(&c, &[1; 32], &[4; 32], 10_000).await.unwrap();
    bf::put_captcha(&c, &[1; 32], &[5; 32], 10_000).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = pool.get().await.unwrap();
                barrier.wait().await;
                bf::take_captcha(&c, &[1; 32], 5_000).await.unwrap()
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    assert_eq!(got, vec![[5; 32]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_login_id_retires_once_even_by_many_at_once() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    assert!(!bf::is_retired(&c, &[7; 16]).await.unwrap());
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = pool.get().await.unwrap();
                barrier.wait().await;
                bf::retire_prelogin(&c, &[7; 16], 9_000, 1_000).await.unwrap()
            })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        first += usize::from(t.await.unwrap());
    }
    assert_eq!(first, 1);
    assert!(bf::is_retired(&c, &[7; 16]).await.unwrap());
}

#[tokio::test]
async fn the_purge_drops_exactly_what_no_longer_counts() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    let rate = Rate { burst: 1, period: Duration::from_secs(10) };
    bf::take_quota(&c, "q", b"old", rate, 0).await.unwrap().unwrap();
    bf::take_quota(&c, "q", b"new", rate, 50_000).await.unwrap().unwrap();
    bf::fail_check(&c, b"a", b"u", None, 0, 1_000, 3).await.unwrap();
    let _held = bf::reserve_check(&c, b"a", b"u", 50_000, 3).await.unwrap().unwrap();
    bf::put_captcha(&c, &[1; 32], &[1; 32], 1_000).await.unwrap();
    bf::put_captcha(&c, &[2; 32], &[1; 32], 90_000).await.unwrap();
    bf::retire_prelogin(&c, &[1; 16], 1_000, 0).await.unwrap();
    bf::retire_prelogin(&c, &[2; 16], 90_000, 0).await.unwrap();
    let purged = bf::purge_expired(&c, 50_000).await.unwrap();
    assert_eq!(purged, bf::Purged { quotas: 1, attempts: 2, captchas: 1, retired: 1 });
    assert!(bf::is_retired(&c, &[2; 16]).await.unwrap());
    assert!(bf::take_quota(&c, "q", b"new", rate, 50_000).await.unwrap().is_err(), "a live quota row stays");
    assert_eq!(bf::purge_expired(&c, 50_000).await.unwrap(), bf::Purged::default());
}

#[tokio::test]
async fn the_audit_filters_have_indexes_to_use() {
    let Some((_, pool)) = migrated().await else { return };
    let c = pool.get().await.unwrap();
    // On an empty table the planner prefers a scan; forbid it to see which index serves.
    c.simple_query("SET enable_seqscan = off").await.unwrap();
    for (query, index) in [
        ("SELECT id FROM failures WHERE ip <<= '10.0.0.0/8' ORDER BY ip, time_ms DESC LIMIT 100", "failures_by_ip"),
        (
            "SELECT id FROM failures WHERE user_key = 'alice' ORDER BY time_ms DESC, id DESC LIMIT 100",
            "failures_by_user",
        ),
        ("SELECT id FROM failures WHERE time_ms < 5 ORDER BY time_ms DESC, id DESC LIMIT 100", "failures_by_time"),
    ] {
        let plan: Vec<String> =
            c.query(&format!("EXPLAIN {query}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert!(plan.iter().any(|l| l.contains(index)), "{query}: {plan:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_asking_for_a_new_secret_at_once_all_get_the_same_one() {
    let Some((_, pool)) = migrated().await else { return };
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let tasks: Vec<_> = (0..12u8)
        .map(|i| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = pool.get().await.unwrap();
                barrier.wait().await;
                portcullis::postgres::secrets::claim(&c, "csrf", &[i; 32]).await.unwrap()
            })
        })
        .collect();
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    values.dedup();
    assert_eq!(values.len(), 1, "one value for everyone");
    let c = pool.get().await.unwrap();
    assert_eq!(portcullis::postgres::secrets::claim(&c, "csrf", &[99; 32]).await.unwrap(), values[0], "kept");
    assert_eq!(portcullis::postgres::secrets::claim(&c, "captcha", &[99; 32]).await.unwrap(), [99; 32], "one per name");
}

/// A database at `version`, as a build of that schema left it.
async fn at_version(url: &DatabaseUrl, version: usize) -> tokio_postgres::Client {
    let client = connect(url).await.unwrap();
    client.batch_execute("CREATE TABLE portcullis_schema (version integer PRIMARY KEY)").await.unwrap();
    for (i, sql) in portcullis::postgres::migrate::MIGRATIONS[..version].iter().enumerate() {
        client.batch_execute(sql).await.unwrap();
        client.execute("INSERT INTO portcullis_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await.unwrap();
    }
    client
}

/// Review 204: a migration queued behind a long reader's lock (a backup) held every other
/// instance's statements on that table behind it, so the old instances of a rolling upgrade
/// answered 503 for as long. It now gives up after `LOCK_WAIT`, lets them through, and tries
/// again until it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_waiting_for_a_lock_lets_other_statements_through_and_goes_through_later() {
    let Some(url) = pg::database().await else { return };
    let mut migrator = at_version(&url, 18).await;
    let mut holder = connect(&url).await.unwrap();
    let backup = holder.transaction().await.unwrap();
    backup.execute("SELECT count(*) FROM second_factors", &[]).await.unwrap();
    let migrating = tokio::spawn(async move { migrate(&mut migrator).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An old instance's statement on the table migration 19 alters.
    let other = connect(&url).await.unwrap();
    other.batch_execute("SET statement_timeout = '2500ms'").await.unwrap();
    let started = std::time::Instant::now();
    other.execute("SELECT count(*) FROM second_factors", &[]).await.expect("not held behind the migration");
    assert!(started.elapsed() < Duration::from_millis(2_500), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    backup.commit().await.unwrap();
    assert_eq!(migrating.await.unwrap().unwrap(), 18, "it went through once the reader was done");
    let version: i32 = other.query_one("SELECT max(version) FROM portcullis_schema", &[]).await.unwrap().get(0);
    assert_eq!(version, LATEST);
}
