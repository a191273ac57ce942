//! [`BruteForceState`] on PostgreSQL: the operations of [`super::brute_force`] behind the
//! trait the sign-in service uses, so every instance on one database enforces the quotas,
//! failure counts, captcha challenges and retired pre-login ids one instance would (SPEC.md,
//! "Several instances, one truth"; issue 12 §3). Nothing is kept in the process.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::brute_force as bf;
use super::db::{Conn, Db};
use super::PgError;
use crate::brute_force::{BruteForceState, QuotaKey, Retire, StateError, Wait};
use crate::client::AddressKey;
use crate::config::Rate;
use crate::failures::{Asker, CaptchaDemanded, Recorded, Reservation};

impl From<PgError> for StateError {
    fn from(e: PgError) -> Self {
        StateError(anyhow::Error::new(e).context("shared brute-force state in PostgreSQL"))
    }
}

/// The shared brute-force state over a pool on a migrated database.
pub struct PgBruteForce {
    /// Every statement bounded (`db`): a hung database fails the attempt closed.
    pool: Db,
    /// `failure_window`, in milliseconds.
    window_ms: u64,
    /// `captcha_after_failures`.
    threshold: u32,
    /// This host's clock, Unix milliseconds ([`crate::store::now_ms`]; another in tests).
    local_clock: fn() -> u64,
    /// How far the database's clock is ahead of `local_clock` (ms, negative when behind), as
    /// last measured; `None` before the first measurement.
    offset: std::sync::Mutex<Option<Measured>>,
}

/// How often the offset of this host's clock from the database's is measured again: one
/// round trip at most this often.
const REMEASURE: Duration = Duration::from_secs(10);

/// An offset below this (milliseconds) is left alone: a round trip's measurement is off by up
/// to half of it, and a quota's unit is seconds, so a second's skew is worth less than one.
const OFFSET_IGNORED_MS: i64 = 1_000;

/// An offset from the database's clock, and when it was measured, by the monotonic clock and
/// by this host's, so that a step of this host's clock since is seen.
#[derive(Clone, Copy)]
struct Measured {
    at: Instant,
    local_ms: u64,
    ahead_ms: i64,
}

impl Measured {
    /// Whether it still holds at `local_ms` (this host's clock now): measured less than
    /// [`REMEASURE`] ago, and this host's clock has moved as the monotonic clock has since,
    /// within [`OFFSET_IGNORED_MS`] (review 165: stepped back 20 s by NTP, an instance went on
    /// with its old offset until it measured again, and an address's burst there was recorded
    /// 20 s early, so other instances gave it 6 more attempts).
    fn holds_at(&self, local_ms: u64) -> bool {
        self.at.elapsed() < REMEASURE && self.clock_agrees(local_ms)
    }

    /// Whether this host's clock reads `local_ms` as the monotonic clock says it should.
    fn clock_agrees(&self, local_ms: u64) -> bool {
        let elapsed = u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.local_ms.saturating_add(elapsed).abs_diff(local_ms) < OFFSET_IGNORED_MS.unsigned_abs()
    }
}

/// The times of one operation, moved from this host's clock to the database's.
#[derive(Clone, Copy)]
struct OnDatabaseClock(i64);

impl OnDatabaseClock {
    /// The database's clock `ahead_ms` ahead of this host's (negative: behind), as measured;
    /// an offset under [`OFFSET_IGNORED_MS`] is left alone.
    fn measured(ahead_ms: i64) -> Self {
        OnDatabaseClock(if ahead_ms.abs() < OFFSET_IGNORED_MS { 0 } else { ahead_ms })
    }

    /// `local_ms` (Unix milliseconds on this host's clock) on the database's.
    fn ms(self, local_ms: u64) -> u64 {
        match self.0 {
            ahead if ahead >= 0 => local_ms.saturating_add(ahead.unsigned_abs()),
            behind => local_ms.saturating_sub(behind.unsigned_abs()),
        }
    }
}

impl PgBruteForce {
    /// `window` and `threshold`: `failure_window` and `captcha_after_failures`, as for
    /// [`crate::brute_force::InMemory::new`]; the database's schema must be current
    /// (`migrate::migrate`, which `Store::connect` runs).
    pub fn new(pool: Db, window: Duration, threshold: u32) -> Self {
        PgBruteForce {
            pool,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            threshold,
            local_clock: crate::store::now_ms,
            offset: std::sync::Mutex::new(None),
        }
    }

