//! The store conformance suite: what every engine must do, written once against the traits of
//! [`super`] and run on each engine (sled in this crate's unit tests; another engine runs
//! [`run`] with its own [`Harness`], with the `conformance` feature outside this crate's tests).
//!
//! It checks behaviour a caller relies on, not an engine's layout: round trips, the
//! compare-and-swap updates under concurrent callers, keyset paging that neither skips nor
//! repeats, the record cap, secrets agreed on by concurrent first users, and that what a
//! method wrote is there after the store is closed and opened again.

// A test suite (built outside `cfg(test)` only for other crates' tests): a failed check panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;

use super::copy::{copy, Copied, CopyError};
use super::passkeys::{Ceremony, CeremonyKind, PasskeyUse, RemovedPasskey, StoredPasskey};
use super::{
    Credential, FactorSummary, Factors, FailureQuery, FailureRecord, Holding, PendingSignIn, RecoveryCodeUse, Session,
    SessionCap, Store, StoreError, TotpFactor, User, UserFactors,
};
use crate::audit::FailureReason;

/// How the suite gets stores from an engine.
#[async_trait]
pub trait Harness: Send {
    /// A handle on a new, empty store.
    async fn fresh(&mut self) -> Store;
    /// Closes `store` (the last handle on the store [`Harness::fresh`] returned last) and opens
    /// the same store again.
    async fn reopen(&mut self, store: Store) -> Store;
}

/// Two valid argon2id PHC strings of different kinds (memory 1 MiB and 2 MiB).
pub const HASH_A: &str = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
const HASH_A2: &str = "$argon2id$v=19$m=1024,t=1,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYQ";
const HASH_B: &str = "$argon2id$v=19$m=2048,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// A user for tests, enabled, never signed in, created at 1 ms.
pub fn user(key: &str) -> User {
    User {
        key: key.into(),
        display_name: key.to_uppercase(),
        admin: false,
        created_at: 1,
        password_changed_at: 1,
        last_login_at: None,
        disabled: false,
        groups: Vec::new(),
    }
}

/// A session for tests.
pub fn session(user_key: &str, created_at: u64, last_seen_at: u64) -> Session {
    Session {
        user_key: user_key.into(),
        created_at,
        last_seen_at,
        ip: "192.0.2.1".into(),
        user_agent: "ua".into(),
        factors: Factors::One,
        // As `user` makes them.
        password_changed_at: 1,
        passkey_id: None,
    }
}

/// A failure record for tests.
pub fn failure(time: u64, ip: &str, username: &str, reason: FailureReason) -> FailureRecord {
    FailureRecord {
        time,
        ip: ip.into(),
        username: username.into(),
        reason,
        user_agent: "ua".into(),
        typed: None,
        count: 1,
        instance: "web-1".into(),
        known_browser: false,
    }
}

/// Runs every check, each on a fresh store. Panics (naming the check) at the first failure.
pub async fn run(harness: &mut dyn Harness) {
    users_round_trip(&harness.fresh().await).await;
    groups_change_atomically_and_round_trip(&harness.fresh().await).await;
    user_updates_are_explicit_and_compare_and_swap(&harness.fresh().await).await;
    concurrent_updates_lose_nothing(&harness.fresh().await).await;
    the_most_common_hash_kind_is_found(&harness.fresh().await).await;
    sessions_round_trip_and_expire(&harness.fresh().await).await;
    sessions_stamped_too_far_ahead_are_purged(&harness.fresh().await).await;
    users_list_with_their_valid_sessions_counted(&harness.fresh().await).await;
    a_session_starts_in_place_of_the_previous_one_within_the_cap(&harness.fresh().await).await;
    a_session_goes_on_under_a_new_token_only_while_it_is_stored(&harness.fresh().await).await;
    simultaneous_starts_at_the_cap_end_only_the_sessions_past_it(&harness.fresh().await).await;
    a_session_resolves_with_its_user_and_only_that_users_sessions(&harness.fresh().await).await;
    sessions_signed_in_with_a_passkey_end_with_it(&harness.fresh().await).await;
    sessions_signed_in_with_the_app_end_with_it(&harness.fresh().await).await;
    failures_query_and_page_without_gaps_or_repeats(&harness.fresh().await).await;
    the_record_cap_keeps_the_newest(&harness.fresh().await).await;
    secrets_are_stable_and_agreed_on(&harness.fresh().await).await;
    failure_records_keep_their_instance(&harness.fresh().await).await;
    let (from, to) = (harness.fresh().await, harness.fresh().await);
    every_record_survives_export_and_import(&from, &to).await;
    drop((from, to));
    let (from, to) = (harness.fresh().await, harness.fresh().await);
    a_target_holding_only_second_factors_is_not_empty(&from, &to).await;
    drop((from, to));
    every_failure_reason_can_be_recorded(&harness.fresh().await).await;
    passkeys_round_trip_and_belong_to_their_user(&harness.fresh().await).await;
    passkey_counters_only_move_forward(&harness.fresh().await).await;
    ceremonies_are_taken_once_and_expire(&harness.fresh().await).await;
    second_factors_round_trip_and_are_used_once(&harness.fresh().await).await;
    wrong_codes_count_in_their_run_and_go_with_the_factors(&harness.fresh().await).await;
    pending_sign_ins_are_taken_once_and_purged(&harness.fresh().await).await;
    let store = harness.fresh().await;
    let secret = write_everything(&store).await;
    let store = harness.reopen(store).await;
    everything_written_is_there(&store, secret).await;
}

/// Every reason the code can give is one the engine accepts (a SQL CHECK that lags behind
/// `FailureReason::ALL` would turn a refusal into a 503).
async fn every_failure_reason_can_be_recorded(store: &Store) {
    for (i, reason) in FailureReason::ALL.into_iter().enumerate() {
        let record = failure(100 + i as u64, "192.0.2.1", "eve", reason);
        store.failures.append(&record, "eve", None).await.unwrap_or_else(|e| panic!("failures: {reason:?}: {e}"));
    }
    let reasons: Vec<_> =
        store.failures.query(&FailureQuery::default()).await.unwrap().into_iter().map(|(_, r)| r.reason).collect();
    assert_eq!(reasons.len(), FailureReason::ALL.len(), "failures: one record per reason");
}

/// A passkey record for tests: credential id `id`, owned by `user_key`, made at `created_at`.
pub fn passkey(id: &[u8], user_key: &str, created_at: u64) -> StoredPasskey {
    StoredPasskey {
        id: id.to_vec(),
        user_key: user_key.into(),
        user_handle: [7; 16],
        name: "phone".into(),
        passkey: r#"{"cred":{}}"#.into(),
        created_at,
        last_used_at: None,
        sign_count: 0,
        clone_suspected_at: None,
        last_client_data_hash: None,
    }
}

/// A use of a passkey for tests: its JSON, counter and time; the client data hash is made
/// of the JSON's first byte and the counter.
pub fn used(passkey: &str, sign_count: u32, at: u64) -> PasskeyUse<'_> {
    let mut client_data_hash = [passkey.as_bytes().first().copied().unwrap_or(0); 32];
    client_data_hash[..4].copy_from_slice(&sign_count.to_be_bytes());
    PasskeyUse { passkey, sign_count, client_data_hash, at: Some(at) }
}

async fn passkeys_round_trip_and_belong_to_their_user(store: &Store) {
    let p = &store.passkeys;
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    store.users.insert(&user("bob"), HASH_A).await.unwrap();
    p.add_passkey(&passkey(b"k2", "alice", 20)).await.unwrap();
    p.add_passkey(&passkey(b"k1", "alice", 10)).await.unwrap();
    p.add_passkey(&passkey(b"kb", "bob", 5)).await.unwrap();
    assert!(
        matches!(p.add_passkey(&passkey(b"k1", "bob", 30)).await, Err(StoreError::AlreadyExists)),
        "passkeys: a credential id is registered once, to anyone"
    );
    let ids: Vec<Vec<u8>> = p.passkeys_of("alice").await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, [b"k1".to_vec(), b"k2".to_vec()], "passkeys: a user's list, oldest first");
    let summary = store.factors.summary("alice").await.unwrap();
    assert_eq!(summary, FactorSummary { totp: false, recovery_codes: 0, passkeys: 2 }, "factors: passkeys count");
    assert!(summary.has_second_factor(), "factors: a passkey is a second factor");
    assert_eq!(p.passkey(b"k1").await.unwrap(), Some(passkey(b"k1", "alice", 10)), "passkeys: get by id");
    assert_eq!(
        p.rename_passkey("bob", b"k1", "mine", None).await.unwrap(),
        None,
        "passkeys: another user cannot rename it"
    );
    let renamed = p.rename_passkey("alice", b"k1", "laptop", None).await.unwrap();
    assert_eq!(renamed.as_deref(), Some("phone"), "passkeys: rename, and the name it had");
    assert_eq!(p.rename_passkey("alice", b"k1", "desk", Some("phone")).await.unwrap(), None, "passkeys: not named so");
    let renamed = p.rename_passkey("alice", b"k1", "desk", Some("laptop")).await.unwrap();
    assert_eq!(renamed.as_deref(), Some("laptop"), "passkeys: named so");
    assert!(p.rename_passkey("alice", b"k1", "laptop", Some("desk")).await.unwrap().is_some());
    assert_eq!(p.passkey(b"k1").await.unwrap().unwrap().name, "laptop");
    assert!(!p.remove_passkey("bob", b"k1", 30).await.unwrap(), "passkeys: another user cannot remove it");
    assert_eq!(p.former_owner(b"k1").await.unwrap(), None, "passkeys: a registered one has no former owner");
    assert!(p.remove_passkey("alice", b"k1", 40).await.unwrap(), "passkeys: remove");
    assert!(p.passkey(b"k1").await.unwrap().is_none() && !p.remove_passkey("alice", b"k1", 41).await.unwrap());
    assert_eq!(p.former_owner(b"k1").await.unwrap().as_deref(), Some("alice"), "passkeys: whose it was");
    assert!(store.users.delete("alice").await.unwrap());
    assert!(p.passkey(b"k2").await.unwrap().is_none(), "passkeys: deleting a user removes their passkeys");
    assert!(p.passkeys_of("alice").await.unwrap().is_empty());
    assert_eq!(p.former_owner(b"k1").await.unwrap(), None, "passkeys: a deleted user's are forgotten");
    assert_eq!(p.former_owner(b"k2").await.unwrap(), None, "passkeys: deleted with the user, not removed");
    assert_eq!(p.remove_passkeys_of("bob", 50).await.unwrap(), 1, "passkeys: remove all of a user's");
    assert!(p.passkey(b"kb").await.unwrap().is_none());
    assert_eq!(p.former_owner(b"kb").await.unwrap().as_deref(), Some("bob"), "passkeys: a reset's too");
    assert_eq!(p.purge_removed_passkeys(50).await.unwrap(), 0, "passkeys: removed at 50 is kept at cutoff 50");
    assert_eq!(p.purge_removed_passkeys(51).await.unwrap(), 1, "passkeys: older notes are purged");
    assert_eq!(p.former_owner(b"kb").await.unwrap(), None);
}

