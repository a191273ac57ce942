//! Storage in domain terms: the async traits every engine implements, the types they speak,
//! and [`Store`], the handle the services hold. Engines live beside this file (`sled.rs`, the
//! default, and `postgres.rs`, chosen by `database_url`); nothing outside `src/store/` names an
//! engine type.
//!
//! Every write is durable when its method returns (the sled engine shares one fsync among
//! concurrent writers), so no caller flushes. No method takes a closure: each change is an
//! explicit operation an engine can do atomically (sled: compare-and-swap; SQL: one
//! statement), so the same traits fit an engine shared by several instances.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::audit::FailureReason;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod copy;
pub mod passkeys;
mod postgres;
mod sled;

mod fs;
pub use fs::{
    effective_uid, ensure_ours, ensure_private_dir, ensure_private_dir_of_files, foreign_entry, foreign_owner,
    make_dirs, private_umask, refuse_changeable, refuse_changeable_but_roots, refuse_changeable_by_its_owner,
    refuse_shared, trusted_ancestors, untrusted_owner,
};

/// The errors of the storage layer, whatever the engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {0} is in use by another process (a portcullis server already serving it? the `user` commands reach it through its admin socket; a second server needs another data_dir)")]
    Locked(String),
    /// The engine could not do its work (an I/O failure such as a full disk, a lost database
    /// connection): see [`StoreError::is_unavailable`].
    #[error("store error: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
    /// A new secret could not be made: the store itself is fine.
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
    #[error("the user already exists")]
    AlreadyExists,
}

impl StoreError {
    /// Whether the store could not do its work (an I/O failure such as a full disk, or the
    /// engine refusing after one): the caller answers 503, as for an overloaded server, rather
    /// than 500. SECURITY.md: a store that cannot write fails closed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The SHA-256 of a session token: what sessions are stored under (the token never is).
pub type TokenHash = [u8; 32];

/// A user as the domain sees one: everything but the password hash, which only
/// [`UserStore::credential`] gives out (to authentication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Normalised (NFKC, case-folded) username: the key.
    pub key: String,
    /// The username as it was written when the user was created.
    pub display_name: String,
    pub admin: bool,
    /// Unix time in milliseconds.
    pub created_at: u64,
    /// The user's credential generation (Unix ms): when the password last changed, the
    /// second factors were reset (`user reset-factors`), the user signed out everywhere else
    /// (`session::Sessions::end_others`) or the user was disabled. A session or pending sign-in begun
    /// under another generation is over, and a password check made under one records no
    /// sign-in under the next ([`UserStore::record_login`]).
    pub password_changed_at: u64,
    pub last_login_at: Option<u64>,
    /// A disabled user cannot sign in and has no sessions.
    pub disabled: bool,
    /// The groups the user is listed in, sorted, without repeats (`admins` is implied for an
    /// administrator, not stored: see [`User::effective_groups`]).
    pub groups: Vec<crate::domain::Group>,
}

impl User {
    /// The groups access rules and `Remote-Groups` see: the listed ones, plus `admins` for an
    /// administrator (SPEC.md, "Gating other applications"), sorted, without repeats.
    pub fn effective_groups(&self) -> Vec<crate::domain::Group> {
        let mut groups = self.groups.clone();
        if self.admin {
            groups.push(crate::domain::Group::admins());
        }
        groups.sort();
        groups.dedup();
        groups
    }
}

/// A user with the stored password hash (an argon2id PHC string), for checking a password.
///
/// It is also the whole user as `store copy` moves it ([`UserStore::export`]): whatever a
/// later change keeps with a user (groups, second factors) must be reachable from here, or
/// copies lose it. The conformance suite compares exported users whole (`==`), so an engine
/// that drops a field fails it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub user: User,
    pub password_hash: String,
}

/// What a change of credential generation asked by a signed-in session needs to still hold
/// when it is made, in the same atomic step ([`UserStore::set_password_hash`],
/// [`UserStore::renew_generation`]): the user still in the session's generation, and the
/// passkey the session was signed in with, if any, still the user's. The removal of that
/// passkey and the change are ordered (a row lock on PostgreSQL, a lock of the engine on
/// sled): a change made first is followed by the removal; a removal made first stops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding<'a> {
    /// `User::password_changed_at` when the session read it.
    pub generation: u64,
    /// `Session::passkey_id`.
    pub passkey_id: Option<&'a [u8]>,
}

impl Holding<'static> {
    /// The generation alone (a session signed in without a passkey).
    pub fn generation(generation: u64) -> Self {
        Holding { generation, passkey_id: None }
    }
}

impl<'a> Holding<'a> {
    /// What `session` holds.
    pub fn of(session: &'a Session) -> Self {
        Holding { generation: session.password_changed_at, passkey_id: session.passkey_id.as_deref() }
    }
}

/// A signed-in session (stored under the hash of its token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user_key: String,
    /// Unix time in milliseconds.
    pub created_at: u64,
    pub last_seen_at: u64,
    pub ip: String,
    pub user_agent: String,
    /// How many authentication factors the sign-in proved (NIST SP 800-63B §4: one factor is
    /// AAL1, two are AAL2); the forward-auth `two_factor` policy reads it.
    pub factors: Factors,
    /// The user's credential generation when the session began (`User::password_changed_at`,
    /// Unix ms). A session of another generation than its user's is over: a password change
    /// or a reset of the second factors ends every session, even one that a sign-in checked
    /// just before the change stored just after the change ended the others.
    pub password_changed_at: u64,
    /// The credential id (WebAuthn §6.1, raw bytes) of the passkey the sign-in used, as the
    /// first factor or the second; `None` for a sign-in without one. Removing that passkey
    /// ends the session ([`SessionStore::delete_for_passkey`]).
    pub passkey_id: Option<Vec<u8>>,
}

