//! The sled engine: the embedded, single-process store behind the traits of [`super`]. This is
//! the one module that knows sled, its trees and its keys. Each trait method does its sled
//! writes, then waits for the group-commit flush, so it is durable when it returns.
//!
//! Trees:
//! - `users`: normalised username → JSON [`UserRecord`]
//! - `sessions`: SHA-256 of the session token → JSON [`SessionRecord`] (the token itself is
//!   never stored)
//! - `user_sessions`: username key, 0x00, token hash → () (an index for "end all sessions")
//! - `failures`: time (ms, BE) + sled id (BE) → JSON [`FailureRecord`]; `failures_by_user` and
//!   `failures_by_ip`: length-prefixed digest of the user key ([`user_index_prefix`]) or
//!   address + that key → ()
//! - `meta`: server secrets and the schema version
//! - `factors`: username key → JSON [`FactorRecord`] (sealed TOTP secret, last TOTP step,
//!   recovery-code hashes)
//! - `pending_sign_ins`: SHA-256 of the `__Host-portcullis-mfa` token → JSON [`PendingRecord`]
//! - passkeys and open WebAuthn ceremonies: see `sled/passkeys.rs`

mod passkeys;

use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{
    Appended, Capped, Credential, Cursor, FactorStore, FactorSummary, Factors, FailureQuery, FailureRecord,
    FailureStore, PendingSignIn, RecoveryCodeUse, Resolved, Result, SecretStore, Session, SessionCap, SessionStore,
    SessionTimes, StoreError, StoredSession, TokenHash, TotpFactor, User, UserFactors, UserStore,
};

/// Version of the record layout; records carry it so later versions can migrate them.
pub const SCHEMA_VERSION: u32 = 1;

/// The `meta` key set once [`SledStore::fill_session_generations`] has run.
const GENERATIONS_FILLED: &str = "session_generations_filled";

/// The `meta` key set once `failures_by_user` is keyed by digests ([`user_index_prefix`]).
const USER_INDEX_DIGESTS: &str = "failures_by_user_digests";

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// A user as stored. The password is only ever an argon2id PHC string.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UserRecord {
    schema: u32,
    /// Normalised (NFKC, case-folded) username: the key.
    key: String,
    display_name: String,
    password_hash: String,
    admin: bool,
    /// Unix time in milliseconds.
    created_at: u64,
    password_changed_at: u64,
    last_login_at: Option<u64>,
    /// Records from before this field existed read as enabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    /// Records from before groups existed read as in no group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<crate::domain::Group>,
}

impl UserRecord {
    /// A new credential generation at `now`: strictly increasing, so two changes within one
    /// millisecond are still two generations to `record_login` and the sessions.
    fn renew_generation(&mut self, now: u64) {
        self.password_changed_at = now.max(self.password_changed_at.saturating_add(1));
    }

    fn user(&self) -> User {
        User {
            key: self.key.clone(),
            display_name: self.display_name.clone(),
            admin: self.admin,
            created_at: self.created_at,
            password_changed_at: self.password_changed_at,
            last_login_at: self.last_login_at,
            disabled: self.disabled,
            groups: self.groups.clone(),
        }
    }

    fn new(user: &User, password_hash: &str) -> Self {
        UserRecord {
            schema: SCHEMA_VERSION,
            key: user.key.clone(),
            display_name: user.display_name.clone(),
            password_hash: password_hash.to_string(),
            admin: user.admin,
            created_at: user.created_at,
            password_changed_at: user.password_changed_at,
            last_login_at: user.last_login_at,
            disabled: user.disabled,
            groups: user.groups.clone(),
        }
    }
}

/// A signed-in session as stored, under the hash of its token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionRecord {
    schema: u32,
    user_key: String,
    created_at: u64,
    last_seen_at: u64,
    ip: String,
    user_agent: String,
    /// `Factors::count`; records written before factors were kept had one.
    #[serde(default = "one_factor")]
    factors: u8,
    /// `Session::password_changed_at`. Records written before it was kept read 0, which is
    /// no user's: `open` fills them in from their users first ([`GENERATIONS_FILLED`]).
    #[serde(default)]
    password_changed_at: u64,
    /// `Session::passkey_id` in base64url without padding (as WebAuthn writes credential ids
    /// in text); absent for a sign-in without a passkey and in records written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passkey: Option<String>,
}

fn one_factor() -> u8 {
    1
}

impl SessionRecord {
    fn session(self) -> Session {
        Session {
            user_key: self.user_key,
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            ip: self.ip,
            user_agent: self.user_agent,
            factors: Factors::from_count(self.factors.into()),
            password_changed_at: self.password_changed_at,
            // An id that does not read names no passkey: no removal can match it, which only
            // leaves the session to its other ends (sign-out, timeouts, generations).
            passkey_id: self.passkey.and_then(|id| URL_SAFE_NO_PAD.decode(id).ok()),
        }
    }

    fn new(s: &Session) -> Self {
        SessionRecord {
            schema: SCHEMA_VERSION,
            user_key: s.user_key.clone(),
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            ip: s.ip.clone(),
            user_agent: s.user_agent.clone(),
            factors: s.factors.count(),
            password_changed_at: s.password_changed_at,
            passkey: s.passkey_id.as_ref().map(|id| URL_SAFE_NO_PAD.encode(id)),
        }
    }
}

/// A user's second factors as stored. Every field has a serde default, so records written
/// before a field existed (or by a build that knew fewer factors) still read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct FactorRecord {
    #[serde(default)]
    totp: Option<TotpRecord>,
    /// The latest TOTP time step accepted (RFC 6238 §5.2: none is accepted twice).
    #[serde(default)]
    last_totp_step: Option<u64>,
    /// Keyed hashes of the unused recovery codes.
    #[serde(default)]
    recovery: Vec<[u8; 32]>,
    /// Keyed hashes of the set's used recovery codes (emptied with a new set).
    #[serde(default)]
    used_recovery: Vec<[u8; 32]>,
    /// Wrong codes in a row ([`FactorStore::add_wrong_code`]), in the run that began at
    /// `wrong_codes_run` (Unix ms).
    #[serde(default)]
    wrong_codes: u32,
    #[serde(default)]
    wrong_codes_run: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TotpRecord {
    sealed: Vec<u8>,
    created_at: u64,
}

impl FactorRecord {
    fn summary(&self) -> FactorSummary {
        FactorSummary { totp: self.totp.is_some(), recovery_codes: self.recovery.len(), passkeys: 0 }
    }
}

/// A pending two-step sign-in as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingRecord {
    user_key: String,
    password_changed_at: u64,
    created_at: u64,
    expires_at: u64,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    captcha_solved: bool,
    #[serde(default)]
    codes_refused: u32,
}

/// A `session_successors` value: the new token hash (32 bytes), then the Unix ms it was
/// stored at (8 bytes, big-endian). `None` for anything else.
fn successor_link(value: &[u8]) -> Option<(TokenHash, u64)> {
    let next = <[u8; 32]>::try_from(value.get(..32)?).ok()?;
    let at = <[u8; 8]>::try_from(value.get(32..40)?).ok()?;
    Some((next, u64::from_be_bytes(at)))
}

/// The sled engine: one process, one directory.
#[derive(Clone)]
pub struct SledStore {
    db: ::sled::Db,
    users: ::sled::Tree,
    sessions: ::sled::Tree,
    user_sessions: ::sled::Tree,
    meta: ::sled::Tree,
    failures: ::sled::Tree,
    failures_by_user: ::sled::Tree,
    failures_by_ip: ::sled::Tree,
    factors: ::sled::Tree,
    pending_sign_ins: ::sled::Tree,
    /// Old token hash → new token hash and Unix ms ([`super::SessionStore::successor`]).
    session_successors: ::sled::Tree,
    durability: Arc<GroupCommit>,
    /// The first write error, once there is one: see [`Fault`].
    fault: Fault,
    /// Held by a passkey's removal and by a change of credential generation that needs the
    /// passkey its session was signed in with ([`super::Holding`]), so the two are ordered.
    /// Both are rare (a removal, a password change, *sign out everywhere else*): one lock
    /// for the store is enough.
    passkey_removals: Arc<std::sync::Mutex<()>>,
    /// How many failure records there are, once counted ([`SledStore::count_failures`]);
    /// `UNCOUNTED` until then, when the cap is not enforced on append.
    failure_total: Arc<AtomicU64>,
}

const UNCOUNTED: u64 = u64::MAX;

/// The first error a flush met (a full disk, an I/O error), once there is one. sled keeps
/// failing every write after one (its own global error, until the store is opened again), and
/// a read that meets a node it wants to split then retries the split for ever, allocating as
/// it goes (review 135: a full disk left a worker spinning, the process growing 30 MB/s and
/// deaf to SIGTERM). So from the first such error this store takes no more calls
/// ([`SledStore::usable`]), and says so to [`super::Store::fatal_fault`], which stops the
/// server so that a restart opens the store again.
#[derive(Clone)]
struct Fault(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Fault {
    fn new() -> Self {
        Fault(Arc::new(tokio::sync::watch::channel(None).0))
    }

    /// Keeps the first error; later ones are its consequences.
    fn set(&self, error: &str) {
        self.0.send_if_modified(|first| {
            let unset = first.is_none();
            if unset {
                *first = Some(error.to_string());
            }
            unset
        });
    }
}

/// Group commit on a thread of its own: a caller that wants its writes durable sends a
/// request after writing; the thread takes every request waiting, flushes once, and answers
/// them all, so a burst of writes costs a few fsyncs, not one each. Its own thread, not
/// `sled::Db::flush_async`: that runs each flush on sled's I/O pool, whose `notify_all` wakes
/// every idle pool thread per job, which cost more CPU per sign-in than the rest of the server.
/// A durability request: answered once a flush begun after it was sent has ended.
type FlushRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

struct GroupCommit {
    /// `None` once dropping: the thread then ends.
    requests: Option<std::sync::mpsc::Sender<FlushRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupCommit {
    /// Ends the thread and waits for it, so the store (and sled's lock on its directory) is
    /// released when the last handle goes, as a restart or the CLI right after expects.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join(); // it only flushes; a panic there has already been reported
        }
    }
}

impl GroupCommit {
    /// Starts the flushing thread; it ends when the last [`SledStore`] clone is dropped.
    fn start(db: ::sled::Db, fault: Fault) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<FlushRequest>();
        let thread = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || {
                // Every request was sent after its writes, so one flush begun after it is
                // received covers them all.
                while let Ok(first) = rx.recv() {
                    let waiting: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
                    let result = db.flush().map(drop).map_err(|e| e.to_string());
                    if let Err(e) = &result {
                        fault.set(e);
                    }
                    for w in waiting {
                        let _ = w.send(result.clone()); // a caller that went away needs no answer
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(GroupCommit { requests: Some(tx), thread: Some(thread) })
    }
}

impl SledStore {
    /// Whether `dir` holds a store (without opening, so without creating or locking one).
    pub fn exists(dir: &Path) -> bool {
        dir.join("db").exists()
    }

    /// Whether `dir` holds sled's files other than `db`.
    pub fn has_remains(dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else { return false };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == "conf" || name == "blobs" || name.starts_with("snap.")
        })
    }