async fn passkey_counters_only_move_forward(store: &Store) {
    let p = &store.passkeys;
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    p.add_passkey(&passkey(b"zero", "alice", 1)).await.unwrap();
    assert!(p.record_passkey_use(b"zero", &used("z1", 0, 50)).await.unwrap(), "passkeys: a counter-less key is noted");
    assert!(p.record_passkey_use(b"zero", &used("z2", 0, 60)).await.unwrap());
    let z = p.passkey(b"zero").await.unwrap().unwrap();
    assert_eq!((z.passkey.as_str(), z.last_used_at), ("z2", Some(60)));
    // A verified answer that signed nobody in moves the counter, not the time of last use.
    let unused = PasskeyUse { at: None, ..used("z3", 0, 65) };
    assert!(p.record_passkey_use(b"zero", &unused).await.unwrap());
    let z = p.passkey(b"zero").await.unwrap().unwrap();
    assert_eq!((z.passkey.as_str(), z.last_used_at), ("z3", Some(60)), "passkeys: no sign-in, no last use");
    p.add_passkey(&passkey(b"c", "alice", 2)).await.unwrap();
    assert!(p.record_passkey_use(b"c", &used("c5", 5, 70)).await.unwrap());
    assert!(
        !p.record_passkey_use(b"c", &used("c5again", 5, 80)).await.unwrap(),
        "passkeys: a repeated counter is refused"
    );
    assert!(
        !p.record_passkey_use(b"c", &used("c4", 4, 80)).await.unwrap(),
        "passkeys: a counter going back is refused"
    );
    assert!(!p.record_passkey_use(b"c", &used("c0", 0, 80)).await.unwrap(), "passkeys: a counter reset is refused");
    let c = p.passkey(b"c").await.unwrap().unwrap();
    assert_eq!((c.passkey.as_str(), c.sign_count, c.last_used_at), ("c5", 5, Some(70)));
    assert_eq!(c.last_client_data_hash, Some(used("c5", 5, 70).client_data_hash), "passkeys: the noted answer's hash");
    assert!(!p.record_passkey_use(b"gone", &used("x", 9, 80)).await.unwrap(), "passkeys: no such passkey");
    // Several rounds, because a lost race (an engine retrying its update) shows only sometimes.
    for round in 0..10u32 {
        let base = 6 + 2 * round;
        let racers = (0..8u32).map(|i| {
            let p = std::sync::Arc::clone(p);
            tokio::spawn(async move { p.record_passkey_use(b"c", &used("race", base + i % 2, 90)).await.unwrap() })
        });
        let noted = futures_count(racers).await;
        assert!((1..=2).contains(&noted), "passkeys: concurrent uses with equal counters are noted once ({noted})");
        assert_eq!(p.passkey(b"c").await.unwrap().unwrap().sign_count, base + 1);
    }
    assert_eq!(p.passkey(b"c").await.unwrap().unwrap().clone_suspected_at, None, "passkeys: none suspected yet");
    assert!(p.flag_possible_clone(b"c", 100).await.unwrap());
    assert!(p.flag_possible_clone(b"c", 110).await.unwrap());
    let c = p.passkey(b"c").await.unwrap().unwrap();
    assert_eq!(c.clone_suspected_at, Some(110), "passkeys: the latest suspected clone's time is kept");
    assert_eq!((c.sign_count, c.last_used_at), (25, Some(90)), "passkeys: a suspicion is not a use");
    assert!(!p.flag_possible_clone(b"gone", 120).await.unwrap(), "passkeys: no such passkey to suspect");
}

async fn futures_count(tasks: impl Iterator<Item = tokio::task::JoinHandle<bool>>) -> usize {
    let mut n = 0;
    for t in tasks.collect::<Vec<_>>() {
        n += usize::from(t.await.unwrap());
    }
    n
}

