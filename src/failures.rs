//! Failed password checks, counted per client address ([`AddressKey`]) and per username
//! within `failure_window`. Once either count reaches `captcha_after_failures`, attempts for
//! that address or username must carry a solved captcha, which the real user can always solve,
//! so no one is locked out. Counts lapse with time, and `user unlock` clears a username's; a
//! success does not (review 181: a demand that went away only for real accounts told them from
//! names nobody has).
//!
//! Checks that run at the same moment: a password check without a captcha first *reserves* an
//! attempt ([`FailureTracker::reserve`]); the test "failures plus attempts in flight below the
//! threshold" and the reservation happen under one lock, so however many requests arrive at
//! once, at most `captcha_after_failures` checks run for one address or username before a
//! captcha is demanded. A reservation becomes a failure, or is released when the check
//! succeeds or ends in an error. Both tables sit behind one lock so the address and the
//! username are judged and reserved together. A reservation whose end never comes (its
//! release was lost) stops counting after [`RESERVATION_HOLD`], so it cannot keep the real
//! user behind a captcha; a failure, whenever it lands, counts for the whole window.
//!
//! Memory: a key is added by a refused password (a password past the longest allowed is refused
//! unhashed, so keys can come faster than the hash pool's rate), holds at most `threshold`
//! timestamps, and is dropped once its newest failure leaves the window and nothing is in
//! flight for it. A hard cap ([`MAX_KEYS`]) stops new keys beyond it, and a full table fails
//! closed: a key it cannot hold counts as past the threshold, so every address or username not
//! already counted must solve a captcha until there is room again (review 202: a full table
//! demanded none of them, and a name no one had failed yet could be guessed without one).
//! A full table is pruned at most once per [`FULL_PRUNE_EVERY_MS`] between the background
//! prunes: pruning on every new key cost each attempt a scan of 250,000 entries (27 ms of an
//! async worker's time, 60 times an attempt's own).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::client::AddressKey;
use crate::rate_limit::username_digest;

/// Most keys tracked per kind.
pub const MAX_KEYS: usize = 250_000;

/// How often a full table may be scanned for lapsed keys outside the background prune, in
/// milliseconds (module note).
pub const FULL_PRUNE_EVERY_MS: u64 = 1_000;

/// How long a reservation counts when its end never comes (a release lost to a database
/// outage, an instance killed mid-check). It must outlast any password check with its wait:
/// the hash queue is bounded by count (`hash_queue`, 256 by default), so a check waits at most
/// that many verifies (about 3 s on 2 cores at the default argon2 cost) plus its own, plus the
/// shared state's round trips (each bounded by the pool's connect and wait timeouts). A
/// minute is an order of magnitude above that, and short enough that a stranded reservation
/// never holds a real user behind a captcha for long.
pub const RESERVATION_HOLD: Duration = Duration::from_secs(60);

/// [`RESERVATION_HOLD`] in milliseconds.
pub const RESERVATION_HOLD_MS: u64 = RESERVATION_HOLD.as_millis() as u64;

/// One key's recent failures and the checks in flight for it.
#[derive(Default)]
struct Entry {
    times: VecDeque<u64>,
    /// When each check in flight stops counting if it is never ended ([`RESERVATION_HOLD`]),
    /// oldest first. At most `threshold` live ones (a reservation needs room below it). Boxed
    /// and made only while checks are in flight: most keys only ever hold failures, and the
    /// entry stays as small as a plain count would (README, memory per attacker).
    // The box is the point (8 bytes against a deque's 32 in every entry), not an oversight.
    #[allow(clippy::box_collection)]
    pending: Option<Box<VecDeque<u64>>>,
}

/// The instants a count is judged at: `now`, and `since` (`now` less the window).
#[derive(Clone, Copy)]
struct At {
    now: u64,
    since: u64,
}

impl Entry {
    fn failures(&self, since: u64) -> usize {
        self.times.iter().filter(|&&x| x > since).count()
    }

    fn in_flight(&self, now: u64) -> usize {
        self.pending.as_ref().map_or(0, |p| p.iter().filter(|&&x| x > now).count())
    }

    fn live(&self, at: At) -> bool {
        self.in_flight(at.now) > 0 || self.times.back().is_some_and(|&x| x > at.since)
    }
}

