//! Passkeys in the store: each user's WebAuthn credentials and the server-side state of open
//! WebAuthn ceremonies (registration and sign-in), in domain terms. Both engines implement
//! [`PasskeyStore`] (sled in `sled/passkeys.rs`, PostgreSQL in `postgres/passkeys.rs`), so a
//! ceremony begun on one instance can be finished on another.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Result, TokenHash};

/// Longest credential id WebAuthn allows (W3C WebAuthn Level 3 §5.1.2: at most 1023 bytes).
pub const MAX_CREDENTIAL_ID_BYTES: usize = 1023;

/// Whose a removed passkey was ([`PasskeyStore::former_owner`]), as `store copy` moves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedPasskey {
    /// The credential id.
    pub id: Vec<u8>,
    /// The normalised username of whoever held it.
    pub user_key: String,
    /// When it was removed, Unix ms.
    pub removed_at: u64,
}

/// One registered passkey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPasskey {
    /// The credential id the authenticator chose (at most [`MAX_CREDENTIAL_ID_BYTES`]):
    /// unique across all users.
    pub id: Vec<u8>,
    /// The owner's normalised username.
    pub user_key: String,
    /// The WebAuthn user handle (a random UUID per user, never the username: W3C WebAuthn §14.6.1)
    /// the authenticator returns in a discoverable sign-in.
    pub user_handle: [u8; 16],
    /// The name the user gave it (printable, at most 64 characters).
    pub name: String,
    /// The `webauthn_rs::prelude::Passkey` as JSON: public key, algorithm, counter, flags.
    pub passkey: String,
    /// Unix ms.
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    /// The authenticator's signature counter at its last use (0 for authenticators without one).
    pub sign_count: u32,
    /// SHA-256 of the client data (`clientDataJSON`, W3C WebAuthn §5.8.1) of the last use
    /// noted: the same answer sent twice is then told from a copy's, whose client data holds
    /// another challenge. `None` before its first noted use.
    pub last_client_data_hash: Option<[u8; 32]>,
    /// Unix ms of the latest sign-in whose verified answer carried a signature counter at or
    /// below the stored one: a sign that two copies of the key are in use (W3C WebAuthn §6.1.1,
    /// "cloned authenticator"). Refused, and kept here for its owner to see; `None` if never.
    pub clone_suspected_at: Option<u64>,
}

/// A verified use of a passkey, as [`PasskeyStore::record_passkey_use`] notes it.
#[derive(Clone, Copy, Debug)]
pub struct PasskeyUse<'a> {
    /// The updated `webauthn_rs::prelude::Passkey` as JSON.
    pub passkey: &'a str,
    /// The answer's signature counter.
    pub sign_count: u32,
    /// SHA-256 of the answer's `clientDataJSON` ([`StoredPasskey::last_client_data_hash`]).
    pub client_data_hash: [u8; 32],
    /// When it signed someone in (Unix ms), the new [`StoredPasskey::last_used_at`]; `None` for
    /// a verified answer that signed nobody in (its account disabled): the counter still moves,
    /// as the authenticator's did, but the owner's "last used" does not say a sign-in happened
    /// (review 138).
    pub at: Option<u64>,
}

/// What an open ceremony is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CeremonyKind {
    /// Adding a passkey to a signed-in user's account.
    Register,
    /// Signing in with a discoverable passkey from `/login` (no username typed): stored by
    /// earlier versions only. Its state now travels sealed in the browser's cookie
    /// (`csrf::Csrf::seal_ceremony`); those stored before expire with the rest.
    SignIn,
    /// A passkey as the second factor, after the password, on `/login/second-factor`.
    SecondFactor,
}

impl CeremonyKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyKind::Register => "register",
            CeremonyKind::SignIn => "sign_in",
            CeremonyKind::SecondFactor => "second_factor",
        }
    }

    /// Whether an owner ([`Ceremony::owner`]) has at most one open ceremony of this kind: a
    /// new one ends the others ([`PasskeyStore::put_ceremony`]). A registration (signed in)
    /// and a second-factor check (of a pending sign-in: the password was right) each have
    /// one, so neither can fill the store by being begun again and again; a discoverable
    /// sign-in has none, and the login form's per-address quota bounds it instead.
    pub fn one_per_user(self) -> bool {
        matches!(self, CeremonyKind::Register | CeremonyKind::SecondFactor)
    }

    /// The kind stored as `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [CeremonyKind::Register, CeremonyKind::SignIn, CeremonyKind::SecondFactor].into_iter().find(|k| k.as_str() == s)
    }
}

/// The server's half of an open ceremony, stored under the SHA-256 of the random value in the
/// browser's ceremony cookie (so it is bound to that browser) until it is taken once or expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceremony {
    pub kind: CeremonyKind,
    /// Whom it is for: the signed-in user's key (register); for a second-factor check, the
    /// user whose password was right and the pending sign-in it checks
    /// (`crate::passkeys::second_step_owner`); none for a discoverable sign-in.
    pub owner: Option<String>,
    /// webauthn-rs's state (`PasskeyRegistration`, `DiscoverableAuthentication` or
    /// `PasskeyAuthentication`) as JSON: it holds the challenge and must never reach the client.
    pub state: String,
    /// Unix ms after which it is void.
    pub expires_at: u64,
}