async fn ceremonies_are_taken_once_and_expire(store: &Store) {
    let p = &store.passkeys;
    let c =
        Ceremony { kind: CeremonyKind::SignIn, owner: None, state: r#"{"challenge":"x"}"#.into(), expires_at: 1_000 };
    p.put_ceremony(&[1; 32], &c).await.unwrap();
    let r = Ceremony { kind: CeremonyKind::Register, owner: Some("alice".into()), ..c.clone() };
    p.put_ceremony(&[2; 32], &r).await.unwrap();
    p.put_ceremony(&[3; 32], &Ceremony { expires_at: 500, ..c.clone() }).await.unwrap();
    assert!(p.take_ceremony(&[9; 32], 10).await.unwrap().is_none(), "ceremonies: unknown key");
    assert_eq!(p.ceremony(&[1; 32], 10).await.unwrap(), Some(c.clone()), "ceremonies: read");
    assert_eq!(p.ceremony(&[1; 32], 10).await.unwrap(), Some(c.clone()), "ceremonies: a read takes nothing");
    assert_eq!(p.ceremony(&[3; 32], 500).await.unwrap(), None, "ceremonies: an expired one reads as none");
    assert_eq!(p.ceremony(&[9; 32], 10).await.unwrap(), None);
    let racers = (0..6).map(|_| {
        let p = std::sync::Arc::clone(p);
        tokio::spawn(async move { p.take_ceremony(&[1; 32], 10).await.unwrap().is_some() })
    });
    assert_eq!(futures_count(racers).await, 1, "ceremonies: taken exactly once by concurrent callers");
    assert!(p.take_ceremony(&[3; 32], 500).await.unwrap().is_none(), "ceremonies: an expired one is void");
    p.put_ceremony(&[4; 32], &Ceremony { expires_at: 400, ..c.clone() }).await.unwrap();
    assert_eq!(p.purge_ceremonies(600).await.unwrap(), 1, "ceremonies: purge removes the expired");
    assert_eq!(p.take_ceremony(&[2; 32], 999).await.unwrap(), Some(r.clone()), "ceremonies: round trip");

    // One open registration and one open second-factor check per user: a new one ends the
    // user's others of its kind, and no one else's; discoverable sign-ins are not a user's.
    let bob = Ceremony { owner: Some("bob".into()), ..r.clone() };
    let second = Ceremony { kind: CeremonyKind::SecondFactor, ..r.clone() };
    let bob_second = Ceremony { owner: Some("bob".into()), ..second.clone() };
    let puts = [(5u8, &r), (6, &r), (7, &bob), (8, &second), (9, &r), (10, &second), (11, &bob_second), (12, &second)];
    for (k, c) in puts.into_iter().chain([(13, &c), (14, &c)]) {
        p.put_ceremony(&[k; 32], c).await.unwrap();
    }
    for (k, kept) in [(5u8, false), (6, false), (7, true), (8, false), (9, true), (10, false), (11, true), (12, true)]
        .into_iter()
        .chain([(13, true), (14, true)])
    {
        let found = p.take_ceremony(&[k; 32], 10).await.unwrap().is_some();
        assert_eq!(found, kept, "ceremonies: ceremony {k} kept: {kept}");
    }
    // Begun at once, as many times as anyone likes: one stays open (a review found two
    // begins could each remove the other's before their own insert).
    let carol = Ceremony { owner: Some("carol".into()), ..r.clone() };
    let racers = (20..36u8).map(|k| {
        let (p, carol) = (std::sync::Arc::clone(p), carol.clone());
        tokio::spawn(async move { p.put_ceremony(&[k; 32], &carol).await.unwrap() })
    });
    for racer in racers.collect::<Vec<_>>() {
        racer.await.unwrap();
    }
    let mut open = 0;
    for k in 20..36u8 {
        open += usize::from(p.take_ceremony(&[k; 32], 10).await.unwrap().is_some());
    }
    assert_eq!(open, 1, "ceremonies: one open registration after concurrent begins");
}

async fn users_round_trip(store: &Store) {
    let u = &store.users;
    assert!(u.get("alice").await.unwrap().is_none(), "users: an empty store has no alice");
    u.insert(&user("alice"), HASH_A).await.unwrap();
    assert!(matches!(u.insert(&user("alice"), HASH_B).await, Err(StoreError::AlreadyExists)), "users: unique keys");
    assert_eq!(u.get("alice").await.unwrap(), Some(user("alice")), "users: get");
    let c = u.credential("alice").await.unwrap().unwrap();
    assert_eq!((c.user, c.password_hash.as_str()), (user("alice"), HASH_A), "users: the first insert's hash stays");
    u.insert(&user("bob"), HASH_B).await.unwrap();
    let mut keys: Vec<String> = u.list().await.unwrap().into_iter().map(|u| u.key).collect();
    keys.sort();
    assert_eq!(keys, ["alice", "bob"], "users: list");
    assert_eq!(u.count().await.unwrap(), 2, "users: count");
    assert!(u.delete("alice").await.unwrap(), "users: delete says it deleted");
    assert!(!u.delete("alice").await.unwrap(), "users: a second delete finds nothing");
    assert!(u.get("alice").await.unwrap().is_none() && u.credential("alice").await.unwrap().is_none());
    assert_eq!(u.count().await.unwrap(), 1);
}

async fn groups_change_atomically_and_round_trip(store: &Store) {
    use crate::domain::Group;
    let g = |s: &str| Group::parse(s).unwrap();
    let u = &store.users;
    let mut listed = user("carol");
    listed.groups = vec![g("dev"), g("ops")];
    u.insert(&listed, HASH_A).await.unwrap();
    assert_eq!(u.get("carol").await.unwrap().unwrap().groups, [g("dev"), g("ops")], "groups: insert keeps them");
    let after = u.change_groups("carol", &[g("wiki"), g("dev"), g("admins")], &[g("ops"), g("nope")]).await.unwrap();
    assert_eq!(after.unwrap().groups, [g("admins"), g("dev"), g("wiki")], "groups: added, removed, sorted, no repeats");
    assert_eq!(u.get("carol").await.unwrap().unwrap().groups, [g("admins"), g("dev"), g("wiki")]);
    assert!(u.change_groups("nobody", &[g("x")], &[]).await.unwrap().is_none(), "groups: no such user");
    // Concurrent additions of different groups: none is lost.
    let names: Vec<String> = (0..16).map(|i| format!("g{i}")).collect();
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let (store, n) = (store.clone(), g(n));
            tokio::spawn(async move { store.users.change_groups("carol", &[n], &[]).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let have = u.get("carol").await.unwrap().unwrap().groups;
    assert!(names.iter().all(|n| have.contains(&g(n))), "groups: concurrent changes lose nothing: {have:?}");
    // Other fields are untouched by a change of groups.
    assert_eq!(u.credential("carol").await.unwrap().unwrap().password_hash, HASH_A);
}

/// The credential a sign-in would have verified: `key`'s stored one.
async fn verified(store: &Store, key: &str) -> Credential {
    store.users.credential(key).await.unwrap().unwrap()
}

async fn user_updates_are_explicit_and_compare_and_swap(store: &Store) {
    let u = &store.users;
    u.insert(&user("alice"), HASH_A).await.unwrap();
    assert!(u.set_password_hash("nobody", HASH_B, 5, None).await.unwrap().is_none(), "updates: unknown user");
    assert!(u.set_disabled("nobody", true).await.unwrap().is_none());
    let nobody = Credential { user: user("nobody"), password_hash: HASH_A.into() };
    assert!(u.record_login(&nobody, None, Some(5)).await.unwrap().is_none());

    // The verified password: recorded, with the upgrade.
    let first = verified(store, "alice").await;
    let after = u.record_login(&first, Some(HASH_B), Some(7)).await.unwrap().unwrap();
    assert_eq!(after.last_login_at, Some(7));
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_B, "updates: upgrade stored");
    // Verified before that upgrade, recorded after it: the same password, so a sign-in, and
    // its own upgrade does not replace the one already stored.
    let late = u.record_login(&first, Some("late-upgrade"), Some(8)).await.unwrap().unwrap();
    assert_eq!(late.last_login_at, Some(8), "updates: an upgrade by another sign-in is no password change");
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_B);

    let changed = u.set_password_hash("alice", HASH_A2, 9, None).await.unwrap().unwrap();
    assert_eq!((changed.password_changed_at, changed.last_login_at), (9, Some(8)), "updates: only what was asked");
    assert!(u.record_login(&first, None, Some(10)).await.unwrap().is_none(), "updates: old password refused");
    // Two changes within one millisecond are still two passwords.
    let second = verified(store, "alice").await;
    let again = u.set_password_hash("alice", HASH_A, 9, None).await.unwrap().unwrap();
    assert!(again.password_changed_at > second.user.password_changed_at, "updates: the generation increases");
    assert!(u.record_login(&second, None, Some(10)).await.unwrap().is_none(), "updates: same-millisecond change");
    u.set_password_hash("alice", HASH_A2, 9, None).await.unwrap().unwrap();
    // A new generation without a new password: the hash stays, the generation moves on.
    let before = verified(store, "alice").await;
    let renewed = u.renew_generation("alice", 9, None).await.unwrap().unwrap();
    assert!(renewed.password_changed_at > before.user.password_changed_at, "updates: renewed generation");
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_A2, "updates: hash kept");
    assert!(u.record_login(&before, None, Some(10)).await.unwrap().is_none(), "updates: check from before refused");
    assert!(u.renew_generation("nobody", 9, None).await.unwrap().is_none(), "updates: renew an unknown user");
    // From a given generation: only while it is still the user's.
    let stale = before.user.password_changed_at;
    assert!(
        u.renew_generation("alice", 9, Some(Holding::generation(stale))).await.unwrap().is_none(),
        "updates: renew from a past one"
    );
    assert_eq!(u.get("alice").await.unwrap().unwrap(), renewed, "updates: nothing changed by it");
    let from = renewed.password_changed_at;
    let next = u.renew_generation("alice", 9, Some(Holding::generation(from))).await.unwrap().unwrap();
    assert!(next.password_changed_at > from, "updates: renew from the current one");
    assert!(
        u.renew_generation("nobody", 9, Some(Holding::generation(from))).await.unwrap().is_none(),
        "updates: renew an unknown user from"
    );
    // A new password from a given generation: likewise.
    let current = next.password_changed_at;
    assert!(
        u.set_password_hash("alice", HASH_A, 9, Some(Holding::generation(from))).await.unwrap().is_none(),
        "updates: from a past one"
    );
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_A2, "updates: hash not changed by it");
    let changed = u.set_password_hash("alice", HASH_A, 9, Some(Holding::generation(current))).await.unwrap().unwrap();
    assert!(changed.password_changed_at > current, "updates: a new password from the current one");
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_A);
    // From a session signed in with a passkey: only while the user still holds it.
    store.passkeys.add_passkey(&passkey(b"k-held", "alice", 9)).await.unwrap();
    let with = |generation| Holding { generation, passkey_id: Some(&b"k-held"[..]) };
    let renewed = u.renew_generation("alice", 9, Some(with(changed.password_changed_at))).await.unwrap();
    let renewed = renewed.expect("updates: renew while the passkey is held");
    assert!(store.passkeys.remove_passkey("alice", b"k-held", 1).await.unwrap());
    let gen = renewed.password_changed_at;
    assert!(u.renew_generation("alice", 9, Some(with(gen))).await.unwrap().is_none(), "updates: its passkey gone");
    assert!(u.set_password_hash("alice", HASH_B, 9, Some(with(gen))).await.unwrap().is_none(), "updates: likewise");
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_A, "updates: hash not changed");
    u.set_password_hash("alice", HASH_A2, 9, None).await.unwrap().unwrap();

    // Disabled: a login checked against the right hash records nothing and says disabled.
    assert!(u.set_disabled("alice", true).await.unwrap().unwrap().disabled);
    let seen = u.record_login(&verified(store, "alice").await, None, Some(11)).await.unwrap().unwrap();
    assert!(seen.disabled && seen.last_login_at == Some(8), "updates: disabled user not signed in");
    assert!(!u.set_disabled("alice", false).await.unwrap().unwrap().disabled);
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_A2);

    // A password that only opens the second step: checked and upgraded, but no sign-in yet.
    let opened = u.record_login(&verified(store, "alice").await, Some(HASH_B), None).await.unwrap().unwrap();
    assert_eq!(opened.last_login_at, Some(8), "updates: no sign-in time before the second step");
    assert_eq!(u.credential("alice").await.unwrap().unwrap().password_hash, HASH_B, "updates: upgraded all the same");
    // The second step (or a passkey) ends the sign-in.
    u.record_sign_in("alice", 12).await.unwrap();
    assert_eq!(u.get("alice").await.unwrap().unwrap().last_login_at, Some(12), "updates: the sign-in recorded");
    u.record_sign_in("nobody", 13).await.unwrap();
    assert!(u.get("nobody").await.unwrap().is_none(), "updates: no user made by a sign-in time");
}

async fn concurrent_updates_lose_nothing(store: &Store) {
    let u = &store.users;
    u.insert(&user("alice"), HASH_A).await.unwrap();
    // Sixteen sign-ins verified the same password and each upgrades its hash: every one is a
    // sign-in, and exactly one of the upgrades is stored.
    let first = verified(store, "alice").await;
    let upgrades: Vec<String> = (0..16).map(|i| format!("{HASH_B}{i}")).collect();
    let tasks: Vec<_> = upgrades
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (users, h, first) = (store.users.clone(), h.clone(), first.clone());
            tokio::spawn(async move { users.record_login(&first, Some(&h), Some(i as u64 + 1)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_some(), "races: a concurrent upgrade never refuses the right password");
    }
    let stored = u.credential("alice").await.unwrap().unwrap();
    assert!(upgrades.contains(&stored.password_hash), "races: one of the upgrades is stored");

    // Logins, a disable and a password change at once: each change is kept.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (users, stored) = (store.users.clone(), stored.clone());
        tasks.push(tokio::spawn(async move {
            users.record_login(&stored, None, Some(100 + i)).await.unwrap();
        }));
    }
    let users = store.users.clone();
    tasks.push(tokio::spawn(async move {
        users.set_disabled("alice", true).await.unwrap();
    }));
    let users = store.users.clone();
    tasks.push(tokio::spawn(async move {
        users.set_password_hash("alice", HASH_A2, 500, None).await.unwrap();
    }));
    for t in tasks {
        t.await.unwrap();
    }
    let c = u.credential("alice").await.unwrap().unwrap();
    assert!(c.user.disabled, "races: the disable was not lost");
    assert_eq!((c.password_hash.as_str(), c.user.password_changed_at), (HASH_A2, 500), "races: the new password");
    assert!(u.record_login(&stored, None, Some(999)).await.unwrap().is_none(), "races: old password refused");
}

async fn the_most_common_hash_kind_is_found(store: &Store) {
    let u = &store.users;
    assert_eq!(u.most_common_hash().await.unwrap(), None, "hash kinds: none without users");
    u.insert(&user("a"), HASH_B).await.unwrap();
    u.insert(&user("b"), HASH_A).await.unwrap();
    u.insert(&user("c"), HASH_A2).await.unwrap();
    let example = u.most_common_hash().await.unwrap().unwrap();
    let shape = crate::password::pool::shape_of;
    assert_eq!(shape(&example), shape(HASH_A), "hash kinds: two of kind A, one of B");
}