/// The number of distinct authentication factors a session was signed in with.
///
/// Stored as the number itself (1 or 2). An unknown stored number reads as [`Factors::One`],
/// so a damaged record can only lose a session rights, never grant them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Factors {
    /// Something you know (a password) or one passkey without user verification.
    #[default]
    One,
    /// Two factors: a password and a second factor, or a user-verified passkey.
    Two,
}

impl Factors {
    /// The count as stored: 1 or 2.
    pub fn count(self) -> u8 {
        match self {
            Factors::One => 1,
            Factors::Two => 2,
        }
    }

    /// Reads a stored count; anything but 2 is one factor (see the type's docs).
    pub fn from_count(n: i64) -> Self {
        if n == 2 {
            Factors::Two
        } else {
            Factors::One
        }
    }
}

/// A stored session with the hash it is stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub token_hash: TokenHash,
    pub record: Session,
}

/// What one signed-in request needs from the store, in one read ([`SessionStore::resolve`]):
/// the session under a token hash, its user, and (when asked) all that user's sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The session, expired or not (the caller judges expiry).
    pub session: Session,
    /// The session's user; `None` when no user is stored under its `user_key` (deleted).
    /// Disabled users are here, with `disabled` set: the caller refuses them.
    pub user: Option<User>,
    /// Every session of that user, expired ones and this one included, in no particular
    /// order (as [`SessionStore::list_for_user`] gives them); empty unless asked for.
    pub user_sessions: Vec<StoredSession>,
}

/// When a session began and was last used: enough to choose which sessions to end without
/// reading every session record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimes {
    pub token_hash: TokenHash,
    pub created_at: u64,
    pub last_seen_at: u64,
}

/// How many sessions one user may have, and the timeouts that say which go first past that
/// (all milliseconds): see [`SessionStore::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionCap {
    pub max_per_user: usize,
    /// `session_idle_timeout`.
    pub idle_ms: u64,
    /// `session_absolute_timeout`.
    pub absolute_ms: u64,
}

/// How far ahead of this process's clock a stored time may be and still be believed
/// (milliseconds): instances on one database stamp with their own clocks, which NTP keeps
/// within a few milliseconds of each other. A time further ahead means a clock stepped back
/// (an NTP step, a virtual machine restored from a snapshot) or an instance whose clock is
/// wrong; counting it as no age would let a session outlive its timeouts by the step.
pub const CLOCK_SKEW_MS: u64 = 60_000;

/// Whether `at` (Unix ms) is further ahead of `now` than [`CLOCK_SKEW_MS`] allows.
pub fn is_ahead_of(at: u64, now: u64) -> bool {
    at > now.saturating_add(CLOCK_SKEW_MS)
}

impl SessionCap {
    /// Whether a session made at `created_at` and last seen at `last_seen_at` has passed
    /// either timeout at `now` (all Unix ms). A time up to [`CLOCK_SKEW_MS`] ahead of `now`
    /// counts as no age; one further ahead as expired (fail closed when the clock stepped
    /// back: the timeouts of OWASP ASVS 4.0 §3.3.1 and §3.3.2 are not stretched by the step).
    pub fn has_expired(&self, created_at: u64, last_seen_at: u64, now: u64) -> bool {
        is_ahead_of(created_at, now)
            || is_ahead_of(last_seen_at, now)
            || now.saturating_sub(last_seen_at) >= self.idle_ms
            || now.saturating_sub(created_at) >= self.absolute_ms
    }

    /// Of one user's `sessions`, those past the cap at `now`: expired ones first, then the
    /// least recently used (ties keep the given order, so every caller sorting the same index
    /// picks the same ones).
    pub fn past_the_cap(&self, mut sessions: Vec<SessionTimes>, now: u64) -> Vec<SessionTimes> {
        if sessions.len() <= self.max_per_user {
            return Vec::new();
        }
        sessions.sort_by_key(|s| (!self.has_expired(s.created_at, s.last_seen_at, now), s.last_seen_at));
        sessions.truncate(sessions.len() - self.max_per_user);
        sessions
    }
}

/// A failed or refused login attempt, as kept in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Unix time in milliseconds.
    pub time: u64,
    pub ip: String,
    /// The identity checked: the user's stored spelling when the user exists, otherwise the
    /// normalised form of what was typed (`domain::normalise_key`, cut to 256 characters).
    /// Records made before `typed` existed hold what was typed here.
    pub username: String,
    pub reason: FailureReason,
    pub user_agent: String,
    /// What was typed (cut to 256 characters), when it differs from `username`: padding,
    /// case or width. Absent in records made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed: Option<String>,
    /// How many attempts this record stands for: more than 1 when refusals from one address
    /// for one reason within one minute were counted into its first record (see
    /// `audit::Audit::record_failure`). Records from before this field existed read as 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
    /// The `instance_name` of the server that recorded it (SPEC.md, "Several instances, one
    /// truth"); empty in records made before it was kept, and not written then.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The attempt came with a device token for this username (`csrf::DEVICE_COOKIE`): from a
    /// browser that signed in as it before, so more likely its owner mistyping than a
    /// stranger guessing. Set by sign-ins (the password, the second step, a passkey naming a
    /// user); false (and not written) for a signed-in user's password check, and in records
    /// made before it was kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub known_browser: bool,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// What [`FailureStore::append`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The new record's place.
    pub at: Cursor,
    /// How many of the oldest records went to keep the store within `max_records` (0 below
    /// the cap; 1 at it, as a rule).
    pub dropped: u64,
}

/// What [`FailureStore::enforce_cap`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capped {
    /// Records kept.
    pub kept: u64,
    /// The oldest records dropped past the cap (a lower `audit_max_records` than before, or
    /// a copy of a store that held more).
    pub dropped: u64,
}