struct Counts<K> {
    map: HashMap<K, Entry>,
    /// Most keys held ([`MAX_KEYS`]; smaller in tests).
    max_keys: usize,
    /// When the table, full, was last scanned for lapsed keys (Unix ms).
    full_pruned_at: u64,
    /// What the keys are (`addresses`, `usernames`), for the warning that the table is full.
    kind: &'static str,
    /// Whether that warning was given since the table last had room (set where the table is
    /// only read, so atomic).
    full_said: std::sync::atomic::AtomicBool,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(kind: &'static str, max_keys: usize) -> Self {
        Counts { map: HashMap::new(), max_keys, full_pruned_at: 0, kind, full_said: Default::default() }
    }

    /// Failures within the window plus checks in flight that have not lapsed; for a key a
    /// full table cannot hold, `usize::MAX`: past any threshold (module note).
    fn load(&self, key: &K, at: At) -> usize {
        match self.map.get(key) {
            Some(e) => e.failures(at.since) + e.in_flight(at.now),
            None if self.map.len() >= self.max_keys => {
                self.say_full();
                usize::MAX
            }
            None => 0,
        }
    }

    /// Says on the terminal, once until there is room again, that the table is full and what
    /// that means for the visitors it cannot hold (review 203: nothing said why every new
    /// visitor was asked for a picture).
    fn say_full(&self) {
        if !self.full_said.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                keys = self.map.len(),
                "the failure counts of {} are full (a flood of failed sign-ins): every one not counted yet must solve a captcha until failures lapse (failure_window)",
                self.kind
            );
        }
    }

    /// The entry for `key`, made if there is room (see [`MAX_KEYS`]).
    fn entry(&mut self, key: &K, at: At) -> Option<&mut Entry> {
        if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
            if at.now < self.full_pruned_at.saturating_add(FULL_PRUNE_EVERY_MS) {
                return None;
            }
            self.full_pruned_at = at.now;
            self.map.retain(|_, e| e.live(at));
            if self.map.len() >= self.max_keys {
                self.say_full();
                return None;
            }
        }
        Some(self.map.entry(key.clone()).or_default())
    }

    /// Adds a failure; returns whether it made the count within the window reach `threshold`
    /// (it was below before), so each crossing is reported once.
    fn add(&mut self, key: &K, at: At, threshold: usize) -> bool {
        let Some(e) = self.entry(key, at) else { return false };
        e.times.retain(|&x| x > at.since);
        let before = e.times.len();
        e.times.push_back(at.now);
        while e.times.len() > threshold.max(1) {
            e.times.pop_front();
        }
        before < threshold && e.times.len() >= threshold
    }

    fn reserve(&mut self, key: &K, at: At) -> bool {
        match self.entry(key, at) {
            Some(e) => {
                // Lapsed places go first, so the list stays within the threshold.
                let p = e.pending.get_or_insert_with(Box::default);
                p.retain(|&x| x > at.now);
                p.push_back(at.now.saturating_add(RESERVATION_HOLD_MS));
                true
            }
            None => false,
        }
    }

    /// Ends one check in flight. Any place of a key is as good as another, so the newest
    /// goes: if an older one was stranded, what stays counted is what lapses soonest.
    fn release(&mut self, key: &K) {
        if let Some(e) = self.map.get_mut(key) {
            if let Some(p) = &mut e.pending {
                p.pop_back();
                if p.is_empty() {
                    e.pending = None;
                }
            }
            if e.pending.is_none() && e.times.is_empty() {
                self.map.remove(key);
            }
        }
    }

    /// Forgets the failures and the checks in flight; returns how many failures there were.
    fn clear(&mut self, key: &K) -> usize {
        // The checks in flight go too: one stranded by an outage would otherwise keep the
        // captcha demanded for up to [`RESERVATION_HOLD`] after the administrator's unlock
        // (review 200). Checks still running count as failures when they end, as any.
        self.map.remove(key).map_or(0, |e| e.times.len())
    }

    fn prune(&mut self, at: At) {
        self.map.retain(|_, e| {
            if let Some(p) = &mut e.pending {
                p.retain(|&x| x > at.now);
                if p.is_empty() {
                    e.pending = None;
                }
            }
            e.live(at)
        });
        self.map.shrink_to_fit();
        // Room again only below nine tenths, so a flood that keeps pace with the lapses is said
        // full once, not at every prune (review 205).
        if self.map.len() < self.max_keys - self.max_keys / 10
            && self.full_said.swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("the failure counts of {} have room again", self.kind);
        }
    }
}