async fn sessions_round_trip_and_expire(store: &Store) {
    let s = &store.sessions;
    s.insert(&[1; 32], &session("alice", 1000, 1000)).await.unwrap();
    s.insert(&[2; 32], &session("alice", 2000, 2000)).await.unwrap();
    s.insert(&[3; 32], &session("bob", 3000, 3000)).await.unwrap();
    assert_eq!(s.get(&[1; 32]).await.unwrap(), Some(session("alice", 1000, 1000)), "sessions: get");
    let two = Session { factors: Factors::Two, ..session("dave", 1500, 1500) };
    s.insert(&[7; 32], &two).await.unwrap();
    assert_eq!(s.get(&[7; 32]).await.unwrap(), Some(two), "sessions: the factor count round-trips");
    assert!(s.delete(&[7; 32]).await.unwrap());
    assert!(s.get(&[9; 32]).await.unwrap().is_none());
    assert_eq!(s.count().await.unwrap(), 3);

    s.touch(&[1; 32], 5000).await.unwrap();
    s.touch(&[1; 32], 4000).await.unwrap();
    assert_eq!(s.get(&[1; 32]).await.unwrap().unwrap().last_seen_at, 5000, "sessions: touch never goes back");
    let mut times = s.times_for_user("alice").await.unwrap();
    times.sort_by_key(|t| t.token_hash);
    let got: Vec<_> = times.iter().map(|t| (t.token_hash[0], t.created_at, t.last_seen_at)).collect();
    assert_eq!(got, [(1, 1000, 5000), (2, 2000, 2000)], "sessions: times follow touches");
    let mut listed: Vec<_> = s.list_for_user("alice").await.unwrap().into_iter().map(|x| x.token_hash[0]).collect();
    listed.sort();
    assert_eq!(listed, [1, 2], "sessions: list for a user");

    // Ending a session drops it; touching it afterwards does not bring it back.
    assert!(s.delete(&[2; 32]).await.unwrap() && !s.delete(&[2; 32]).await.unwrap());
    s.touch(&[2; 32], 6000).await.unwrap();
    assert!(s.get(&[2; 32]).await.unwrap().is_none(), "sessions: a touch does not revive");
    assert_eq!(s.times_for_user("alice").await.unwrap().len(), 1);

    s.insert(&[4; 32], &session("alice", 4000, 4000)).await.unwrap();
    assert_eq!(s.delete_for_user("alice", Some(&[4; 32])).await.unwrap(), 1, "sessions: all but one");
    assert!(s.get(&[1; 32]).await.unwrap().is_none() && s.get(&[4; 32]).await.unwrap().is_some());
    assert!(s.get(&[3; 32]).await.unwrap().is_some(), "sessions: other users' stay");

    // Idle 1 s, absolute 10 s, at 10 500 ms: [3] idle (seen 3000), [5] too old, [6] fresh.
    s.insert(&[4; 32], &session("alice", 4000, 10_000)).await.unwrap();
    s.insert(&[5; 32], &session("carol", 400, 10_400)).await.unwrap();
    s.insert(&[6; 32], &session("carol", 9000, 10_400)).await.unwrap();
    assert_eq!(s.purge_expired(1000, 10_000, 10_500).await.unwrap(), 2, "sessions: purge both timeouts");
    let mut alive = Vec::new();
    for h in [3u8, 4, 5, 6] {
        alive.push(s.get(&[h; 32]).await.unwrap().is_some());
    }
    assert_eq!(alive, [false, true, false, true]);
    assert_eq!(s.list_for_user("carol").await.unwrap().len(), 1, "sessions: purge cleans the user index");
}

/// The purge removes a session stamped further ahead of `now` than the clock skew allows (a
/// clock stepped back), at this machine's real time: an engine with a clock of its own
/// (PostgreSQL's) judges "ahead" from the later of the two, so an instance whose clock runs
/// behind does not purge the sessions its peers stamp.
async fn sessions_stamped_too_far_ahead_are_purged(store: &Store) {
    let s = &store.sessions;
    let now = super::now_ms();
    let (idle, absolute) = (3_600_000, 86_400_000);
    // [1] further ahead than the skew allows (by 10 s, more than this test takes), [2] within it.
    s.insert(&[1; 32], &session("carol", now, now + super::CLOCK_SKEW_MS + 10_000)).await.unwrap();
    s.insert(&[2; 32], &session("carol", now, now + super::CLOCK_SKEW_MS - 10_000)).await.unwrap();
    assert_eq!(s.purge_expired(idle, absolute, now).await.unwrap(), 1, "sessions: purge a stamp too far ahead");
    assert!(s.get(&[1; 32]).await.unwrap().is_none() && s.get(&[2; 32]).await.unwrap().is_some());
}

/// `user list` in one read: every user (those without sessions too) with the sessions still
/// valid by the timeouts, both limits exclusive as `SessionCap::has_expired` says; sessions of
/// a key that is no user are no row.
async fn users_list_with_their_valid_sessions_counted(store: &Store) {
    for key in ["alice", "bob", "carol"] {
        store.users.insert(&user(key), HASH_A).await.unwrap();
    }
    let s = &store.sessions;
    s.insert(&[1; 32], &session("alice", 1000, 9800)).await.unwrap(); // valid
    s.insert(&[2; 32], &session("alice", 1000, 8000)).await.unwrap(); // idle 2 s
    s.insert(&[3; 32], &session("alice", 0, 9900)).await.unwrap(); // exactly 10 s old
    s.insert(&[4; 32], &session("alice", 1000, 9000)).await.unwrap(); // exactly 1 s idle
    s.insert(&[5; 32], &session("bob", 9999, 10_050)).await.unwrap(); // seen after `now`: no age
    let at_the_skew = session("bob", 9999, 10_000 + super::CLOCK_SKEW_MS); // as far ahead as allowed: valid
    s.insert(&[9; 32], &at_the_skew).await.unwrap();
    // Stamped further ahead than the clock skew allowed (a clock stepped back): not valid.
    s.insert(&[7; 32], &session("carol", 9999, 10_000 + super::CLOCK_SKEW_MS + 1)).await.unwrap();
    s.insert(&[8; 32], &session("carol", 10_000 + super::CLOCK_SKEW_MS + 1, 10_000)).await.unwrap();
    s.insert(&[6; 32], &session("ghost", 9000, 9900)).await.unwrap(); // no such user
    let cap = SessionCap { max_per_user: 1, idle_ms: 1000, absolute_ms: 10_000 };
    let mut listed: Vec<_> =
        store.users.list_with_sessions(cap, 10_000).await.unwrap().into_iter().map(|(u, n)| (u.key, n)).collect();
    listed.sort();
    let want = [("alice".to_string(), 1), ("bob".to_string(), 2), ("carol".to_string(), 0)];
    assert_eq!(listed, want, "users: listed with their valid sessions");
    let alice = store.users.list_with_sessions(cap, 10_000).await.unwrap().into_iter().find(|(u, _)| u.key == "alice");
    assert_eq!(alice.map(|(u, _)| u), Some(user("alice")), "users: the listing holds the whole user");
}

/// Starting a session ends the previous one (whoever's it was) and keeps the owner within the
/// cap: expired sessions go first, then the least recently used; other users' stay.
async fn a_session_starts_in_place_of_the_previous_one_within_the_cap(store: &Store) {
    let s = &store.sessions;
    // Idle 1 s, absolute 10 s, at most 3 each.
    let cap = SessionCap { max_per_user: 3, idle_ms: 1000, absolute_ms: 10_000 };
    s.insert(&[1; 32], &session("bob", 1000, 1000)).await.unwrap();
    let with_passkey = Session { passkey_id: Some(b"k-1".to_vec()), ..session("alice", 20_000, 20_000) };
    s.start(Some(&[1; 32]), &[2; 32], &with_passkey, cap, 20_000).await.unwrap();
    assert!(s.get(&[1; 32]).await.unwrap().is_none(), "sessions: start ends the previous session");
    assert_eq!(s.get(&[2; 32]).await.unwrap(), Some(with_passkey), "sessions: start stores, its passkey too");
    s.start(Some(&[9; 32]), &[3; 32], &session("alice", 20_100, 20_100), cap, 20_100).await.unwrap();
    // [4]: seen last of all, but past the absolute timeout: it goes before any live one.
    s.insert(&[4; 32], &session("alice", 1, 20_150)).await.unwrap();
    s.insert(&[8; 32], &session("carol", 1, 1)).await.unwrap();
    s.start(None, &[5; 32], &session("alice", 20_200, 20_200), cap, 20_200).await.unwrap();
    let mut kept: Vec<u8> = s.times_for_user("alice").await.unwrap().iter().map(|t| t.token_hash[0]).collect();
    kept.sort();
    assert_eq!(kept, [2, 3, 5], "sessions: past the cap an expired session goes first");
    s.start(None, &[6; 32], &session("alice", 20_300, 20_300), cap, 20_300).await.unwrap();
    let mut kept: Vec<u8> = s.times_for_user("alice").await.unwrap().iter().map(|t| t.token_hash[0]).collect();
    kept.sort();
    assert_eq!(kept, [3, 5, 6], "sessions: then the least recently used");
    // [7]: stamped further ahead than the clock skew allows, so expired, not the newest.
    s.insert(&[7; 32], &session("alice", 20_400, 20_400 + super::CLOCK_SKEW_MS + 1)).await.unwrap();
    s.start(None, &[10; 32], &session("alice", 20_400, 20_400), cap, 20_400).await.unwrap();
    let mut kept: Vec<u8> = s.times_for_user("alice").await.unwrap().iter().map(|t| t.token_hash[0]).collect();
    kept.sort();
    assert_eq!(kept, [5, 6, 10], "sessions: a session stamped ahead goes first");
    assert!(s.get(&[8; 32]).await.unwrap().is_some(), "sessions: another user's sessions are not counted or ended");
}

/// A session goes on under a new token only while its old one is stored; of a sign-out and
/// the going on, racing, exactly one removes the old record, and only a going on that did
/// stores the new one (review 129: a sign-out during a password change was undone by it).
async fn a_session_goes_on_under_a_new_token_only_while_it_is_stored(store: &Store) {
    let s = &store.sessions;
    let cap = SessionCap { max_per_user: 64, idle_ms: 60_000, absolute_ms: 600_000 };
    let alice = session("alice", 1000, 1000);
    s.insert(&[1; 32], &alice).await.unwrap();
    assert!(s.continue_session(&[1; 32], &[2; 32], &alice, cap, 1000).await.unwrap(), "sessions: goes on");
    assert!(s.get(&[1; 32]).await.unwrap().is_none() && s.get(&[2; 32]).await.unwrap() == Some(alice.clone()));
    // Under the same token, into a new generation (`Sessions::restamp`).
    let restamped = Session { password_changed_at: 7, last_seen_at: 1500, ..alice.clone() };
    assert!(s.continue_session(&[2; 32], &[2; 32], &restamped, cap, 1500).await.unwrap(), "sessions: same token");
    assert_eq!(s.get(&[2; 32]).await.unwrap(), Some(restamped), "sessions: restamped in place");
    assert!(!s.continue_session(&[1; 32], &[3; 32], &alice, cap, 1000).await.unwrap(), "sessions: ended first");
    assert!(s.get(&[3; 32]).await.unwrap().is_none(), "sessions: nothing stored for an ended session");
    // Going on under a new token leaves a link from the old one, for a minute.
    assert_eq!(s.successor(&[1; 32], 1000).await.unwrap(), Some([2; 32]), "sessions: the old token leads on");
    assert_eq!(s.successor(&[2; 32], 1500).await.unwrap(), None, "sessions: the same token is no link");
    assert_eq!(s.predecessor(&[2; 32], 1000).await.unwrap(), Some([1; 32]), "sessions: and back");
    assert_eq!(s.predecessor(&[1; 32], 1000).await.unwrap(), None, "sessions: the first token has none");
    let late = 1000 + super::SUCCESSOR_MS + 1;
    assert_eq!(s.successor(&[1; 32], late).await.unwrap(), None, "sessions: a link past its minute leads nowhere");
    assert_eq!(s.predecessor(&[2; 32], late).await.unwrap(), None, "sessions: either way");
    s.purge_expired(u64::MAX / 4, u64::MAX / 4, late).await.unwrap();
    assert_eq!(s.successor(&[1; 32], 1000).await.unwrap(), None, "sessions: and is purged");
    for round in 0..20u8 {
        let (old, new) = ([100 + round; 32], [200 - round; 32]);
        s.insert(&old, &alice).await.unwrap();
        let (ended, went_on) = tokio::join!(s.delete(&old), s.continue_session(&old, &new, &alice, cap, 1000));
        let (ended, went_on) = (ended.unwrap(), went_on.unwrap());
        assert!(ended != went_on, "sessions: exactly one of a sign-out and a going on takes the old record");
        assert_eq!(s.get(&new).await.unwrap().is_some(), went_on, "sessions: the new one stored only if it went on");
    }
}