/// A failure record's place in time order: names the record (to set its count) and is the
/// keyset cursor of a page (the records after it, newest first). Opaque outside the store:
/// the only other form it has is the text of [`Cursor::encode`] (base64url of 16 bytes, the
/// same as the raw sled keys earlier versions put in links).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// Unix milliseconds of the record.
    time: u64,
    /// Unique among records (an engine's sequence), so equal times still order.
    seq: u64,
}

impl Cursor {
    /// For engines: the record's time (Unix ms) and its engine-unique sequence number.
    // The sled engine uses the byte form; these are for engines keyed by (time, id) columns.
    #[allow(dead_code)]
    pub(crate) fn new(time: u64, seq: u64) -> Self {
        Cursor { time, seq }
    }

    /// For engines: `(time, seq)` as given to [`Cursor::new`].
    #[allow(dead_code)]
    pub(crate) fn parts(&self) -> (u64, u64) {
        (self.time, self.seq)
    }

    /// The text form, for links and the CLI.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_bytes())
    }

    /// Parses [`Cursor::encode`]'s text; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 16] = URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()?;
        Some(Self::from_bytes(&bytes))
    }

    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.time.to_be_bytes());
        b[8..].copy_from_slice(&self.seq.to_be_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8; 16]) -> Self {
        let half = |r: &[u8]| r.try_into().map(u64::from_be_bytes).unwrap_or(0);
        Cursor { time: half(&b[..8]), seq: half(&b[8..]) }
    }
}

/// Which failure records to read. Times are Unix milliseconds, inclusive.
#[derive(Clone, Debug, Default)]
pub struct FailureQuery {
    pub since: Option<u64>,
    pub until: Option<u64>,
    /// Normalised username key.
    pub user_key: Option<String>,
    pub ip: Option<ipnet::IpNet>,
    pub reason: Option<FailureReason>,
    /// Only records older than this one (the last of the previous page).
    pub before: Option<Cursor>,
    /// At most this many; 0 for no limit.
    pub limit: usize,
}

/// Users. Updates are explicit compare-and-swap operations: none loses a concurrent change,
/// and none deletes a record it cannot read (it reports [`StoreError::Corrupt`]).
///
/// Every method of every trait here may fail with [`StoreError::Unavailable`] (the engine
/// cannot work: answer 503) or [`StoreError::Corrupt`] (a stored record cannot be read);
/// each write is durable when it returns `Ok`.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// The user under `key` (normalised), if any.
    async fn get(&self, key: &str) -> Result<Option<User>>;
    /// The user with their password hash: for authentication only.
    async fn credential(&self, key: &str) -> Result<Option<Credential>>;
    /// Every user, in no particular order.
    async fn list(&self) -> Result<Vec<User>>;
    /// Every user, in no particular order, with how many of their sessions are still valid
    /// at `now` (Unix ms) by `cap`'s timeouts ([`SessionCap::has_expired`]; its
    /// `max_per_user` plays no part): what `user list` shows, read at once, so on PostgreSQL
    /// the listing is one statement however many users there are, not one more per user.
    async fn list_with_sessions(&self, cap: SessionCap, now: u64) -> Result<Vec<(User, usize)>>;
    /// How many users there are.
    async fn count(&self) -> Result<u64>;
    /// Adds a user with the given hash.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when the key is taken.
    async fn insert(&self, user: &User, password_hash: &str) -> Result<()>;
    /// Removes a user; returns whether there was one.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Stores a new password hash and sets `password_changed_at` to `now`, or one more than
    /// its previous value if that is not earlier (it identifies the password: see
    /// [`UserStore::record_login`]). With `from`, only while it holds ([`Holding`]: a change
    /// whose current password was checked under one generation is not made in the next, a
    /// `user passwd`, a reset or *sign out everywhere else* meanwhile wins, nor once the
    /// passkey its session was signed in with is removed). `None` if no such user, or if
    /// `from` no longer held (nothing changed then).
    async fn set_password_hash(
        &self,
        key: &str,
        password_hash: &str,
        now: u64,
        from: Option<Holding<'_>>,
    ) -> Result<Option<User>>;
    /// Starts a new credential generation without a new password: `password_changed_at` as
    /// [`UserStore::set_password_hash`] sets it, the hash kept (`user reset-factors`: sessions
    /// a sign-in with a removed factor starts after the reset are of the old generation).
    /// With `from`, only while it holds (a compare-and-set: of two clicks of *sign out
    /// everywhere else* from one session, one wins; and none after the removal of the passkey
    /// that session was signed in with). `None` if no such user, or if `from` no longer held
    /// (nothing changed then).
    async fn renew_generation(&self, key: &str, now: u64, from: Option<Holding<'_>>) -> Result<Option<User>>;
    /// Sets the `disabled` flag; `None` if no such user.
    async fn set_disabled(&self, key: &str, disabled: bool) -> Result<Option<User>>;
    /// Adds the groups in `add` and then removes those in `remove`, in one atomic change (a
    /// concurrent change of the same user's groups is not lost); returns the user afterwards,
    /// or `None` if no such user.
    async fn change_groups(
        &self,
        key: &str,
        add: &[crate::domain::Group],
        remove: &[crate::domain::Group],
    ) -> Result<Option<User>>;
    /// Sets whether the user is an administrator (`admin`), durably; returns the user as
    /// stored afterwards, or `None` if there is no such user. Sessions read the flag with
    /// their user on every request, so it takes effect at once on every instance.
    async fn set_admin(&self, key: &str, admin: bool) -> Result<Option<User>>;
    /// Notes a successful login at `now` by the password `verified` was read with, provided
    /// that password is still the user's (its `password_changed_at` is unchanged: a hash
    /// upgrade by a concurrent sign-in is not a password change) and the user is not disabled.
    /// `upgraded_hash` is stored only if the stored hash is still `verified`'s (a concurrent
    /// sign-in may have upgraded it first; either upgrade is as good). Returns the user as
    /// stored afterwards (for a disabled user, unchanged), or `None` if the user is gone or
    /// the password changed meanwhile: the old password must not let anyone in.
    ///
    /// The one write that may return before it is durable: an engine may leave it to the
    /// caller's next durable write (a sled flush covers every earlier write), since a sign-in
    /// always writes its session next. Lost in a crash before that, it costs only a stale
    /// last-sign-in time or a hash upgraded again at the next sign-in; the check itself is a
    /// read, and a failed one lets nobody in.
    ///
    /// `signed_in_at` (Unix ms) becomes the user's last sign-in time; `None` leaves it, for a
    /// password that only opens a second step: the sign-in has not happened yet
    /// ([`UserStore::record_sign_in`] sets it when it does).
    async fn record_login(
        &self,
        verified: &Credential,
        upgraded_hash: Option<&str>,
        signed_in_at: Option<u64>,
    ) -> Result<Option<User>>;
    /// Sets the user's last sign-in time to `at` (Unix ms) at the end of a sign-in whose
    /// password was checked before ([`UserStore::record_login`] with `None`) or that had no
    /// password (a passkey); nothing if no such user. Durable as `record_login` is: the
    /// session written next makes it so.
    async fn record_sign_in(&self, key: &str, at: u64) -> Result<()>;
    /// One stored hash of the most common kind (algorithm, version, parameters and output
    /// length, as `password::shape_of` says), to shape the dummy that unknown usernames are
    /// checked against; `None` without users.
    async fn most_common_hash(&self) -> Result<Option<String>>;
    /// Up to `limit` whole users (with their hashes), in key order, those after the key
    /// `after`: a page of what `store copy` moves (see [`Credential`]).
    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<Credential>>;
    /// Stores exported users exactly as they are (every field, the hash as is), durably.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when a key is taken (the copy's target must be empty).
    async fn import(&self, users: &[Credential]) -> Result<()>;
}

