//! Checking credentials: look the user up, verify on the hash pool (against a dummy hash when
//! the user does not exist, so the answer takes as long), upgrade outdated hashes.
//!
//! The dummy must cost what a real check costs, and stored hashes keep the parameters they
//! were made with until their owner next signs in: after `argon2_*` settings change, a dummy
//! with the new parameters would tell unknown usernames from known ones by time. So unknown
//! usernames are checked against a dummy shaped like the most common kind of stored hash
//! (same algorithm, version, parameters and output length), as the OWASP Authentication
//! Cheat Sheet asks: the same response time whether or not the user exists. The kinds are
//! counted at start and recounted in the background every [`DUMMY_REFRESH`] and after each
//! upgrade, never while a sign-in waits.

use crate::audit::FailureReason;
use crate::domain::Username;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::password::pool::dummy_like;
use crate::password::{HashPool, Lane, Password, PoolError, MAX_PASSWORD_CHARS};
use crate::store::{now_ms, Store, StoreError, User};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong username or password. The reason is for the audit log only; the client sees one
    /// generic answer for all of them.
    #[error("invalid credentials")]
    InvalidCredentials(FailureReason),
    #[error("too many password checks in progress")]
    Overloaded,
    /// The password was right, but the user's credential generation moved on while it was
    /// checked (*sign out everywhere else*, `user reset-factors`): the check belongs to the
    /// old generation and signs nobody in. Not a wrong password: nothing to count or record
    /// as one, and its owner can simply sign in again.
    #[error("the account changed while the password was checked")]
    Superseded {
        /// The user's stored name, for the record of it.
        username: String,
    },
    /// The store failed (for example a full disk): the caller answers 503 or 500 as
    /// `StoreError::is_unavailable` says.
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e)
    }
}

impl From<PoolError> for AuthError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Overloaded => AuthError::Overloaded,
            other => AuthError::Unexpected(other.into()),
        }
    }
}

/// How long the dummy for unknown usernames is kept before the stored hashes are recounted
/// (users added or removed meanwhile shift the most common kind only slowly).
pub const DUMMY_REFRESH: Duration = Duration::from_secs(60);

/// The dummy for unknown usernames and when it was chosen.
#[derive(Default)]
struct DummyCache {
    /// When it was chosen, and the choice (`None`: the pool's own dummy); `None` before the
    /// first choice.
    chosen: Option<(Instant, Option<String>)>,
    /// Hash upgrades so far (each changes the mix of stored kinds), and how many the choice
    /// counted: when they differ, it is chosen again (an upgrade during a count is not lost).
    upgrades: u64,
    counted_upgrades: u64,
    /// A recount is running in the background.
    refreshing: bool,
}

/// Ends the background recount's turn however it ends (an error, a panic, a cancelled task),
/// so a later unknown username starts the next.
struct Refreshing(Arc<Mutex<DummyCache>>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).refreshing = false;
    }
}

#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    pool: HashPool,
    dummy: Arc<Mutex<DummyCache>>,
}

impl Authenticator {
    pub fn new(store: Store, pool: HashPool) -> Self {
        Authenticator { store, pool, dummy: Arc::default() }
    }

    /// Whether the hash pool would likely take a check in `lane` now ([`HashPool::has_room`]).
    pub fn has_room(&self, lane: Lane) -> bool {
        self.pool.has_room(lane)
    }

    /// Chooses the dummy for unknown usernames now (at start), so that no sign-in waits for
    /// the count.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot count the hashes (the first unknown username then
    /// counts them).
    pub async fn choose_dummy(&self) -> Result<(), StoreError> {
        self.recount().await.map(|_| ())
    }