    /// Opens (creating if needed) the store in `dir`. Only one process may hold it.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it; [`StoreError::Unavailable`],
    /// naming `dir`, when it cannot be opened (sled names neither the directory nor what it was
    /// doing: review 136's start on a full disk said only "IO error: No space left on device").
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_unnamed(dir).map_err(|e| match e {
            StoreError::Unavailable(why) => {
                StoreError::Unavailable(format!("cannot open the store in {}: {why}", dir.display()).into())
            }
            other => other,
        })
    }

    fn open_unnamed(dir: &Path) -> Result<Self> {
        super::ensure_private_dir(dir, is_store_file).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        super::fs::refuse_links(dir, |name| matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap."))
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        // A store opened before has its metadata durable (the first open flushes it), and the
        // factor key is made after that; a store with the key and without the metadata lost
        // its contents (review 182: `db` cut short with its snapshot gone opened empty, and the
        // server made a new administrator as at a first start).
        let used_before = dir.join("db").exists() && dir.join(crate::factors::key::KEY_FILE).exists();
        let db = match ::sled::Config::new().path(dir).cache_capacity(64 * 1024 * 1024).open() {
            Ok(db) => db,
            Err(::sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Locked(dir.display().to_string()))
            }
            // sled names no file: say which one is another user's (a command run as root in a
            // service's directory leaves such files).
            Err(::sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let why = match super::fs::foreign_entry(dir) {
                    Some((path, uid)) => {
                        format!("{} belongs to uid {uid}: run portcullis as its owner", path.display())
                    }
                    // Ours, but closed to us (review 182: a `db` of mode 0400 was "Permission
                    // denied" alone).
                    None => match super::fs::entry_closed_to_its_owner(dir) {
                        Some((path, mode)) => {
                            format!("{} has mode {mode:o}: its owner must be able to read and write it ({e})", path.display())
                        }
                        None => e.to_string(),
                    },
                };
                return Err(StoreError::Unavailable(why.into()));
            }
            // sled's words alone ("Read corrupted data at file offset None") said neither that
            // the store is damaged nor what to do (review 157).
            Err(e @ ::sled::Error::Corruption { .. }) => {
                return Err(StoreError::Unavailable(
                    format!("its files are damaged ({e}): restore it from a backup (README, \"Backups and upgrades\"), or move it aside for a new, empty store").into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        // Asked without opening the tree, which would write to what is refused.
        let has_meta = db.tree_names().iter().any(|name| name.as_ref() == b"meta");
        if used_before && (!has_meta || db.open_tree("meta")?.get("schema")?.is_none()) {
            return Err(StoreError::Unavailable(
                "its files are damaged (what it held is gone, the factor key beside it is not): restore it from a backup (README, \"Backups and upgrades\")".into(),
            ));
        }
        let fault = Fault::new();
        let store = SledStore {
            users: db.open_tree("users")?,
            sessions: db.open_tree("sessions")?,
            user_sessions: db.open_tree("user_sessions")?,
            meta: db.open_tree("meta")?,
            failures: db.open_tree("failures")?,
            failures_by_user: db.open_tree("failures_by_user")?,
            failures_by_ip: db.open_tree("failures_by_ip")?,
            factors: db.open_tree("factors")?,
            pending_sign_ins: db.open_tree("pending_sign_ins")?,
            session_successors: db.open_tree("session_successors")?,
            durability: Arc::new(GroupCommit::start(db.clone(), fault.clone())?),
            fault,
            failure_total: Arc::new(AtomicU64::new(UNCOUNTED)),
            passkey_removals: Arc::new(std::sync::Mutex::new(())),
            db,
        };
        store.meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())?;
        store.fill_session_generations()?;
        store.rekey_user_index()?;
        Ok(store)
    }

    /// Once per store: keys `failures_by_user` by digests ([`user_index_prefix`]) where it was
    /// keyed by whole user keys, and flushes.
    fn rekey_user_index(&self) -> Result<()> {
        if self.meta.get(USER_INDEX_DIGESTS)?.is_some() {
            return Ok(());
        }
        self.failures_by_user.clear()?;
        for kv in self.failures.iter() {
            let (k, v) = kv?;
            // An unreadable record is left as it is, to be reported where it is read.
            let Ok(record) = decode::<FailureRecord>(&v) else { continue };
            let user_key = crate::domain::normalise_key(&record.username);
            self.failures_by_user.insert(secondary_key(&user_index_prefix(&user_key), &k), &[])?;
        }
        self.meta.insert(USER_INDEX_DIGESTS, &[1])?;
        self.db.flush()?;
        Ok(())
    }

    /// Once per store: gives each session written before sessions kept their user's password
    /// generation the generation its user has now (those sessions outlived every password
    /// change so far, so they are of it), and flushes. A session without a user stays at 0:
    /// it resolves to nothing either way.
    fn fill_session_generations(&self) -> Result<()> {
        if self.meta.get(GENERATIONS_FILLED)?.is_some() {
            return Ok(());
        }
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            // An unreadable record is left as it is, to be reported where it is read.
            let Ok(mut record) = decode::<SessionRecord>(&v) else { continue };
            if record.password_changed_at != 0 {
                continue;
            }
            if let Some(user) = self.user(&record.user_key)? {
                record.password_changed_at = user.password_changed_at;
                self.sessions.insert(k, encode(&record)?)?;
            }
        }
        self.meta.insert(GENERATIONS_FILLED, &[1])?;
        self.db.flush()?;
        Ok(())
    }

    /// Whether this store may still be called: every trait method asks first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] once a flush has failed ([`Fault`]): only opening the
    /// store again (a restart) makes it usable.
    fn usable(&self) -> Result<()> {
        match &*self.fault.0.borrow() {
            None => Ok(()),
            Some(e) => Err(StoreError::Unavailable(
                format!("the store could not write ({e}) and takes no more calls until portcullis is restarted").into(),
            )),
        }
    }

    /// Completes with the first write error once there is one ([`Fault`]).
    pub fn fatal_fault(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fault.0.subscribe()
    }

    /// Makes every write so far durable. Every trait method calls it before it returns.
    async fn flush(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.durability.requests.as_ref().is_some_and(|r| r.send(tx).is_ok());
        let flushed = if sent { rx.await.ok() } else { None };
        match flushed {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(StoreError::Unavailable(format!("cannot flush the store: {e}").into())),
            None => Err(StoreError::Unavailable("the store's flushing thread has ended".into())),
        }
    }

    /// The value called `name`, set to `value` unless it has one (not yet durable).
    fn claim_secret(&self, name: &str, value: &[u8; 32]) -> Result<[u8; 32]> {
        let key = format!("{SECRET_PREFIX}{name}");
        // compare_and_swap so two first claims agree on one value.
        let stored = match self.meta.compare_and_swap(&key, None as Option<&[u8]>, Some(&value[..]))? {
            Ok(()) => return Ok(*value),
            Err(cas) => cas.current.ok_or_else(|| StoreError::Corrupt(key.clone()))?,
        };
        stored.as_ref().try_into().map_err(|_| StoreError::Corrupt(key))
    }

    // ----- users -----

    fn user(&self, key: &str) -> Result<Option<UserRecord>> {
        self.users.get(key)?.map(|v| decode(&v)).transpose()
    }

    fn user_count(&self) -> usize {
        self.users.len()
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        self.users.iter().map(|kv| decode(&kv?.1)).collect()
    }

    /// Inserts a new user; fails with `AlreadyExists` if the key is taken.
    fn insert_user(&self, user: &UserRecord) -> Result<()> {
        let value = encode(user)?;
        match self.users.compare_and_swap(&user.key, None as Option<&[u8]>, Some(value))? {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::AlreadyExists),
        }
    }

    /// Changes a user's record in place, atomically: `change` sees the stored record and says
    /// whether it changed it (it may run more than once if another write races). Returns the
    /// record as it is afterwards, or `None` if there is no such user. A record that cannot be
    /// decoded is left as it is (never deleted) and reported as corrupt.
    fn update_user_with(
        &self,
        key: &str,
        mut change: impl FnMut(&mut UserRecord) -> bool,
    ) -> Result<Option<UserRecord>> {
        let mut after = None;
        let mut corrupt = None;
        self.users.fetch_and_update(key, |old| {
            let old = old?;
            (after, corrupt) = (None, None);
            let mut user: UserRecord = match serde_json::from_slice(old) {
                Ok(user) => user,
                Err(e) => {
                    corrupt = Some(e.to_string());
                    return Some(old.to_vec());
                }
            };
            let unchanged = user.clone();
            if change(&mut user) {
                if let Ok(bytes) = serde_json::to_vec(&user) {
                    after = Some(user);
                    return Some(bytes);
                }
            }
            after = Some(unchanged);
            Some(old.to_vec())
        })?;
        match corrupt {
            Some(e) => Err(StoreError::Corrupt(e)),
            None => Ok(after),
        }
    }

    /// A new credential generation for the user `key` at `now`, with `password_hash` when
    /// given, durably: only from `from` when given ([`UserStore::set_password_hash`],
    /// [`UserStore::renew_generation`]). `None` if no such user, or the generation moved on.
    async fn next_generation(
        &self,
        key: &str,
        now: u64,
        from: Option<super::Holding<'_>>,
        password_hash: Option<&str>,
    ) -> Result<Option<User>> {
        let after = {
            // Ordered with a passkey's removal, which takes the same lock: the passkey is there
            // for the whole change, or the removal came first and the change is not made.
            // The lock guards no data: one a panic poisoned still orders.
            let _held = self.passkey_removals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(id) = from.and_then(|f| f.passkey_id) {
                if !self.holds_passkey(key, id)? {
                    return Ok(None);
                }
            }
            let mut moved_on = false;
            let after = self.update_user_with(key, |user| {
                // Set on every try: sled calls this again when another write came between.
                moved_on = from.is_some_and(|f| user.password_changed_at != f.generation);
                if !moved_on {
                    if let Some(hash) = password_hash {
                        user.password_hash = hash.to_string();
                    }
                    user.renew_generation(now);
                }
                !moved_on
            })?;
            after.filter(|_| !moved_on)
        };
        self.durable(after.map(|r| r.user())).await
    }

    /// Sets the user's `disabled` flag in place (so a concurrent login or password change is
    /// not overwritten); returns the updated record, or `None` if there is no such user.
    fn set_user_disabled(&self, key: &str, disabled: bool) -> Result<Option<UserRecord>> {
        self.update_user_with(key, |user| {
            user.disabled = disabled;
            true
        })
    }

    /// Notes a successful login (and stores `new_hash`, if any), provided the user's hash is
    /// still `verified_hash` and the user is not disabled. Returns the updated record (or, for
    /// a disabled user, the record unchanged), or `None` if the user is gone or their password
    /// changed in the meantime.
    fn login_cas(
        &self,
        verified: &Credential,
        new_hash: Option<&str>,
        signed_in_at: Option<u64>,
    ) -> Result<Option<UserRecord>> {
        let mut same_password = false;
        let user = self.update_user_with(&verified.user.key, |user| {
            same_password = user.password_changed_at == verified.user.password_changed_at;
            // Disabled while the password was being checked: no login is recorded.
            if !same_password || user.disabled {
                return false;
            }
            if let Some(h) = new_hash.filter(|_| user.password_hash == verified.password_hash) {
                user.password_hash = h.to_string();
            }
            if signed_in_at.is_some() {
                user.last_login_at = signed_in_at;
            }
            true
        })?;
        Ok(user.filter(|_| same_password))
    }

    /// Removes a user; returns whether there was one.
    fn delete_user(&self, key: &str) -> Result<bool> {
        Ok(self.users.remove(key)?.is_some())
    }

    // ----- sessions -----

    fn insert_session(&self, token_hash: &[u8; 32], session: &SessionRecord) -> Result<()> {
        self.sessions.insert(token_hash, encode(session)?)?;
        self.user_sessions.insert(index_key(&session.user_key, token_hash), &index_value(session))?;
        Ok(())
    }

    fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>> {
        self.sessions.get(token_hash)?.map(|v| decode(&v)).transpose()
    }

    /// Records activity on a session (for the idle timeout).
    fn touch_session(&self, token_hash: &[u8; 32], now: u64) -> Result<()> {
        let mut touched = None;
        self.sessions.fetch_and_update(token_hash, |old| {
            touched = None;
            let mut record: SessionRecord = old.and_then(|v| serde_json::from_slice(v).ok())?;
            record.last_seen_at = record.last_seen_at.max(now);
            let bytes = serde_json::to_vec(&record).ok();
            touched = Some(record);
            bytes
        })?;
        if let Some(record) = touched {
            let key = index_key(&record.user_key, token_hash);
            // Only an entry still there: a session ended meanwhile must not be indexed again.
            let _ = self.user_sessions.fetch_and_update(key, |old| old.map(|_| index_value(&record).to_vec()))?;
        }
        Ok(())
    }

    /// Clears the passkey of the session `token_hash` when it is `passkey_id` (not yet
    /// flushed); any other session, or one that cannot be read, is left as it is.
    fn release_session_from_passkey(&self, token_hash: &TokenHash, passkey_id: &[u8]) -> Result<()> {
        self.sessions.fetch_and_update(token_hash, |old| {
            let old = old?;
            match serde_json::from_slice::<SessionRecord>(old) {
                Ok(mut record)
                    if record.passkey.as_deref().and_then(|id| URL_SAFE_NO_PAD.decode(id).ok()).as_deref()
                        == Some(passkey_id) =>
                {
                    record.passkey = None;
                    Some(serde_json::to_vec(&record).unwrap_or_else(|_| old.to_vec()))
                }
                _ => Some(old.to_vec()),
            }
        })?;
        Ok(())
    }

    /// Stores `session` under `token_hash`, then removes the owner's sessions past `cap` at
    /// `now` ([`SessionCap::past_the_cap`]); not yet flushed.
    fn insert_within_cap(&self, token_hash: &TokenHash, session: &Session, cap: SessionCap, now: u64) -> Result<()> {
        self.insert_session(token_hash, &SessionRecord::new(session))?;
        for s in cap.past_the_cap(self.user_session_times(&session.user_key)?, now) {
            self.delete_session(&s.token_hash)?;
        }
        Ok(())
    }

    /// Removes one session; returns whether it existed.
    fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool> {
        let Some(old) = self.sessions.remove(token_hash)? else { return Ok(false) };
        if let Ok(record) = decode::<SessionRecord>(&old) {
            self.user_sessions.remove(index_key(&record.user_key, token_hash))?;
        }
        Ok(true)
    }

    /// The user's sessions (expired ones included; the caller judges expiry).
    fn user_sessions(&self, user_key: &str) -> Result<Vec<StoredSession>> {
        let mut out = Vec::new();
        for kv in self.user_sessions.scan_prefix(index_prefix(user_key)) {
            let (k, _) = kv?;
            let Some(token_hash) = hash_from_index_key(&k) else { continue };
            match self.session(&token_hash)? {
                Some(record) => out.push(StoredSession { token_hash, record: record.session() }),
                // A crash between the two writes can leave a dangling index entry.
                None => {
                    self.user_sessions.remove(k)?;
                }
            }
        }
        Ok(out)
    }

    /// The user's sessions' times, from the index alone (entries written before the index
    /// kept times are read from their session record).
    fn user_session_times(&self, user_key: &str) -> Result<Vec<SessionTimes>> {
        let mut out = Vec::new();
        for kv in self.user_sessions.scan_prefix(index_prefix(user_key)) {
            let (k, v) = kv?;
            let Some(token_hash) = hash_from_index_key(&k) else { continue };
            if let Some((created_at, last_seen_at)) = times_from_index_value(&v) {
                out.push(SessionTimes { token_hash, created_at, last_seen_at });
                continue;
            }
            match self.session(&token_hash)? {
                Some(r) => {
                    out.push(SessionTimes { token_hash, created_at: r.created_at, last_seen_at: r.last_seen_at })
                }
                None => {
                    self.user_sessions.remove(k)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes all the user's sessions but `keep`; returns how many were removed.
    fn delete_user_sessions(&self, user_key: &str, keep: Option<&[u8; 32]>) -> Result<usize> {
        let mut removed = 0;
        for kv in self.user_sessions.scan_prefix(index_prefix(user_key)) {
            let (k, _) = kv?;
            let Some(token_hash) = hash_from_index_key(&k) else { continue };
            if keep == Some(&token_hash) {
                continue;
            }
            if self.sessions.remove(token_hash)?.is_some() {
                removed += 1;
            }
            self.user_sessions.remove(k)?;
        }
        Ok(removed)
    }

    /// Removes the user's sessions but `keep` that `matches` picks; returns how many.
    fn delete_user_sessions_where(
        &self,
        user_key: &str,
        keep: Option<&TokenHash>,
        matches: impl Fn(&Session) -> bool,
    ) -> Result<usize> {
        let mut removed = 0;
        for s in self.user_sessions(user_key)? {
            if keep != Some(&s.token_hash) && matches(&s.record) && self.delete_session(&s.token_hash)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every session `expired` says is over; returns how many.
    fn purge_sessions(&self, expired: impl Fn(&SessionRecord) -> bool) -> Result<usize> {
        let mut removed = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let drop = match decode::<SessionRecord>(&v) {
                Ok(record) => expired(&record),
                Err(_) => true,
            };
            if drop {
                if let Ok(hash) = <[u8; 32]>::try_from(k.as_ref()) {
                    self.delete_session(&hash)?;
                } else {
                    self.sessions.remove(k)?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

impl SledStore {
    // ----- failed-login records -----

    /// Appends a failure record (not yet durable: call [`SledStore::flush`]). `user_key` is the
    /// normalised form of what was typed, for the username index. Returns the record's key.
    ///
    /// With `max_records` (and once the records were counted, see [`SledStore::count_failures`]),
    /// the oldest records are dropped so that at most that many are kept: whatever floods
    /// in, the records cannot grow past it (issue 11 §1).
    /// Appends a record; returns its key and how many of the oldest went past `max_records`.
    fn append_failure(
        &self,
        record: &FailureRecord,
        user_key: &str,
        max_records: Option<u64>,
    ) -> Result<(Vec<u8>, u64)> {
        let mut key = record.time.to_be_bytes().to_vec();
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.failures.insert(&key, encode(record)?)?;
        self.failures_by_user.insert(secondary_key(&user_index_prefix(user_key), &key), &[])?;
        self.failures_by_ip.insert(secondary_key(record.ip.as_bytes(), &key), &[])?;
        // Not counted yet: the count runs at start, in the background; until then no cap.
        if self.failure_total.load(Ordering::SeqCst) == UNCOUNTED {
            return Ok((key, 0));
        }
        let total = self.failure_total.fetch_add(1, Ordering::SeqCst);
        let mut dropped = 0;
        if let Some(max) = max_records {
            let mut total = total.saturating_add(1);
            while total > max.max(1) {
                let Some((k, v)) = self.failures.pop_min()? else { break };
                self.remove_failure_indexes(&k, &v)?;
                total = self.failure_total.fetch_sub(1, Ordering::SeqCst) - 1;
                dropped += 1;
            }
        }
        Ok((key, dropped))
    }

    /// Counts the failure records (a scan: run it off the async workers) so that the cap of
    /// [`SledStore::append_failure`] applies from now on, and drops the oldest beyond
    /// `max_records`. Returns how many there are and how many went.
    fn count_failures(&self, max_records: Option<u64>) -> Result<Capped> {
        let mut n = 0u64;
        for kv in self.failures.iter() {
            kv?;
            n += 1;
        }
        let mut dropped = 0;
        if let Some(max) = max_records {
            while n > max {
                let Some((k, v)) = self.failures.pop_min()? else { break };
                self.remove_failure_indexes(&k, &v)?;
                n -= 1;
                dropped += 1;
            }
        }
        // Appends since the scan began are not in `n`; the cap then lags by that many until
        // the next purge, which is harmless.
        self.failure_total.store(n, Ordering::SeqCst);
        Ok(Capped { kept: n, dropped })
    }

    /// Sets the `count` of the record stored under `key` (an aggregated refusal, see
    /// `Audit::record_failure`). A record already dropped (by the cap or retention) stays
    /// dropped. Not yet durable: call [`SledStore::flush`].
    fn set_failure_count(&self, key: &[u8], count: u64) -> Result<()> {
        self.failures.fetch_and_update(key, |old| {
            let old = old?;
            match serde_json::from_slice::<FailureRecord>(old) {
                Ok(mut record) => {
                    record.count = count;
                    serde_json::to_vec(&record).ok().or_else(|| Some(old.to_vec()))
                }
                Err(_) => Some(old.to_vec()),
            }
        })?;
        Ok(())
    }

    fn remove_failure_indexes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if let Ok(record) = decode::<FailureRecord>(value) {
            let user_key = crate::domain::normalise_key(&record.username);
            self.failures_by_user.remove(secondary_key(&user_index_prefix(&user_key), key))?;
            self.failures_by_ip.remove(secondary_key(record.ip.as_bytes(), key))?;
        }
        Ok(())
    }

    /// Records matching `q`, newest first, with their keys (for keyset pagination).
    fn failures(&self, q: &FailureQuery) -> Result<Vec<(Vec<u8>, FailureRecord)>> {
        let lo = q.since.unwrap_or(0).to_be_bytes().to_vec();
        let mut hi = q.until.map_or(u64::MAX, |u| u.saturating_add(1)).to_be_bytes().to_vec();
        if let Some(before) = q.before.map(|c| c.to_bytes().to_vec()) {
            if before < hi {
                hi = before;
            }
        }
        let limit = if q.limit == 0 { usize::MAX } else { q.limit };
        let mut out = Vec::new();
        let keep = |key: Vec<u8>, record: FailureRecord, out: &mut Vec<(Vec<u8>, FailureRecord)>| {
            let ip_ok = q.ip.is_none_or(|net| record.ip.parse::<std::net::IpAddr>().is_ok_and(|ip| net.contains(&ip)));
            let reason_ok = q.reason.is_none_or(|r| r == record.reason);
            if ip_ok && reason_ok {
                out.push((key, record));
            }
            out.len() >= limit
        };
        // A username or a single address has an index; otherwise scan the time range.
        let single_ip = q.ip.filter(|n| n.prefix_len() == n.max_prefix_len()).map(|n| n.addr().to_string());
        let index = match (&q.user_key, &single_ip) {
            (Some(u), _) => Some((&self.failures_by_user, user_index_prefix(u).to_vec())),
            (None, Some(ip)) => Some((&self.failures_by_ip, ip.as_bytes().to_vec())),
            _ => None,
        };
        match index {
            Some((tree, prefix)) => {
                let range = secondary_key(&prefix, &lo)..secondary_key(&prefix, &hi);
                for kv in tree.range(range).rev() {
                    let (k, _) = kv?;
                    let key = k[2 + prefix.len()..].to_vec();
                    let Some(v) = self.failures.get(&key)? else { continue };
                    let record: FailureRecord = decode(&v)?;
                    // A digest's other user (never met, but the index does not prove it).
                    let other_user =
                        q.user_key.as_ref().is_some_and(|u| crate::domain::normalise_key(&record.username) != *u);
                    if !other_user && keep(key, record, &mut out) {
                        break;
                    }
                }
            }
            None => {
                for kv in self.failures.range(lo..hi).rev() {
                    let (k, v) = kv?;
                    if keep(k.to_vec(), decode(&v)?, &mut out) {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes records older than `cutoff` (Unix ms); returns how many.
    fn purge_failures_before(&self, cutoff: u64) -> Result<usize> {
        let mut removed = 0;
        for kv in self.failures.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, v) = kv?;
            self.remove_failure_indexes(&k, &v)?;
            if self.failures.remove(k)?.is_some() && self.failure_total.load(Ordering::SeqCst) != UNCOUNTED {
                self.failure_total.fetch_sub(1, Ordering::SeqCst);
            }
            removed += 1;
        }
        Ok(removed)
    }

    fn failure_count(&self) -> usize {
        self.failures.len()
    }
}

/// The prefix of a user's entries in `failures_by_user`: the first 16 bytes of the user key's
/// SHA-256. Whole keys (a typed name of 256 four-byte characters is 1 KiB) made the index's
/// inner nodes (256 separators each) larger than sled's blob threshold (a quarter of its
/// 512 KiB segment), so each split wrote a new blob file: review 178 measured 78 KB of store
/// per kept record, growing under churn, against 4 to 10 KB for ordinary names.
fn user_index_prefix(user_key: &str) -> [u8; 16] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(user_key.as_bytes());
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&digest[..16]);
    prefix
}

/// An index key: the length of `prefix` (u16), `prefix`, then the record key, so one
/// prefix's entries are a contiguous, time-ordered range whatever bytes it holds.
fn secondary_key(prefix: &[u8], record_key: &[u8]) -> Vec<u8> {
    let len = prefix.len().min(u16::MAX as usize);
    let mut k = Vec::with_capacity(2 + len + record_key.len());
    k.extend_from_slice(&(len as u16).to_be_bytes());
    k.extend_from_slice(&prefix[..len]);
    k.extend_from_slice(record_key);
    k
}

fn index_prefix(user_key: &str) -> Vec<u8> {
    let mut k = user_key.as_bytes().to_vec();
    k.push(0);
    k
}

fn index_key(user_key: &str, token_hash: &[u8; 32]) -> Vec<u8> {
    let mut k = index_prefix(user_key);
    k.extend_from_slice(token_hash);
    k
}

/// An index entry's value: the session's `created_at` and `last_seen_at`, big-endian.
fn index_value(session: &SessionRecord) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&session.created_at.to_be_bytes());
    v[8..].copy_from_slice(&session.last_seen_at.to_be_bytes());
    v
}

fn times_from_index_value(v: &[u8]) -> Option<(u64, u64)> {
    let created = v.get(..8)?.try_into().ok().map(u64::from_be_bytes)?;
    let seen = v.get(8..16)?.try_into().ok().map(u64::from_be_bytes)?;
    Some((created, seen))
}

fn hash_from_index_key(k: &[u8]) -> Option<[u8; 32]> {
    k.len().checked_sub(32).and_then(|start| k[start..].try_into().ok())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The entries sled 0.34 keeps in its directory, and the admin socket.
pub fn is_store_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs" | "admin.sock" | "factor.key") || name.starts_with("snap.")
}

/// A store key for a failure record, from its cursor.
fn failure_key(at: &Cursor) -> [u8; 16] {
    at.to_bytes()
}

fn cursor_of(key: &[u8]) -> Result<Cursor> {
    let bytes: [u8; 16] = key.try_into().map_err(|_| StoreError::Corrupt("a failure record key".into()))?;
    Ok(Cursor::from_bytes(&bytes))
}

impl SledStore {
    /// Runs a scan on the blocking pool (sled calls are synchronous; a scan is not short).
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&SledStore) -> Result<T> + Send + 'static) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Unavailable(format!("a store task ended: {e}").into()))?
    }

    /// Removes the pending sign-ins `doomed` picks (given each record, `None` for one that no
    /// longer decodes), durably; returns how many went. A scan: pending sign-ins live minutes
    /// and are few, and an index by user would cost every two-step sign-in a write for what
    /// only *sign out everywhere else* reads.
    async fn remove_pending_where(
        &self,
        doomed: impl Fn(Option<PendingRecord>) -> bool + Send + 'static,
    ) -> Result<usize> {
        let removed = self
            .blocking(move |s| {
                let mut n = 0;
                for kv in s.pending_sign_ins.iter() {
                    let (k, v) = kv?;
                    if doomed(decode::<PendingRecord>(&v).ok()) {
                        n += usize::from(s.pending_sign_ins.remove(k)?.is_some());
                    }
                }
                Ok(n)
            })
            .await?;
        self.durable(removed).await
    }

    /// `value`, once every write before this call is durable.
    async fn durable<T>(&self, value: T) -> Result<T> {
        self.flush().await?;
        Ok(value)
    }
}

#[async_trait]
impl UserStore for SledStore {
    async fn get(&self, key: &str) -> Result<Option<User>> {
        self.usable()?;
        Ok(self.user(key)?.map(|r| r.user()))
    }

    async fn credential(&self, key: &str) -> Result<Option<Credential>> {
        self.usable()?;
        Ok(self.user(key)?.map(|r| Credential { user: r.user(), password_hash: r.password_hash }))
    }

    async fn list(&self) -> Result<Vec<User>> {
        self.usable()?;
        self.blocking(|s| Ok(s.users()?.iter().map(UserRecord::user).collect())).await
    }

    async fn list_with_sessions(&self, cap: SessionCap, now: u64) -> Result<Vec<(User, usize)>> {
        self.usable()?;
        // In this process, one index scan per user costs no round trip; what matters is that
        // an unreadable session fails the listing instead of counting as none.
        self.blocking(move |s| {
            s.users()?
                .iter()
                .map(|r| {
                    let times = s.user_session_times(&r.key)?;
                    let valid = times.iter().filter(|t| !cap.has_expired(t.created_at, t.last_seen_at, now)).count();
                    Ok((r.user(), valid))
                })
                .collect()
        })
        .await
    }

    async fn count(&self) -> Result<u64> {
        self.usable()?;
        Ok(self.user_count() as u64)
    }

    async fn insert(&self, user: &User, password_hash: &str) -> Result<()> {
        self.usable()?;
        self.insert_user(&UserRecord::new(user, password_hash))?;
        self.durable(()).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.usable()?;
        // Passkeys first: a user made later under the same name must not inherit them, nor
        // the failed sign-ins of the removed ones.
        self.delete_user_passkeys(key, None)?;
        self.forget_removed_passkeys(key)?;
        let existed = self.delete_user(key)?;
        self.durable(existed).await
    }

    async fn set_password_hash(
        &self,
        key: &str,
        password_hash: &str,
        now: u64,
        from: Option<super::Holding<'_>>,
    ) -> Result<Option<User>> {
        self.usable()?;
        self.next_generation(key, now, from, Some(password_hash)).await
    }

    async fn renew_generation(&self, key: &str, now: u64, from: Option<super::Holding<'_>>) -> Result<Option<User>> {
        self.usable()?;
        self.next_generation(key, now, from, None).await
    }

    async fn set_disabled(&self, key: &str, disabled: bool) -> Result<Option<User>> {
        self.usable()?;
        let after = self.set_user_disabled(key, disabled)?;
        self.durable(after.map(|r| r.user())).await
    }

    async fn change_groups(
        &self,
        key: &str,
        add: &[crate::domain::Group],
        remove: &[crate::domain::Group],
    ) -> Result<Option<User>> {
        self.usable()?;
        let after = self.update_user_with(key, |user| {
            let before = user.groups.clone();
            user.groups.extend(add.iter().cloned());
            user.groups.retain(|g| !remove.contains(g));
            user.groups.sort();
            user.groups.dedup();
            user.groups != before
        })?;
        self.durable(after.map(|r| r.user())).await
    }

    async fn set_admin(&self, key: &str, admin: bool) -> Result<Option<User>> {
        self.usable()?;
        let after = self.update_user_with(key, |user| {
            let changed = user.admin != admin;
            user.admin = admin;
            changed
        })?;
        self.durable(after.map(|r| r.user())).await
    }

    async fn record_login(
        &self,
        verified: &Credential,
        upgraded_hash: Option<&str>,
        signed_in_at: Option<u64>,
    ) -> Result<Option<User>> {
        self.usable()?;
        // Not flushed here (see the trait): the sign-in's session, written next, is, and a
        // sled flush makes every earlier write durable with it. One fsync per sign-in, not two.
        Ok(self.login_cas(verified, upgraded_hash, signed_in_at)?.map(|r| r.user()))
    }

    async fn record_sign_in(&self, key: &str, at: u64) -> Result<()> {
        self.usable()?;
        // Not flushed, as `record_login`: the session comes next.
        self.update_user_with(key, |user| {
            user.last_login_at = Some(at);
            true
        })?;
        Ok(())
    }

    async fn most_common_hash(&self) -> Result<Option<String>> {
        self.usable()?;
        self.blocking(|s| {
            let mut kinds: std::collections::HashMap<(String, usize), (usize, String)> = Default::default();
            for user in s.users()? {
                if let Some(shape) = crate::password::pool::shape_of(&user.password_hash) {
                    kinds.entry(shape).or_insert((0, user.password_hash)).0 += 1;
                }
            }
            // The most common kind; ties go to the larger shape string, so the choice is stable.
            Ok(kinds.into_iter().max_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0))).map(|(_, (_, example))| example))
        })
        .await
    }

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<Credential>> {
        self.usable()?;
        let after = after.map(|a| a.as_bytes().to_vec());
        self.blocking(move |s| {
            let range = match after {
                Some(a) => s.users.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => s.users.iter(),
            };
            range
                .take(limit)
                .map(|kv| {
                    let r: UserRecord = decode(&kv?.1)?;
                    Ok(Credential { user: r.user(), password_hash: r.password_hash })
                })
                .collect()
        })
        .await
    }

    async fn import(&self, users: &[Credential]) -> Result<()> {
        self.usable()?;
        for c in users {
            // The one mapping of a user to its record, shared with `insert`.
            self.insert_user(&UserRecord::new(&c.user, &c.password_hash))?;
        }
        self.durable(()).await
    }
}

#[async_trait]
impl SessionStore for SledStore {
    async fn insert(&self, token_hash: &TokenHash, session: &Session) -> Result<()> {
        self.usable()?;
        self.insert_session(token_hash, &SessionRecord::new(session))?;
        self.durable(()).await
    }

    async fn get(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        self.usable()?;
        Ok(self.session(token_hash)?.map(SessionRecord::session))
    }

    async fn resolve(&self, token_hash: &TokenHash, with_user_sessions: bool) -> Result<Option<Resolved>> {
        self.usable()?;
        // In process: the three reads cost no round trip here, so they stay three.
        let Some(record) = self.session(token_hash)? else { return Ok(None) };
        let user = self.user(&record.user_key)?.map(|r| r.user());
        let user_sessions = if with_user_sessions { self.user_sessions(&record.user_key)? } else { Vec::new() };
        Ok(Some(Resolved { session: record.session(), user, user_sessions }))
    }

    async fn touch(&self, token_hash: &TokenHash, now: u64) -> Result<()> {
        self.usable()?;
        self.touch_session(token_hash, now)?;
        self.durable(()).await
    }

    async fn delete(&self, token_hash: &TokenHash) -> Result<bool> {
        self.usable()?;
        let existed = self.delete_session(token_hash)?;
        self.durable(existed).await
    }

    async fn start(
        &self,
        previous: Option<&TokenHash>,
        token_hash: &TokenHash,
        session: &Session,
        cap: SessionCap,
        now: u64,
    ) -> Result<()> {
        self.usable()?;
        // The trait's steps in its order, and one flush for them all: one fsync per sign-in.
        if let Some(old) = previous {
            self.delete_session(old)?;
        }
        self.insert_within_cap(token_hash, session, cap, now)?;
        self.durable(()).await
    }

    async fn continue_session(
        &self,
        previous: &TokenHash,
        token_hash: &TokenHash,
        session: &Session,
        cap: SessionCap,
        now: u64,
    ) -> Result<bool> {
        self.usable()?;
        // sled's remove is atomic: of this and a sign-out removing `previous`, one sees it.
        if !self.delete_session(previous)? {
            return Ok(false);
        }
        self.insert_within_cap(token_hash, session, cap, now)?;
        if previous != token_hash {
            let mut link = token_hash.to_vec();
            link.extend_from_slice(&now.to_be_bytes());
            self.session_successors.insert(previous, link)?;
        }
        self.durable(true).await
    }

    async fn successor(&self, previous: &TokenHash, now: u64) -> Result<Option<TokenHash>> {
        self.usable()?;
        let link = self.session_successors.get(previous)?.and_then(|v| successor_link(&v));
        Ok(link.filter(|(_, at)| now.saturating_sub(*at) <= super::SUCCESSOR_MS).map(|(next, _)| next))
    }

    async fn predecessor(&self, next: &TokenHash, now: u64) -> Result<Option<TokenHash>> {
        self.usable()?;
        // The links of the last minutes only (purged with the sessions): a short walk.
        let mut newest: Option<(TokenHash, u64)> = None;
        for kv in self.session_successors.iter() {
            let (old, link) = kv?;
            let (Some((to, at)), Ok(old)) = (successor_link(&link), <[u8; 32]>::try_from(&old[..])) else { continue };
            if to == *next && now.saturating_sub(at) <= super::SUCCESSOR_MS && newest.is_none_or(|(_, t)| at > t) {
                newest = Some((old, at));
            }
        }
        Ok(newest.map(|(old, _)| old))
    }

    // Reads: they may drop dangling index entries, but that is housekeeping nobody is told
    // of (redone if lost), so they do not wait for a flush, and a disk that cannot be written
    // does not stop them (a signed-in user still sees their page; SECURITY.md).
    async fn list_for_user(&self, user_key: &str) -> Result<Vec<StoredSession>> {
        self.usable()?;
        self.user_sessions(user_key)
    }

    async fn times_for_user(&self, user_key: &str) -> Result<Vec<SessionTimes>> {
        self.usable()?;
        self.user_session_times(user_key)
    }

    async fn delete_for_user(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize> {
        self.usable()?;
        let n = self.delete_user_sessions(user_key, keep)?;
        self.durable(n).await
    }

    async fn delete_for_passkey(&self, user_key: &str, passkey_id: &[u8], keep: Option<&TokenHash>) -> Result<usize> {
        self.usable()?;
        let removed =
            self.delete_user_sessions_where(user_key, keep, |r| r.passkey_id.as_deref() == Some(passkey_id))?;
        if let Some(keep) = keep {
            self.release_session_from_passkey(keep, passkey_id)?;
        }
        self.durable(removed).await
    }

    async fn delete_for_app(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize> {
        self.usable()?;
        let removed =
            self.delete_user_sessions_where(user_key, keep, |r| r.factors == Factors::Two && r.passkey_id.is_none())?;
        self.durable(removed).await
    }

    async fn purge_expired(&self, idle_ms: u64, absolute_ms: u64, now: u64) -> Result<usize> {
        self.usable()?;
        let n = self
            .blocking(move |s| {
                let cap = super::SessionCap { max_per_user: usize::MAX, idle_ms, absolute_ms };
                let n = s.purge_sessions(|r| cap.has_expired(r.created_at, r.last_seen_at, now))?;
                // Links past their time lead nowhere any more.
                for link in s.session_successors.iter() {
                    let (old, link) = link?;
                    let at = successor_link(&link).map_or(0, |(_, at)| at);
                    if now.saturating_sub(at) > super::SUCCESSOR_MS {
                        s.session_successors.remove(old)?;
                    }
                }
                Ok(n)
            })
            .await?;
        self.durable(n).await
    }

    async fn count(&self) -> Result<u64> {
        self.usable()?;
        Ok(self.session_count() as u64)
    }

    async fn export(&self, after: Option<&TokenHash>, limit: usize) -> Result<Vec<StoredSession>> {
        self.usable()?;
        let after = after.map(|a| a.to_vec());
        self.blocking(move |s| {
            let range = match after {
                Some(a) => s.sessions.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => s.sessions.iter(),
            };
            range
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    let token_hash = <[u8; 32]>::try_from(k.as_ref())
                        .map_err(|_| StoreError::Corrupt("a session key is not 32 bytes".into()))?;
                    Ok(StoredSession { token_hash, record: decode::<SessionRecord>(&v)?.session() })
                })
                .collect()
        })
        .await
    }

    async fn import(&self, sessions: &[StoredSession]) -> Result<()> {
        self.usable()?;
        for s in sessions {
            self.insert_session(&s.token_hash, &SessionRecord::new(&s.record))?;
        }
        self.durable(()).await
    }
}

#[async_trait]
impl FailureStore for SledStore {
    async fn append(&self, record: &FailureRecord, user_key: &str, max_records: Option<u64>) -> Result<Appended> {
        self.usable()?;
        let (key, dropped) = self.append_failure(record, user_key, max_records)?;
        let at = cursor_of(&key)?;
        self.durable(Appended { at, dropped }).await
    }

    async fn set_count(&self, at: &Cursor, count: u64) -> Result<()> {
        self.usable()?;
        self.set_failure_count(&failure_key(at), count)?;
        self.durable(()).await
    }

    async fn query(&self, q: &FailureQuery) -> Result<Vec<(Cursor, FailureRecord)>> {
        self.usable()?;
        let q = q.clone();
        self.blocking(move |s| s.failures(&q)?.into_iter().map(|(k, r)| Ok((cursor_of(&k)?, r))).collect()).await
    }

    async fn purge_before(&self, cutoff: u64) -> Result<usize> {
        self.usable()?;
        let n = self.blocking(move |s| s.purge_failures_before(cutoff)).await?;
        self.durable(n).await
    }

    async fn count(&self) -> Result<u64> {
        self.usable()?;
        Ok(self.failure_count() as u64)
    }

    async fn enforce_cap(&self, max_records: Option<u64>) -> Result<Capped> {
        self.usable()?;
        let capped = self.blocking(move |s| s.count_failures(max_records)).await?;
        self.durable(capped).await
    }

    async fn export(&self, after: Option<Cursor>, limit: usize) -> Result<Vec<(Cursor, FailureRecord)>> {
        self.usable()?;
        self.blocking(move |s| {
            let range = match after {
                Some(a) => {
                    s.failures.range((std::ops::Bound::Excluded(a.to_bytes().to_vec()), std::ops::Bound::Unbounded))
                }
                None => s.failures.iter(),
            };
            range
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((cursor_of(&k)?, decode(&v)?))
                })
                .collect()
        })
        .await
    }

    async fn import(&self, records: &[FailureRecord]) -> Result<()> {
        self.usable()?;
        let records = records.to_vec();
        // Appended in order: each gets a larger sled id, so records of one millisecond keep
        // their order. No cap: the copy moves what the source kept.
        self.blocking(move |s| {
            for r in &records {
                s.append_failure(r, &crate::domain::normalise_key(&r.username), None)?;
            }
            Ok(())
        })
        .await?;
        self.durable(()).await
    }
}

impl SledStore {
    // ----- second factors -----

    fn factor_record(&self, user_key: &str) -> Result<FactorRecord> {
        Ok(self.factors.get(user_key)?.map(|v| decode(&v)).transpose()?.unwrap_or_default())
    }

    /// Changes the user's factor record atomically: `change` sees the stored record (or the
    /// default) and says whether it changed it; returns that answer. A record that cannot be
    /// decoded is left as it is and reported as corrupt.
    fn update_factors(&self, user_key: &str, mut change: impl FnMut(&mut FactorRecord) -> bool) -> Result<bool> {
        let mut changed = false;
        let mut corrupt = None;
        self.factors.fetch_and_update(user_key, |old| {
            (changed, corrupt) = (false, None);
            let mut record: FactorRecord = match old.map(serde_json::from_slice).transpose() {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    corrupt = Some(e.to_string());
                    return old.map(<[u8]>::to_vec);
                }
            };
            changed = change(&mut record);
            if !changed {
                return old.map(<[u8]>::to_vec);
            }
            serde_json::to_vec(&record).ok().or_else(|| old.map(<[u8]>::to_vec))
        })?;
        match corrupt {
            Some(e) => Err(StoreError::Corrupt(e)),
            None => Ok(changed),
        }
    }

    fn user_exists(&self, user_key: &str) -> Result<bool> {
        Ok(self.users.contains_key(user_key)?)
    }
}

