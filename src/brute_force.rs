//! The brute-force state a sign-in consults, behind one trait so that several instances can
//! share it (issue 12 §3; SPEC "Several instances, one truth"): the per-address and
//! per-username quotas (GCRA), the failure counts that demand a captcha with their atomic
//! reservation, the open captcha challenges and the retired pre-login ids.
//!
//! Each method is one operation with plain parameters (keys as bytes or digests, rates as
//! [`Rate`], times in Unix milliseconds), so an engine can do it in one statement. Each
//! check-then-act (a quota unit, a reservation, taking a challenge, retiring an id) must be
//! atomic in the implementation: that is what keeps N instances to what one enforces.
//! [`InMemory`] is the implementation of one process (the default, with sled), built from
//! [`crate::rate_limit`], [`crate::failures`], [`crate::captcha::ChallengeTable`] and
//! [`crate::csrf::RetiredSet`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::captcha::ChallengeTable;
use crate::client::AddressKey;
use crate::config::Rate;
use crate::csrf::RetiredSet;
use crate::failures::{Asker, CaptchaDemanded, FailureTracker, Recorded, Reservation};
use crate::rate_limit::LoginQuotas;

/// The shared state cannot be reached or written: the attempt is refused with a 503 (fail
/// closed), never let through unchecked.
#[derive(Debug, thiserror::Error)]
#[error("the brute-force state cannot be used")]
pub struct StateError(#[source] pub anyhow::Error);

/// Which quota a unit is taken from, and whose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKey {
    /// `login_quota_per_ip`: every `POST /login` from this address.
    Address(AddressKey),
    /// `login_quota_per_user`: every password check for this username
    /// ([`crate::rate_limit::username_digest`] of the normalised key).
    Username(u128),
    /// `login_quota_per_user` of the browsers known to this username (a device cookie for
    /// it, [`crate::csrf::Csrf::is_known_device`]), apart from strangers': a flood aimed at the
    /// username spends the strangers' one and does not keep its owner's browsers out (OWASP,
    /// "Slow Down Online Guessing Attacks with Device Cookies"). One per username, not per
    /// token, since every sign-in makes a new token: whoever holds an account of their own
    /// cannot mint fresh quotas by signing in.
    KnownUsername(u128),
    /// `login_quota_per_user` of second-step codes for this username, apart from its password
    /// checks: a sign-in with two steps spends one unit of each, so a user's own two-step
    /// sign-ins get the quota's count, not half of it (review 190); an attacker who has the
    /// password meets the same limit on codes as on passwords.
    SecondStep(u128),
    /// [`QuotaKey::SecondStep`] of the browsers known to this username, as
    /// [`QuotaKey::KnownUsername`] is for password checks.
    KnownSecondStep(u128),
    /// [`crate::rate_limit::CAPTCHA_DRAWS`]: captcha pictures drawn for this address.
    CaptchaDraws(AddressKey),
    /// [`crate::rate_limit::SIGN_OUTS_ELSEWHERE`]: *sign out everywhere else* asked by this
    /// user's sessions ([`crate::rate_limit::username_digest`] of the user's key).
    SignOutsElsewhere(u128),
}

impl QuotaKey {
    /// The quota's name, for an engine's key column.
    pub fn kind(&self) -> &'static str {
        match self {
            QuotaKey::Address(_) => "address",
            QuotaKey::Username(_) => "username",
            QuotaKey::KnownUsername(_) => "known_username",
            QuotaKey::SecondStep(_) => "second_step",
            QuotaKey::KnownSecondStep(_) => "known_second_step",
            QuotaKey::CaptchaDraws(_) => "captcha_draws",
            QuotaKey::SignOutsElsewhere(_) => "sign_outs_elsewhere",
        }
    }

    /// The key as bytes: 4 or 16 for an address (IPv6 by /64, see [`AddressKey`]), 16 for a
    /// username digest (big-endian).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            QuotaKey::Address(a) | QuotaKey::CaptchaDraws(a) => match a.ip() {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            },
            QuotaKey::Username(u)
            | QuotaKey::KnownUsername(u)
            | QuotaKey::SecondStep(u)
            | QuotaKey::KnownSecondStep(u)
            | QuotaKey::SignOutsElsewhere(u) => u.to_be_bytes().to_vec(),
        }
    }
}

/// A quota refused a unit: how long until the next one, in milliseconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub ms: u64,
}

impl Wait {
    /// The wait as a `Retry-After` (RFC 9110 §10.2.3): whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.ms.div_ceil(1000).max(1)
    }
}

/// A pre-login id to retire when a check succeeds: the form signs in once (see
/// [`BruteForceState::retire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retire {
    /// The pre-login value's id.
    pub id: [u8; 16],
    /// When the value would lapse anyway (Unix ms): the retirement is kept until then.
    pub expires_at_ms: u64,
}

