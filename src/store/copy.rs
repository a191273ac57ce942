//! `portcullis store copy`: every record of one store into another, empty one, whichever the
//! two engines are (SPEC.md, "Several instances, one truth"). It goes through the traits'
//! export/import pairs only, page by page, so it knows no engine and holds at most one page
//! of any kind in memory.
//!
//! What is copied: users whole (hashes and every other field, see [`super::Credential`]),
//! their second factors whole (sealed TOTP secret, the latest TOTP step used, recovery-code
//! hashes: [`super::UserFactors`]) and passkeys (name, times, sign count, user handle),
//! whose removed passkeys were ([`super::passkeys::PasskeyStore::former_owner`]: a failed
//! sign-in with one is recorded under its former owner, on the copy too),
//! sessions (token hashes, times, factors), failed-login records in time order (`typed`,
//! `count`, `instance`), and the server secrets (CSRF and captcha keys), so sessions, forms
//! and challenges issued before still hold on the copy. Not copied: the brute-force state
//! (quotas, failure counts in the window, open challenges), which lapses within minutes, and
//! for the same reason pending two-step sign-ins and open WebAuthn ceremonies (minutes at
//! most): a user halfway through a sign-in during the move starts it again.
//!
//! The TOTP secrets stay sealed and recovery codes stay keyed under `data_dir/factor.key`,
//! which is not in any store: the servers on the copy need the same file (the CLI copies it
//! into a sled target directory and says so for a database target).

use super::{Cursor, Store, StoreError, TokenHash};

/// Records read and written at a time, of each kind.
pub const PAGE: usize = 1000;

/// The secret a copy writes into its target before any record and forgets after the last:
/// the copy commits kind by kind (users before their second factors and passkeys), so a
/// store holding it is a copy still running or one that failed halfway, on which a server
/// could sign a TOTP user in with the password alone. Servers and commands refuse it
/// ([`unfinished`]; found by a review).
pub const UNFINISHED: &str = "store_copy_unfinished";

/// Whether `store` is the target of a copy that has not finished ([`UNFINISHED`]).
///
/// # Errors
/// When the store cannot be read.
pub async fn unfinished(store: &Store) -> Result<bool, StoreError> {
    Ok(store.secrets.get(UNFINISHED).await?.is_some())
}

/// What a server or a command says of a store [`unfinished`] finds.
pub const UNFINISHED_MESSAGE: &str = "this store is the target of a store copy that has not finished (still running, or stopped halfway): wait for its counts, or empty it (a database: DROP DATABASE and CREATE DATABASE; a sled directory: remove it) and copy again";

/// The file a copy from a sled store into a database leaves in the sled store's directory:
/// servers and commands refuse that store while it is there ([`moved_to`]), so a server whose
/// `database_url` went missing (an environment file no longer loaded) does not serve the old
/// users and sessions again (review 215: a user deleted on PostgreSQL signed in, one added
/// there did not exist, and `/readyz` said ready). Removing it uses the store again.
pub const MOVED: &str = "MOVED";

/// Where and when the sled store in `data_dir` was copied to, as its [`MOVED`] file says, when
/// there is anything at that name: one this user cannot read, an empty one, a directory or a
/// link to nothing marks the store all the same (review 218: a root-owned 0600 copy of the
/// mark was ignored by the service's user).
pub fn moved_to(data_dir: &std::path::Path) -> Option<String> {
    let path = data_dir.join(MOVED);
    std::fs::symlink_metadata(&path).ok()?;
    let said = crate::files::read_small_text(&path, 4096).ok();
    let first = said.as_deref().and_then(|t| t.lines().next()).map(str::trim).filter(|l| !l.is_empty());
    Some(match first {
        Some(line) => crate::text::printable(line).into_owned(),
        None => "copied to a database by store copy (its mark says no more)".to_string(),
    })
}

/// Refuses the sled store in `data_dir` when [`moved_to`] finds it marked, with
/// one line naming the database: for `serve`, the commands and another `store copy` alike.
///
/// # Errors
/// The refusal, one line naming the database it was copied to.
pub fn refuse_moved(data_dir: &std::path::Path) -> anyhow::Result<()> {
    match moved_to(data_dir) {
        Some(moved) => anyhow::bail!(moved_message(data_dir, &moved)),
        None => Ok(()),
    }
}

/// The refusal of a store [`moved_to`] names.
fn moved_message(data_dir: &std::path::Path, moved: &str) -> String {
    format!(
        "the sled store in {} was {moved}: set database_url as the servers there have it (is the environment file still loaded?), or, to use this store again instead, remove {}",
        data_dir.display(),
        data_dir.join(MOVED).display()
    )
}

/// How many records of each kind a copy wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub users: u64,
    /// Users' second-factor records (each: TOTP, recovery codes, the used step).
    pub factors: u64,
    pub passkeys: u64,
    /// Notes of whose a removed passkey was.
    pub removed_passkeys: u64,
    pub sessions: u64,
    pub failures: u64,
    pub secrets: u64,
}

impl std::fmt::Display for Copied {
    /// `3 users, 2 second factors, 1 passkey, 0 removed passkeys' owners, 1 session, 12
    /// failed-login records and 2 secrets`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = crate::text::counted;
        write!(
            f,
            "{}, {}, {}, {}, {}, {} and {}",
            n(self.users, "user", "users"),
            n(self.factors, "second factor", "second factors"),
            n(self.passkeys, "passkey", "passkeys"),
            n(self.removed_passkeys, "removed passkey's owner", "removed passkeys' owners"),
            n(self.sessions, "session", "sessions"),
            n(self.failures, "failed-login record", "failed-login records"),
            n(self.secrets, "secret", "secrets")
        )
    }
}

