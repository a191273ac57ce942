//! Checking credentials: look the user up, verify on the hash pool (against a dummy hash when
//! the user does not exist, so the answer takes as long), upgrade outdated hashes.
//!
//! The dummy must cost what a real check costs, and stored hashes keep the parameters they
//! were made with until their owner next signs in: after `argon2_*` settings change, a dummy
//! with the new parameters would tell unknown usernames from known ones by time. So unknown
//! usernames are checked against a dummy shaped like the most common kind of stored hash
//! (same algorithm, version, parameters and output length), as the OWASP Authentication
//! Cheat Sheet asks: the same response time whether or not the user exists. The kinds are
//! recounted from the store every [`DUMMY_REFRESH`] and after each upgrade.

use crate::audit::FailureReason;
use crate::domain::Username;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::password::pool::{dummy_like, shape_of};
use crate::password::{HashPool, Password, PoolError, MAX_PASSWORD_CHARS};
use crate::store::{now_ms, Store, StoreError, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong username or password. The reason is for the audit log only; the client sees one
    /// generic answer for all of them.
    #[error("invalid credentials")]
    InvalidCredentials(FailureReason),
    #[error("too many password checks in progress")]
    Overloaded,
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

/// The dummy for unknown usernames and when it was chosen; `None` until first needed.
type DummyCache = Option<(Instant, Option<String>)>;

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

    /// A dummy shaped like the most common kind of stored hash, or `None` (no users, or none
    /// parses) for the pool's own dummy with the current parameters.
    fn dummy_for_unknown(&self) -> Result<Option<String>, StoreError> {
        // A poisoned lock holds only a cached choice, valid whatever panicked: carry on.
        let mut cache = self.dummy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, dummy)) = cache.as_ref().filter(|(at, _)| at.elapsed() < DUMMY_REFRESH) {
            return Ok(dummy.clone());
        }
        let mut kinds: HashMap<(String, usize), (usize, String)> = HashMap::new();
        for user in self.store.users()? {
            if let Some(shape) = shape_of(&user.password_hash) {
                kinds.entry(shape).or_insert((0, user.password_hash)).0 += 1;
            }
        }
        // The most common kind; ties go to the larger shape string, so the choice is stable.
        let dummy = kinds
            .into_iter()
            .max_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0)))
            .and_then(|(_, (_, example))| dummy_like(&example));
        *cache = Some((Instant::now(), dummy.clone()));
        Ok(dummy)
    }

    /// Checks a username and password as typed. On success returns the user's record (with
    /// its last-login time updated).
    #[tracing::instrument(name = "authenticate", skip_all)]
    pub async fn authenticate(&self, typed_username: &str, password: Password) -> Result<UserRecord, AuthError> {
        if password.char_count() > MAX_PASSWORD_CHARS {
            // No stored password can be this long; refusing it early is the same answer for
            // every username, so it says nothing about who exists.
            let user = Username::parse(typed_username).ok().and_then(|u| self.store.user(u.key()).ok().flatten());
            let reason = if user.is_some() { FailureReason::BadPassword } else { FailureReason::UnknownUser };
            return Err(AuthError::InvalidCredentials(reason));
        }
        let user = match Username::parse(typed_username) {
            Ok(name) => self.store.user(name.key())?,
            Err(_) => None,
        };
        let phc = match &user {
            Some(u) => Some(u.password_hash.clone()),
            None => self.dummy_for_unknown()?,
        };
        let verified = self.pool.verify(password, phc).await?;
        let Some(mut user) = user else {
            return Err(AuthError::InvalidCredentials(FailureReason::UnknownUser));
        };
        if !verified.valid {
            return Err(AuthError::InvalidCredentials(FailureReason::BadPassword));
        }
        if verified.upgraded_hash.is_some() {
            tracing::info!(username = %user.display_name, "password hash upgraded to the current parameters");
            // The mix of stored kinds has changed: choose the dummy again next time.
            *self.dummy.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        // Written as a compare-and-swap on the hash we verified: if the password was changed
        // while we were hashing, the old password must not let anyone in.
        match self.store.record_login(&user.key, &user.password_hash, verified.upgraded_hash.as_deref(), now_ms())? {
            Some(updated) => user = updated,
            None => return Err(AuthError::InvalidCredentials(FailureReason::BadPassword)),
        }
        if user.disabled {
            // Checked after the password, so a disabled account answers in the same time and
            // with the same 401 as a wrong password: the reason is for the log only.
            return Err(AuthError::InvalidCredentials(FailureReason::Disabled));
        }
        Ok(user)
    }
}