struct Tables {
    by_address: Counts<AddressKey>,
    by_username: Counts<u128>,
}

/// The failure counts and checks in flight, per address and per username (module note).
pub struct FailureTracker {
    window_ms: u64,
    threshold: usize,
    tables: Mutex<Tables>,
}

/// What recording a failure changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    /// This failure made a count reach the threshold (OWASP `authn_login_fail_max`); true
    /// for exactly one failure per crossing.
    pub reached_threshold: bool,
    /// Whether attempts from this address or for this username must now carry a captcha
    /// ([`crate::brute_force::BruteForceState::needs_captcha`] right after this failure), when
    /// the state learned it in the same step; `None`: ask it.
    pub captcha_demanded: Option<bool>,
}

/// The address or the username has reached the threshold (failures and checks in flight
/// together): this attempt needs a solved captcha before its password is checked.
#[derive(Debug, PartialEq, Eq)]
pub struct CaptchaDemanded;

/// Who asks for a password check, for whose counts may demand a captcha of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asker {
    /// A browser with no device token of the user's current credential generation: the
    /// address's and the username's counts both demand one.
    Stranger,
    /// A browser the user signed in with before (a device token of the user's generation):
    /// only its address's count demands one, so failures others cause for the name do not
    /// put its owner's browsers behind a picture (OWASP, "Slow Down Online Guessing Attacks
    /// with Device Cookies"). Its checks and failures still count for the username.
    KnownBrowser,
}

impl Asker {
    /// [`Asker::KnownBrowser`] when the browser holds a device token of the user's
    /// generation (`known`), else [`Asker::Stranger`].
    pub fn of(known: bool) -> Self {
        if known {
            Asker::KnownBrowser
        } else {
            Asker::Stranger
        }
    }
}

/// A password check allowed to run without a captcha, counted while it runs, as plain
/// values (so a shared store can hold it too). It must end in [`FailureTracker::fail`] or
/// [`FailureTracker::release`] (a success, a quota refusal, an overloaded pool, an error).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Reservation {
    pub address: AddressKey,
    /// [`username_digest`] of the normalised username.
    pub username: u128,
    /// Whether each count took the reservation (`false` when its table was full and the key
    /// could not be tracked).
    pub address_held: bool,
    pub username_held: bool,
}

impl FailureTracker {
    /// `window`: how long a failure counts; `threshold`: `captcha_after_failures`.
    pub fn new(window: Duration, threshold: u32) -> Self {
        Self::holding(window, threshold, MAX_KEYS)
    }