impl Retire {
    /// The retirement of `pre`, the pre-login value a sign-in succeeded with: kept past its
    /// expiry by the slack ([`crate::csrf::PreLogin::retired_until_ms`]).
    pub fn of(pre: &crate::csrf::PreLogin) -> Self {
        Retire { id: pre.id(), expires_at_ms: pre.retired_until_ms() }
    }
}

/// What must be shared between instances for the brute-force defences (module note). Every
/// method may fail with [`StateError`], which callers answer with a 503.
///
/// The steps a sign-in always takes together also exist as one method each
/// ([`BruteForceState::reserve_for_form`], [`BruteForceState::succeed`]): the defaults run the
/// single steps in order; an engine across a network does each in one round trip.
#[async_trait]
pub trait BruteForceState: Send + Sync {
    /// `local_ms` (this host's clock, Unix milliseconds) on the clock this state counts on,
    /// without a round trip: the same for a state in this process; for one shared through a
    /// database, the database's by the offset last measured. What failure records are stamped
    /// with ([`crate::audit::Audit::with_records_clock`]).
    fn on_shared_clock(&self, local_ms: u64) -> u64 {
        local_ms
    }

    /// Takes one unit of `rate` for `key` at `now_ms` (GCRA: a burst of `rate.burst`,
    /// refilled evenly over `rate.period`), or says how long to wait for the next one. The
    /// test and the take are atomic.
    async fn take(&self, key: QuotaKey, rate: Rate, now_ms: u64) -> Result<Result<(), Wait>, StateError>;

    /// Reserves a password check without a captcha for this address and username (a
    /// `username_digest`), or says a captcha is demanded: the test "failures within the
    /// window plus checks in flight below `captcha_after_failures`" and the reservation are
    /// atomic (the race fixed in fix-a), for the address and the username together. The
    /// window and threshold are the implementation's, from the settings. The reservation
    /// must end in [`BruteForceState::fail`] or [`BruteForceState::release`]; if neither
    /// comes (its holder died, or its release was lost to an outage) it stops counting at
    /// `now_ms` plus [`crate::failures::RESERVATION_HOLD`] on every engine, so it cannot keep
    /// the real user behind a captcha. A failure counts for the whole window from when it
    /// lands, whenever that is. For an [`Asker::KnownBrowser`] only the address's count can
    /// demand the captcha; the reservation holds a place in both counts all the same.
    async fn reserve(
        &self,
        address: AddressKey,
        username: u128,
        asker: Asker,
        now_ms: u64,
    ) -> Result<Result<Reservation, CaptchaDemanded>, StateError>;

    /// The reserved check failed at `now_ms`: the reservation becomes a failure on both counts.
    async fn fail(&self, reservation: Reservation, now_ms: u64) -> Result<Recorded, StateError>;

    /// The reserved check succeeded or ended in an error: its place is given back.
    async fn release(&self, reservation: Reservation) -> Result<(), StateError>;

    /// Counts a failed check that ran without a reservation (its captcha was solved, or it
    /// named no username to count: `None`, a passkey sign-in, counted for the address alone).
    async fn record_failure(
        &self,
        address: AddressKey,
        username: Option<u128>,
        now_ms: u64,
    ) -> Result<Recorded, StateError>;

    /// Whether attempts from this address, or for this username when given, must carry a
    /// solved captcha at `now_ms` (failures within the window plus checks in flight).
    async fn needs_captcha(&self, address: AddressKey, username: Option<u128>, now_ms: u64)
        -> Result<bool, StateError>;

    /// Clears the username's failures and checks in flight (`user unlock`); returns how many
    /// failures it had. A check still running counts as a failure when it fails.
    async fn clear_username(&self, username: u128) -> Result<usize, StateError>;

    /// How many failures the username has within the window at `now_ms` (checks in flight not
    /// counted), for the record of a success after them.
    async fn username_failures(&self, username: u128, now_ms: u64) -> Result<usize, StateError>;

    /// Opens (or replaces) the captcha challenge in `slot` (a keyed hash of the visitor's
    /// pre-login value), keeping only the keyed hash of its answer, until `expires_at_ms`.
    async fn open_challenge(
        &self,
        slot: [u8; 32],
        answer_hash: [u8; 32],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), StateError>;

    /// Takes the challenge out of `slot`, once: of concurrent takers only one gets it.
    /// `None` if there is none or it expired at `now_ms`.
    async fn take_challenge(&self, slot: [u8; 32], now_ms: u64) -> Result<Option<[u8; 32]>, StateError>;

    /// Retires a pre-login id until `expires_at_ms` (when the value would lapse anyway);
    /// `false` if it was already retired. Atomic: of two sign-ins with one form, one goes on.
    async fn retire(&self, id: [u8; 16], expires_at_ms: u64, now_ms: u64) -> Result<bool, StateError>;

