//! The operating system's random source: the one way the server gets unpredictable bytes,
//! and the one error that says it failed (never mistaken for a corrupt store or a bad hash).

/// The operating system's random source could not give bytes (for example `getrandom(2)`
/// failing or `/dev/urandom` missing in a sandbox). Whatever needed them (a session token,
/// a salt, a secret, a generated password) would be predictable, so it is not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system's random source failed ({0}); nothing that needs unpredictable bytes can be made")]
pub struct RandomError(getrandom::Error);

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`RandomError`] when the random source fails; `buf` must then not be used.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(RandomError)
}

impl From<getrandom::Error> for RandomError {
    fn from(e: getrandom::Error) -> Self {
        RandomError(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_source_failure_is_reported_as_such_by_the_store_and_the_hash_pool() {
        let failed = RandomError::from(getrandom::Error::UNSUPPORTED);
        let store = crate::store::StoreError::from(failed);
        assert!(matches!(store, crate::store::StoreError::Random(_)));
        let pool = crate::password::PoolError::from(failed);
        for message in [failed.to_string(), store.to_string(), pool.to_string()] {
            assert!(message.contains("random source"), "{message}");
            assert!(!message.contains("store") && !message.contains("unreadable"), "{message}");
        }
    }
}