/// Removing a passkey's sessions ends exactly those of its user signed in with it: not the
/// user's others (a password, another passkey), nor another user's with the same id.
async fn sessions_signed_in_with_a_passkey_end_with_it(store: &Store) {
    let s = &store.sessions;
    let with = |user_key: &str, id: &[u8]| Session { passkey_id: Some(id.to_vec()), ..session(user_key, 10, 10) };
    s.insert(&[1; 32], &with("alice", b"k-lost")).await.unwrap();
    s.insert(&[2; 32], &with("alice", b"k-lost")).await.unwrap();
    s.insert(&[3; 32], &with("alice", b"k-kept")).await.unwrap();
    s.insert(&[4; 32], &session("alice", 10, 10)).await.unwrap();
    s.insert(&[5; 32], &with("bob", b"k-lost")).await.unwrap();
    s.insert(&[6; 32], &with("alice", b"k-lost")).await.unwrap();
    let n = s.delete_for_passkey("alice", b"k-lost", Some(&[6; 32])).await.unwrap();
    assert_eq!(n, 2, "sessions: the passkey's two, not the one kept");
    let mut left = Vec::new();
    for h in 1..=6u8 {
        left.push(s.get(&[h; 32]).await.unwrap().is_some());
    }
    assert_eq!(left, [false, false, true, true, true, true], "sessions: only the passkey's, only its user's");
    assert_eq!(s.list_for_user("alice").await.unwrap().len(), 3, "sessions: the user's index follows");
    let kept = s.get(&[6; 32]).await.unwrap().unwrap();
    assert_eq!(kept.passkey_id, None, "sessions: the kept one goes on without the passkey");
    assert_eq!(kept, Session { passkey_id: None, ..with("alice", b"k-lost") }, "sessions: and is otherwise as it was");
    assert_eq!(s.get(&[5; 32]).await.unwrap().unwrap().passkey_id.as_deref(), Some(&b"k-lost"[..]), "another user's");
    // Kept, a session of another passkey is not released from it.
    assert_eq!(s.delete_for_passkey("alice", b"k-lost", Some(&[3; 32])).await.unwrap(), 0);
    assert_eq!(s.get(&[3; 32]).await.unwrap().unwrap().passkey_id.as_deref(), Some(&b"k-kept"[..]));
    assert_eq!(s.delete_for_passkey("alice", b"k-lost", None).await.unwrap(), 0, "sessions: none the third time");
}

/// Removing the authenticator app's sessions ends exactly its user's two-factor sessions
/// without a passkey: not those of one factor or a passkey, nor another user's, nor the kept one.
async fn sessions_signed_in_with_the_app_end_with_it(store: &Store) {
    let s = &store.sessions;
    let two = |user_key: &str| Session { factors: Factors::Two, ..session(user_key, 10, 10) };
    let passkey = Session { passkey_id: Some(b"k".to_vec()), ..two("alice") };
    s.insert(&[1; 32], &two("alice")).await.unwrap();
    s.insert(&[2; 32], &two("alice")).await.unwrap();
    s.insert(&[3; 32], &passkey).await.unwrap();
    s.insert(&[4; 32], &session("alice", 10, 10)).await.unwrap();
    s.insert(&[5; 32], &two("bob")).await.unwrap();
    s.insert(&[6; 32], &two("alice")).await.unwrap();
    assert_eq!(
        s.delete_for_app("alice", Some(&[6; 32])).await.unwrap(),
        2,
        "sessions: the app's two, not the kept one"
    );
    let mut left = Vec::new();
    for h in 1..=6u8 {
        left.push(s.get(&[h; 32]).await.unwrap().is_some());
    }
    assert_eq!(left, [false, false, true, true, true, true], "sessions: only the app's, only its user's");
    assert_eq!(s.list_for_user("alice").await.unwrap().len(), 3, "sessions: the user's index follows");
    assert_eq!(s.delete_for_app("alice", None).await.unwrap(), 1, "sessions: the kept one, unkept");
}

/// 12 sign-ins of one user at once, at a cap of 16 over 8 older sessions: exactly the 4
/// oldest go, never one just started (issue 10's race, on every engine).
async fn simultaneous_starts_at_the_cap_end_only_the_sessions_past_it(store: &Store) {
    let cap = SessionCap { max_per_user: 16, idle_ms: 600_000, absolute_ms: 3_600_000 };
    for i in 0..8u8 {
        let t = 1000 + u64::from(i);
        store.sessions.start(None, &[i; 32], &session("alice", t, t), cap, t).await.unwrap();
    }
    let starts: Vec<_> = (0..12u8)
        .map(|i| {
            let sessions = std::sync::Arc::clone(&store.sessions);
            tokio::spawn(async move {
                let hash = [100 + i; 32];
                sessions.start(None, &hash, &session("alice", 5000, 5000), cap, 5000).await.unwrap();
            })
        })
        .collect();
    for t in starts {
        t.await.unwrap();
    }
    let mut kept: Vec<u8> =
        store.sessions.times_for_user("alice").await.unwrap().iter().map(|t| t.token_hash[0]).collect();
    kept.sort();
    let want: Vec<u8> = (4..8).chain(100..112).collect();
    assert_eq!(kept, want, "sessions: simultaneous starts end the oldest past the cap, no more and no fewer");
}

/// `SessionStore::resolve`: the session, its user, and (when asked) that user's sessions and
/// nobody else's, whatever their times (expiry is the caller's judgement).
async fn a_session_resolves_with_its_user_and_only_that_users_sessions(store: &Store) {
    let s = &store.sessions;
    let alice = User { groups: vec![crate::domain::Group::parse("staff").unwrap()], ..user("alice") };
    store.users.insert(&alice, HASH_A).await.unwrap();
    store.users.insert(&user("bob"), HASH_A).await.unwrap();
    assert!(s.resolve(&[1; 32], false).await.unwrap().is_none(), "resolve: no session");
    assert!(s.resolve(&[1; 32], true).await.unwrap().is_none(), "resolve: no session, listing");

    s.insert(&[1; 32], &session("alice", 1000, 1000)).await.unwrap();
    let alone = s.resolve(&[1; 32], true).await.unwrap().expect("resolve: a session");
    let one = vec![super::StoredSession { token_hash: [1; 32], record: session("alice", 1000, 1000) }];
    assert_eq!(alone.user_sessions, one, "resolve: a lone session lists itself");

    let two = Session { factors: Factors::Two, passkey_id: Some(b"k-alice".to_vec()), ..session("alice", 2000, 2500) };
    s.insert(&[2; 32], &two).await.unwrap();
    // Long expired: still listed, the caller judges.
    s.insert(&[3; 32], &session("alice", 1, 1)).await.unwrap();
    s.insert(&[4; 32], &session("bob", 4000, 4000)).await.unwrap();
    s.insert(&[5; 32], &session("bob", 5000, 5000)).await.unwrap();
    s.insert(&[6; 32], &session("alicia", 6000, 6000)).await.unwrap();

    let plain = s.resolve(&[2; 32], false).await.unwrap().expect("resolve: a session");
    assert_eq!(plain.session, two, "resolve: the session whole");
    assert_eq!(plain.user.as_ref(), Some(&alice), "resolve: its user whole");
    assert!(plain.user_sessions.is_empty(), "resolve: no list unless asked");

    let listed = s.resolve(&[2; 32], true).await.unwrap().expect("resolve: a session");
    assert_eq!((&listed.session, listed.user.as_ref()), (&two, Some(&alice)), "resolve: the same, listing");
    let mut got = listed.user_sessions.clone();
    got.sort_by_key(|x| x.token_hash);
    let mut want = s.list_for_user("alice").await.unwrap();
    want.sort_by_key(|x| x.token_hash);
    assert_eq!(got, want, "resolve: the list is list_for_user's, times and factors included");
    let hashes: Vec<u8> = got.iter().map(|x| x.token_hash[0]).collect();
    assert_eq!(hashes, [1, 2, 3], "resolve: every session of the user and no other user's");

    let bobs = s.resolve(&[5; 32], true).await.unwrap().expect("resolve: bob's session");
    let mut hashes: Vec<u8> = bobs.user_sessions.iter().map(|x| x.token_hash[0]).collect();
    hashes.sort();
    assert_eq!((bobs.user.map(|u| u.key), hashes), (Some("bob".into()), vec![4, 5]), "resolve: bob's own");

    store.users.set_disabled("bob", true).await.unwrap();
    let disabled = s.resolve(&[4; 32], false).await.unwrap().expect("resolve: the session stays");
    assert!(disabled.user.expect("resolve: a disabled user is there").disabled, "resolve: disabled shows");

    // A user deleted (or never stored): the session still resolves, without a user.
    assert!(store.users.delete("alice").await.unwrap());
    let orphan = s.resolve(&[1; 32], true).await.unwrap().expect("resolve: the session outlives its user");
    assert_eq!((orphan.session, orphan.user), (session("alice", 1000, 1000), None), "resolve: user gone");
    assert_eq!(orphan.user_sessions.len(), 3, "resolve: the list does not need the user");
    let nobody = s.resolve(&[6; 32], false).await.unwrap().expect("resolve: a session of no user");
    assert!(nobody.user.is_none(), "resolve: no such user");
    assert!(s.delete(&[2; 32]).await.unwrap());
    assert!(s.resolve(&[2; 32], true).await.unwrap().is_none(), "resolve: an ended session is gone");
}