    /// Whether a pre-login id has been retired.
    async fn is_retired(&self, id: [u8; 16]) -> Result<bool, StateError>;

    /// Forgets what has lapsed at `now_ms` (quota keys back at a full bucket, failures past
    /// the window, expired challenges and retired ids).
    async fn prune(&self, now_ms: u64) -> Result<(), StateError>;

    /// The start of a password check sent with a form: `None` when the form's pre-login id
    /// `prelogin` is retired (it signed someone in already: refuse as CSRF; nothing is
    /// reserved), otherwise [`BruteForceState::reserve`]'s answer.
    async fn reserve_for_form(
        &self,
        prelogin: [u8; 16],
        address: AddressKey,
        username: u128,
        asker: Asker,
        now_ms: u64,
    ) -> Result<Option<Result<Reservation, CaptchaDemanded>>, StateError> {
        if self.is_retired(prelogin).await? {
            return Ok(None);
        }
        Ok(Some(self.reserve(address, username, asker, now_ms).await?))
    }

    /// The end of a check that did not fail, at `now_ms`: `reservation`'s place given back
    /// (when there is one), the form's pre-login id retired (when `retire` is given; atomic as
    /// [`BruteForceState::retire`]), then the failures of the username digest `tally` counted
    /// (when given). Returns `None` when the id was already retired (the form signed in
    /// before: refuse as CSRF), otherwise how many failures the username has (0 without
    /// `tally`).
    ///
    /// A success leaves the username's failures counted until they lapse: were they cleared,
    /// anyone could arm a name with failures and watch whether its captcha demand goes, which
    /// only a real account's owner can make happen (review 181). The per-username quota, not
    /// this count, is the limit on consecutive failures NIST SP 800-63B §5.2.2 asks for.
    async fn succeed(
        &self,
        reservation: Option<Reservation>,
        retire: Option<Retire>,
        tally: Option<u128>,
        now_ms: u64,
    ) -> Result<Option<usize>, StateError> {
        if let Some(r) = reservation {
            self.release(r).await?;
        }
        if let Some(Retire { id, expires_at_ms }) = retire {
            if !self.retire(id, expires_at_ms, now_ms).await? {
                return Ok(None);
            }
        }
        Ok(Some(match tally {
            Some(username) => self.username_failures(username, now_ms).await?,
            None => 0,
        }))
    }
}

/// The brute-force state of one process, in memory. Bounded: every table has a hard cap
/// (see each module).
pub struct InMemory {
    pub quotas: LoginQuotas,
    pub failures: FailureTracker,
    pub challenges: ChallengeTable,
    pub retired: RetiredSet,
}

impl InMemory {
    /// `window` and `threshold`: `failure_window` and `captcha_after_failures`; the quota
    /// rates are those the callers pass (`login_quota_per_ip`, `login_quota_per_user`).
    pub fn new(per_address: Option<Rate>, per_username: Option<Rate>, window: Duration, threshold: u32) -> Self {
        InMemory {
            quotas: LoginQuotas::new(per_address, per_username),
            failures: FailureTracker::new(window, threshold),
            challenges: ChallengeTable::default(),
            retired: RetiredSet::default(),
        }
    }

    /// No quotas, a 15-minute window and a threshold of 3: for unit tests.
    pub fn for_tests() -> Self {
        InMemory::new(None, None, Duration::from_secs(900), 3)
    }

    /// Keys tracked, for tests and measurements: (captcha challenges, (failure addresses,
    /// failure usernames), per-address quota keys, per-username quota keys).
    pub fn sizes(&self) -> (usize, (usize, usize), usize, usize) {
        (self.challenges.len(), self.failures.len(), self.quotas.per_address.len(), self.quotas.per_username.len())
    }
}

#[async_trait]
impl BruteForceState for InMemory {
    async fn take(&self, key: QuotaKey, rate: Rate, _now_ms: u64) -> Result<Result<(), Wait>, StateError> {
        // governor keeps its own monotonic clock, which a wall clock stepping back cannot fool.
        let taken = match key {
            QuotaKey::Address(a) => self.quotas.per_address.take(rate, &a),
            QuotaKey::Username(u) => self.quotas.per_username.take(rate, &u),
            QuotaKey::KnownUsername(u) => self.quotas.per_known_username.take(rate, &u),
            QuotaKey::SecondStep(u) => self.quotas.second_steps.take(rate, &u),
            QuotaKey::KnownSecondStep(u) => self.quotas.known_second_steps.take(rate, &u),
            QuotaKey::CaptchaDraws(a) => self.quotas.captcha_draws.take(rate, &a),
            QuotaKey::SignOutsElsewhere(u) => self.quotas.sign_outs_elsewhere.take(rate, &u),
        };
        Ok(taken.map_err(|ms| Wait { ms }))
    }