/// Why a copy did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target holds records: nothing was written to it.
    #[error("the target is not empty (it holds {0}); store copy writes only into an empty store")]
    NotEmpty(Copied),
    /// The source is itself the target of a copy that has not finished: nothing was written.
    #[error("the source is the target of a store copy that has not finished (still running, or stopped halfway): it holds only part of what was copied, so it is not copied on")]
    SourceUnfinished,
    /// The target is what a copy that stopped halfway left: nothing was written.
    #[error("the target: {UNFINISHED_MESSAGE}")]
    TargetUnfinished,
    /// Reading the source or writing the target failed; the target may hold part of the copy
    /// (empty it before trying again).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `store` holds, counted as a copy would count it.
///
/// # Errors
/// When the store cannot be read.
pub async fn holds(store: &Store) -> Result<Copied, StoreError> {
    Ok(Copied {
        users: store.users.count().await?,
        factors: store.factors.count().await?,
        passkeys: store.passkeys.count_passkeys().await?,
        removed_passkeys: store.passkeys.count_removed_passkeys().await?,
        sessions: store.sessions.count().await?,
        failures: store.failures.count().await?,
        // The mark of an unfinished copy is not one of the server's secrets.
        secrets: store.secrets.export().await?.iter().filter(|(name, _)| name != UNFINISHED).count() as u64,
    })
}

/// Copies every record of `from` into `to`, which must be empty. Every write is durable when
/// this returns (each import is), so the counts it returns are what the target holds. Until
/// then the target holds [`UNFINISHED`], which servers refuse.
///
/// # Errors
/// [`CopyError::NotEmpty`] (nothing written) when `to` holds any record;
/// [`CopyError::SourceUnfinished`] (nothing written) when `from` is an unfinished copy;
/// [`CopyError::Store`] when a read or a write fails, [`StoreError::AlreadyExists`] among
/// them when something else writes to the target meanwhile.
pub async fn copy(from: &Store, to: &Store) -> Result<Copied, CopyError> {
    let there = holds(to).await?;
    if unfinished(to).await? {
        return Err(CopyError::TargetUnfinished);
    }
    if there != Copied::default() {
        return Err(CopyError::NotEmpty(there));
    }
    // A new kind of record (one with its own table or tree) needs an export/import pair on its trait, a block here, a count in `Copied` and a line
    // in the conformance check `every_record_survives_export_and_import`. A new field of an
    // existing kind needs nothing here: the pairs move whole records.
    if unfinished(from).await? {
        return Err(CopyError::SourceUnfinished);
    }
    to.secrets.import(&[(UNFINISHED.to_string(), [0; 32])]).await?;
    let mut copied = Copied::default();

    let secrets = from.secrets.export().await?;
    to.secrets.import(&secrets).await?;
    copied.secrets = secrets.len() as u64;

    let mut after: Option<String> = None;
    loop {
        let page = from.users.export(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user.key.clone());
        to.users.import(&page).await?;
        copied.users += page.len() as u64;
    }

    // After the users: on PostgreSQL a passkey's owner must exist.
    let mut after: Option<String> = None;
    loop {
        let page = from.factors.export(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_key.clone());
        to.factors.import(&page).await?;
        copied.factors += page.len() as u64;
    }

    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = from.passkeys.export_passkeys(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        to.passkeys.import_passkeys(&page).await?;
        copied.passkeys += page.len() as u64;
    }

    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = from.passkeys.export_removed_passkeys(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        to.passkeys.import_removed_passkeys(&page).await?;
        copied.removed_passkeys += page.len() as u64;
    }

    let mut after: Option<TokenHash> = None;
    loop {
        let page = from.sessions.export(after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.token_hash);
        to.sessions.import(&page).await?;
        copied.sessions += page.len() as u64;
    }

    let mut after: Option<Cursor> = None;
    loop {
        let page = from.failures.export(after, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        let records: Vec<_> = page.into_iter().map(|(_, r)| r).collect();
        to.failures.import(&records).await?;
        copied.failures += records.len() as u64;
    }
    to.secrets.forget(UNFINISHED).await?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anything at the mark's name marks the store, whatever it holds or whoever may read it
    /// (review 218: a mark the service's user could not read was ignored).
    #[test]
    fn anything_at_the_marks_name_marks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(moved_to(dir.path()), None);
        std::fs::write(dir.path().join(MOVED), "copied to postgres://db/p at T by store copy\n").unwrap();
        assert_eq!(moved_to(dir.path()).as_deref(), Some("copied to postgres://db/p at T by store copy"));
        std::fs::write(dir.path().join(MOVED), "").unwrap();
        assert!(moved_to(dir.path()).unwrap().contains("its mark says no more"));
        std::fs::remove_file(dir.path().join(MOVED)).unwrap();
        std::fs::create_dir(dir.path().join(MOVED)).unwrap();
        assert!(moved_to(dir.path()).is_some(), "a directory");
        std::fs::remove_dir(dir.path().join(MOVED)).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nothing"), dir.path().join(MOVED)).unwrap();
        assert!(moved_to(dir.path()).is_some(), "a link to nothing");
    }
}
