//! Checking credentials: look the user up, verify on the hash pool (against a dummy hash when
//! the user does not exist, so the answer takes as long), upgrade outdated hashes.

use crate::audit::FailureReason;
use crate::domain::Username;
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

#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    pool: HashPool,
}

impl Authenticator {
    pub fn new(store: Store, pool: HashPool) -> Self {
        Authenticator { store, pool }
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
        let verified = self.pool.verify(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
        let Some(mut user) = user else {
            return Err(AuthError::InvalidCredentials(FailureReason::UnknownUser));
        };
        if !verified.valid {
            return Err(AuthError::InvalidCredentials(FailureReason::BadPassword));
        }
        if verified.upgraded_hash.is_some() {
            tracing::info!(username = %user.display_name, "password hash upgraded to the current parameters");
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