    async fn reserve(
        &self,
        address: AddressKey,
        username: u128,
        asker: Asker,
        now_ms: u64,
    ) -> Result<Result<Reservation, CaptchaDemanded>, StateError> {
        Ok(self.failures.reserve(address, username, asker, now_ms))
    }

    async fn fail(&self, reservation: Reservation, now_ms: u64) -> Result<Recorded, StateError> {
        Ok(self.failures.fail(reservation, now_ms))
    }

    async fn release(&self, reservation: Reservation) -> Result<(), StateError> {
        self.failures.release(reservation);
        Ok(())
    }

    async fn record_failure(
        &self,
        address: AddressKey,
        username: Option<u128>,
        now_ms: u64,
    ) -> Result<Recorded, StateError> {
        Ok(self.failures.record_failure_of(address, username, now_ms))
    }

    async fn needs_captcha(
        &self,
        address: AddressKey,
        username: Option<u128>,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        Ok(self.failures.needs_captcha_of(address, username, now_ms))
    }

    async fn clear_username(&self, username: u128) -> Result<usize, StateError> {
        Ok(self.failures.clear_username(username))
    }

    async fn username_failures(&self, username: u128, now_ms: u64) -> Result<usize, StateError> {
        Ok(self.failures.username_failures(username, now_ms))
    }

    async fn open_challenge(
        &self,
        slot: [u8; 32],
        answer_hash: [u8; 32],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), StateError> {
        self.challenges.open(slot, answer_hash, expires_at_ms, now_ms);
        Ok(())
    }

    async fn take_challenge(&self, slot: [u8; 32], now_ms: u64) -> Result<Option<[u8; 32]>, StateError> {
        Ok(self.challenges.take(&slot, now_ms))
    }

    async fn retire(&self, id: [u8; 16], expires_at_ms: u64, now_ms: u64) -> Result<bool, StateError> {
        Ok(self.retired.retire(id, expires_at_ms, now_ms))
    }

    async fn is_retired(&self, id: [u8; 16]) -> Result<bool, StateError> {
        Ok(self.retired.contains(&id))
    }

    async fn prune(&self, now_ms: u64) -> Result<(), StateError> {
        self.quotas.prune();
        self.failures.prune(now_ms);
        self.challenges.prune(now_ms);
        self.retired.prune(now_ms);
        Ok(())
    }
}

/// A reservation held by a sign-in in progress: given back if the attempt ends any other way
/// than [`Held::fail`] or [`Held::release`] (a dropped request future included), so a client
/// that hangs up cannot leave a check counted for ever.
pub struct Held {
    state: Arc<dyn BruteForceState>,
    reservation: Option<Reservation>,
}

impl Held {
    pub fn new(state: Arc<dyn BruteForceState>, reservation: Reservation) -> Self {
        Held { state, reservation: Some(reservation) }
    }

    /// The check failed: see [`BruteForceState::fail`].
    ///
    /// # Errors
    /// [`StateError`] from the state.
    pub async fn fail(mut self, now_ms: u64) -> Result<Recorded, StateError> {
        match self.reservation.take() {
            Some(r) => self.state.fail(r, now_ms).await,
            None => Ok(Recorded { reached_threshold: false, captcha_demanded: None }),
        }
    }

    /// The check is over without a failure: see [`BruteForceState::release`].
    ///
    /// # Errors
    /// [`StateError`] from the state.
    pub async fn release(mut self) -> Result<(), StateError> {
        match self.reservation.take() {
            Some(r) => self.state.release(r).await,
            None => Ok(()),
        }
    }
}

impl Held {
    /// The check is over without a failure, and what a success does besides: see
    /// [`BruteForceState::succeed`].
    ///
    /// # Errors
    /// [`StateError`] from the state.
    pub async fn succeed(
        mut self,
        retire: Option<Retire>,
        clear: Option<u128>,
        now_ms: u64,
    ) -> Result<Option<usize>, StateError> {
        let reservation = self.reservation.take();
        self.state.succeed(reservation, retire, clear, now_ms).await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(r) = self.reservation.take() else { return };
        let state = Arc::clone(&self.state);
        // Drop cannot wait: the release runs as its own task (every caller is on the runtime).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = state.release(r).await {
                    let what = "could not give back a password-check reservation";
                    crate::fault_log::report(what, crate::fault_log::Severity::Warn, true, &e);
                }
            });
        }
    }
}