    /// As [`FailureTracker::new`], each table holding at most `max_keys` keys.
    fn holding(window: Duration, threshold: u32, max_keys: usize) -> Self {
        FailureTracker {
            window_ms: window.as_millis() as u64,
            threshold: threshold as usize,
            tables: Mutex::new(Tables {
                by_address: Counts::new("addresses", max_keys),
                by_username: Counts::new("usernames", max_keys),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A poisoned lock only means a thread panicked holding it; every update leaves the
        // counts consistent (plain integers and timestamps), so carry on with them.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn at(&self, now: u64) -> At {
        At { now, since: now.saturating_sub(self.window_ms) }
    }

    /// Whether attempts from this address must carry a captcha (`now` in ms).
    pub fn address_needs_captcha(&self, address: AddressKey, now: u64) -> bool {
        self.lock().by_address.load(&address, self.at(now)) >= self.threshold
    }

    /// Whether attempts for this username (normalised key) must carry a captcha.
    pub fn username_needs_captcha(&self, user_key: &str, now: u64) -> bool {
        self.lock().by_username.load(&username_digest(user_key), self.at(now)) >= self.threshold
    }

    /// Whether attempts from this address or for this username must carry a captcha.
    pub fn needs_captcha(&self, address: AddressKey, user_key: &str, now: u64) -> bool {
        let at = self.at(now);
        let tables = self.lock();
        tables.by_address.load(&address, at) >= self.threshold
            || tables.by_username.load(&username_digest(user_key), at) >= self.threshold
    }

    /// Reserves a password check without a captcha, or says a captcha is demanded: the test
    /// and the reservation are one critical section, so concurrent attempts cannot all pass
    /// the test before any of them counts.
    ///
    /// # Errors
    /// [`CaptchaDemanded`] when the address's or the username's failures plus checks in
    /// flight within the window have reached `captcha_after_failures`.
    pub fn reserve(
        &self,
        address: AddressKey,
        username: u128,
        asker: Asker,
        now: u64,
    ) -> Result<Reservation, CaptchaDemanded> {
        let at = self.at(now);
        let mut tables = self.lock();
        if tables.by_address.load(&address, at) >= self.threshold
            || (asker == Asker::Stranger && tables.by_username.load(&username, at) >= self.threshold)
        {
            return Err(CaptchaDemanded);
        }
        let address_held = tables.by_address.reserve(&address, at);
        let username_held = tables.by_username.reserve(&username, at);
        Ok(Reservation { address, username, address_held, username_held })
    }

    /// Gives a reservation's place back: the check succeeded or ended in an error.
    pub fn release(&self, r: Reservation) {
        let mut tables = self.lock();
        Self::unhold(&mut tables, &r);
    }

    fn unhold(tables: &mut Tables, r: &Reservation) {
        if r.address_held {
            tables.by_address.release(&r.address);
        }
        if r.username_held {
            tables.by_username.release(&r.username);
        }
    }

    /// The reserved check failed: the reservation becomes a failure on both counts.
    pub fn fail(&self, r: Reservation, now: u64) -> Recorded {
        let at = self.at(now);
        let mut tables = self.lock();
        Self::unhold(&mut tables, &r);
        let a = tables.by_address.add(&r.address, at, self.threshold);
        let u = r.username_held && tables.by_username.add(&r.username, at, self.threshold);
        Recorded { reached_threshold: a || u, captcha_demanded: None }
    }

    /// Counts a failed password check that ran without a reservation (its captcha was
    /// solved).
    pub fn record_failure(&self, address: AddressKey, user_key: &str, now: u64) -> Recorded {
        self.record_failure_of(address, Some(username_digest(user_key)), now)
    }

    /// [`FailureTracker::record_failure`] for a username already digested, or for the
    /// address alone (`None`).
    pub fn record_failure_of(&self, address: AddressKey, username: Option<u128>, now: u64) -> Recorded {
        let at = self.at(now);
        let mut tables = self.lock();
        let a = tables.by_address.add(&address, at, self.threshold);
        let u = username.is_some_and(|u| tables.by_username.add(&u, at, self.threshold));
        Recorded { reached_threshold: a || u, captcha_demanded: None }
    }

    /// Whether attempts from this address, or for this username (a [`username_digest`]) when
    /// given, must carry a captcha.
    pub fn needs_captcha_of(&self, address: AddressKey, username: Option<u128>, now: u64) -> bool {
        let at = self.at(now);
        let tables = self.lock();
        tables.by_address.load(&address, at) >= self.threshold
            || username.is_some_and(|u| tables.by_username.load(&u, at) >= self.threshold)
    }

    /// Clears the username's count and checks in flight (`user unlock`), and so its captcha
    /// demand; returns how many failures it had.
    pub fn clear_username(&self, username: u128) -> usize {
        self.lock().by_username.clear(&username)
    }

    /// The username's failures within the window at `now` (checks in flight not counted).
    pub fn username_failures(&self, username: u128, now: u64) -> usize {
        let at = self.at(now);
        self.lock().by_username.map.get(&username).map_or(0, |e| e.failures(at.since))
    }

    pub fn prune(&self, now: u64) {
        let at = self.at(now);
        let mut tables = self.lock();
        tables.by_address.prune(at);
        tables.by_username.prune(at);
    }

    /// Keys tracked: (addresses, usernames).
    pub fn len(&self) -> (usize, usize) {
        let tables = self.lock();
        (tables.by_address.map.len(), tables.by_username.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> AddressKey {
        AddressKey::of(ip.parse().unwrap())
    }

    fn d(user: &str) -> u128 {
        username_digest(user)
    }

    #[test]
    fn the_threshold_triggers_per_address_and_per_username() {
        let (ip, other) = (key("192.0.2.1"), key("192.0.2.2"));
        let t = FailureTracker::new(Duration::from_secs(60), 3);
        assert!(!t.record_failure(ip, "alice", 1000).reached_threshold);
        assert!(!t.record_failure(ip, "bob", 1001).reached_threshold);
        assert!(!t.needs_captcha(ip, "carol", 1002));
        assert!(t.record_failure(ip, "carol", 1002).reached_threshold);
        assert!(t.address_needs_captcha(ip, 1003));
        assert!(!t.username_needs_captcha("alice", 1003));
        // The same username from other addresses.
        t.record_failure(other, "dave", 1);
        let t2 = FailureTracker::new(Duration::from_secs(60), 2);
        t2.record_failure(ip, "dave", 1000);
        t2.record_failure(other, "dave", 1001);
        assert!(t2.username_needs_captcha("dave", 1002));
    }

    /// Review 202: a full table demanded no captcha of a key it could not hold, so a name no
    /// one had failed yet could be guessed without one, and it was scanned whole for every
    /// new key (27 ms an attempt at 250,000 keys).
    #[test]
    fn a_full_table_demands_a_captcha_of_every_key_it_cannot_hold_and_is_scanned_at_most_once_a_second() {
        let t = FailureTracker::holding(Duration::from_millis(1_000), 3, 3);
        for (i, ip) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].into_iter().enumerate() {
            t.record_failure(key(ip), &format!("user{i}"), 10_000);
        }
        let (new_ip, old_ip) = (key("198.51.100.7"), key("192.0.2.1"));
        assert!(t.address_needs_captcha(new_ip, 10_500), "an address the full table cannot hold");
        assert!(t.username_needs_captcha("victim", 10_500), "a username alike");
        assert_eq!(t.reserve(new_ip, d("user0"), Asker::Stranger, 10_500), Err(CaptchaDemanded));
        assert_eq!(t.reserve(old_ip, d("victim"), Asker::Stranger, 10_500), Err(CaptchaDemanded));
        assert!(!t.needs_captcha(old_ip, "user0", 10_500), "keys it holds are judged by their counts");
        // Said once on the terminal until there is room again (review 203: never said).
        let said = crate::telemetry::tests::terminal_text(|| {
            t.needs_captcha(key("198.51.100.8"), "someone", 10_500);
        });
        assert!(said.is_empty(), "said once already: {said}");
        let fresh = FailureTracker::holding(Duration::from_millis(1_000), 3, 1);
        fresh.record_failure(old_ip, "user0", 10_000);
        let said = crate::telemetry::tests::terminal_text(|| {
            fresh.needs_captcha(new_ip, "user0", 10_500);
            fresh.needs_captcha(new_ip, "user0", 10_600);
        });
        assert_eq!(said.matches("the failure counts of addresses are full").count(), 1, "{said}");
        // A failure it cannot hold (a captcha solved): the full table is scanned, nothing lapsed.
        t.record_failure(new_ip, "victim", 10_500);
        // Lapsed at 11,000 ms, but the last scan (at 10,500) was under a second ago: no scan yet.
        t.record_failure(new_ip, "victim", 11_200);
        assert!(t.address_needs_captcha(new_ip, 11_200));
        // A second after it, the scan makes room.
        t.record_failure(new_ip, "victim", 11_600);
        assert!(!t.address_needs_captcha(key("203.0.113.9"), 11_600));
        assert_eq!(t.len(), (1, 1));
    }

    /// Review 205: a flood keeping pace with the lapses had the table said full, then with
    /// room, then full again, within 10 s. Room again is said below nine tenths.
    #[test]
    fn a_full_table_says_it_has_room_again_only_below_nine_tenths() {
        let t = FailureTracker::holding(Duration::from_millis(1_000), 3, 10);
        for i in 0..10u32 {
            t.record_failure(
                AddressKey::of(std::net::Ipv4Addr::from(0xC000_0200 + i).into()),
                "u",
                10_000 + u64::from(i),
            );
        }
        let said = crate::telemetry::tests::terminal_text(|| {
            t.needs_captcha(key("198.51.100.1"), "u", 10_500);
            // The first lapses: 9 of 10 left.
            t.prune(11_000);
        });
        assert!(said.contains("are full") && !said.contains("room again"), "{said}");
        assert_eq!(t.len().0, 9);
        let said = crate::telemetry::tests::terminal_text(|| t.prune(11_001));
        assert_eq!(said.matches("the failure counts of addresses have room again").count(), 1, "{said}");
    }

    #[test]
    fn counts_lapse_after_the_window_and_a_success_clears_the_username() {
        let ip = key("192.0.2.1");
        let t = FailureTracker::new(Duration::from_secs(60), 2);
        t.record_failure(ip, "alice", 1000);
        t.record_failure(ip, "alice", 2000);
        assert!(t.username_needs_captcha("alice", 3000));
        assert!(!t.username_needs_captcha("alice", 2000 + 60_001));
        assert_eq!(t.clear_username(d("alice")), 2);
        assert!(!t.username_needs_captcha("alice", 3000));
        assert!(t.address_needs_captcha(ip, 3000), "the address still has its count");
        t.prune(10_000_000);
        assert_eq!(t.len(), (0, 0));
    }

    #[test]
    fn at_most_the_threshold_of_checks_run_at_once_before_a_captcha() {
        let t = FailureTracker::new(Duration::from_secs(60), 3);
        let ip = key("192.0.2.1");
        let held: Vec<_> =
            (0..3).map(|_| t.reserve(ip, d("alice"), Asker::Stranger, 1000).expect("within the threshold")).collect();
        assert_eq!(
            t.reserve(ip, d("alice"), Asker::Stranger, 1000).err(),
            Some(CaptchaDemanded),
            "three checks in flight"
        );
        assert_eq!(
            t.reserve(key("192.0.2.9"), d("alice"), Asker::Stranger, 1000).err(),
            Some(CaptchaDemanded),
            "per username too"
        );
        assert_eq!(t.reserve(ip, d("bob"), Asker::Stranger, 1000).err(), Some(CaptchaDemanded), "per address too");
        assert!(t.needs_captcha(ip, "carol", 1000));
        let crossings: Vec<bool> = held.into_iter().map(|r| t.fail(r, 1001).reached_threshold).collect();
        assert_eq!(crossings, [false, false, true], "the crossing is reported once");
        assert!(!t.record_failure(ip, "alice", 1002).reached_threshold, "past the threshold is no new crossing");
    }

    #[test]
    fn a_released_reservation_gives_its_place_back() {
        let t = FailureTracker::new(Duration::from_secs(60), 1);
        let ip = key("192.0.2.1");
        let r = t.reserve(ip, d("alice"), Asker::Stranger, 1000).unwrap();
        assert!(t.reserve(ip, d("alice"), Asker::Stranger, 1000).is_err());
        t.release(r);
        let r = t.reserve(ip, d("alice"), Asker::Stranger, 1000).expect("a success or an error does not count");
        t.release(r);
        assert_eq!(t.len(), (0, 0), "nothing is kept for a released check");
    }

    #[test]
    fn an_unlock_clears_the_count_and_the_checks_in_flight_which_count_when_they_fail() {
        let t = FailureTracker::new(Duration::from_secs(60), 2);
        let ip = key("192.0.2.1");
        t.record_failure(key("192.0.2.7"), "alice", 1000);
        let in_flight = t.reserve(ip, d("alice"), Asker::Stranger, 1000).unwrap();
        assert!(t.needs_captcha(key("192.0.2.8"), "alice", 1000));
        assert_eq!(t.clear_username(d("alice")), 1);
        assert!(!t.needs_captcha(key("192.0.2.8"), "alice", 1000), "review 200: a stranded check held it");
        let r = t.reserve(key("192.0.2.8"), d("alice"), Asker::Stranger, 1001).unwrap();
        t.fail(in_flight, 1002);
        assert_eq!(t.username_failures(d("alice"), 1002), 1, "the check that was in flight counts when it fails");
        t.fail(r, 1003);
        assert!(t.needs_captcha(key("192.0.2.9"), "alice", 1003));
    }

    #[test]
    fn threads_racing_for_one_username_get_at_most_the_threshold_of_checks() {
        let t = std::sync::Arc::new(FailureTracker::new(Duration::from_secs(60), 3));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let handles: Vec<_> = (0..16u8)
            .map(|i| {
                let (t, barrier) = (t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = t.reserve(key(&format!("198.51.100.{i}")), d("alice"), Asker::Stranger, 1000);
                    std::thread::sleep(Duration::from_millis(20));
                    r.map(|r| t.fail(r, 1001).reached_threshold)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3, "{results:?}");
        assert_eq!(results.iter().filter(|r| r == &&Ok(true)).count(), 1, "{results:?}");
    }
}