async fn failures_query_and_page_without_gaps_or_repeats(store: &Store) {
    let f = &store.failures;
    let mut cursors = Vec::new();
    for i in 0..10u64 {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let ip = if i < 5 { "192.0.2.1" } else { "198.51.100.7" };
        let reason = if i == 9 { FailureReason::Csrf } else { FailureReason::BadPassword };
        // Two records share each millisecond: cursors still order them.
        cursors.push(f.append(&failure(1000 + i / 2, ip, user, reason), user, None).await.unwrap().at);
    }
    assert_eq!(f.count().await.unwrap(), 10);
    let all = f.query(&FailureQuery::default()).await.unwrap();
    let got: Vec<_> = all.iter().map(|(c, _)| *c).collect();
    let mut expected = cursors.clone();
    expected.reverse();
    assert_eq!(got, expected, "failures: newest first, in append order within a millisecond");

    let times = |v: Vec<(super::Cursor, FailureRecord)>| v.into_iter().map(|(_, r)| r.time).collect::<Vec<_>>();
    let q = FailureQuery { since: Some(1001), until: Some(1002), ..Default::default() };
    assert_eq!(times(f.query(&q).await.unwrap()), [1002, 1002, 1001, 1001], "failures: inclusive range");
    let q = FailureQuery { user_key: Some("alice".into()), ..Default::default() };
    assert_eq!(f.query(&q).await.unwrap().len(), 5, "failures: by user");
    let q = FailureQuery { ip: Some("198.51.100.0/24".parse().unwrap()), ..Default::default() };
    assert_eq!(f.query(&q).await.unwrap().len(), 5, "failures: by network");
    let q =
        FailureQuery { ip: Some("192.0.2.1/32".parse().unwrap()), user_key: Some("bob".into()), ..Default::default() };
    assert_eq!(times(f.query(&q).await.unwrap()), [1001, 1000], "failures: by address and user");
    let q = FailureQuery { reason: Some(FailureReason::Csrf), ..Default::default() };
    assert_eq!(f.query(&q).await.unwrap().len(), 1, "failures: by reason");

    // Keyset pages of 3, with and without a filter, meet every record once.
    for user_key in [None, Some("alice".to_string())] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let q = FailureQuery { limit: 3, before, user_key: user_key.clone(), ..Default::default() };
            let page = f.query(&q).await.unwrap();
            let Some((last, _)) = page.last() else { break };
            before = Some(*last);
            seen.extend(page.iter().map(|(c, _)| *c));
        }
        let want: Vec<_> =
            all.iter().filter(|(_, r)| user_key.as_deref().is_none_or(|u| r.username == u)).map(|(c, _)| *c).collect();
        assert_eq!(seen, want, "failures: paging by cursor ({user_key:?})");
    }
    // A cursor survives its text form.
    let text = cursors[3].encode();
    assert_eq!(super::Cursor::parse(&text), Some(cursors[3]));

    f.set_count(&cursors[9], 42).await.unwrap();
    let newest = f.query(&FailureQuery { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(newest[0].1.count, 42, "failures: set count");

    assert_eq!(f.purge_before(1002).await.unwrap(), 4, "failures: purge before a time");
    assert_eq!(f.count().await.unwrap(), 6);
    let q = FailureQuery { user_key: Some("alice".into()), ..Default::default() };
    assert_eq!(f.query(&q).await.unwrap().len(), 3, "failures: purge cleans the indexes");
    // A purged record's count cannot be set (it stays purged).
    f.set_count(&cursors[0], 5).await.unwrap();
    assert_eq!(f.count().await.unwrap(), 6);
}

async fn the_record_cap_keeps_the_newest(store: &Store) {
    let f = &store.failures;
    let mut before_counting = 0;
    for i in 0..5u64 {
        let record = failure(1000 + i, "192.0.2.1", "alice", FailureReason::Csrf);
        before_counting += f.append(&record, "alice", Some(3)).await.unwrap().dropped;
    }
    let capped = f.enforce_cap(Some(3)).await.unwrap();
    assert_eq!(capped.kept, 3, "cap: counting trims to the cap");
    // An engine may apply the cap before the first count (PostgreSQL does): either way the two
    // records over it are said to have gone, once.
    assert_eq!(before_counting + capped.dropped, 2, "cap: what went is counted");
    let mut dropped = Vec::new();
    for i in 5..10u64 {
        let record = failure(1000 + i, "192.0.2.1", "alice", FailureReason::Csrf);
        dropped.push(f.append(&record, "alice", Some(3)).await.unwrap().dropped);
    }
    assert_eq!(dropped, [1; 5], "cap: each append at the cap says it pushed one record out");
    let records = f.query(&FailureQuery::default()).await.unwrap();
    let times: Vec<u64> = records.iter().map(|(_, r)| r.time).collect();
    assert_eq!(times, [1009, 1008, 1007], "cap: the newest are kept");
    assert_eq!(f.count().await.unwrap(), 3);
    let q = FailureQuery { user_key: Some("alice".into()), ..Default::default() };
    assert_eq!(f.query(&q).await.unwrap().len(), 3, "cap: dropped records leave no index entries");
    let q = FailureQuery { ip: Some("192.0.2.1/32".parse().unwrap()), ..Default::default() };
    assert_eq!(f.query(&q).await.unwrap().len(), 3);
    let record = failure(1010, "192.0.2.1", "alice", FailureReason::Csrf);
    assert_eq!(f.append(&record, "alice", None).await.unwrap().dropped, 0, "cap: none dropped without one");
}

async fn secrets_are_stable_and_agreed_on(store: &Store) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let secrets = store.secrets.clone();
            tokio::spawn(async move { secrets.secret("csrf").await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "secrets: concurrent first users agree");
    assert_eq!(store.secrets.secret("csrf").await.unwrap(), seen[0], "secrets: stable");
    assert_ne!(store.secrets.secret("captcha").await.unwrap(), seen[0], "secrets: one per name");
    // A claimed value: the first claim stays, until it is forgotten.
    assert_eq!(store.secrets.get("fingerprint").await.unwrap(), None, "secrets: none before the claim");
    assert_eq!(store.secrets.claim("fingerprint", &[7; 32]).await.unwrap(), [7; 32], "secrets: claimed");
    assert_eq!(store.secrets.get("fingerprint").await.unwrap(), Some([7; 32]), "secrets: read");
    assert_eq!(store.secrets.claim("fingerprint", &[8; 32]).await.unwrap(), [7; 32], "secrets: the first claim stays");
    assert!(store.secrets.forget("fingerprint").await.unwrap(), "secrets: forgotten");
    assert!(!store.secrets.forget("fingerprint").await.unwrap(), "secrets: forgotten once");
    assert_eq!(store.secrets.get("fingerprint").await.unwrap(), None, "secrets: none once forgotten");
    assert_eq!(store.secrets.claim("fingerprint", &[8; 32]).await.unwrap(), [8; 32], "secrets: claimed anew");
}

/// What [`everything_written_is_there`] checks after a reopen; returns the secret made.
async fn write_everything(store: &Store) -> [u8; 32] {
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    store.users.record_login(&verified(store, "alice").await, Some(HASH_B), Some(77)).await.unwrap();
    store.users.insert(&user("bob"), HASH_A).await.unwrap();
    store.users.set_disabled("bob", true).await.unwrap();
    store.users.change_groups("bob", &[crate::domain::Group::parse("ops").unwrap()], &[]).await.unwrap();
    store.sessions.insert(&[1; 32], &session("alice", 10, 10)).await.unwrap();
    store.sessions.touch(&[1; 32], 20).await.unwrap();
    let at = store.failures.append(&failure(5, "192.0.2.1", "eve", FailureReason::Csrf), "eve", None).await.unwrap().at;
    store.failures.set_count(&at, 3).await.unwrap();
    store.passkeys.add_passkey(&passkey(b"pk", "alice", 30)).await.unwrap();
    store.passkeys.record_passkey_use(b"pk", &used("used", 4, 40)).await.unwrap();
    let ceremony = Ceremony {
        kind: CeremonyKind::Register,
        owner: Some("alice".into()),
        state: "s".into(),
        expires_at: u64::MAX / 2,
    };
    store.passkeys.put_ceremony(&[5; 32], &ceremony).await.unwrap();
    store.secrets.secret("csrf").await.unwrap()
}

async fn everything_written_is_there(store: &Store, secret: [u8; 32]) {
    let alice = store.users.credential("alice").await.unwrap().expect("durability: alice");
    assert_eq!((alice.user.last_login_at, alice.password_hash.as_str()), (Some(77), HASH_B), "durability: login");
    let bob = store.users.get("bob").await.unwrap().unwrap();
    assert!(bob.disabled, "durability: disable");
    assert_eq!(bob.groups, [crate::domain::Group::parse("ops").unwrap()], "durability: groups");
    assert_eq!(store.sessions.get(&[1; 32]).await.unwrap().unwrap().last_seen_at, 20, "durability: session");
    let records = store.failures.query(&FailureQuery::default()).await.unwrap();
    assert_eq!(records.len(), 1, "durability: failure record");
    assert_eq!(records[0].1.count, 3, "durability: its count");
    assert_eq!(store.secrets.secret("csrf").await.unwrap(), secret, "durability: the secret");
    let pk = store.passkeys.passkey(b"pk").await.unwrap().expect("durability: the passkey");
    assert_eq!((pk.sign_count, pk.passkey.as_str()), (4, "used"), "durability: the passkey's use");
    assert!(store.passkeys.take_ceremony(&[5; 32], 1).await.unwrap().is_some(), "durability: the ceremony");
}

async fn failure_records_keep_their_instance(store: &Store) {
    let f = &store.failures;
    let mut one = failure(1000, "192.0.2.1", "alice", FailureReason::BadPassword);
    one.instance = "web-2".into();
    one.known_browser = true;
    f.append(&one, "alice", None).await.unwrap();
    f.append(&failure(1001, "192.0.2.1", "alice", FailureReason::BadPassword), "alice", None).await.unwrap();
    let got: Vec<(String, bool)> = f
        .query(&FailureQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| (r.instance, r.known_browser))
        .collect();
    let want = [("web-1".to_string(), false), ("web-2".to_string(), true)];
    assert_eq!(got, want, "instance and known_browser: each record keeps what it was written with");
}

/// Everything `store copy` moves, read back whole from a copy: users (`==` on the whole
/// record, so a field an engine does not carry fails here), sessions, failure records in
/// order, and secrets; paged exports meet every record once; a target that is not empty is
/// refused untouched.
async fn every_record_survives_export_and_import(from: &Store, to: &Store) {
    let u = &from.users;
    u.insert(&user("alice"), HASH_A).await.unwrap();
    u.record_login(&verified(from, "alice").await, Some(HASH_B), Some(77)).await.unwrap();
    u.insert(&User { admin: true, ..user("root") }, HASH_A2).await.unwrap();
    u.insert(&user("bob"), HASH_A).await.unwrap();
    u.set_disabled("bob", true).await.unwrap();
    let two = Session { factors: Factors::Two, passkey_id: Some(vec![0xff; 1023]), ..session("alice", 10, 20) };
    from.sessions.insert(&[1; 32], &two).await.unwrap();
    from.sessions.insert(&[2; 32], &session("bob", 30, 40)).await.unwrap();
    from.sessions.insert(&[3; 32], &session("root", 50, 60)).await.unwrap();
    for i in 0..7u64 {
        // Pairs of records share a millisecond: the copy keeps their order.
        let mut r = failure(5000 + i / 2, "2001:db8::1", &format!("user{i}"), FailureReason::ALL[i as usize]);
        r.typed = (i % 2 == 0).then(|| format!("  User{i}"));
        r.count = i + 1;
        r.instance = format!("web-{i}");
        r.known_browser = i % 3 == 0;
        from.failures.append(&r, &r.username, None).await.unwrap();
    }
    let csrf = from.secrets.secret("csrf").await.unwrap();
    let captcha = from.secrets.secret("captcha").await.unwrap();
    // Second factors with every field set (alice), with only a used step (bob, whose TOTP
    // was removed: the step must still hold on the copy), and passkeys with every field set.
    let f = &from.factors;
    f.set_totp("alice", &TotpFactor { sealed_secret: vec![1, 2, 3], created_at: 11 }, None).await.unwrap();
    assert!(f.use_totp_step("alice", 12_345).await.unwrap());
    f.set_recovery_codes("alice", &[[4; 32], [5; 32], [6; 32]], None).await.unwrap();
    assert_eq!(f.use_recovery_code("alice", &[6; 32]).await.unwrap(), RecoveryCodeUse::Used);
    f.set_totp("bob", &TotpFactor { sealed_secret: vec![9], created_at: 13 }, None).await.unwrap();
    assert!(f.use_totp_step("bob", 77).await.unwrap());
    assert!(f.remove_totp("bob", None).await.unwrap());
    let p = &from.passkeys;
    let laptop = StoredPasskey { user_handle: [3; 16], name: "laptop".into(), ..passkey(b"k-used", "alice", 14) };
    p.add_passkey(&laptop).await.unwrap();
    assert!(p.record_passkey_use(b"k-used", &used(r#"{"cred":{"n":7}}"#, 7, 15)).await.unwrap());
    assert!(p.flag_possible_clone(b"k-used", 16).await.unwrap());
    p.add_passkey(&passkey(b"k-new", "root", 16)).await.unwrap();
    p.add_passkey(&passkey(&[0xff; 1023], "root", 17)).await.unwrap();
    p.add_passkey(&passkey(b"k-lost", "alice", 18)).await.unwrap();
    assert!(p.remove_passkey("alice", b"k-lost", 19).await.unwrap());
    p.add_passkey(&passkey(b"k-reset", "bob", 20)).await.unwrap();
    assert_eq!(p.remove_passkeys_of("bob", 21).await.unwrap(), 1);

    // Paged exports meet every record once, in their order.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = u.export(after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.user.key.clone());
        paged.extend(page.iter().map(|c| c.user.key.clone()));
    }
    assert_eq!(paged, ["alice", "bob", "root"], "export: users in key order, paged");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = from.sessions.export(after.as_ref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.token_hash);
        paged.extend(page.iter().map(|s| s.token_hash[0]));
    }
    assert_eq!(paged, [1, 2, 3], "export: sessions in hash order, paged");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = from.failures.export(after, 3).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        paged.extend(page.into_iter().map(|(_, r)| r));
    }
    let newest_first: Vec<FailureRecord> =
        from.failures.query(&FailureQuery::default()).await.unwrap().into_iter().map(|(_, r)| r).collect();
    assert_eq!(paged, newest_first.iter().rev().cloned().collect::<Vec<_>>(), "export: failures oldest first");

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = f.export(after.as_deref(), 1).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.user_key.clone());
        paged.extend(page);
    }
    let factors = vec![
        UserFactors {
            user_key: "alice".into(),
            totp: Some(TotpFactor { sealed_secret: vec![1, 2, 3], created_at: 11 }),
            last_totp_step: Some(12_345),
            recovery_hashes: vec![[4; 32], [5; 32]],
            used_recovery_hashes: vec![[6; 32]],
        },
        UserFactors { user_key: "bob".into(), last_totp_step: Some(77), ..UserFactors::default() },
    ];
    assert_eq!(paged, factors, "export: second factors whole, in user order, paged");
    let mut paged = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = p.export_passkeys(after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page.into_iter().map(|k| k.id));
    }
    assert_eq!(paged, [b"k-new".to_vec(), b"k-used".to_vec(), vec![0xff; 1023]], "export: passkeys in id order, paged");
    let mut paged = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = p.export_removed_passkeys(after.as_deref(), 1).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page);
    }
    let removed = [
        RemovedPasskey { id: b"k-lost".to_vec(), user_key: "alice".into(), removed_at: 19 },
        RemovedPasskey { id: b"k-reset".to_vec(), user_key: "bob".into(), removed_at: 21 },
    ];
    assert_eq!(paged, removed, "export: whose removed passkeys were, in id order, paged");

    let copied = copy(from, to).await.unwrap();
    assert_eq!(
        copied,
        Copied { users: 3, factors: 2, passkeys: 3, removed_passkeys: 2, sessions: 3, failures: 7, secrets: 2 },
        "copy: the counts"
    );
    assert_eq!(
        to.passkeys.export_removed_passkeys(None, usize::MAX).await.unwrap(),
        removed,
        "copy: whose removed passkeys were, and when they were removed"
    );
    assert_eq!(to.passkeys.former_owner(b"k-lost").await.unwrap().as_deref(), Some("alice"));
    assert_eq!(to.factors.export(None, usize::MAX).await.unwrap(), factors, "copy: second factors whole");
    assert!(!to.factors.use_totp_step("alice", 12_345).await.unwrap(), "copy: a used TOTP step stays used");
    assert!(!to.factors.use_totp_step("bob", 77).await.unwrap(), "copy: a used step without TOTP stays used");
    assert_eq!(
        to.factors.use_recovery_code("alice", &[6; 32]).await.unwrap(),
        RecoveryCodeUse::UsedBefore,
        "copy: a used recovery code stays known as used"
    );
    assert_eq!(
        to.passkeys.export_passkeys(None, usize::MAX).await.unwrap(),
        p.export_passkeys(None, usize::MAX).await.unwrap(),
        "copy: passkeys whole (name, times, sign count, user handle)"
    );
    let copied_used = to.passkeys.passkey(b"k-used").await.unwrap().unwrap();
    assert_eq!((copied_used.sign_count, copied_used.last_used_at, copied_used.user_handle), (7, Some(15), [3; 16]));
    assert_eq!(to.passkeys.passkeys_of("root").await.unwrap().len(), 2, "copy: passkeys found by their owner");
    let sorted_users = |mut v: Vec<Credential>| {
        v.sort_by(|a, b| a.user.key.cmp(&b.user.key));
        v
    };
    assert_eq!(
        sorted_users(to.users.export(None, usize::MAX).await.unwrap()),
        sorted_users(u.export(None, usize::MAX).await.unwrap()),
        "copy: users whole, hashes included"
    );
    assert_eq!(
        to.sessions.export(None, usize::MAX).await.unwrap(),
        from.sessions.export(None, usize::MAX).await.unwrap(),
        "copy: sessions whole, factors included"
    );
    let copied_records: Vec<FailureRecord> =
        to.failures.query(&FailureQuery::default()).await.unwrap().into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        copied_records, newest_first,
        "copy: failure records in order, with typed, count, instance and known_browser"
    );
    let q = FailureQuery { user_key: Some("user3".into()), ..Default::default() };
    assert_eq!(to.failures.query(&q).await.unwrap().len(), 1, "copy: the username filter finds copied records");
    assert_eq!(to.secrets.secret("csrf").await.unwrap(), csrf, "copy: the CSRF key");
    assert_eq!(to.secrets.secret("captcha").await.unwrap(), captcha, "copy: the captcha key");
    assert!(to.users.record_login(&verified(to, "alice").await, None, Some(99)).await.unwrap().is_some());

    // A second copy into the same target: refused, and nothing more is written.
    match copy(from, to).await {
        Err(CopyError::NotEmpty(held)) => assert_eq!(held, copied, "copy: the refusal says what is there"),
        other => panic!("copy into a store that is not empty: {other:?}"),
    }
    assert_eq!(to.failures.count().await.unwrap(), 7, "copy: a refused copy writes nothing");
    assert_eq!(to.passkeys.count_passkeys().await.unwrap(), 3);

    assert_eq!(to.users.count().await.unwrap(), 3);
}