/// Server-side sessions, by token hash, with a per-user index.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session under its token's hash (replacing one with the same hash: with
    /// 256-bit random tokens that does not happen).
    async fn insert(&self, token_hash: &TokenHash, session: &Session) -> Result<()>;
    /// The session stored under `token_hash`, expired or not.
    async fn get(&self, token_hash: &TokenHash) -> Result<Option<Session>>;
    /// The session under `token_hash` with its user and, if `with_user_sessions`, every
    /// session of that user: what [`SessionStore::get`], [`UserStore::get`] and
    /// [`SessionStore::list_for_user`] would say, read together so a signed-in page view costs
    /// one statement on an engine shared over the network (one join on PostgreSQL; issue 12's
    /// page-view target). `None` when no session is stored under `token_hash`.
    async fn resolve(&self, token_hash: &TokenHash, with_user_sessions: bool) -> Result<Option<Resolved>>;
    /// Records activity at `now` (never moving `last_seen_at` back); a session ended
    /// meanwhile stays ended.
    async fn touch(&self, token_hash: &TokenHash, now: u64) -> Result<()>;
    /// Removes one session; returns whether it existed.
    async fn delete(&self, token_hash: &TokenHash) -> Result<bool>;
    /// The user's sessions, expired ones included (the caller judges expiry).
    async fn list_for_user(&self, user_key: &str) -> Result<Vec<StoredSession>>;
    /// The user's sessions' times (cheaper than [`SessionStore::list_for_user`]).
    async fn times_for_user(&self, user_key: &str) -> Result<Vec<SessionTimes>>;
    /// Removes all the user's sessions but `keep`; returns how many were removed.
    async fn delete_for_user(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize>;
    /// Removes the user's sessions signed in with the passkey `passkey_id`
    /// ([`Session::passkey_id`]) but `keep`, durably; returns how many were removed. `keep`,
    /// if that passkey signed it in, goes on without it (its `passkey_id` cleared in the same
    /// write): the asker has just proved who they are, and its later changes, which are made
    /// only while the passkey a session signed in with is there ([`Holding`]), must not all
    /// be refused for the removal it asked (review 171).
    async fn delete_for_passkey(&self, user_key: &str, passkey_id: &[u8], keep: Option<&TokenHash>) -> Result<usize>;
    /// Removes the user's sessions signed in with two factors the second of which was not a
    /// passkey ([`Factors::Two`] without a [`Session::passkey_id`]: an authenticator app's code
    /// or a recovery code, which a session does not tell apart) but `keep`, durably; returns
    /// how many were removed. For the removal or replacement of the authenticator app.
    async fn delete_for_app(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize>;
    /// Removes every session idle for `idle_ms` or older than `absolute_ms` at `now` (all
    /// Unix/duration milliseconds), or stamped further ahead of `now` than [`CLOCK_SKEW_MS`]
    /// allows ([`SessionCap::has_expired`]; an engine with a clock of its own judges that from
    /// the later of `now` and its clock), and any it cannot read; returns how many.
    async fn purge_expired(&self, idle_ms: u64, absolute_ms: u64, now: u64) -> Result<usize>;
    /// How many sessions are stored, expired ones included.
    async fn count(&self) -> Result<u64>;
    /// Up to `limit` stored sessions in token-hash order, those after `after`: a page of
    /// what `store copy` moves.
    async fn export(&self, after: Option<&TokenHash>, limit: usize) -> Result<Vec<StoredSession>>;
    /// Stores exported sessions as they are (times and factors included), durably.
    async fn import(&self, sessions: &[StoredSession]) -> Result<()>;

    /// Starts a session, durably, as a sign-in does: `previous` (the browser's session before
    /// it, whoever's, if any) removed (session fixation, OWASP ASVS 3.2.1), `session` stored
    /// under `token_hash`, then the owner's sessions beyond `cap.max_per_user` removed,
    /// expired ones (at `now`, Unix ms) first, then the least recently used. Sign-ins of one
    /// user racing each other together remove exactly the sessions past the cap, never one
    /// just started. The default runs the single steps (safe without a lock: every caller
    /// sorts the same index in the same order, ties keeping the index's order, and removes a
    /// prefix of it, and the last to look sees every new session); an engine across a network
    /// does it in one round trip and one commit.
    async fn start(
        &self,
        previous: Option<&TokenHash>,
        token_hash: &TokenHash,
        session: &Session,
        cap: SessionCap,
        now: u64,
    ) -> Result<()> {
        if let Some(old) = previous {
            self.delete(old).await?;
        }
        self.insert(token_hash, session).await?;
        for s in cap.past_the_cap(self.times_for_user(&session.user_key).await?, now) {
            self.delete(&s.token_hash).await?;
        }
        Ok(())
    }

    /// Goes on with the session stored under `previous` as `session` under `token_hash` (a
    /// password change, *sign out everywhere else*), as [`SessionStore::start`] does, but only
    /// while `previous` is still stored: `false`, with nothing stored, when it was ended
    /// meanwhile (a sign-out of that session while its password was being changed: the
    /// sign-out wins, found by review 129). Of this and a removal of `previous` racing it,
    /// exactly one removes the record, and that one decides.
    ///
    /// Under a new token, it also records that `previous` went on as `token_hash` at `now`
    /// (Unix ms), for [`SessionStore::successor`].
    async fn continue_session(
        &self,
        previous: &TokenHash,
        token_hash: &TokenHash,
        session: &Session,
        cap: SessionCap,
        now: u64,
    ) -> Result<bool>;

    /// The token hash the session stored under `previous` went on as, if it did within
    /// [`SUCCESSOR_MS`] before `now` (Unix ms): a sign-out sent with the old token just after a
    /// password change or *sign out everywhere else* of the same session stored the new one
    /// (another tab's) ends that one too (review 131). Older links are forgotten, so a thief
    /// holding an old cookie cannot sign the owner out later.
    async fn successor(&self, previous: &TokenHash, now: u64) -> Result<Option<TokenHash>>;

    /// The token hash the session now stored under `next` went on from, if it did within
    /// [`SUCCESSOR_MS`] before `now` (Unix ms): the other way along [`SessionStore::successor`]'s
    /// link. A tab showing a page from before the change sends the new cookie with the old
    /// page's form token (one cookie jar), and its sign-out is that session's (review 179).
    async fn predecessor(&self, next: &TokenHash, now: u64) -> Result<Option<TokenHash>>;
}

/// How long a session's old token leads to its new one ([`SessionStore::successor`]), in
/// milliseconds: the time a sign-out in another tab takes to cross a change's answer.
pub const SUCCESSOR_MS: u64 = 60_000;

/// Failed-login records, time-ordered, with a cap on how many are kept (issue 11 §1).
#[async_trait]
pub trait FailureStore: Send + Sync {
    /// Appends a record; `user_key` is the normalised form of what was typed, for queries by
    /// user. With `max_records` (once [`FailureStore::enforce_cap`] has run) the oldest
    /// records go so that at most that many are kept. Returns the record's cursor and how
    /// many old records it pushed out.
    async fn append(&self, record: &FailureRecord, user_key: &str, max_records: Option<u64>) -> Result<Appended>;
    /// Sets the `count` of the record at `at`; a record already dropped stays dropped.
    async fn set_count(&self, at: &Cursor, count: u64) -> Result<()>;
    /// Records matching `q`, newest first, each with its cursor.
    async fn query(&self, q: &FailureQuery) -> Result<Vec<(Cursor, FailureRecord)>>;
    /// Deletes records older than `cutoff` (Unix ms); returns how many.
    async fn purge_before(&self, cutoff: u64) -> Result<usize>;
    /// How many records are stored.
    async fn count(&self) -> Result<u64>;
    /// Counts the records, drops the oldest beyond `max_records`, and from then on applies
    /// the cap on append (a scan: the server runs it once, in the background, at start).
    /// Returns how many are kept and how many went.
    async fn enforce_cap(&self, max_records: Option<u64>) -> Result<Capped>;
    /// Up to `limit` records, oldest first, those after `after`, each with its cursor: a
    /// page of what `store copy` moves (paged, so a million records are never all in memory).
    async fn export(&self, after: Option<Cursor>, limit: usize) -> Result<Vec<(Cursor, FailureRecord)>>;
    /// Appends exported records in the order given, as they are (`typed`, `count` and
    /// `instance` included; no cap applied), durably. Each is found by the username filter
    /// under the normalised form of its `username`, as `audit::Audit::append` files it.
    async fn import(&self, records: &[FailureRecord]) -> Result<()>;
}

/// A TOTP authenticator as stored: the shared secret sealed under the factor key kept outside
/// the store (`factors::FactorKey`), so a copy of the store alone cannot compute codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotpFactor {
    /// The sealed secret (opaque to the store).
    pub sealed_secret: Vec<u8>,
    /// Unix ms of the enrolment.
    pub created_at: u64,
}

