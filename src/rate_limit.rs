//! Login quotas (governor, keyed): per client address on every `POST /login`, and per
//! normalised username on every password check.
//!
//! Memory: governor keeps one entry per key until `retain_recent` finds it back at a full
//! bucket, which a background task asks for every few seconds. Keys are therefore bounded by
//! the addresses (or usernames) seen within one quota period, and additionally by a hard cap
//! ([`MAX_KEYS`]): past it the limiter is pruned at once, and if it is still full it is
//! reset (logged). A reset can only forgive the quotas of an attacker who already sends from
//! that many addresses or names; the captcha still applies, since the failure counts
//! (`crate::failures`) fail closed when full rather than reset.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::client::AddressKey;
use crate::config::Rate;

/// Most keys one limiter holds before it is pruned (or reset).
pub const MAX_KEYS: usize = 250_000;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// The rate a limiter was made for, and the limiter (`None`: no limit).
type Made<K> = (Option<Rate>, Option<Arc<Keyed<K>>>);

/// A keyed limiter, or none when the quota is `off`.
pub struct Limiter<K: std::hash::Hash + Eq + Clone> {
    /// The rate the limiter was made for, and the limiter (`None`: no limit).
    inner: RwLock<Made<K>>,
    clock: DefaultClock,
    max_keys: usize,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(rate: Option<Rate>) -> Option<Arc<Keyed<K>>> {
    rate.and_then(quota).map(|q| Arc::new(RateLimiter::dashmap(q)))
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Option<Rate>, max_keys: usize) -> Self {
        Limiter { inner: RwLock::new((rate, keyed(rate))), clock: DefaultClock::default(), max_keys }
    }

    fn current(&self) -> Option<Arc<Keyed<K>>> {
        self.inner.read().ok().and_then(|l| l.1.clone())
    }