/// The emptiness check counts second-factor records too: a copy over a user's leftover used
/// TOTP step could otherwise fail halfway (or, merged, accept a used code again).
async fn a_target_holding_only_second_factors_is_not_empty(from: &Store, to: &Store) {
    let leftover = UserFactors { user_key: "gone".into(), last_totp_step: Some(5), ..Default::default() };
    to.factors.import(&[leftover]).await.unwrap();
    match copy(from, to).await {
        Err(CopyError::NotEmpty(held)) => {
            assert_eq!(held, Copied { factors: 1, ..Copied::default() }, "copy: second factors count as records")
        }
        other => panic!("copy into a store holding second factors: {other:?}"),
    }
}

/// Wrong codes in a row (`sign_in::WRONG_CODES_IN_A_ROW`): counted per run, at once from
/// several callers without losing one, started again by another run, gone with the factors,
/// and never made for a user without them.
async fn wrong_codes_count_in_their_run_and_go_with_the_factors(store: &Store) {
    let f = &store.factors;
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    assert_eq!(f.add_wrong_code("alice", 10).await.unwrap(), 0, "wrong codes: none without factors");
    assert_eq!(f.count().await.unwrap(), 0, "wrong codes: no record made for a count");
    assert!(f.set_totp("alice", &TotpFactor { sealed_secret: vec![1], created_at: 5 }, None).await.unwrap());
    assert_eq!(f.wrong_codes("alice", 10).await.unwrap(), 0);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let factors = store.factors.clone();
            tokio::spawn(async move { factors.add_wrong_code("alice", 10).await.unwrap() })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=8).collect::<Vec<_>>(), "wrong codes: each caller counted one");
    assert_eq!(f.wrong_codes("alice", 10).await.unwrap(), 8);
    assert_eq!(f.wrong_codes("alice", 11).await.unwrap(), 0, "wrong codes: another run's count is none");
    assert_eq!(f.add_wrong_code("alice", 11).await.unwrap(), 1, "wrong codes: a new run starts again");
    assert_eq!(f.wrong_codes("alice", 10).await.unwrap(), 0);
    assert!(f.set_recovery_codes("alice", &[[7; 32]], None).await.unwrap());
    assert_eq!(f.wrong_codes("alice", 11).await.unwrap(), 1, "wrong codes: kept through other factor changes");
    f.clear("alice").await.unwrap();
    assert_eq!(f.wrong_codes("alice", 11).await.unwrap(), 0, "wrong codes: gone with the factors");
}