/// One user's second factors whole, as `store copy` moves them ([`FactorStore::export`]):
/// the sealed TOTP secret, the latest TOTP step used (without it a copy would accept again a
/// code already used: RFC 6238 §5.2) and the recovery codes' keyed hashes, unused and used. The
/// conformance suite compares exported records whole (`==`), so an engine that drops a field
/// fails it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserFactors {
    /// The owner's normalised username.
    pub user_key: String,
    pub totp: Option<TotpFactor>,
    /// The latest RFC 6238 time step accepted for this user.
    pub last_totp_step: Option<u64>,
    /// Keyed hashes of the unused recovery codes, in stored order.
    pub recovery_hashes: Vec<[u8; 32]>,
    /// Keyed hashes of the set's codes already used, in the order they were used (without
    /// them a copy would log a reused code as a wrong one).
    pub used_recovery_hashes: Vec<[u8; 32]>,
}

/// What [`FactorStore::use_recovery_code`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryCodeUse {
    /// An unused code of the user's set: now used up.
    Used,
    /// A code of the user's set already used (logged `reused_code`: SPEC, second step).
    UsedBefore,
    /// No code of the user's set (a wrong code, one of a replaced set, or no such user).
    NotIssued,
}

/// Which second factors a user has, and how many of each: the one answer to "has this user a
/// second factor?" (sign-in, the `second_factor` policy, `user factors`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FactorSummary {
    /// An authenticator app (TOTP) is enrolled.
    pub totp: bool,
    /// Unused recovery codes left.
    pub recovery_codes: usize,
    /// Registered passkeys.
    pub passkeys: usize,
}