    /// The same with `clock` for this host's (a test's host whose clock is off).
    pub fn with_local_clock(self, clock: fn() -> u64) -> Self {
        PgBruteForce { local_clock: clock, ..self }
    }

    /// A connection, and how to move the caller's times (this host's clock) to the
    /// database's. Every instance on one database then counts quotas and windows on one clock:
    /// one whose clock ran 20 s ahead let an address make 7 more attempts right after its
    /// burst elsewhere, as the quota had refilled by its clock (review 163). An instance up to
    /// `health::CLOCK_LIMIT_MS` (30 s) off the database's clock is still ready, so such skews
    /// are served with.
    async fn client(&self) -> Result<(Conn, OnDatabaseClock), StateError> {
        let c = self.pool.get().await?;
        // A panic while it was held cannot leave it half-written: each write is one store.
        let offset = || self.offset.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = *offset();
        let ahead = match known {
            Some(measured) if measured.holds_at((self.local_clock)()) => measured.ahead_ms,
            _ => {
                let sent = (self.local_clock)();
                // Others meanwhile go on with the last measurement, rather than each measure,
                // unless this host's clock stepped (then they measure too).
                let aged = known.filter(|last| last.clock_agrees(sent));
                if let Some(last) = aged {
                    *offset() = Some(Measured { at: Instant::now(), local_ms: sent, ..last });
                }
                let database = c.database_clock_ms().await?;
                let received = (self.local_clock)();
                let middle = (sent / 2).saturating_add(received / 2);
                let ahead = database.saturating_sub(i64::try_from(middle).unwrap_or(i64::MAX));
                *offset() = Some(Measured { at: Instant::now(), local_ms: received, ahead_ms: ahead });
                ahead
            }
        };
        Ok((c, OnDatabaseClock::measured(ahead)))
    }
}

fn username_bytes(digest: u128) -> Vec<u8> {
    digest.to_be_bytes().to_vec()
}

#[async_trait]
impl BruteForceState for PgBruteForce {
    fn on_shared_clock(&self, local_ms: u64) -> u64 {
        // The offset last measured, while this host's clock has not stepped since (then the
        // next statement measures again; until then, this host's clock as it is).
        let known = *self.offset.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match known {
            Some(measured) if measured.clock_agrees(local_ms) => {
                OnDatabaseClock::measured(measured.ahead_ms).ms(local_ms)
            }
            _ => local_ms,
        }
    }

    async fn take(&self, key: QuotaKey, rate: Rate, now_ms: u64) -> Result<Result<(), Wait>, StateError> {
        let (c, at) = self.client().await?;
        let taken = bf::take_quota_ms(&c, key.kind(), &key.bytes(), rate, at.ms(now_ms)).await?;
        Ok(taken.map_err(|ms| Wait { ms }))
    }

    async fn reserve(
        &self,
        address: AddressKey,
        username: u128,
        asker: Asker,
        now_ms: u64,
    ) -> Result<Result<Reservation, CaptchaDemanded>, StateError> {
        Ok(self.begin(None, address, username, asker, now_ms).await?.unwrap_or(Err(CaptchaDemanded)))
    }

    async fn fail(&self, reservation: Reservation, now_ms: u64) -> Result<Recorded, StateError> {
        self.failed(reservation.address, Some(reservation.username), true, now_ms).await
    }

    async fn release(&self, reservation: Reservation) -> Result<(), StateError> {
        self.succeed(Some(reservation), None, None, 0).await.map(|_| ())
    }

    async fn record_failure(
        &self,
        address: AddressKey,
        username: Option<u128>,
        now_ms: u64,
    ) -> Result<Recorded, StateError> {
        self.failed(address, username, false, now_ms).await
    }

    async fn needs_captcha(
        &self,
        address: AddressKey,
        username: Option<u128>,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        let (c, at) = self.client().await?;
        // No username: an empty key, which no 16-byte username key equals.
        let u = username.map(username_bytes).unwrap_or_default();
        Ok(bf::needs_captcha(&c, &bf::address_key(address), &u, at.ms(now_ms), self.threshold).await?)
    }