    /// Takes one unit for `key`. `Err(seconds)` says how long until the next one is allowed
    /// (rounded up, at least 1).
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.check_in(self.current(), key).map_err(|ms| ms.div_ceil(1000).max(1))
    }

    /// Takes one unit for `key` under `rate` (GCRA, as governor implements it). A limiter
    /// made for another rate is replaced first, forgetting its keys: rates change only with
    /// the settings. `Err(ms)` is the wait until the next unit, in milliseconds (at least 1).
    pub fn take(&self, rate: Rate, key: &K) -> Result<(), u64> {
        let same = self.inner.read().ok().is_some_and(|l| l.0 == Some(rate));
        if !same {
            if let Ok(mut slot) = self.inner.write() {
                if slot.0 != Some(rate) {
                    *slot = (Some(rate), keyed(Some(rate)));
                }
            }
        }
        self.check_in(self.current(), key)
    }

    fn check_in(&self, limiter: Option<Arc<Keyed<K>>>, key: &K) -> Result<(), u64> {
        let Some(mut limiter) = limiter else { return Ok(()) };
        if limiter.len() >= self.max_keys {
            self.make_room(&limiter);
            limiter = self.current().unwrap_or(limiter);
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            (wait.as_millis() as u64).max(1)
        })
    }

    fn make_room(&self, limiter: &Keyed<K>) {
        limiter.retain_recent();
        if limiter.len() < self.max_keys {
            return;
        }
        // Resetting is safe only because the other defences still stand; see the module note.
        tracing::warn!(keys = limiter.len(), "rate limiter full of recent keys: reset");
        if let Ok(mut slot) = self.inner.write() {
            slot.1 = keyed(slot.0);
        }
    }

    /// Drops keys whose bucket is full again, and gives memory back.
    pub fn prune(&self) {
        if let Some(limiter) = self.current() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.current().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn quota(rate: Rate) -> Option<Quota> {
    let burst = NonZeroU32::new(rate.burst)?;
    Quota::with_period(rate.period / rate.burst).map(|q| q.allow_burst(burst))
}

/// A fixed-size stand-in for a normalised username in the in-memory tables: 16 bytes
/// instead of up to 256 characters, whatever an attacker types.
pub fn username_digest(user_key: &str) -> u128 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(user_key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_be_bytes(first)
}

/// Both quotas of the login form.
pub struct LoginQuotas {
    /// Keyed by [`AddressKey`], as every per-address defence is.
    pub per_address: Limiter<AddressKey>,
    /// Keyed by [`username_digest`].
    pub per_username: Limiter<u128>,
    /// `login_quota_per_user` of the browsers known to a username, keyed by
    /// [`username_digest`]: only device tokens the server issued make keys.
    pub per_known_username: Limiter<u128>,
    /// `login_quota_per_user` of second-step codes, keyed by [`username_digest`]
    /// ([`crate::brute_force::QuotaKey::SecondStep`]): only usernames whose password was
    /// right make keys.
    pub second_steps: Limiter<u128>,
    /// The same for the browsers known to a username.
    pub known_second_steps: Limiter<u128>,
    /// Captcha pictures drawn per address ([`CAPTCHA_DRAWS`]): drawing costs a few ms of CPU,
    /// and `GET /login` is otherwise unlimited, so a flagged address must not be able to
    /// make the server draw as fast as it can ask.
    pub captcha_draws: Limiter<AddressKey>,
    /// *Sign out everywhere else* per user ([`SIGN_OUTS_ELSEWHERE`]).
    pub sign_outs_elsewhere: Limiter<u128>,
}

/// Captcha pictures one address may have drawn: enough for a busy office behind one NAT.
pub const CAPTCHA_DRAWS: Rate = Rate { burst: 60, period: Duration::from_secs(60) };

/// *Sign out everywhere else* per user: five at once (a double click spends two), then one
/// every 2 minutes. Each ends the
/// user's other sessions and any sign-in under way, so a thief who shares a passkey or a
/// password with the owner, clicking it in a loop (a review saw 600 a second), would keep the
/// owner from staying signed in long enough to remove that passkey or change the password,
/// and write a log line each time. The owner has those two to end a thief's sessions anyway.
pub const SIGN_OUTS_ELSEWHERE: Rate = Rate { burst: 5, period: Duration::from_secs(600) };

impl LoginQuotas {
    pub fn new(per_address: Option<Rate>, per_username: Option<Rate>) -> Self {
        LoginQuotas {
            per_address: Limiter::new(per_address, MAX_KEYS),
            per_username: Limiter::new(per_username, MAX_KEYS),
            per_known_username: Limiter::new(per_username, MAX_KEYS),
            second_steps: Limiter::new(per_username, MAX_KEYS),
            known_second_steps: Limiter::new(per_username, MAX_KEYS),
            captcha_draws: Limiter::new(Some(CAPTCHA_DRAWS), MAX_KEYS),
            sign_outs_elsewhere: Limiter::new(Some(SIGN_OUTS_ELSEWHERE), MAX_KEYS),
        }
    }

    pub fn prune(&self) {
        self.per_address.prune();
        self.per_username.prune();
        self.per_known_username.prune();
        self.second_steps.prune();
        self.known_second_steps.prune();
        self.captcha_draws.prune();
    }
}

/// How often the background task prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_with_a_retry_after() {
        let l: Limiter<u32> = Limiter::new(Some(Rate { burst: 3, period: Duration::from_secs(60) }), 100);
        assert!(l.check(&1).is_ok() && l.check(&1).is_ok() && l.check(&1).is_ok());
        let wait = l.check(&1).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(l.check(&2).is_ok(), "keys are independent");
    }

    #[test]
    fn off_means_no_limit() {
        let l: Limiter<u32> = Limiter::new(None, 100);
        for _ in 0..1000 {
            assert!(l.check(&1).is_ok());
        }
    }

    #[test]
    fn the_key_count_stays_under_the_cap() {
        let l: Limiter<u32> = Limiter::new(Some(Rate { burst: 5, period: Duration::from_secs(3600) }), 1000);
        for k in 0..10_000 {
            let _ = l.check(&k);
        }
        assert!(l.len() <= 1000, "{}", l.len());
    }
}