impl FactorSummary {
    /// Whether the user has a second factor to sign in with: an authenticator app or a passkey.
    /// Recovery codes stand in for one (a lost phone) but are not one by themselves.
    pub fn has_second_factor(&self) -> bool {
        self.second_factors() > 0
    }

    /// How many second factors the user has: the authenticator app and each passkey.
    pub fn second_factors(&self) -> usize {
        usize::from(self.totp) + self.passkeys
    }
}

/// A sign-in whose password was right and whose second factor is still owed, stored under the
/// SHA-256 of the `__Host-portcullis-mfa` cookie's token (so several instances share it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSignIn {
    pub user_key: String,
    /// The user's `password_changed_at` when the password was checked: a change since then
    /// voids the pending sign-in.
    pub password_changed_at: u64,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms after which the pending sign-in is void.
    pub expires_at: u64,
    /// Where to go after the sign-in (already checked by `safe_next`).
    pub next: Option<String>,
    /// The password step was past the captcha threshold and solved the captcha. Such a
    /// pending sign-in carries one code check whatever the failure counts say by then, and is
    /// used up by it: one guess per solved captcha, as on the login form, and the real user,
    /// who solved it, is never kept from the second step by failures others caused.
    pub captcha_solved: bool,
    /// Codes this pending sign-in had checked and refused: its own, which the alert of its
    /// success leaves out of the wrong codes it counts (review 211: read from the failure
    /// records, which others' failures push out, the owner's typos were told as another's).
    pub codes_refused: u32,
}