    async fn clear_username(&self, username: u128) -> Result<usize, StateError> {
        let (c, _) = self.client().await?;
        // Every failure row it had, lapsed or not yet pruned, as the in-memory count answers
        // (the trait passes no time): a cutoff of 0 counts them all.
        let n = bf::clear_username(&c, &username_bytes(username), 0).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn username_failures(&self, username: u128, now_ms: u64) -> Result<usize, StateError> {
        let (c, at) = self.client().await?;
        let n = bf::username_failures(&c, &username_bytes(username), at.ms(now_ms)).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn open_challenge(
        &self,
        slot: [u8; 32],
        answer_hash: [u8; 32],
        expires_at_ms: u64,
        _now_ms: u64,
    ) -> Result<(), StateError> {
        let (c, at) = self.client().await?;
        Ok(bf::put_captcha(&c, &slot, &answer_hash, at.ms(expires_at_ms)).await?)
    }

    async fn take_challenge(&self, slot: [u8; 32], now_ms: u64) -> Result<Option<[u8; 32]>, StateError> {
        let (c, at) = self.client().await?;
        Ok(bf::take_captcha(&c, &slot, at.ms(now_ms)).await?)
    }

    async fn retire(&self, id: [u8; 16], expires_at_ms: u64, now_ms: u64) -> Result<bool, StateError> {
        let (c, at) = self.client().await?;
        Ok(bf::retire_prelogin(&c, &id, at.ms(expires_at_ms), at.ms(now_ms)).await?)
    }

    async fn is_retired(&self, id: [u8; 16]) -> Result<bool, StateError> {
        let (c, _) = self.client().await?;
        Ok(bf::is_retired(&c, &id).await?)
    }

    async fn prune(&self, now_ms: u64) -> Result<(), StateError> {
        let (c, at) = self.client().await?;
        bf::purge_expired(&c, at.ms(now_ms)).await?;
        Ok(())
    }

    async fn reserve_for_form(
        &self,
        prelogin: [u8; 16],
        address: AddressKey,
        username: u128,
        asker: Asker,
        now_ms: u64,
    ) -> Result<Option<Result<Reservation, CaptchaDemanded>>, StateError> {
        self.begin(Some(&prelogin), address, username, asker, now_ms).await
    }

    async fn succeed(
        &self,
        reservation: Option<Reservation>,
        retire: Option<Retire>,
        tally: Option<u128>,
        now_ms: u64,
    ) -> Result<Option<usize>, StateError> {
        let (c, at) = self.client().await?;
        let held = reservation.map(|r| (bf::address_key(r.address), username_bytes(r.username)));
        let tally = tally.map(username_bytes);
        let counted = bf::end_check(
            &c,
            held.as_ref().map(|(a, u)| (&a[..], &u[..])),
            retire.as_ref().map(|r| (&r.id, at.ms(r.expires_at_ms))),
            tally.as_deref(),
            at.ms(now_ms),
        )
        .await?;
        Ok(counted.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
    }
}

impl PgBruteForce {
    /// A failure of a reserved check (`held`) or of one without a reservation, with whether a
    /// captcha is now demanded, in one round trip: the refusal that follows need not ask.
    async fn failed(
        &self,
        address: AddressKey,
        username: Option<u128>,
        held: bool,
        now_ms: u64,
    ) -> Result<Recorded, StateError> {
        let (c, at) = self.client().await?;
        let (a, u) = (bf::address_key(address), username.map(username_bytes));
        let (reached, demanded) =
            bf::fail_counted(&c, &a, u.as_deref(), held, at.ms(now_ms), self.window_ms, self.threshold).await?;
        Ok(Recorded { reached_threshold: reached, captcha_demanded: Some(demanded) })
    }

    /// [`BruteForceState::reserve_for_form`] (with a pre-login id) or
    /// [`BruteForceState::reserve`] (without) in one round trip: `None` when the id is retired.
    async fn begin(
        &self,
        prelogin: Option<&[u8; 16]>,
        address: AddressKey,
        username: u128,
        asker: Asker,
        now_ms: u64,
    ) -> Result<Option<Result<Reservation, CaptchaDemanded>>, StateError> {
        let (c, at) = self.client().await?;
        let (a, u) = (bf::address_key(address), username_bytes(username));
        let username_counts = asker == Asker::Stranger;
        Ok(match bf::begin_check(&c, prelogin, &a, &u, username_counts, at.ms(now_ms), self.threshold).await? {
            bf::Begun::Retired => None,
            bf::Begun::CaptchaDemanded => Some(Err(CaptchaDemanded)),
            // The rows are found again by their keys when the reservation ends (`bf_take_held`).
            bf::Begun::Reserved => Some(Ok(Reservation { address, username, address_held: true, username_held: true })),
        })
    }
}