#[async_trait]
impl FactorStore for SledStore {
    async fn summary(&self, user_key: &str) -> Result<FactorSummary> {
        self.usable()?;
        let passkeys = self.passkey_count(user_key)?;
        Ok(FactorSummary { passkeys, ..self.factor_record(user_key)?.summary() })
    }

    async fn summary_with_generation(&self, user_key: &str) -> Result<(FactorSummary, Option<u64>)> {
        self.usable()?;
        let generation = self.user(user_key)?.map(|u| u.password_changed_at);
        Ok((self.summary(user_key).await?, generation))
    }

    async fn totp(&self, user_key: &str) -> Result<Option<TotpFactor>> {
        self.usable()?;
        Ok(self.factor_record(user_key)?.totp.map(|t| TotpFactor { sealed_secret: t.sealed, created_at: t.created_at }))
    }

    async fn any_totp(&self) -> Result<Option<(String, TotpFactor)>> {
        self.usable()?;
        self.blocking(|s| {
            for kv in s.factors.iter() {
                let (k, v) = kv?;
                let Ok(record) = decode::<FactorRecord>(&v) else { continue };
                if let Some(t) = record.totp {
                    let user = String::from_utf8_lossy(&k).into_owned();
                    return Ok(Some((user, TotpFactor { sealed_secret: t.sealed, created_at: t.created_at })));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn set_totp(&self, user_key: &str, totp: &TotpFactor, replacing: Option<u64>) -> Result<bool> {
        self.usable()?;
        if !self.user_exists(user_key)? {
            return Ok(false);
        }
        let set = self.update_factors(user_key, |r| {
            if r.totp.as_ref().map(|t| t.created_at) != replacing {
                return false;
            }
            r.totp = Some(TotpRecord { sealed: totp.sealed_secret.clone(), created_at: totp.created_at });
            true
        })?;
        self.durable(set).await
    }

    async fn remove_totp(&self, user_key: &str, enrolled_at: Option<u64>) -> Result<bool> {
        self.usable()?;
        let removed = self.update_factors(user_key, |r| {
            let that_one = r.totp.as_ref().is_some_and(|t| enrolled_at.is_none_or(|at| t.created_at == at));
            that_one && r.totp.take().is_some()
        })?;
        self.durable(removed).await
    }

    async fn use_totp_step(&self, user_key: &str, step: u64) -> Result<bool> {
        self.usable()?;
        let fresh = self.update_factors(user_key, |r| {
            if r.last_totp_step.is_some_and(|last| last >= step) {
                return false;
            }
            r.last_totp_step = Some(step);
            true
        })?;
        self.durable(fresh).await
    }

    async fn recovery_codes(&self, user_key: &str) -> Result<Vec<[u8; 32]>> {
        self.usable()?;
        Ok(self.factor_record(user_key)?.recovery)
    }

    async fn add_wrong_code(&self, user_key: &str, run_began: u64) -> Result<u32> {
        self.usable()?;
        // Nothing to guess without a record: none is made for a count.
        if !self.factors.contains_key(user_key)? {
            return Ok(0);
        }
        let mut count = 0;
        self.update_factors(user_key, |r| {
            r.wrong_codes = if r.wrong_codes_run == run_began { r.wrong_codes.saturating_add(1) } else { 1 };
            r.wrong_codes_run = run_began;
            count = r.wrong_codes;
            true
        })?;
        self.durable(count).await
    }

    async fn wrong_codes(&self, user_key: &str, run_began: u64) -> Result<u32> {
        self.usable()?;
        let r = self.factor_record(user_key)?;
        Ok(if r.wrong_codes_run == run_began { r.wrong_codes } else { 0 })
    }

    async fn set_recovery_codes(
        &self,
        user_key: &str,
        hashes: &[[u8; 32]],
        replacing: Option<&[[u8; 32]]>,
    ) -> Result<bool> {
        self.usable()?;
        if !self.user_exists(user_key)? {
            return Ok(false);
        }
        let set = self.update_factors(user_key, |r| {
            let unchanged = replacing.is_none_or(|before| r.recovery == before);
            if unchanged {
                r.recovery = hashes.to_vec();
                r.used_recovery.clear();
            }
            unchanged
        })?;
        self.durable(set).await
    }

    async fn use_recovery_code(&self, user_key: &str, hash: &[u8; 32]) -> Result<RecoveryCodeUse> {
        self.usable()?;
        let mut used_before = false;
        let used = self.update_factors(user_key, |r| {
            used_before = r.used_recovery.contains(hash);
            let before = r.recovery.len();
            r.recovery.retain(|h| h != hash);
            let used = r.recovery.len() != before;
            if used {
                r.used_recovery.push(*hash);
            }
            used
        })?;
        let found = match (used, used_before) {
            (true, _) => RecoveryCodeUse::Used,
            (false, true) => RecoveryCodeUse::UsedBefore,
            (false, false) => RecoveryCodeUse::NotIssued,
        };
        self.durable(found).await
    }

    async fn clear(&self, user_key: &str) -> Result<FactorSummary> {
        self.usable()?;
        let old = self.factors.remove(user_key)?;
        let summary = match old {
            Some(v) => decode::<FactorRecord>(&v).map(|r| r.summary()).unwrap_or_default(),
            None => FactorSummary::default(),
        };
        self.durable(summary).await
    }

    async fn insert_pending(&self, token_hash: &TokenHash, p: &PendingSignIn) -> Result<()> {
        self.usable()?;
        let record = PendingRecord {
            user_key: p.user_key.clone(),
            password_changed_at: p.password_changed_at,
            created_at: p.created_at,
            expires_at: p.expires_at,
            next: p.next.clone(),
            captcha_solved: p.captcha_solved,
            codes_refused: p.codes_refused,
        };
        self.pending_sign_ins.insert(token_hash, encode(&record)?)?;
        self.durable(()).await
    }

    async fn pending(&self, token_hash: &TokenHash) -> Result<Option<PendingSignIn>> {
        self.usable()?;
        let Some(v) = self.pending_sign_ins.get(token_hash)? else { return Ok(None) };
        let r: PendingRecord = decode(&v)?;
        Ok(Some(PendingSignIn {
            user_key: r.user_key,
            password_changed_at: r.password_changed_at,
            created_at: r.created_at,
            expires_at: r.expires_at,
            next: r.next,
            captcha_solved: r.captcha_solved,
            codes_refused: r.codes_refused,
        }))
    }

    async fn take_pending(&self, token_hash: &TokenHash) -> Result<bool> {
        self.usable()?;
        let taken = self.pending_sign_ins.remove(token_hash)?.is_some();
        self.durable(taken).await
    }

    async fn take_pending_of(&self, user_key: &str, now: u64) -> Result<usize> {
        self.usable()?;
        let user_key = user_key.to_string();
        let live = self
            .blocking(move |s| {
                let mut live = 0;
                for kv in s.pending_sign_ins.iter() {
                    let (k, v) = kv?;
                    let Ok(record) = decode::<PendingRecord>(&v) else { continue };
                    if record.user_key == user_key && s.pending_sign_ins.remove(k)?.is_some() {
                        live += usize::from(record.expires_at >= now);
                    }
                }
                Ok(live)
            })
            .await?;
        self.durable(live).await
    }

    async fn purge_pending(&self, now: u64) -> Result<usize> {
        self.usable()?;
        // One that no longer reads is of no use either.
        self.remove_pending_where(move |r| r.is_none_or(|r| r.expires_at < now)).await
    }

    async fn count(&self) -> Result<u64> {
        self.usable()?;
        Ok(self.factors.len() as u64)
    }

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserFactors>> {
        self.usable()?;
        let after = after.map(|a| a.as_bytes().to_vec());
        self.blocking(move |s| {
            let range = match after {
                Some(a) => s.factors.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => s.factors.iter(),
            };
            range
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    let user_key = String::from_utf8(k.to_vec())
                        .map_err(|_| StoreError::Corrupt("a second-factor record's key".into()))?;
                    let r: FactorRecord = decode(&v)?;
                    Ok(UserFactors {
                        user_key,
                        totp: r.totp.map(|t| TotpFactor { sealed_secret: t.sealed, created_at: t.created_at }),
                        last_totp_step: r.last_totp_step,
                        recovery_hashes: r.recovery,
                        used_recovery_hashes: r.used_recovery,
                    })
                })
                .collect()
        })
        .await
    }

    async fn import(&self, factors: &[UserFactors]) -> Result<()> {
        self.usable()?;
        for f in factors {
            let record = FactorRecord {
                totp: f.totp.as_ref().map(|t| TotpRecord { sealed: t.sealed_secret.clone(), created_at: t.created_at }),
                last_totp_step: f.last_totp_step,
                recovery: f.recovery_hashes.clone(),
                used_recovery: f.used_recovery_hashes.clone(),
                // (A copy starts the wrong codes in a row again: they are no factor.)
                ..FactorRecord::default()
            };
            if self.factors.compare_and_swap(&f.user_key, None as Option<&[u8]>, Some(encode(&record)?))?.is_err() {
                return Err(StoreError::AlreadyExists);
            }
        }
        self.durable(()).await
    }
}

#[async_trait]
impl SecretStore for SledStore {
    async fn claim(&self, name: &str, value: &[u8; 32]) -> Result<[u8; 32]> {
        self.usable()?;
        let stored = self.claim_secret(name, value)?;
        self.durable(stored).await
    }

    async fn get(&self, name: &str) -> Result<Option<[u8; 32]>> {
        self.usable()?;
        let Some(v) = self.meta.get(format!("{SECRET_PREFIX}{name}"))? else { return Ok(None) };
        Ok(Some(v.as_ref().try_into().map_err(|_| StoreError::Corrupt(format!("secret {name}")))?))
    }

    async fn forget(&self, name: &str) -> Result<bool> {
        self.usable()?;
        let gone = self.meta.remove(format!("{SECRET_PREFIX}{name}"))?.is_some();
        self.durable(gone).await
    }

    async fn export(&self) -> Result<Vec<(String, [u8; 32])>> {
        self.usable()?;
        let mut out = Vec::new();
        for kv in self.meta.scan_prefix(SECRET_PREFIX) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[SECRET_PREFIX.len()..]).into_owned();
            let value = v.as_ref().try_into().map_err(|_| StoreError::Corrupt(format!("secret {name}")))?;
            out.push((name, value));
        }
        Ok(out)
    }

    async fn import(&self, secrets: &[(String, [u8; 32])]) -> Result<()> {
        self.usable()?;
        for (name, value) in secrets {
            let key = format!("{SECRET_PREFIX}{name}");
            if self.meta.compare_and_swap(&key, None as Option<&[u8]>, Some(&value[..]))?.is_err() {
                return Err(StoreError::AlreadyExists);
            }
        }
        self.durable(()).await
    }
}

/// The `meta` tree's prefix of server secrets: `secret:NAME` → 32 bytes.
const SECRET_PREFIX: &str = "secret:";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::FailureReason;
    use crate::store::conformance::failure;
    use crate::store::ensure_private_dir;