/// Users' second factors and pending two-step sign-ins. Each update is one atomic operation,
/// so a TOTP time step or a recovery code is accepted once even across instances.
#[async_trait]
pub trait FactorStore: Send + Sync {
    /// What second factors `user_key` has, passkeys included (all zero for an unknown user):
    /// one read, as a sign-in asks it.
    async fn summary(&self, user_key: &str) -> Result<FactorSummary>;
    /// [`FactorStore::summary`] with the user's credential generation (`User::password_changed_at`;
    /// `None` for an unknown user), in the same one read: what a sign-in from a browser with a
    /// device token for the username asks before the password check, so that checking the
    /// token's generation costs no statement more.
    async fn summary_with_generation(&self, user_key: &str) -> Result<(FactorSummary, Option<u64>)>;
    /// The user's TOTP authenticator, if enrolled.
    async fn totp(&self, user_key: &str) -> Result<Option<TotpFactor>>;
    /// Enrols (or replaces) the user's TOTP authenticator if the one they have now is
    /// `replacing` (its `created_at`; `None`: they have none), in one step: of two enrolments
    /// begun from the same state, one is stored. `false` if no such user, or the authenticator
    /// changed meanwhile.
    async fn set_totp(&self, user_key: &str, totp: &TotpFactor, replacing: Option<u64>) -> Result<bool>;
    /// Some user's TOTP authenticator, if any user has one (to check at start that the factor
    /// key opens what the store holds).
    async fn any_totp(&self) -> Result<Option<(String, TotpFactor)>>;
    /// Removes the user's TOTP authenticator if it is the one set up at `enrolled_at` (its
    /// `created_at`, Unix ms; `None`: whichever they have), in one step; returns whether one
    /// was removed (`false`: none, or another one, set up meanwhile from another window).
    async fn remove_totp(&self, user_key: &str, enrolled_at: Option<u64>) -> Result<bool>;
    /// Records that the TOTP time step `step` (RFC 6238 §4: `T`) was used, if it is later than
    /// every step used before for this user; returns `false` (refuse: a reused code) otherwise.
    /// RFC 6238 §5.2: a code is accepted at most once.
    async fn use_totp_step(&self, user_key: &str, step: u64) -> Result<bool>;
    /// The keyed hashes of the user's unused recovery codes, in the order they were set (none
    /// for an unknown user).
    async fn recovery_codes(&self, user_key: &str) -> Result<Vec<[u8; 32]>>;
    /// Replaces the user's recovery codes (their keyed hashes) with `hashes` if the codes the
    /// user has now are `replacing` ([`FactorStore::recovery_codes`]; `None`: whatever they
    /// are), in one step: of two replacements begun from the same codes, one is stored, so no
    /// set is shown as made and then found void. The old ones are void. `false` if no such
    /// user, or the codes changed meanwhile.
    async fn set_recovery_codes(
        &self,
        user_key: &str,
        hashes: &[[u8; 32]],
        replacing: Option<&[[u8; 32]]>,
    ) -> Result<bool>;
    /// Uses up the recovery code whose keyed hash is `hash`, in one step (of two uses of one
    /// code, one is [`RecoveryCodeUse::Used`]), and keeps its hash among the set's used ones
    /// until the set is replaced or cleared, so that a second use is told from a wrong code.
    async fn use_recovery_code(&self, user_key: &str, hash: &[u8; 32]) -> Result<RecoveryCodeUse>;
    /// Counts one more wrong code for `user_key` in the run that began at `run_began` (Unix ms:
    /// the later of the user's last sign-in and credential generation), in one atomic step,
    /// durably; a count kept for another run starts again at 1. Returns the run's count now
    /// (0, and nothing stored, for a user without a second-factor record: no code to guess).
    /// Kept with the factors for `sign_in::WRONG_CODES_IN_A_ROW` (NIST SP 800-63B §5.2.2)
    /// rather than read from the failure records, which anyone's failures push out (review
    /// 208); gone with the factors ([`FactorStore::clear`]).
    async fn add_wrong_code(&self, user_key: &str, run_began: u64) -> Result<u32>;
    /// The wrong codes counted for `user_key` in the run that began at `run_began` (0 for
    /// another run, or none).
    async fn wrong_codes(&self, user_key: &str, run_began: u64) -> Result<u32>;
    /// Removes every second factor of the user but passkeys (TOTP, recovery codes; passkeys go
    /// with [`passkeys::PasskeyStore::remove_passkeys_of`], so `passkeys` is 0 here); returns
    /// what there was.
    async fn clear(&self, user_key: &str) -> Result<FactorSummary>;
    /// Stores a pending sign-in under `token_hash`.
    async fn insert_pending(&self, token_hash: &TokenHash, pending: &PendingSignIn) -> Result<()>;
    /// The pending sign-in under `token_hash`, expired or not.
    async fn pending(&self, token_hash: &TokenHash) -> Result<Option<PendingSignIn>>;
    /// Removes the pending sign-in; returns whether it was there (of two callers, one gets
    /// `true`: that is what makes the cookie single-use).
    async fn take_pending(&self, token_hash: &TokenHash) -> Result<bool>;
    /// Removes every pending sign-in of `user_key`, expired or not; returns how many had not
    /// expired at `now` (Unix ms): what the user is told was waiting (*sign out everywhere
    /// else*, a password change: a second step begun elsewhere with the password is over too;
    /// review 208 saw expired ones counted as "had your old password").
    async fn take_pending_of(&self, user_key: &str, now: u64) -> Result<usize>;
    /// Removes pending sign-ins that expired before `now` (Unix ms); returns how many.
    async fn purge_pending(&self, now: u64) -> Result<usize>;
    /// How many users have a second-factor record (TOTP, recovery codes or a used step).
    async fn count(&self) -> Result<u64>;
    /// Up to `limit` users' factor records whole, in user-key order, those after `after`: a
    /// page of what `store copy` moves. Pending sign-ins are not in it (see `store::copy`).
    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserFactors>>;
    /// Stores exported factor records exactly as they are, durably.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when a user already has a record (the copy's target must
    /// be empty).
    async fn import(&self, factors: &[UserFactors]) -> Result<()>;
}

/// Named server keys.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The 32-byte secret called `name`, created at first use (from the system's random
    /// source); concurrent first uses (from any instance) agree on one value.
    async fn secret(&self, name: &str) -> Result<[u8; 32]> {
        let mut fresh = zeroize::Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut fresh[..])?;
        self.claim(name, &fresh).await
    }
    /// The value called `name`, set durably to `value` unless it has one already: what every
    /// instance then agrees on (of concurrent first claims from any instance, one wins).
    async fn claim(&self, name: &str, value: &[u8; 32]) -> Result<[u8; 32]>;
    /// The value called `name`, if it has one; never creates it.
    async fn get(&self, name: &str) -> Result<Option<[u8; 32]>>;
    /// Forgets the value called `name`, durably; whether there was one.
    async fn forget(&self, name: &str) -> Result<bool>;
    /// Every secret made so far, by name (there are a few): what `store copy` moves.
    async fn export(&self) -> Result<Vec<(String, [u8; 32])>>;
    /// Stores exported secrets under their names, durably.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when a name is taken (the copy's target must be empty).
    async fn import(&self, secrets: &[(String, [u8; 32])]) -> Result<()>;
}

/// The storage handle the services hold: one engine behind five traits. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub failures: Arc<dyn FailureStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub passkeys: Arc<dyn passkeys::PasskeyStore>,
    pub factors: Arc<dyn FactorStore>,
    /// The PostgreSQL engine's pool, for the brute-force state it shares
    /// ([`Store::shared_brute_force`]); `None` on sled.
    pg_pool: Option<crate::postgres::db::Db>,
    /// The sled engine's first write error, once there is one (see [`Store::fatal_fault`]);
    /// `None` on PostgreSQL.
    sled_fault: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

impl Store {
    /// Whether the store can take writes now, for `GET /readyz`: every sign-in writes, so a
    /// store that only answers reads is not ready. On PostgreSQL one statement through the
    /// pool asks whether the server is in recovery (a hot standby) or begins transactions
    /// read-only (`Conn::writable`), within the pool's bounded waits and the statement's
    /// (`postgres::db::TIMEOUT`: a hung database is not ready); sled runs in this process and
    /// answers whenever it is open.
    ///
    /// The answer is how far the database's clock is ahead of this process's, in
    /// milliseconds (negative: behind), `None` for sled (no clock but this process's).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached, does not answer, or
    /// takes no writes (the message says which).
    pub async fn ready(&self) -> Result<Option<i64>> {
        if let Some(e) = self.sled_fault.as_ref().and_then(|f| f.borrow().clone()) {
            return Err(StoreError::Unavailable(format!("the store could not write ({e})").into()));
        }
        let Some(pool) = &self.pg_pool else { return Ok(None) };
        Ok(Some(pool.get().await?.writable().await?))
    }