/// Passkeys and open ceremonies. Errors as for every store trait ([`super::UserStore`]):
/// [`super::StoreError::Unavailable`] (503) or [`super::StoreError::Corrupt`]; writes are
/// durable when they return.
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// Adds a passkey.
    ///
    /// # Errors
    /// [`super::StoreError::AlreadyExists`] when its credential id is registered already (to
    /// anyone: W3C WebAuthn §7.1 step 26).
    async fn add_passkey(&self, passkey: &StoredPasskey) -> Result<()>;
    /// The passkey with this credential id, whoever owns it.
    async fn passkey(&self, id: &[u8]) -> Result<Option<StoredPasskey>>;
    /// Whether `user_key` holds the passkey `id` (a session signed in with it still stands).
    async fn holds(&self, user_key: &str, id: &[u8]) -> Result<bool> {
        Ok(self.passkey(id).await?.is_some_and(|p| p.user_key == user_key))
    }
    /// The user's passkeys, oldest first.
    async fn passkeys_of(&self, user_key: &str) -> Result<Vec<StoredPasskey>>;
    /// Renames the user's passkey to `name`, provided it is named `from` when that is given
    /// (a compare-and-set: undoing a rename must not undo another made since), and returns
    /// the name it had; `None` when the user has no such passkey, or it is named otherwise.
    async fn rename_passkey(&self, user_key: &str, id: &[u8], name: &str, from: Option<&str>)
        -> Result<Option<String>>;
    /// Removes the user's passkey, and notes at `now` whose it was
    /// ([`PasskeyStore::former_owner`]); false when the user has no such passkey.
    async fn remove_passkey(&self, user_key: &str, id: &[u8], now: u64) -> Result<bool>;
    /// Removes all the user's passkeys (a reset of factors), noting at `now` whose they were;
    /// returns how many. Deleting the user removes them and those notes.
    async fn remove_passkeys_of(&self, user_key: &str, now: u64) -> Result<usize>;
    /// The user whose passkey `id` was removed, if it was: failed sign-ins with a removed
    /// passkey are recorded under its former owner, who can then see a lost key still being
    /// tried. None once the note is purged ([`PasskeyStore::purge_removed_passkeys`]) or the
    /// user deleted.
    async fn former_owner(&self, id: &[u8]) -> Result<Option<String>>;
    /// Forgets whose passkeys were removed before `before` (Unix ms); returns how many notes.
    async fn purge_removed_passkeys(&self, before: u64) -> Result<usize>;
    /// Notes a use (`used`: the authenticator's new counter, the updated passkey JSON, the
    /// answer's client data hash, the time), provided the counter moved forward (or both are
    /// 0, for authenticators without a counter): a counter that goes back may be a cloned authenticator (W3C WebAuthn §6.1.1),
    /// and of two concurrent uses only one with a higher counter wins. Returns whether it
    /// was noted; false too when the passkey is gone.
    async fn record_passkey_use(&self, id: &[u8], used: &PasskeyUse<'_>) -> Result<bool>;
    /// Notes at `now` that a verified answer of the passkey `id` carried a counter that did not
    /// move forward ([`StoredPasskey::clone_suspected_at`]); false when the passkey is gone.
    async fn flag_possible_clone(&self, id: &[u8], now: u64) -> Result<bool>;
    /// Stores an open ceremony under `key` (the SHA-256 of the browser's ceremony cookie),
    /// replacing one with the same key. A ceremony of a kind that is
    /// [`CeremonyKind::one_per_user`] also ends the user's other open ones of that kind, so a
    /// client cannot fill the store by beginning ceremonies it never finishes (each lives 5
    /// minutes).
    async fn put_ceremony(&self, key: &TokenHash, ceremony: &Ceremony) -> Result<()>;
    /// The ceremony under `key` if it has not expired at `now`, read, not taken: to see what
    /// an answer is checked against before it uses the ceremony up.
    async fn ceremony(&self, key: &TokenHash, now: u64) -> Result<Option<Ceremony>>;
    /// Removes and returns the ceremony under `key` if it has not expired at `now`: a
    /// ceremony is finished at most once, even when two instances try at the same moment.
    async fn take_ceremony(&self, key: &TokenHash, now: u64) -> Result<Option<Ceremony>>;
    /// Removes the ceremonies expired at `now`; returns how many.
    async fn purge_ceremonies(&self, now: u64) -> Result<usize>;
    /// How many passkeys are registered, to anyone.
    async fn count_passkeys(&self) -> Result<u64>;
    /// Up to `limit` passkeys whole (name, times, sign count, user handle), in credential-id
    /// order, those after the id `after`: a page of what `store copy` moves. Open ceremonies
    /// are not in it (see `store::copy`).
    async fn export_passkeys(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoredPasskey>>;
    /// Stores exported passkeys exactly as they are, durably.
    ///
    /// # Errors
    /// [`super::StoreError::AlreadyExists`] when a credential id is registered already.
    async fn import_passkeys(&self, passkeys: &[StoredPasskey]) -> Result<()>;
    /// How many notes of whose a removed passkey was are kept.
    async fn count_removed_passkeys(&self) -> Result<u64>;
    /// Up to `limit` notes of removed passkeys, in credential-id order, those after the id
    /// `after`: a page of what `store copy` moves.
    async fn export_removed_passkeys(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<RemovedPasskey>>;
    /// Stores exported notes of removed passkeys exactly as they are, durably; each owner must
    /// have been imported first.
    ///
    /// # Errors
    /// [`super::StoreError::AlreadyExists`] when a note for a credential id is there already.
    async fn import_removed_passkeys(&self, removed: &[RemovedPasskey]) -> Result<()>;
}