/// Checks every [`BruteForceState`] must pass, written once against the trait and run on each
/// implementation. `one` and `two` are two instances on the same state (a state that lives in
/// one process passes itself twice); `three` is made with a captcha threshold of 3, `single`
/// with 1.
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance {
    use super::*;
    use crate::rate_limit::username_digest;

    type State = Arc<dyn BruteForceState>;

    pub fn ip(n: u8) -> AddressKey {
        AddressKey::of(IpAddr::from([192, 0, 2, n]))
    }

    /// 32 reservations at once for one username, spread over both instances: exactly the
    /// threshold (3) is granted, the crossing is reported once, and both instances see it.
    pub async fn concurrent_reservations_get_at_most_the_threshold(one: &State, two: &State) {
        let alice = username_digest("alice");
        let tasks: Vec<_> = (0..32u8)
            .map(|i| {
                let s = if i % 2 == 0 { Arc::clone(one) } else { Arc::clone(two) };
                tokio::spawn(async move { (i, s.reserve(ip(i), alice, Asker::Stranger, 1000).await.unwrap()) })
            })
            .collect();
        let mut granted = Vec::new();
        for t in tasks {
            if let (i, Ok(r)) = t.await.unwrap() {
                granted.push((i, r));
            }
        }
        assert_eq!(granted.len(), 3, "three checks in flight, then a captcha");
        let mut crossings = 0;
        for (i, r) in granted {
            let s = if i % 2 == 0 { two } else { one };
            crossings += usize::from(s.fail(r, 1001).await.unwrap().reached_threshold);
        }
        assert_eq!(crossings, 1, "the crossing is reported once");
        assert!(one.needs_captcha(ip(200), Some(alice), 1002).await.unwrap());
        assert!(two.needs_captcha(ip(200), Some(alice), 1002).await.unwrap(), "the other instance sees it");
        assert!(!two.needs_captcha(ip(200), None, 1002).await.unwrap(), "another address, no username");
        assert_eq!(two.clear_username(alice).await.unwrap(), 3);
        assert!(!one.needs_captcha(ip(200), Some(alice), 1002).await.unwrap());
    }

    /// With a threshold of 1: a released reservation, and a [`Held`] one dropped unfinished,
    /// are given back to every instance.
    pub async fn released_or_dropped_reservations_are_given_back(one: &State, two: &State) {
        let alice = username_digest("alice");
        let r = one.reserve(ip(1), alice, Asker::Stranger, 1000).await.unwrap().unwrap();
        assert!(two.reserve(ip(2), alice, Asker::Stranger, 1000).await.unwrap().is_err(), "held");
        two.release(r).await.unwrap();
        let r = two.reserve(ip(2), alice, Asker::Stranger, 1000).await.unwrap().expect("given back");
        let held = Held::new(Arc::clone(two), r);
        assert!(one.reserve(ip(3), alice, Asker::Stranger, 1000).await.unwrap().is_err());
        drop(held);
        // The release runs as a task of its own: let it.
        for _ in 0..500 {
            if one.reserve(ip(3), alice, Asker::Stranger, 1000).await.unwrap().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the reservation was never given back");
    }

    /// With a threshold of 1 and a window of 60 s: a reservation whose end never comes (its
    /// release was lost to an outage) counts on every instance for its lifetime
    /// ([`crate::failures::RESERVATION_HOLD`]) and not after it; a reserved check that fails
    /// late still counts for the whole window from when its failure lands.
    pub async fn a_stranded_reservation_stops_counting_after_its_lifetime(one: &State, two: &State) {
        use crate::failures::RESERVATION_HOLD_MS as HOLD;
        let alice = username_digest("alice");
        let _stranded = one.reserve(ip(1), alice, Asker::Stranger, 1000).await.unwrap().unwrap();
        assert!(
            two.reserve(ip(2), alice, Asker::Stranger, 1000 + HOLD - 1).await.unwrap().is_err(),
            "held while it may run"
        );
        assert!(two.needs_captcha(ip(2), Some(alice), 1000 + HOLD - 1).await.unwrap());
        assert!(!two.needs_captcha(ip(2), Some(alice), 1000 + HOLD).await.unwrap(), "lapsed");
        assert!(!one.needs_captcha(ip(1), None, 1000 + HOLD).await.unwrap(), "for its address too");
        // The real user's checks go on as if it had never been, however many.
        for n in 0..3 {
            let t = 1000 + HOLD + n;
            let r = two.reserve(ip(2), alice, Asker::Stranger, t).await.unwrap().expect("not held by the stranded one");
            one.release(r).await.unwrap();
            assert!(!two.needs_captcha(ip(2), Some(alice), t).await.unwrap(), "each end gives its place back");
        }
        one.prune(1000 + HOLD + 10).await.unwrap();
        // `user unlock` lifts a stranded one at once, on every instance (review 200: an outage
        // left the captcha demanded for the minute after the unlock).
        let carol = username_digest("carol");
        let _stranded = one.reserve(ip(5), carol, Asker::Stranger, 100_000).await.unwrap().unwrap();
        assert!(two.needs_captcha(ip(6), Some(carol), 100_001).await.unwrap(), "held");
        assert_eq!(two.clear_username(carol).await.unwrap(), 0, "no failure to forget");
        assert!(!one.needs_captcha(ip(6), Some(carol), 100_001).await.unwrap(), "unlocked");
        // A check that fails late counts for the whole window (60 s) from its failure.
        let bob = username_digest("bob");
        let r = two.reserve(ip(3), bob, Asker::Stranger, 200_000).await.unwrap().unwrap();
        let failed_at = 200_000 + HOLD - 1;
        one.fail(r, failed_at).await.unwrap();
        assert!(two.needs_captcha(ip(4), Some(bob), 200_000 + HOLD + 1).await.unwrap(), "past the hold, in the window");
        assert!(two.needs_captcha(ip(4), Some(bob), failed_at + 59_999).await.unwrap());
        assert!(!two.needs_captcha(ip(4), Some(bob), failed_at + 60_000).await.unwrap(), "past the window");
    }

    /// With a threshold of 3: a success ends its check, retires its form once and counts the
    /// username's failures, which stay (review 181), on every instance; a form once retired
    /// starts no check.
    pub async fn a_success_ends_its_check_retires_its_form_and_counts_the_username(one: &State, two: &State) {
        let alice = username_digest("alice");
        two.record_failure(ip(9), Some(alice), 1000).await.unwrap();
        let r = one
            .reserve_for_form([3; 16], ip(1), alice, Asker::Stranger, 1000)
            .await
            .unwrap()
            .expect("not retired")
            .unwrap();
        let retire = Retire { id: [3; 16], expires_at_ms: 10_000 };
        assert_eq!(two.succeed(Some(r), Some(retire), Some(alice), 1001).await.unwrap(), Some(1), "one counted");
        assert!(
            one.reserve_for_form([3; 16], ip(1), alice, Asker::Stranger, 1002).await.unwrap().is_none(),
            "the form is retired"
        );
        assert!(two.is_retired([3; 16]).await.unwrap());
        assert_eq!(one.succeed(None, Some(retire), Some(alice), 1002).await.unwrap(), None, "retired once");
        assert_eq!(one.username_failures(alice, 1002).await.unwrap(), 1, "the failure stays");
        assert_eq!(two.clear_username(alice).await.unwrap(), 1, "until `user unlock`");
        // Neither the failure nor the check is counted any more: three places are free.
        let mut held = Vec::new();
        for i in 0..3 {
            let r = two.reserve_for_form([10 + i; 16], ip(2), alice, Asker::Stranger, 1003).await.unwrap().unwrap();
            held.push(r.expect("a free place"));
        }
        assert!(one.reserve(ip(3), alice, Asker::Stranger, 1003).await.unwrap().is_err(), "the threshold still holds");
        for r in held {
            assert_eq!(one.succeed(Some(r), None, None, 1004).await.unwrap(), Some(0), "a bare release");
        }
        assert!(!two.needs_captcha(ip(2), Some(alice), 1004).await.unwrap(), "every place given back");
    }

    /// With a threshold of 3: a known browser is demanded a captcha by its address's count
    /// alone, on every instance; its reservation still holds the username's place (a stranger
    /// meets it) and its failure counts for the username.
    pub async fn a_known_browser_meets_its_addresss_threshold_alone(one: &State, two: &State) {
        let carol = username_digest("carol");
        for i in 0..3 {
            two.record_failure(ip(70 + i), Some(carol), 1000).await.unwrap();
        }
        assert!(one.reserve(ip(80), carol, Asker::Stranger, 1001).await.unwrap().is_err(), "a stranger");
        let r = one.reserve(ip(80), carol, Asker::KnownBrowser, 1001).await.unwrap().expect("a known browser");
        two.release(r).await.unwrap();
        // (Counts stop at the threshold: a name below it shows a known browser's failure.)
        let dave = username_digest("dave");
        let r = one.reserve(ip(80), dave, Asker::KnownBrowser, 1001).await.unwrap().unwrap();
        two.fail(r, 1002).await.unwrap();
        assert_eq!(one.username_failures(dave, 1003).await.unwrap(), 1, "its failure counts for the name");
        let held = two.reserve_for_form([40; 16], ip(81), carol, Asker::KnownBrowser, 1003).await.unwrap();
        let held = held.expect("not retired").expect("through a form too");
        one.release(held).await.unwrap();
        // Its address's own count demands one of it as of anyone.
        for _ in 0..2 {
            one.record_failure(ip(80), None, 1004).await.unwrap();
        }
        assert!(two.reserve(ip(80), carol, Asker::KnownBrowser, 1005).await.unwrap().is_err(), "its address");
    }

    /// With a threshold of 3: where a failure says whether a captcha is now demanded, it says
    /// what [`BruteForceState::needs_captcha`] would, with or without a reservation.
    pub async fn a_failure_that_says_whether_a_captcha_is_demanded_says_it_right(one: &State, two: &State) {
        let bob = username_digest("bob");
        for i in 0..4u8 {
            let counted = match one.reserve(ip(20 + i), bob, Asker::Stranger, 1000).await.unwrap() {
                Ok(r) => two.fail(r, 1000).await.unwrap(),
                Err(CaptchaDemanded) => two.record_failure(ip(20 + i), Some(bob), 1000).await.unwrap(),
            };
            let asked = one.needs_captcha(ip(20 + i), Some(bob), 1000).await.unwrap();
            assert_eq!(counted.captcha_demanded.unwrap_or(asked), asked, "after failure {i}");
            assert_eq!(asked, i >= 2, "the third failure reaches the threshold");
        }
        // An address at the threshold demands one, whichever username.
        let carol = username_digest("carol");
        for _ in 0..2 {
            two.record_failure(ip(30), Some(carol), 1000).await.unwrap();
        }
        let counted = one.record_failure(ip(30), Some(username_digest("dave")), 1000).await.unwrap();
        assert_ne!(counted.captcha_demanded, Some(false), "the address has three");
        assert!(two.needs_captcha(ip(30), None, 1000).await.unwrap());
    }

    /// With a threshold of 3: failures that name no username (passkey sign-ins) count for
    /// their address alone, and however many failures a key gets, it keeps only the threshold
    /// of them (nothing reads more; a flood must not make each failure dearer).
    pub async fn failures_count_for_the_address_alone_and_stay_at_the_threshold(one: &State, two: &State) {
        let nobody = username_digest("");
        for i in 0..3u8 {
            let s = if i % 2 == 0 { one } else { two };
            let counted = s.record_failure(ip(50), None, 1000).await.unwrap();
            assert_eq!(counted.reached_threshold, i == 2, "failure {i}");
        }
        assert!(one.needs_captcha(ip(50), None, 1000).await.unwrap(), "the address has three");
        assert!(!two.needs_captcha(ip(51), Some(nobody), 1000).await.unwrap(), "no username was counted");
        assert_eq!(one.clear_username(nobody).await.unwrap(), 0);
        let erin = username_digest("erin");
        for i in 0..40u8 {
            let s = if i % 2 == 0 { one } else { two };
            s.record_failure(ip(60 + i), Some(erin), 1000 + u64::from(i)).await.unwrap();
        }
        assert!(one.needs_captcha(ip(59), Some(erin), 1100).await.unwrap());
        assert_eq!(two.clear_username(erin).await.unwrap(), 3, "a username keeps the threshold of failures");
        assert!(!one.needs_captcha(ip(59), Some(erin), 1100).await.unwrap(), "cleared");
    }

    /// 16 takers at once over both instances: one gets the challenge; none after it expires.
    pub async fn a_challenge_is_taken_once_and_not_after_it_expires(one: &State, two: &State) {
        one.open_challenge([1; 32], [7; 32], 5000, 1000).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let s = if i % 2 == 0 { Arc::clone(one) } else { Arc::clone(two) };
                tokio::spawn(async move { s.take_challenge([1; 32], 1001).await.unwrap() })
            })
            .collect();
        let mut got = 0;
        for t in tasks {
            got += usize::from(t.await.unwrap() == Some([7; 32]));
        }
        assert_eq!(got, 1);
        one.open_challenge([2; 32], [7; 32], 5000, 1000).await.unwrap();
        assert_eq!(two.take_challenge([2; 32], 5000).await.unwrap(), None, "expired");
    }

    /// 16 sign-ins with one pre-login id over both instances: one retires it; it is
    /// forgotten once it would have expired anyway.
    pub async fn a_pre_login_id_is_retired_once(one: &State, two: &State) {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let s = if i % 2 == 0 { Arc::clone(one) } else { Arc::clone(two) };
                tokio::spawn(async move { s.retire([5; 16], 10_000, 1000).await.unwrap() })
            })
            .collect();
        let mut first = 0;
        for t in tasks {
            first += usize::from(t.await.unwrap());
        }
        assert_eq!(first, 1);
        assert!(two.is_retired([5; 16]).await.unwrap());
        one.prune(10_001).await.unwrap();
        assert!(!one.is_retired([5; 16]).await.unwrap(), "forgotten once it would have expired anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::username_digest;

    fn state(threshold: u32) -> Arc<dyn BruteForceState> {
        Arc::new(InMemory::new(None, None, Duration::from_secs(60), threshold))
    }

    use conformance::ip;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reservations_get_at_most_the_threshold_of_checks() {
        let s = state(3);
        conformance::concurrent_reservations_get_at_most_the_threshold(&s, &s).await;
    }

    #[tokio::test]
    async fn a_released_or_held_reservation_dropped_unfinished_is_given_back() {
        let s = state(1);
        conformance::released_or_dropped_reservations_are_given_back(&s, &s).await;
    }

    #[tokio::test]
    async fn a_reservation_whose_release_never_comes_stops_counting_after_its_lifetime() {
        let s = state(1);
        conformance::a_stranded_reservation_stops_counting_after_its_lifetime(&s, &s).await;
    }

    #[tokio::test]
    async fn a_success_ends_its_check_retires_its_form_once_and_counts_the_username() {
        let s = state(3);
        conformance::a_success_ends_its_check_retires_its_form_and_counts_the_username(&s, &s).await;
    }

    #[tokio::test]
    async fn a_known_browser_meets_its_addresss_threshold_alone() {
        let s = state(3);
        conformance::a_known_browser_meets_its_addresss_threshold_alone(&s, &s).await;
    }

    #[tokio::test]
    async fn a_failure_that_says_whether_a_captcha_is_demanded_says_it_right() {
        let s = state(3);
        conformance::a_failure_that_says_whether_a_captcha_is_demanded_says_it_right(&s, &s).await;
    }

    #[tokio::test]
    async fn failures_count_for_the_address_alone_and_stay_at_the_threshold() {
        let s = state(3);
        conformance::failures_count_for_the_address_alone_and_stay_at_the_threshold(&s, &s).await;
    }

    #[tokio::test]
    async fn a_quota_allows_its_burst_then_says_how_long_to_wait_per_key() {
        let s = state(3);
        let rate = Rate { burst: 3, period: Duration::from_secs(60) };
        let key = QuotaKey::Address(ip(1));
        for _ in 0..3 {
            assert_eq!(s.take(key, rate, 0).await.unwrap(), Ok(()));
        }
        let wait = s.take(key, rate, 0).await.unwrap().unwrap_err();
        assert!((1..=20_000).contains(&wait.ms), "one unit every 20 s: {wait:?}");
        assert!((1..=20).contains(&wait.retry_after_secs()));
        assert_eq!(s.take(QuotaKey::Address(ip(2)), rate, 0).await.unwrap(), Ok(()), "keys are independent");
        assert_eq!(s.take(QuotaKey::CaptchaDraws(ip(1)), rate, 0).await.unwrap(), Ok(()), "quotas are independent");
        let (strangers, known) = (QuotaKey::Username(7), QuotaKey::KnownUsername(7));
        for _ in 0..3 {
            assert_eq!(s.take(strangers, rate, 0).await.unwrap(), Ok(()));
        }
        assert!(s.take(strangers, rate, 0).await.unwrap().is_err());
        for _ in 0..3 {
            assert_eq!(s.take(known, rate, 0).await.unwrap(), Ok(()), "a username's known browsers: apart");
        }
        assert!(s.take(known, rate, 0).await.unwrap().is_err(), "and as bounded");
        for codes in [QuotaKey::SecondStep(7), QuotaKey::KnownSecondStep(7)] {
            for _ in 0..3 {
                assert_eq!(s.take(codes, rate, 0).await.unwrap(), Ok(()), "{codes:?}: apart");
            }
            assert!(s.take(codes, rate, 0).await.unwrap().is_err(), "{codes:?}: as bounded");
        }
    }

    #[tokio::test]
    async fn a_spent_quota_refills_after_its_emission_interval() {
        let s = state(3);
        // One unit every 50 ms; waiting longer only makes the refill surer on a loaded machine.
        let rate = Rate { burst: 1, period: Duration::from_millis(50) };
        let key = QuotaKey::Username(username_digest("alice"));
        assert_eq!(s.take(key, rate, 0).await.unwrap(), Ok(()));
        let wait = s.take(key, rate, 0).await.unwrap().unwrap_err();
        tokio::time::sleep(Duration::from_millis(wait.ms + 20)).await;
        assert_eq!(s.take(key, rate, 0).await.unwrap(), Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_challenge_is_taken_once_by_concurrent_takers_and_not_after_it_expires() {
        let s = state(3);
        conformance::a_challenge_is_taken_once_and_not_after_it_expires(&s, &s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pre_login_id_is_retired_once_by_concurrent_sign_ins() {
        let s = state(3);
        conformance::a_pre_login_id_is_retired_once(&s, &s).await;
    }

    #[test]
    fn quota_keys_are_plain_bytes() {
        assert_eq!(QuotaKey::Address(ip(7)).bytes(), vec![192, 0, 2, 7]);
        assert_eq!(QuotaKey::Username(1).bytes().len(), 16);
        assert_eq!(QuotaKey::KnownUsername(1).bytes(), QuotaKey::Username(1).bytes(), "told apart by kind");
        assert_ne!(QuotaKey::KnownUsername(1).kind(), QuotaKey::Username(1).kind());
        let v6 = AddressKey::of("2001:db8::1".parse().unwrap());
        assert_eq!(QuotaKey::CaptchaDraws(v6).bytes()[8..], [0; 8], "IPv6 by /64");
    }
}