    /// Whether `dir` holds a sled store (without opening, so without creating or locking one).
    pub fn exists(dir: &Path) -> bool {
        self::sled::SledStore::exists(dir)
    }

    /// Why no sled store may be made in `dir`, if it must not: it holds a factor key, which
    /// only a store's first start (or a PostgreSQL instance's) writes, but no store. With
    /// sled's other files there the store lost its `db`; without, it is a PostgreSQL
    /// instance's directory started without its `database_url`. Either way a new store there
    /// would start as new, with a new administrator (review 184). `None`: a store is there,
    /// or the directory never had one.
    pub fn keyed_without_store(dir: &Path) -> Option<String> {
        if Self::exists(dir) || !dir.join(crate::factors::key::KEY_FILE).exists() {
            return None;
        }
        let path = dir.display().to_string();
        let shown = crate::text::printable(&path);
        Some(if self::sled::SledStore::has_remains(dir) {
            format!("the store in {shown} is damaged (its db file is missing): restore it from a backup (README, \"Backups and upgrades\")")
        } else {
            format!("{shown} holds a factor key but no store: set database_url (or PORTCULLIS_DATABASE_URL) as the servers have it, or restore the sled store from a backup")
        })
    }

    /// Opens (creating if needed) the sled store in `dir`. Only one process may hold it.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it; [`StoreError::Unavailable`] when
    /// it cannot be opened.
    pub fn open(dir: &Path) -> Result<Self> {
        let engine = self::sled::SledStore::open(dir)?;
        let sled_fault = Some(engine.fatal_fault());
        Ok(Store { sled_fault, ..Self::from_engine(engine) })
    }

    /// Completes, with the error, when the store has failed in a way only opening it again
    /// can mend: on sled, the first write that could not be flushed (a full disk, an I/O
    /// error), after which sled refuses every write and may spin on reads, so this handle
    /// answers every call with [`StoreError::Unavailable`] (503) from then on. The server
    /// stops then, for its supervisor to start it again (systemd: `Restart=on-failure`), which
    /// opens the store anew once the disk has room. Never completes on PostgreSQL, whose
    /// connections recover by themselves.
    pub async fn fatal_fault(&self) -> String {
        if let Some(mut fault) = self.sled_fault.clone() {
            if let Ok(e) = fault.wait_for(Option::is_some).await {
                return e.clone().unwrap_or_default();
            }
        }
        std::future::pending().await
    }

    /// Connects to the PostgreSQL database at `url` and brings its schema up to date (safe when
    /// several instances start at once), for a store shared by every instance on it.
    /// `instance` (`instance_name`) is written into the failed-login records this handle
    /// appends without one of their own (SPEC.md, "Several instances, one truth"); records
    /// that name an instance (all the server makes, and every imported one) keep theirs.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached, refuses the
    /// connection or a migration, or holds a newer schema than this build knows.
    pub async fn connect(url: &crate::postgres::url::DatabaseUrl, instance: &str) -> Result<Self> {
        Self::open_database(url, instance, true, true).await
    }

    /// [`Store::connect`] for a command: a database without a schema gets one, but an older
    /// schema is refused, not upgraded (only a server's start upgrades it, README "Upgrades").
    ///
    /// # Errors
    /// As [`Store::connect`], and [`StoreError::Unavailable`] for a schema older than this
    /// build's.
    pub async fn connect_command(url: &crate::postgres::url::DatabaseUrl, instance: &str) -> Result<Self> {
        Self::open_database(url, instance, true, false).await
    }

    /// [`Store::connect`] for a command that only reads: a database holding no portcullis
    /// schema is refused rather than given one, as `Store::exists` guards a sled directory.
    ///
    /// # Errors
    /// As [`Store::connect_command`], and [`StoreError::Unavailable`] when the database holds
    /// no store.
    pub async fn connect_existing(url: &crate::postgres::url::DatabaseUrl, instance: &str) -> Result<Self> {
        Self::open_database(url, instance, false, false).await
    }

    async fn open_database(
        url: &crate::postgres::url::DatabaseUrl,
        instance: &str,
        make: bool,
        upgrade: bool,
    ) -> Result<Self> {
        let engine = self::postgres::PgStore::open(url, instance, make, upgrade).await?;
        let pool = engine.pool().clone();
        Ok(Store { pg_pool: Some(pool), ..Self::from_engine(engine) })
    }

    /// The brute-force state every instance on this store shares, when the engine can hold
    /// one (PostgreSQL, on the store's own pool); `None` on sled, whose single process keeps
    /// it in memory (`brute_force::InMemory`). `window` and `threshold` are
    /// `failure_window` and `captcha_after_failures` (issue 12 §3).
    pub fn shared_brute_force(
        &self,
        window: std::time::Duration,
        threshold: u32,
    ) -> Option<Arc<dyn crate::brute_force::BruteForceState>> {
        let pool = self.pg_pool.clone()?;
        Some(Arc::new(crate::postgres::state::PgBruteForce::new(pool, window, threshold)))
    }

    /// A handle on one engine that implements every trait.
    pub fn from_engine<E>(engine: E) -> Self
    where
        E: UserStore + SessionStore + FailureStore + SecretStore + FactorStore + passkeys::PasskeyStore + 'static,
    {
        let engine = Arc::new(engine);
        Store {
            users: engine.clone(),
            sessions: engine.clone(),
            failures: engine.clone(),
            secrets: engine.clone(),
            factors: engine.clone(),
            passkeys: engine,
            pg_pool: None,
            sled_fault: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