    /// Counts the stored hashes' kinds and keeps a dummy like the most common one.
    async fn recount(&self) -> Result<Option<String>, StoreError> {
        let upgrades = self.cache().upgrades;
        let dummy = self.store.users.most_common_hash().await?.and_then(|example| dummy_like(&example));
        let mut cache = self.cache();
        cache.chosen = Some((Instant::now(), dummy.clone()));
        cache.counted_upgrades = upgrades;
        Ok(dummy)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, DummyCache> {
        // A poisoned lock holds only a cached choice, valid whatever panicked: carry on.
        self.dummy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A dummy shaped like the most common kind of stored hash, or `None` (no users, or none
    /// parses) for the pool's own dummy with the current parameters.
    ///
    /// An unknown username never waits for the recount (a scan of every user: hundreds of
    /// milliseconds with 100,000 of them, which would tell it from a known one by time): a
    /// choice that is due is made again in the background while this one is used. Before the
    /// first choice ([`Authenticator::choose_dummy`] failed at start) that is the pool's own.
    fn dummy_for_unknown(&self) -> Option<String> {
        let (dummy, due) = {
            let mut cache = self.cache();
            let (dummy, due) = match &cache.chosen {
                Some((at, dummy)) => {
                    (dummy.clone(), cache.upgrades != cache.counted_upgrades || at.elapsed() >= DUMMY_REFRESH)
                }
                None => (None, true),
            };
            let due = due && !cache.refreshing;
            cache.refreshing |= due;
            (dummy, due)
        };
        if !due {
            return dummy;
        }
        let this = self.clone();
        let turn = Refreshing(Arc::clone(&self.dummy));
        tokio::spawn(async move {
            let _turn = turn;
            if let Err(e) = this.recount().await {
                crate::fault_log::report(
                    "could not recount the stored password hashes for the unknown-user dummy",
                    crate::fault_log::Severity::Warn,
                    e.is_unavailable(),
                    &e,
                );
            }
        });
        dummy
    }

    /// Checks a username and password as typed, waiting in the hash pool's `lane`. On success
    /// returns the user, with the last sign-in time updated when `completes_sign_in` (no second
    /// step follows: a sign-in that stops at the second step has not happened, SECURITY.md).
    /// `factors_read_under` is the user's generation (`User::password_changed_at`, `None`: no
    /// such user) when the caller read the factors that decided `completes_sign_in`.
    ///
    /// # Errors
    /// [`AuthError::InvalidCredentials`] for any refusal (the same answer for all);
    /// [`AuthError::Superseded`] for a right password of a user whose generation is not
    /// `factors_read_under` (nothing recorded: the factors may have changed since, review
    /// 134) or moved on while it was checked; [`AuthError::Overloaded`] when the lane's queue
    /// is full; [`AuthError::Store`].
    #[tracing::instrument(name = "authenticate", skip_all)]
    pub async fn authenticate(
        &self,
        typed_username: &str,
        password: Password,
        completes_sign_in: bool,
        factors_read_under: Option<u64>,
        lane: Lane,
    ) -> Result<User, AuthError> {
        if password.char_count() > MAX_PASSWORD_CHARS {
            // No stored password can be this long; refusing it early is the same answer for
            // every username, so it says nothing about who exists.
            let user = match Username::parse(typed_username) {
                // Only for the recorded reason, but a store that cannot say is a fault (503), not
                // an unknown user.
                Ok(u) => self.store.users.get(u.key()).await?,
                Err(_) => None,
            };
            let reason = if user.is_some() { FailureReason::BadPassword } else { FailureReason::UnknownUser };
            return Err(AuthError::InvalidCredentials(reason));
        }
        let user = match Username::parse(typed_username) {
            Ok(name) => self.store.users.credential(name.key()).await?,
            Err(_) => None,
        };
        let phc = match &user {
            Some(c) => Some(c.password_hash.clone()),
            None => self.dummy_for_unknown(),
        };
        let verified = self.pool.verify(password, phc, lane).await?;
        let Some(credential) = user else {
            return Err(AuthError::InvalidCredentials(FailureReason::UnknownUser));
        };
        if !verified.valid {
            return Err(AuthError::InvalidCredentials(FailureReason::BadPassword));
        }
        // A first second factor begins a new generation before it is stored and sweeps the
        // old generation's sessions after: a sign-in that read "no factor" under the old one
        // and checks the password under the new one would make a password-only session that
        // sweep never sees. It starts over instead, as when the password changed meanwhile.
        if factors_read_under != Some(credential.user.password_changed_at) {
            return Err(AuthError::Superseded { username: credential.user.display_name });
        }
        if verified.upgraded_hash.is_some() {
            tracing::info!(username = %credential.user.display_name, "password hash upgraded to the current parameters");
            // The mix of stored kinds has changed: choose the dummy again.
            self.cache().upgrades += 1;
        }
        // Written as a compare-and-swap on the password we verified: if it was changed while we
        // were hashing, the old password must not let anyone in; a concurrent upgrade of the
        // same password's hash is no change.
        let recorded = self
            .store
            .users
            .record_login(&credential, verified.upgraded_hash.as_deref(), completes_sign_in.then(now_ms))
            .await?;
        let Some(user) = recorded else {
            return Err(self.not_recorded(&credential).await?);
        };
        if user.disabled {
            // Checked after the password, so a disabled account answers in the same time and
            // with the same 401 as a wrong password: the reason is for the log only.
            return Err(AuthError::InvalidCredentials(FailureReason::Disabled));
        }
        Ok(user)
    }

    /// Why a right password recorded no sign-in ([`crate::store::UserStore::record_login`] said
    /// `None`: the user's generation moved on while the hash was checked), read afresh: a new
    /// password, or the user gone, makes it a wrong one; a disabled user, `Disabled`; the same
    /// password under a new generation, [`AuthError::Superseded`].
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot read the user.
    async fn not_recorded(&self, checked: &crate::store::Credential) -> Result<AuthError, StoreError> {
        Ok(match self.store.users.credential(&checked.user.key).await? {
            Some(now) if now.user.disabled => AuthError::InvalidCredentials(FailureReason::Disabled),
            Some(now) if now.password_hash == checked.password_hash => {
                AuthError::Superseded { username: now.user.display_name }
            }
            _ => AuthError::InvalidCredentials(FailureReason::BadPassword),
        })
    }

    /// Sets `user_key`'s last sign-in time to now, at the end of a sign-in whose password
    /// step did not ([`Authenticator::authenticate`] with `completes_sign_in` false) or that
    /// had none (a passkey).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write.
    pub async fn record_sign_in(&self, user_key: &str) -> Result<(), crate::store::StoreError> {
        self.store.users.record_sign_in(user_key, now_ms()).await
    }

    /// Whether `password` is `user_key`'s current password (for a change of password: the
    /// same check as a sign-in, on the hash pool, but no sign-in is recorded). An unknown user
    /// is checked against the dummy, so it costs the same. Only signed-in users ask this, so
    /// it waits in [`Lane::Known`].
    ///
    /// # Errors
    /// [`AuthError::Overloaded`] when the pool is full, [`AuthError::Store`] when the store
    /// cannot answer.
    #[tracing::instrument(name = "verify_current", skip_all)]
    pub async fn verify_current(&self, user_key: &str, password: Password) -> Result<bool, AuthError> {
        if password.char_count() > MAX_PASSWORD_CHARS {
            return Ok(false);
        }
        let credential = self.store.users.credential(user_key).await?;
        let phc = match &credential {
            Some(c) => Some(c.password_hash.clone()),
            None => self.dummy_for_unknown(),
        };
        let verified = self.pool.verify(password, phc, Lane::Known).await?;
        Ok(credential.is_some() && verified.valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher;

    /// A right password checked under another generation than the one its factors were
    /// read under signs nobody in and records nothing: a first second factor may have been
    /// stored in between (review 134: a password-only session outlived the setup's sweep).
    #[tokio::test]
    async fn a_password_checked_under_another_generation_than_its_factors_read_is_superseded() {
        const PASSWORD: &str = "quartz lantern velvet 8127 orbit";
        let dir = tempfile::tempdir().unwrap();
        let services = crate::app::services_with_alice(dir.path(), PASSWORD).await;
        let auth = Authenticator::new(services.store.clone(), services.pool.clone());
        let (factors, read_under) = services.store.factors.summary_with_generation("alice").await.unwrap();
        assert!(!factors.has_second_factor());
        // The first factor's setup begins its generation (then stores the factor).
        let renewed = services.store.users.renew_generation("alice", now_ms(), None).await.unwrap().unwrap();
        assert_ne!(Some(renewed.password_changed_at), read_under);
        let checked = auth.authenticate("alice", Password::new(PASSWORD), true, read_under, Lane::Open).await;
        assert!(matches!(checked, Err(AuthError::Superseded { .. })), "{checked:?}");
        let user = services.store.users.get("alice").await.unwrap().unwrap();
        assert_eq!(user.last_login_at, None, "a superseded check recorded a sign-in");
        // Nor may a user who did not exist when the factors were read (made meanwhile).
        let checked = auth.authenticate("alice", Password::new(PASSWORD), true, None, Lane::Open).await;
        assert!(matches!(checked, Err(AuthError::Superseded { .. })), "{checked:?}");
        // Read again, it signs in; a wrong password stays a wrong one whatever was read.
        let (_, now_under) = services.store.factors.summary_with_generation("alice").await.unwrap();
        let checked = auth.authenticate("alice", Password::new(PASSWORD), true, now_under, Lane::Open).await;
        assert!(checked.unwrap().last_login_at.is_some());
        let wrong = auth.authenticate("alice", Password::new("not it at all"), true, read_under, Lane::Open).await;
        assert!(matches!(wrong, Err(AuthError::InvalidCredentials(FailureReason::BadPassword))), "{wrong:?}");
    }

    /// An unknown username never waits for the recount of stored hashes: a choice that is due
    /// is used once more while the background recount makes the next.
    #[tokio::test]
    async fn an_unknown_username_uses_the_chosen_dummy_while_a_due_recount_runs_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let services = crate::app::services_with_alice(dir.path(), "quartz lantern velvet 8127 orbit").await;
        let auth = Authenticator::new(services.store.clone(), services.pool.clone());
        auth.choose_dummy().await.unwrap();
        let first = auth.dummy_for_unknown().unwrap();
        assert!(first.contains("m=1024"), "{first}");

        // Most stored hashes are now of another kind, and the choice is due.
        let params = argon2::Params::new(2048, 1, 1, None).unwrap();
        let other = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        for key in ["bob", "carol", "dave"] {
            let hash = other.hash_password(b"irrelevant").unwrap().to_string();
            services.store.users.insert(&crate::store::conformance::user(key), &hash).await.unwrap();
        }
        let past = Instant::now().checked_sub(DUMMY_REFRESH + Duration::from_secs(1)).unwrap();
        auth.cache().chosen.as_mut().unwrap().0 = past;
        let during = auth.dummy_for_unknown().unwrap();
        assert_eq!(during, first, "the recount was awaited");
        for _ in 0..200 {
            if !auth.cache().refreshing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = auth.dummy_for_unknown().unwrap();
        assert!(after.contains("m=2048"), "the background recount chose the common kind: {after}");

        // Before any choice (the count at start failed), the pool's own dummy at once, and the
        // count in the background: no unknown username waits for a scan.
        let fresh = Authenticator::new(services.store.clone(), services.pool.clone());
        assert_eq!(fresh.dummy_for_unknown(), None, "the pool's own, not a count awaited");
        for _ in 0..200 {
            if !fresh.cache().refreshing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fresh.dummy_for_unknown().unwrap().contains("m=2048"), "counted in the background");
    }
}