    fn user(key: &str) -> UserRecord {
        UserRecord {
            schema: SCHEMA_VERSION,
            key: key.into(),
            display_name: key.into(),
            password_hash: "$argon2id$...".into(),
            admin: false,
            created_at: 1,
            password_changed_at: 1,
            last_login_at: None,
            disabled: false,
            groups: Vec::new(),
        }
    }

    fn session(user_key: &str) -> SessionRecord {
        SessionRecord {
            schema: SCHEMA_VERSION,
            user_key: user_key.into(),
            created_at: 1,
            last_seen_at: 1,
            ip: "127.0.0.1".into(),
            user_agent: "t".into(),
            factors: 1,
            password_changed_at: 1,
            passkey: None,
        }
    }

    /// After a failed flush no call reaches sled (whose reads may spin then: review 135),
    /// the store is not ready, and `fatal_fault` says why, once, with the first error.
    #[tokio::test]
    async fn after_a_failed_flush_every_call_is_refused_and_the_fault_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        assert!(store.ready().await.is_ok());
        assert!(store.users.list().await.is_ok());
        let engine = SledStore::open(tempfile::tempdir().unwrap().path()).unwrap();
        engine.fault.set("No space left on device");
        engine.fault.set("a later error");
        for refused in [
            engine.usable().err(),
            UserStore::list(&engine).await.err(),
            SessionStore::count(&engine).await.err(),
            FailureStore::count(&engine).await.err(),
        ] {
            let e = refused.expect("refused");
            assert!(e.is_unavailable() && e.to_string().contains("No space left on device"), "{e}");
        }
        let mut fault = engine.fatal_fault();
        assert_eq!(fault.borrow_and_update().as_deref(), Some("No space left on device"));