async fn second_factors_round_trip_and_are_used_once(store: &Store) {
    let f = &store.factors;
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    assert_eq!(f.summary("alice").await.unwrap(), FactorSummary::default(), "factors: none at first");
    let totp = TotpFactor { sealed_secret: vec![1, 2, 3], created_at: 5 };
    assert!(!f.set_totp("nobody", &totp, None).await.unwrap(), "factors: no TOTP for an unknown user");
    assert!(!f.set_recovery_codes("nobody", &[[1; 32]], None).await.unwrap());
    assert!(f.any_totp().await.unwrap().is_none(), "factors: nobody has TOTP yet");
    assert!(f.set_totp("alice", &totp, None).await.unwrap());
    assert_eq!(f.totp("alice").await.unwrap(), Some(totp.clone()), "factors: TOTP round trip");
    let summary = f.summary("alice").await.unwrap();
    assert_eq!(f.summary_with_generation("alice").await.unwrap(), (summary, Some(1)), "factors: with the generation");
    let none = (FactorSummary::default(), None);
    assert_eq!(f.summary_with_generation("nobody").await.unwrap(), none, "factors: nobody's");
    // Enrolments are compare-and-set on the authenticator they replace: of two begun from one
    // state (two windows), one is stored; a replacement names the one it replaces.
    let other = TotpFactor { sealed_secret: vec![4, 5], created_at: 6 };
    assert!(!f.set_totp("alice", &other, None).await.unwrap(), "factors: one is there already");
    assert!(!f.set_totp("alice", &other, Some(4)).await.unwrap(), "factors: not the one there");
    assert_eq!(f.totp("alice").await.unwrap(), Some(totp.clone()), "factors: unchanged");
    let racers: Vec<_> = (0..6u8)
        .map(|i| {
            let t = TotpFactor { sealed_secret: vec![i], created_at: 10 + u64::from(i) };
            async move { f.set_totp("alice", &t, Some(5)).await }
        })
        .collect();
    let won = futures_join(racers).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1, "factors: of concurrent replacements of one authenticator, exactly one is stored");
    assert!(f.remove_totp("alice", None).await.unwrap());
    let racers: Vec<_> = (0..6u8)
        .map(|i| {
            let t = TotpFactor { sealed_secret: vec![i], created_at: 20 + u64::from(i) };
            async move { f.set_totp("alice", &t, None).await }
        })
        .collect();
    let won = futures_join(racers).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1, "factors: of concurrent first enrolments, exactly one is stored");
    assert!(f.remove_totp("alice", None).await.unwrap());
    assert!(f.set_totp("alice", &totp, None).await.unwrap());
    assert_eq!(f.any_totp().await.unwrap(), Some(("alice".to_string(), totp.clone())), "factors: any_totp");
    assert!(f.summary("alice").await.unwrap().has_second_factor());

    // A step is accepted once, and never one earlier than the latest.
    assert!(f.use_totp_step("alice", 100).await.unwrap(), "factors: a first step");
    assert!(!f.use_totp_step("alice", 100).await.unwrap(), "factors: the same step again");
    assert!(!f.use_totp_step("alice", 99).await.unwrap(), "factors: an older step");
    let racers: Vec<_> = (0..8).map(|_| f.use_totp_step("alice", 101)).collect();
    let won = futures_join(racers).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1, "factors: of concurrent uses of one step, exactly one wins");

    // Recovery codes: each once; a new set voids the old.
    assert!(f.set_recovery_codes("alice", &[[1; 32], [2; 32], [3; 32]], None).await.unwrap());
    assert_eq!(f.summary("alice").await.unwrap().recovery_codes, 3);
    let code_use = |hash: [u8; 32]| async move { f.use_recovery_code("alice", &hash).await.unwrap() };
    assert_eq!(code_use([2; 32]).await, RecoveryCodeUse::Used);
    assert_eq!(code_use([2; 32]).await, RecoveryCodeUse::UsedBefore, "factors: a recovery code is used once");
    assert_eq!(code_use([7; 32]).await, RecoveryCodeUse::NotIssued, "factors: a wrong code");
    assert_eq!(f.use_recovery_code("bob", &[1; 32]).await.unwrap(), RecoveryCodeUse::NotIssued);
    let racers: Vec<_> = (0..8).map(|_| f.use_recovery_code("alice", &[3; 32])).collect();
    let uses: Vec<RecoveryCodeUse> = futures_join(racers).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        uses.iter().filter(|u| **u == RecoveryCodeUse::Used).count(),
        1,
        "factors: of concurrent uses of one code, exactly one wins: {uses:?}"
    );
    assert!(!uses.contains(&RecoveryCodeUse::NotIssued), "factors: the others are told it was used: {uses:?}");
    assert!(f.set_recovery_codes("alice", &[[9; 32]], None).await.unwrap());
    assert_eq!(code_use([1; 32]).await, RecoveryCodeUse::NotIssued, "factors: new codes void the old");
    assert_eq!(code_use([2; 32]).await, RecoveryCodeUse::NotIssued, "factors: a used code of a void set is no code");
    assert_eq!(f.summary("alice").await.unwrap(), FactorSummary { totp: true, recovery_codes: 1, passkeys: 0 });
    // A new set replaces the set read before it, or nothing: of two made at once from one set
    // (two tabs), one is stored, and the other is told, not shown as if it worked.
    let before = f.recovery_codes("alice").await.unwrap();
    assert_eq!(before, [[9; 32]], "factors: the codes' hashes as set");
    let sets: Vec<[[u8; 32]; 1]> = (20..26u8).map(|i| [[i; 32]]).collect();
    let racers: Vec<_> = sets.iter().map(|set| f.set_recovery_codes("alice", set, Some(&before))).collect();
    let results: Vec<bool> = futures_join(racers).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|won| **won).count(), 1, "factors: of concurrent new sets, one is stored");
    let stored = f.recovery_codes("alice").await.unwrap();
    let winner = results.iter().position(|won| *won).unwrap();
    assert_eq!(stored, sets[winner], "factors: the one told it was stored");
    assert!(!f.set_recovery_codes("alice", &[[30; 32]], Some(&before)).await.unwrap(), "factors: a stale set");
    assert!(!f.set_recovery_codes("alice", &[[30; 32]], Some(&[])).await.unwrap(), "factors: codes are there");
    // A user with no factor record has no codes: a set made from none is stored, once.
    store.users.insert(&user("carol"), HASH_A).await.unwrap();
    assert_eq!(f.recovery_codes("carol").await.unwrap(), Vec::<[u8; 32]>::new());
    assert!(!f.set_recovery_codes("carol", &[[31; 32]], Some(&[[9; 32]])).await.unwrap(), "factors: none to replace");
    let racers: Vec<_> = sets.iter().map(|set| f.set_recovery_codes("carol", set, Some(&[]))).collect();
    let won = futures_join(racers).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1, "factors: of concurrent first sets, one is stored");
    assert_eq!(f.recovery_codes("nobody").await.unwrap(), Vec::<[u8; 32]>::new());

    // A removal asked for from a page that showed another authenticator removes nothing.
    let shown = f.totp("alice").await.unwrap().unwrap().created_at;
    assert!(!f.remove_totp("alice", Some(shown + 1)).await.unwrap(), "factors: another app's removal");
    assert!(f.totp("alice").await.unwrap().is_some(), "factors: kept when another was to be removed");
    assert!(f.remove_totp("alice", Some(shown)).await.unwrap());
    assert!(!f.remove_totp("alice", None).await.unwrap(), "factors: a second removal finds nothing");
    assert!(f.totp("alice").await.unwrap().is_none());
    assert!(!f.use_totp_step("alice", 101).await.unwrap(), "factors: used steps outlive the removal");
    assert!(f.set_totp("alice", &totp, None).await.unwrap());
    let cleared = f.clear("alice").await.unwrap();
    assert_eq!(cleared, FactorSummary { totp: true, recovery_codes: 1, passkeys: 0 }, "factors: clear says what was");
    assert_eq!(f.summary("alice").await.unwrap(), FactorSummary::default(), "factors: cleared");
}

/// Runs futures at once and waits for them all (no extra dependency for the suite).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

async fn pending_sign_ins_are_taken_once_and_purged(store: &Store) {
    let f = &store.factors;
    let p = PendingSignIn {
        user_key: "alice".into(),
        password_changed_at: 3,
        created_at: 10,
        expires_at: 1_000,
        next: Some("/account".into()),
        captcha_solved: true,
        codes_refused: 7,
    };
    f.insert_pending(&[1; 32], &p).await.unwrap();
    let plain = PendingSignIn { expires_at: 5_000, next: None, captcha_solved: false, codes_refused: 0, ..p.clone() };
    f.insert_pending(&[2; 32], &plain).await.unwrap();
    assert_eq!(f.pending(&[1; 32]).await.unwrap(), Some(p), "pending: round trip");
    assert_eq!(f.pending(&[2; 32]).await.unwrap(), Some(plain.clone()), "pending: round trip, no captcha");
    assert!(f.take_pending(&[1; 32]).await.unwrap(), "pending: taken");
    assert!(!f.take_pending(&[1; 32]).await.unwrap(), "pending: taken once");
    assert!(f.pending(&[1; 32]).await.unwrap().is_none());
    f.insert_pending(&[3; 32], &PendingSignIn { expires_at: 500, ..f.pending(&[2; 32]).await.unwrap().unwrap() })
        .await
        .unwrap();
    assert_eq!(f.purge_pending(2_000).await.unwrap(), 1, "pending: the expired one goes");
    assert!(f.pending(&[2; 32]).await.unwrap().is_some(), "pending: the live one stays");
    let bobs = PendingSignIn { user_key: "bob".into(), ..plain.clone() };
    f.insert_pending(&[4; 32], &bobs).await.unwrap();
    f.insert_pending(&[5; 32], &PendingSignIn { expires_at: 1, ..plain }).await.unwrap();
    let ended = f.take_pending_of("alice", 2_000).await.unwrap();
    assert_eq!(ended, 1, "pending: all of one user's go, the live ones counted");
    assert!(f.pending(&[2; 32]).await.unwrap().is_none() && f.pending(&[5; 32]).await.unwrap().is_none());
    assert_eq!(f.pending(&[4; 32]).await.unwrap(), Some(bobs), "pending: another user's stay");
    assert_eq!(f.take_pending_of("alice", 2_000).await.unwrap(), 0);
}