        // Through the handle the server holds: not ready, and the stop is asked for.
        let faulty =
            crate::store::Store { sled_fault: Some(engine.fatal_fault()), ..crate::store::Store::from_engine(engine) };
        let e = faulty.ready().await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let said = tokio::time::timeout(std::time::Duration::from_secs(5), faulty.fatal_fault()).await.unwrap();
        assert_eq!(said, "No space left on device");
        // A healthy store never asks.
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), store.fatal_fault()).await;
        assert!(quiet.is_err());
    }

    #[test]
    fn a_user_record_from_before_the_disabled_flag_reads_as_enabled_and_the_flag_is_set_in_place() {
        let old = r#"{"schema":1,"key":"alice","display_name":"Alice","password_hash":"h","admin":false,"created_at":1,"password_changed_at":1,"last_login_at":null}"#;
        let user: UserRecord = serde_json::from_str(old).unwrap();
        assert!(!user.disabled);
        assert!(user.groups.is_empty(), "a record from before groups is in none");
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_user(&user).unwrap();
        assert!(store.set_user_disabled("alice", true).unwrap().unwrap().disabled);
        // A login checked against the same hash meanwhile records nothing and says disabled.
        let verified = Credential { user: user.user(), password_hash: "h".into() };
        let seen = store.login_cas(&verified, None, Some(5)).unwrap().unwrap();
        assert!(seen.disabled && seen.last_login_at.is_none());
        assert!(store.set_user_disabled("nobody", true).unwrap().is_none());
    }

    /// [`SledStore::open`] once the store in `dir` dropped before is released: sled lets go
    /// of its lock file when its background flusher drops the last handle, a thread that is
    /// not ours to join (a loaded machine saw `Locked` at once).
    fn reopen(dir: &Path) -> Result<SledStore, StoreError> {
        for _ in 0..500 {
            match SledStore::open(dir) {
                Err(StoreError::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
                other => return other,
            }
        }
        SledStore::open(dir)
    }

    #[test]
    fn sessions_from_before_generations_get_their_users_generation_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.insert_user(&UserRecord { password_changed_at: 7, ..user("alice") }).unwrap();
            let old = r#"{"schema":1,"user_key":"alice","created_at":5,"last_seen_at":6,"ip":"127.0.0.1","user_agent":"t","factors":1}"#;
            store.sessions.insert([1u8; 32], old.as_bytes()).unwrap();
            store.sessions.insert([2u8; 32], &b"not json"[..]).unwrap();
            store.meta.remove(GENERATIONS_FILLED).unwrap(); // as a store written before it
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path()).expect("an unreadable session does not stop the store");
        assert_eq!(store.session(&[1u8; 32]).unwrap().unwrap().password_changed_at, 7);
        assert_eq!(store.sessions.get([2u8; 32]).unwrap().unwrap(), &b"not json"[..]);
        assert!(store.meta.get(GENERATIONS_FILLED).unwrap().is_some());
    }

    #[test]
    fn an_unreadable_user_record_is_reported_and_kept_not_deleted_by_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.users.insert("alice", &b"not json"[..]).unwrap();
        assert!(matches!(store.set_user_disabled("alice", true), Err(StoreError::Corrupt(_))));
        let verified = Credential { user: crate::store::conformance::user("alice"), password_hash: "h".into() };
        assert!(matches!(store.login_cas(&verified, None, Some(5)), Err(StoreError::Corrupt(_))));
        assert_eq!(store.users.get("alice").unwrap().unwrap(), &b"not json"[..]);
    }

    #[tokio::test]
    async fn an_unreadable_session_fails_the_user_listing_instead_of_counting_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_user(&user("alice")).unwrap();
        // An index entry from before times were indexed (no value), whose record is not JSON.
        store.user_sessions.insert(index_key("alice", &[1; 32]), &[]).unwrap();
        store.sessions.insert([1; 32], &b"not json"[..]).unwrap();
        let cap = SessionCap { max_per_user: 1, idle_ms: 1000, absolute_ms: 1000 };
        let listed = store.list_with_sessions(cap, 1).await;
        assert!(matches!(listed, Err(StoreError::Corrupt(_))), "{listed:?}");
    }

    #[test]
    fn session_times_come_from_the_index_or_from_the_record_for_older_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut newer = session("alice");
        newer.created_at = 5;
        newer.last_seen_at = 7;
        store.insert_session(&[1; 32], &newer).unwrap();
        store.insert_session(&[2; 32], &session("alice")).unwrap();
        // An index entry as stores before times were indexed wrote it: no value.
        store.user_sessions.insert(index_key("alice", &[2; 32]), &[]).unwrap();
        store.touch_session(&[1; 32], 9).unwrap();
        let mut times = store.user_session_times("alice").unwrap();
        times.sort_by_key(|t| t.token_hash);
        assert_eq!(
            times,
            [
                SessionTimes { token_hash: [1; 32], created_at: 5, last_seen_at: 9 },
                SessionTimes { token_hash: [2; 32], created_at: 1, last_seen_at: 1 },
            ]
        );
        // Ending a session drops its entry; touching it afterwards does not bring it back.
        store.delete_session(&[1; 32]).unwrap();
        store.touch_session(&[1; 32], 11).unwrap();
        assert_eq!(store.user_session_times("alice").unwrap().len(), 1);
    }

    /// The sled side of the conformance suite: a temporary directory per store.
    #[derive(Default)]
    struct SledHarness {
        dirs: Vec<tempfile::TempDir>,
    }

    #[async_trait]
    impl crate::store::conformance::Harness for SledHarness {
        async fn fresh(&mut self) -> crate::store::Store {
            self.dirs.push(tempfile::tempdir().unwrap());
            crate::store::Store::open(self.dirs[self.dirs.len() - 1].path()).unwrap()
        }

        async fn reopen(&mut self, store: crate::store::Store) -> crate::store::Store {
            drop(store);
            // sled releases its lock file once its background flusher has let go of the last
            // handle; that thread is not ours to join, so wait for the lock to be free.
            let dir = self.dirs[self.dirs.len() - 1].path();
            for _ in 0..500 {
                match crate::store::Store::open(dir) {
                    Err(StoreError::Locked(_)) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    other => return other.unwrap(),
                }
            }
            panic!("the store was never released");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_sled_engine_passes_the_store_conformance_suite() {
        crate::store::conformance::run(&mut SledHarness::default()).await;
    }

    #[tokio::test]
    async fn the_purge_keeps_a_stamp_exactly_as_far_ahead_as_the_skew_allows_and_no_further() {
        // The exact boundary (the conformance suite's check keeps a margin: PostgreSQL's clock
        // moves while it runs). This process's clock is the only one here.
        use crate::store::conformance::session;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let skew = crate::store::CLOCK_SKEW_MS;
        store.sessions.insert(&[1; 32], &session("a", 10_000, 10_000 + skew)).await.unwrap();
        store.sessions.insert(&[2; 32], &session("a", 10_000, 10_000 + skew + 1)).await.unwrap();
        assert_eq!(store.sessions.purge_expired(3_600_000, 86_400_000, 10_000).await.unwrap(), 1);
        assert!(store.sessions.get(&[1; 32]).await.unwrap().is_some());
    }

    /// Copies a store's files as they are on disk now: what a process killed at this moment
    /// would leave behind.
    fn snapshot(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::create_dir_all(to.join(path.file_name().unwrap())).unwrap();
                snapshot(&path, &to.join(path.file_name().unwrap()));
            } else {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn every_write_is_on_disk_when_it_returns_without_a_flush_by_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        store.users.insert(&crate::store::conformance::user("alice"), "h").await.unwrap();
        store.sessions.insert(&[7; 32], &crate::store::conformance::session("alice", 1, 1)).await.unwrap();
        let record = failure(5, "192.0.2.1", "alice", FailureReason::Csrf);
        store.failures.append(&record, "alice", None).await.unwrap();
        store.users.set_disabled("alice", true).await.unwrap();
        // Taken at once, while the store is open: sled's own periodic flush has not run.
        let copy = tempfile::tempdir().unwrap();
        snapshot(dir.path(), copy.path());
        let reopened = crate::store::Store::open(copy.path()).unwrap();
        assert!(reopened.users.get("alice").await.unwrap().unwrap().disabled);
        assert!(reopened.sessions.get(&[7; 32]).await.unwrap().is_some());
        assert_eq!(reopened.failures.count().await.unwrap(), 1);
    }

    #[test]
    fn a_store_held_elsewhere_is_reported_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        assert!(matches!(SledStore::open(dir.path()), Err(StoreError::Locked(_))));
    }

    #[test]
    fn users_are_unique_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_user(&user("alice")).unwrap();
        assert!(matches!(store.insert_user(&user("alice")), Err(StoreError::AlreadyExists)));
        assert_eq!(store.user("alice").unwrap().unwrap().key, "alice");
        assert!(store.delete_user("alice").unwrap());
        assert!(store.user("alice").unwrap().is_none());
    }

    #[test]
    fn ending_a_users_sessions_keeps_the_one_asked_for_and_others_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_session(&[1; 32], &session("alice")).unwrap();
        store.insert_session(&[2; 32], &session("alice")).unwrap();
        store.insert_session(&[3; 32], &session("bob")).unwrap();
        assert_eq!(store.delete_user_sessions("alice", Some(&[2; 32])).unwrap(), 1);
        assert!(store.session(&[1; 32]).unwrap().is_none());
        assert!(store.session(&[2; 32]).unwrap().is_some());
        assert!(store.session(&[3; 32]).unwrap().is_some());
        assert_eq!(store.user_sessions("alice").unwrap().len(), 1);
        assert_eq!(store.purge_sessions(|s| s.user_key == "bob").unwrap(), 1);
        assert_eq!(store.session_count(), 1);
    }

    #[test]
    fn a_failure_record_written_before_typed_existed_still_reads() {
        let old = br#"{"time":5,"ip":"192.0.2.1","username":"  alice","reason":"bad_password","user_agent":"ua"}"#;
        let record: FailureRecord = decode(old).unwrap();
        assert_eq!((record.username.as_str(), record.typed.as_deref()), ("  alice", None));
        // And a record without `typed` is written without it, as before.
        assert!(!String::from_utf8(encode(&record).unwrap()).unwrap().contains("typed"));
    }

    #[test]
    fn failure_records_come_back_newest_first_by_range_user_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for i in 0..10u64 {
            let user = if i % 2 == 0 { "Alice" } else { "bob" };
            let ip = if i < 5 { "192.0.2.1" } else { "198.51.100.7" };
            store
                .append_failure(&failure(1000 + i, ip, user, FailureReason::BadPassword), &user.to_lowercase(), None)
                .unwrap();
        }
        let all = store.failures(&FailureQuery::default()).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].1.time, 1009);
        let q = FailureQuery { since: Some(1003), until: Some(1006), ..Default::default() };
        let times: Vec<u64> = store.failures(&q).unwrap().iter().map(|r| r.1.time).collect();
        assert_eq!(times, vec![1006, 1005, 1004, 1003]);
        let q = FailureQuery { user_key: Some("alice".into()), ..Default::default() };
        assert_eq!(store.failures(&q).unwrap().len(), 5);
        let q = FailureQuery { ip: Some("198.51.100.0/24".parse().unwrap()), ..Default::default() };
        assert_eq!(store.failures(&q).unwrap().len(), 5);
        let q = FailureQuery {
            ip: Some("192.0.2.1/32".parse().unwrap()),
            user_key: Some("bob".into()),
            ..Default::default()
        };
        assert_eq!(store.failures(&q).unwrap().iter().map(|r| r.1.time).collect::<Vec<_>>(), vec![1003, 1001]);
        // Keyset pages.
        let page1 = store.failures(&FailureQuery { limit: 4, ..Default::default() }).unwrap();
        let page2 = store
            .failures(&FailureQuery { limit: 4, before: cursor_of(&page1[3].0).ok(), ..Default::default() })
            .unwrap();
        assert_eq!(page2[0].1.time, 1005);
        assert_eq!(store.purge_failures_before(1005).unwrap(), 5);
        assert_eq!(
            store.failures(&FailureQuery { user_key: Some("alice".into()), ..Default::default() }).unwrap().len(),
            2
        );
    }

    #[test]
    fn past_the_cap_the_oldest_failure_records_go_with_their_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // Before the count, nothing is dropped; the count itself trims to the cap.
        for i in 0..5u64 {
            store
                .append_failure(&failure(1000 + i, "192.0.2.1", "alice", FailureReason::Csrf), "alice", Some(3))
                .unwrap();
        }
        assert_eq!(store.failure_count(), 5);
        assert_eq!(store.count_failures(Some(3)).unwrap().kept, 3);
        for i in 5..10u64 {
            store
                .append_failure(&failure(1000 + i, "192.0.2.1", "alice", FailureReason::Csrf), "alice", Some(3))
                .unwrap();
        }
        let times: Vec<u64> = store.failures(&FailureQuery::default()).unwrap().iter().map(|r| r.1.time).collect();
        assert_eq!(times, vec![1009, 1008, 1007]);
        assert_eq!(store.failures_by_user.len(), 3);
        assert_eq!(store.failures_by_ip.len(), 3);
        assert_eq!(store.purge_failures_before(1008).unwrap(), 1);
        assert_eq!(store.failure_total.load(Ordering::SeqCst), 2);
    }

    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| if e.path().is_dir() { dir_bytes(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
            .sum()
    }

    #[tokio::test]
    async fn the_cap_bounds_the_store_on_disk_not_only_its_record_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.count_failures(Some(500)).unwrap();
        let mut record = failure(0, "192.0.2.1", "", FailureReason::BadPassword);
        record.user_agent = "a".repeat(256);
        let mut sizes = Vec::new();
        for round in 0..6u64 {
            for i in 0..1500u64 {
                record.time = round * 10_000 + i;
                record.username = format!("{}{i}", "u".repeat(250));
                store.append_failure(&record, &record.username, Some(500)).unwrap();
            }
            store.flush().await.unwrap();
            sizes.push(dir_bytes(dir.path()));
        }
        assert_eq!(store.failure_count(), 500);
        eprintln!("store size after each 1500 appends, 500 kept: {sizes:?}");
        // 9,000 records of ~800 bytes (plus their index entries) are ~11 MB; the 500 kept ~1 MB.
        assert!(sizes[5] < 2 * sizes[1].max(4 << 20), "{sizes:?}");
    }

    /// Review 178: one long name of four-byte characters refused again and again (each a
    /// `captcha_required` record of its own) made 78 KB of store per kept record, growing
    /// under churn: the user index's inner nodes held whole 1 KiB keys and went to blob files.
    #[tokio::test]
    async fn a_flood_of_one_long_name_keeps_the_store_near_the_size_of_what_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.count_failures(Some(500)).unwrap();
        let tag = "\u{e0041}".repeat(256);
        let mut record = failure(0, "192.0.2.1", &tag, FailureReason::CaptchaRequired);
        record.user_agent = tag.clone();
        record.typed = Some(format!(" {}", &tag[..tag.len() - 4]));
        let mut sizes = Vec::new();
        for round in 0..6u64 {
            for i in 0..1500u64 {
                record.time = round * 10_000 + i;
                record.ip = format!("198.51.{}.{}", i >> 8, i & 255);
                store.append_failure(&record, &tag, Some(500)).unwrap();
            }
            store.flush().await.unwrap();
            sizes.push(dir_bytes(dir.path()));
        }
        eprintln!("store size after each 1500 appends, 500 kept: {sizes:?}");
        // 500 records of about 3.2 KB and their index entries: about 2 MB kept, in two or three
        // of sled's 4 MiB segments, as its flusher timed them (a loaded CI run had three, 62
        // bytes past 12 MiB); whole keys in the index took 19 MB after the sixth round, growing.
        assert!(sizes.iter().all(|s| *s < 16 << 20), "{sizes:?}");
        let mine = FailureQuery { user_key: Some(tag.clone()), ..Default::default() };
        assert_eq!(store.failures(&mine).unwrap().len(), 500);
    }

    #[test]
    fn a_user_index_of_whole_keys_is_rekeyed_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for (i, user) in ["alice", "bob", "alice"].iter().enumerate() {
                let (key, _) = store
                    .append_failure(
                        &failure(1000 + i as u64, "192.0.2.1", user, FailureReason::BadPassword),
                        user,
                        None,
                    )
                    .unwrap();
                // As a store written before the digests.
                store.failures_by_user.remove(secondary_key(&user_index_prefix(user), &key)).unwrap();
                store.failures_by_user.insert(secondary_key(user.as_bytes(), &key), &[]).unwrap();
            }
            store.meta.remove(USER_INDEX_DIGESTS).unwrap();
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.failures_by_user.len(), 3);
        let of = |user: &str| FailureQuery { user_key: Some(user.into()), ..Default::default() };
        assert_eq!(store.failures(&of("alice")).unwrap().len(), 2);
        assert_eq!(store.failures(&of("bob")).unwrap().len(), 1);
    }

    #[test]
    fn a_failure_record_from_before_counting_reads_as_one_attempt_and_its_count_can_be_set() {
        let old = r#"{"time":5,"ip":"192.0.2.1","username":"alice","reason":"csrf","user_agent":"ua"}"#;
        let record: FailureRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.count, 1);
        // A count of one is not written, so records stay as they were.
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (key, _) = store.append_failure(&record, "alice", None).unwrap();
        store.set_failure_count(&key, 42).unwrap();
        assert_eq!(store.failures(&FailureQuery::default()).unwrap()[0].1.count, 42);
    }

    #[test]
    fn an_existing_directory_and_our_files_in_it_are_made_private_and_symlinks_and_others_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("blobs")).unwrap();
        std::fs::write(data.join("db"), b"x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"y").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        for (p, m) in [(&data, 0o755), (&data.join("blobs"), 0o775), (&data.join("db"), 0o644), (&outside, 0o644)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::fs::write(data.join("blobs/1"), b"z").unwrap();
        std::fs::write(data.join("notes.txt"), b"z").unwrap();
        for p in [data.join("blobs/1"), data.join("notes.txt")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::os::unix::fs::symlink(&outside, data.join("db.link")).unwrap();
        ensure_private_dir(&data, |n| is_store_file(n) || n == "link").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("blobs")), 0o700);
        assert_eq!(mode(&data.join("blobs/1")), 0o600);
        assert_eq!(mode(&data.join("db")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a symlink's target is not ours to change");
        // Not a file of ours: left alone (the directory's 0700 closes it to others).
        assert_eq!(mode(&data.join("notes.txt")), 0o644);
    }

    /// A store whose files are damaged says so and what to do, not sled's words alone
    /// (review 157).
    #[test]
    fn a_damaged_store_is_named_so_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.append_failure(&failure(5, "192.0.2.1", "alice", FailureReason::Csrf), "alice", None).unwrap();
        drop(store);
        // A snapshot sled cannot read (its log's damage sled mostly takes for a torn tail).
        std::fs::write(dir.path().join("snap.0000000000001000"), [0xA5; 100]).unwrap();
        let e = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("its files are damaged") && e.contains("restore it from a backup"), "{e}");
    }

    /// A store that lost what it held (review 182: `db` cut short with the snapshot gone opened
    /// empty, and the server made a new administrator as at a first start) is refused when
    /// the factor key beside it shows it had been used; a store with its metadata, or a new
    /// one, opens.
    #[test]
    fn a_store_emptied_beside_its_factor_key_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join(crate::factors::key::KEY_FILE), "00").unwrap();
        drop(reopen(dir.path()).expect("used before, whole"));
        // What is left when sled's files lose their contents: a store without its metadata.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "db" || name == "conf" || name.starts_with("snap.") {
                std::fs::remove_file(&path).unwrap();
            }
        }
        drop(::sled::Config::new().path(dir.path()).open().unwrap());
        let e = reopen(dir.path()).err().expect("opened as if new").to_string();
        assert!(e.contains("its files are damaged") && e.contains("restore it from a backup"), "{e}");
        // Without the key it is taken for a new store, as at a first start.
        std::fs::remove_file(dir.path().join(crate::factors::key::KEY_FILE)).unwrap();
        drop(reopen(dir.path()).expect("a new store"));
    }

    #[test]
    fn a_file_or_a_link_to_one_named_as_a_directory_is_refused_with_its_mode_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        std::fs::write(&file, b"root:x:0:0").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("logs");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        for named in [&file, &link] {
            let err = ensure_private_dir(named, |_| true).unwrap_err();
            assert!(err.to_string().contains("is not a directory"), "{err}");
        }
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn the_secret_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.claim_secret("csrf", &[1; 32]).unwrap(), [1; 32]);
        assert_eq!(store.claim_secret("csrf", &[2; 32]).unwrap(), [1; 32], "the first claim stays");
    }
}
