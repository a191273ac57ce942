//! Server-side sessions: 256-bit random tokens kept by the browser, only their SHA-256 kept
//! in the store; idle and absolute timeouts enforced here, on every request.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::store::{now_ms, Factors, Session, SessionCap, Store, StoreError, StoredSession, TokenHash, User};

/// The session cookie. `__Host-` makes browsers refuse it unless it is Secure, has Path=/
/// and no Domain, so a sibling subdomain cannot plant or overwrite it.
pub const SESSION_COOKIE: &str = "__Host-portcullis";

/// Most sessions one user may have at once; signing in beyond it ends the least recently
/// used one.
pub const MAX_SESSIONS_PER_USER: usize = 64;

/// How long after signing in (or confirming the password again) a session may add or remove
/// a second factor without being asked for the password: 10 minutes. A session stolen later
/// than that cannot bind the thief's own authenticator, or remove the owner's (OWASP ASVS
/// 4.0 §3.7.1, re-authentication before sensitive changes; NIST SP 800-63B §6.1.2.1, binding
/// an authenticator needs a fresh authentication).
pub const RECENT_AUTHENTICATION: Duration = Duration::from_secs(10 * 60);

/// A session token as the browser holds it. Never stored server-side, never logged.
pub struct SessionToken([u8; 32]);

impl SessionToken {
    /// 256 bits from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`StoreError::Random`] when the random source fails.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        crate::random::fill(&mut bytes)?;
        Ok(SessionToken(bytes))
    }

    /// Parses a cookie value; anything that is not exactly 32 bytes of base64url is no token.
    pub fn parse(cookie: &str) -> Option<Self> {
        decode_exact(cookie).map(SessionToken)
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// What the store keys the session by.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

impl Drop for SessionToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// How a page names one of the user's sessions so that the user can end it
/// ([`Sessions::end_listed`]): 16 bytes of SHA-256 over a fixed label and the session's token
/// hash, 22 characters of base64url in a form. It reveals neither the token nor the hash the
/// store keys the session by, so a page copied or cached elsewhere ends nothing by itself (the
/// form also needs the session's CSRF token), and it names the same session on every instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionHandle([u8; 16]);

impl SessionHandle {
    /// The handle of the session stored under `token_hash`.
    pub fn of(token_hash: &TokenHash) -> Self {
        let digest = Sha256::new().chain_update(b"portcullis session handle\0").chain_update(token_hash).finalize();
        let mut handle = [0u8; 16];
        handle.copy_from_slice(&digest[..16]);
        SessionHandle(handle)
    }

    /// Parses a form's value; anything but exactly 16 bytes of base64url is no handle.
    pub fn parse(text: &str) -> Option<Self> {
        decode_exact(text).map(SessionHandle)
    }

    /// The form's value (22 characters of base64url).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// What of a session's client differs from the one it signed in from ([`ClientChanges`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientChange {
    /// Another address, the same browser string (a phone between networks, often).
    Address,
    /// Another browser string: a copied cookie, most likely (browsers change theirs at an
    /// update, rarely within a session's 12 hours).
    Browser,
    AddressAndBrowser,
}

impl ClientChange {
    /// The log's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientChange::Address => "address",
            ClientChange::Browser => "browser",
            ClientChange::AddressAndBrowser => "address and browser",
        }
    }
}

/// Most clients noted per session ([`ClientChanges`], 8): past it, a thief changing its browser
/// string at every request writes no more lines.
const MOST_CLIENTS_NOTED: usize = 8;

/// Most sessions [`ClientChanges`] remembers, the oldest forgotten first: 10,000 sessions of at
/// most `MOST_CLIENTS_NOTED` (8) 16-byte digests each, about 2 MB at worst.
const MOST_SESSIONS_NOTED: usize = 10_000;

/// Notes a session used from an address or a browser other than the ones it signed in from,
/// once per session and client on this instance, so the log shows a copied cookie's use
/// (review 214: a thief who only read pages or used gated applications left no trace, and the
/// owner's list showed the sign-in's address). A use from the sign-in's own client is not
/// noted; neither is anything past `MOST_CLIENTS_NOTED` (8) clients of one session.
#[derive(Default)]
pub struct ClientChanges {
    seen: std::sync::Mutex<Noted>,
}

#[derive(Default)]
struct Noted {
    clients: std::collections::HashMap<SessionHandle, Vec<[u8; 16]>>,
    order: std::collections::VecDeque<SessionHandle>,
}

impl ClientChanges {
    /// What differs between `session`'s sign-in and the client `ip`, `user_agent` using it now,
    /// the first time this pair is seen here, and whether it is the last client of the session
    /// noted (the 8th, `MOST_CLIENTS_NOTED`: the line says so, review 216); `None` when nothing
    /// differs or it was noted.
    pub fn note(
        &self,
        session: &ActiveSession,
        ip: std::net::IpAddr,
        user_agent: &str,
    ) -> Option<(ClientChange, bool)> {
        let user_agent: String = user_agent.chars().take(200).collect();
        let ip = ip.to_string();
        let change = match (ip != session.record.ip, user_agent != session.record.user_agent) {
            (false, false) => return None,
            (true, false) => ClientChange::Address,
            (false, true) => ClientChange::Browser,
            (true, true) => ClientChange::AddressAndBrowser,
        };
        let digest = Sha256::new().chain_update(ip.as_bytes()).chain_update([0]).chain_update(user_agent.as_bytes());
        let mut client = [0u8; 16];
        client.copy_from_slice(&digest.finalize()[..16]);
        let handle = SessionHandle::of(&session.token_hash);
        // A poisoned lock only means a panic elsewhere mid-note: the set is still a set.
        let mut noted = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Noted { clients, order } = &mut *noted;
        let known = clients.entry(handle).or_insert_with(|| {
            order.push_back(handle);
            Vec::new()
        });
        if known.contains(&client) || known.len() >= MOST_CLIENTS_NOTED {
            return None;
        }
        known.push(client);
        let last = known.len() == MOST_CLIENTS_NOTED;
        while order.len() > MOST_SESSIONS_NOTED {
            if let Some(oldest) = order.pop_front() {
                clients.remove(&oldest);
            }
        }
        Some((change, last))
    }
}

/// Why one chosen session was not ended ([`Sessions::end_listed`]).
#[derive(Debug, thiserror::Error)]
pub enum EndOneError {
    /// The handle names the session that asked: signing out is for that (`POST /logout`).
    #[error("the session asked to end itself")]
    ThisSession,
    /// The store could not list or remove it: it is still signed in.
    #[error("the session could not be ended: {0}")]
    Store(#[from] StoreError),
}

/// Exactly `N` bytes from unpadded base64url text of exactly their length (43 characters for
/// 32 bytes, 22 for 16): a longer text is refused before it is decoded.
fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

/// A session that is valid now, with its user.
#[derive(Clone, Debug)]
pub struct ActiveSession {
    pub token_hash: TokenHash,
    pub record: Session,
    pub user: User,
    /// When this browser last typed the password again for this session (Unix ms), as the
    /// web layer read it from its signed cookie (`routes::account::confirm`); `None` here.
    pub confirmed_at: Option<u64>,
}

impl ActiveSession {
    /// Whether the session proved who it is within [`RECENT_AUTHENTICATION`] of `now_ms`
    /// (Unix milliseconds): its sign-in (the session's start) or its last confirmation of the
    /// password ([`ActiveSession::confirmed_at`], which a password change also sets).
    /// A proof stamped further ahead of `now_ms` than [`crate::store::CLOCK_SKEW_MS`] (a clock
    /// stepped back) is not recent: the window is not stretched by the step.
    pub fn authenticated_recently(&self, now_ms: u64) -> bool {
        // Each proof on its own: one stamped ahead must not hide the other.
        let recent = |at: u64| {
            !crate::store::is_ahead_of(at, now_ms)
                && now_ms.saturating_sub(at) <= RECENT_AUTHENTICATION.as_millis() as u64
        };
        recent(self.record.created_at) || self.confirmed_at.is_some_and(recent)
    }
}

/// Why no session was started ([`Sessions::create_in_place_of`], [`Sessions::renew`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not write it (nothing of it happened then, or the previous session
    /// alone ended), or the random source failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The passkey the session was signed in with was removed meanwhile: the removal ends the
    /// sessions it signed in, and this one, stored after it looked, ended itself.
    #[error("the passkey this session was signed in with was removed")]
    PasskeyRemoved,
    /// The session that was to go on under a new token ([`Sessions::renew`]) was ended
    /// meanwhile (a sign-out while its password was changed): nothing was stored.
    #[error("this session was signed out meanwhile")]
    SignedOut,
}

/// What a new session's token takes the place of ([`Sessions::start`]).
#[derive(Clone, Copy)]
enum Previous<'a> {
    /// A sign-in: the browser's session before it, whoever's, if any, is removed (session
    /// fixation, OWASP ASVS 3.2.1).
    Replaced(Option<&'a TokenHash>),
    /// A session going on under a new token: only while this one is still stored.
    Continued(&'a TokenHash),
}

/// Why *sign out everywhere else* did not finish ([`Sessions::end_others`]).
#[derive(Debug, thiserror::Error)]
pub enum EndOthersError {
    /// No session was ended (pending second steps may have been): the others are still
    /// signed in.
    #[error("the other sessions could not be ended: {0}")]
    NothingEnded(#[source] StoreError),
    /// The other sessions ended (`sessions` of them, and `pending` sign-ins), but this
    /// browser's new token could not be written, or its passkey was removed meanwhile: this
    /// session is over with them.
    #[error("the other sessions ended, and this one with them: {error}")]
    ThisEndedToo {
        /// The handles of the sessions that ended.
        sessions: Vec<SessionHandle>,
        pending: usize,
        #[source]
        error: StartError,
    },
    /// Something else began a new credential generation first (the same click sent twice, a
    /// password change), or the user is gone: this session is already over, and this request
    /// ended nothing.
    #[error("the session was ended meanwhile")]
    Superseded,
}

/// What a sign-in proved, as its session keeps it: how many factors, and the passkey used if
/// one was (its credential id, raw bytes), whose removal then ends the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignedInWith {
    pub factors: Factors,
    pub passkey_id: Option<Vec<u8>>,
}

impl From<Factors> for SignedInWith {
    fn from(factors: Factors) -> Self {
        SignedInWith { factors, passkey_id: None }
    }
}

/// Creates, resolves and ends sessions.
#[derive(Clone)]
pub struct Sessions {
    store: Store,
    idle: Duration,
    absolute: Duration,
}

/// Most links followed between a session's tokens (a password change and then *sign out
/// everywhere else* within a minute make two).
const MOST_LINKS: usize = 4;

impl Sessions {
    pub fn new(store: Store, idle: Duration, absolute: Duration) -> Self {
        Sessions { store, idle, absolute }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// Starts a session for `user` (as read when the sign-in checked it: its credential
    /// generation is the session's), signed in with `factors`, and returns the token for the
    /// cookie.
    pub async fn create(
        &self,
        user: &User,
        factors: Factors,
        ip: std::net::IpAddr,
        user_agent: &str,
    ) -> Result<SessionToken, StartError> {
        self.create_in_place_of(None, user, factors.into(), ip, user_agent).await
    }

    /// As [`Sessions::create`], ending `previous` (the browser's session before a sign-in,
    /// whoever's: session fixation, OWASP ASVS 3.2.1) in the same durable step.
    ///
    /// Keeps at most [`MAX_SESSIONS_PER_USER`] sessions per user, ending the least recently
    /// used (expired ones first), so one account's state, and its home page, stay small; safe
    /// when sign-ins race ([`crate::store::SessionStore::start`]).
    ///
    /// A session signed in with a passkey is made only while the passkey is there: asked once
    /// the session is stored, so of a removal ([`crate::passkeys::Passkeys::remove`] removes the
    /// passkey, then its sessions) and this, one always sees the other.
    ///
    /// # Errors
    /// [`StartError::Store`] when the store cannot write (nothing of it happened then, or the
    /// previous session alone ended) or the random source fails;
    /// [`StartError::PasskeyRemoved`].
    pub async fn create_in_place_of(
        &self,
        previous: Option<&TokenHash>,
        user: &User,
        with: SignedInWith,
        ip: std::net::IpAddr,
        user_agent: &str,
    ) -> Result<SessionToken, StartError> {
        self.start(Previous::Replaced(previous), user, with, None, ip, user_agent).await
    }

    /// A new token for a session that goes on from `continued` into a new credential
    /// generation (a password change, *sign out everywhere else*), which ends every session of
    /// the old one: `changed` is the user as the change left it. `continued`'s record is
    /// removed. Same factors, passkey and start, so its absolute timeout still counts from the sign-in
    /// (OWASP ASVS 4.0 §3.3.1), and the same sign-in address and browser, so the list still
    /// shows where it signed in and a copied cookie that renews it is still seen as another
    /// client (review 216: the thief's became the record's); only the token and generation are
    /// new. `ip` and `user_agent` stand in only for a stored address that does not parse.
    ///
    /// # Errors
    /// As [`Sessions::create_in_place_of`], and [`StartError::SignedOut`] when `continued` was
    /// ended meanwhile (a sign-out racing the change wins: review 129 kept a session signed
    /// out during its password change alive under the change's new token).
    pub async fn renew(
        &self,
        continued: &ActiveSession,
        changed: &User,
        ip: std::net::IpAddr,
        user_agent: &str,
    ) -> Result<SessionToken, StartError> {
        let record = &continued.record;
        debug_assert_eq!(record.user_key, changed.key);
        let with = SignedInWith { factors: record.factors, passkey_id: record.passkey_id.clone() };
        let previous = Previous::Continued(&continued.token_hash);
        let (ip, user_agent) = match record.ip.parse() {
            Ok(signed_in_from) => (signed_in_from, record.user_agent.as_str()),
            Err(_) => (ip, user_agent),
        };
        self.start(previous, changed, with, Some(record.created_at), ip, user_agent).await
    }

    /// Moves `current` into the user's new credential generation as `changed` has it, under
    /// the same token (same start, factors and passkey): for a change that ends the other
    /// sessions and sign-ins in flight but gives this one no new privilege, so its token, and
    /// the form tokens bound to it, stay good (the first second factor: a second window's
    /// form and a double click's twin still work). Only while `current` is stored.
    ///
    /// # Errors
    /// As [`Sessions::renew`].
    pub async fn restamp(&self, current: &ActiveSession, changed: &User) -> Result<(), StartError> {
        let now = now_ms();
        let record =
            Session { password_changed_at: changed.password_changed_at, last_seen_at: now, ..current.record.clone() };
        let hash = &current.token_hash;
        if !self.store.sessions.continue_session(hash, hash, &record, self.cap(), now).await? {
            return Err(self.why_ended(&changed.key, &record).await?);
        }
        if let Some(id) = &record.passkey_id {
            if !self.store.passkeys.holds(&changed.key, id).await? {
                self.store.sessions.delete(hash).await?;
                return Err(StartError::PasskeyRemoved);
            }
        }
        Ok(())
    }

    /// Why a session that was to go on was found ended: the removal of its passkey (which
    /// says so), else a sign-out.
    async fn why_ended(&self, user_key: &str, record: &Session) -> Result<StartError, StoreError> {
        if let Some(id) = &record.passkey_id {
            if !self.store.passkeys.holds(user_key, id).await? {
                return Ok(StartError::PasskeyRemoved);
            }
        }
        Ok(StartError::SignedOut)
    }

    async fn start(
        &self,
        previous: Previous<'_>,
        user: &User,
        with: SignedInWith,
        started_at: Option<u64>,
        ip: std::net::IpAddr,
        user_agent: &str,
    ) -> Result<SessionToken, StartError> {
        let token = SessionToken::generate()?;
        let now = now_ms();
        let record = Session {
            user_key: user.key.clone(),
            created_at: started_at.unwrap_or(now),
            last_seen_at: now,
            ip: ip.to_string(),
            user_agent: user_agent.chars().take(200).collect(),
            factors: with.factors,
            password_changed_at: user.password_changed_at,
            passkey_id: with.passkey_id,
        };
        match previous {
            Previous::Replaced(previous) => {
                self.store.sessions.start(previous, &token.hash(), &record, self.cap(), now).await?;
            }
            Previous::Continued(previous) => {
                let sessions = &self.store.sessions;
                if !sessions.continue_session(previous, &token.hash(), &record, self.cap(), now).await? {
                    return Err(self.why_ended(&user.key, &record).await?);
                }
            }
        }
        if let Some(id) = &record.passkey_id {
            let held = self.store.passkeys.holds(&user.key, id).await;
            if !matches!(held, Ok(true)) {
                self.discard(&token).await;
                return Err(held.err().map_or(StartError::PasskeyRemoved, StartError::Store));
            }
        }
        Ok(token)
    }

    /// Ends a session just stored that will not be answered with; a failure is reported, not
    /// returned (the caller fails either way).
    pub async fn discard(&self, token: &SessionToken) {
        if let Err(e) = self.end(&token.hash()).await {
            let what = "could not end a session made but not answered with";
            crate::fault_log::report(what, crate::fault_log::Severity::Error, e.is_unavailable(), &e);
        }
    }

    /// The per-user cap with this service's timeouts.
    fn cap(&self) -> SessionCap {
        SessionCap {
            max_per_user: MAX_SESSIONS_PER_USER,
            idle_ms: self.idle.as_millis() as u64,
            absolute_ms: self.absolute.as_millis() as u64,
        }
    }

    /// Whether a record has passed either timeout at `now`.
    pub fn is_expired(&self, record: &Session, now: u64) -> bool {
        self.has_expired(record.created_at, record.last_seen_at, now)
    }

    fn has_expired(&self, created_at: u64, last_seen_at: u64, now: u64) -> bool {
        self.cap().has_expired(created_at, last_seen_at, now)
    }

    /// Looks up the session for a cookie value. Expired sessions (and sessions of deleted or
    /// disabled users) are removed and yield `None`. Activity is recorded at a coarse grain so
    /// a page view does not always write. One store read ([`crate::store::SessionStore::resolve`]:
    /// one statement on PostgreSQL), plus a write now and then.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot read the session or its user, or cannot remove a
    /// session found over: the caller fails closed (503), never answers "signed out".
    pub async fn resolve(&self, cookie: &str) -> Result<Option<ActiveSession>, StoreError> {
        Ok(self.lookup(cookie, false).await?.map(|(session, _)| session))
    }

    /// [`Sessions::resolve`], with the user's sessions that are still valid, newest first (what
    /// [`Sessions::list`] gives), from the same single store read: a page that shows them (the
    /// home page, `/account`) costs one statement on PostgreSQL instead of three.
    ///
    /// # Errors
    /// As [`Sessions::resolve`].
    pub async fn resolve_listing(
        &self,
        cookie: &str,
    ) -> Result<Option<(ActiveSession, Vec<StoredSession>)>, StoreError> {
        self.lookup(cookie, true).await
    }

    /// The session for `cookie` and, with `listing`, the user's valid sessions, newest first
    /// (empty without).
    async fn lookup(
        &self,
        cookie: &str,
        listing: bool,
    ) -> Result<Option<(ActiveSession, Vec<StoredSession>)>, StoreError> {
        let Some(token) = SessionToken::parse(cookie) else { return Ok(None) };
        let token_hash = token.hash();
        let Some(found) = self.store.sessions.resolve(&token_hash, listing).await? else { return Ok(None) };
        let record = found.session;
        let now = now_ms();
        if self.is_expired(&record, now) {
            let newest = record.created_at.max(record.last_seen_at);
            if crate::store::is_ahead_of(newest, now) {
                // This clock stepped back, or another instance's runs ahead (`is_expired`
                // counts such a stamp as expired: kept, the session would revive once the clock
                // caught up, its timeouts stretched by the step, and a sign-out meanwhile would
                // end nothing). The operator is told: an instance whose clock runs behind signs
                // users out until its clock is put right.
                let ahead = format!("{} s ahead", (newest - now) / 1000);
                let what = "a session stamped ahead of this clock was ended: check the clocks (NTP)";
                crate::fault_log::report(what, crate::fault_log::Severity::Warn, false, &ahead);
            }
            self.store.sessions.delete(&token_hash).await?;
            return Ok(None);
        }
        let generation = record.password_changed_at;
        let Some(user) = found.user.filter(|u| !u.disabled) else {
            // Deleted or disabled: each ends the sessions too, but a sign-in that was being
            // checked at that moment may have started one just after.
            self.store.sessions.delete(&token_hash).await?;
            return Ok(None);
        };
        if user.password_changed_at != generation {
            // Of another credential generation (a password change, a factor reset, *sign out
            // everywhere else* since): over, but its record is left for the change that may be
            // going on from it ([`Sessions::renew`] goes on only from a stored record, so that
            // a sign-out meanwhile wins); the change's own sweep or the timeouts remove it. A
            // double click of *sign out everywhere else* otherwise removed it under the winner.
            return Ok(None);
        }
        let mut user_sessions = self.valid_newest_first(found.user_sessions, generation, now);
        let grain = (self.idle.as_millis() as u64 / 20).clamp(1, 30_000);
        if now.saturating_sub(record.last_seen_at) >= grain {
            // Best effort: a full disk must not sign everyone out. Not recording the activity
            // can only make the idle timeout come sooner, never later.
            match self.store.sessions.touch(&token_hash, now).await {
                // The list was read before the touch: show this session as a list read after
                // it would (as the page did when it listed separately).
                Ok(()) => {
                    for s in user_sessions.iter_mut().filter(|s| s.token_hash == token_hash) {
                        s.record.last_seen_at = s.record.last_seen_at.max(now);
                    }
                }
                Err(e) => crate::fault_log::report(
                    "could not record session activity",
                    crate::fault_log::Severity::Warn,
                    e.is_unavailable(),
                    &e,
                ),
            }
        }
        Ok(Some((ActiveSession { token_hash, record, user, confirmed_at: None }, user_sessions)))
    }

    /// Ends one session, durably.
    pub async fn end(&self, token_hash: &TokenHash) -> Result<bool, StoreError> {
        self.store.sessions.delete(token_hash).await
    }

    /// Ends the session stored under `token_hash`, if any, and with `follow`, those it went on
    /// as in the last [`crate::store::SUCCESSOR_MS`] (a password change and then *sign out
    /// everywhere else*: a few links at most), durably: for a sign-out with a token a change in
    /// another tab has just replaced. Returns the users (stored spelling) and token hashes of
    /// the sessions that ended by a link, for the log.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot read or write them.
    pub async fn end_with_successors(
        &self,
        token_hash: &TokenHash,
        follow: bool,
    ) -> Result<Vec<(String, TokenHash)>, StoreError> {
        let now = now_ms();
        self.end(token_hash).await?;
        let mut ended = Vec::new();
        let mut hash = *token_hash;
        for _ in 0..MOST_LINKS {
            if !follow {
                break;
            }
            let Some(next) = self.store.sessions.successor(&hash, now).await? else { break };
            if let Some(session) = self.store.sessions.get(&next).await? {
                if self.end(&next).await? {
                    let user = self.store.users.get(&session.user_key).await?;
                    ended.push((user.map_or(session.user_key, |u| u.display_name), next));
                }
            }
            hash = next;
        }
        Ok(ended)
    }

    /// Whether `is_its_page` holds for a token the session stored under `token_hash` went on
    /// from in the last [`crate::store::SUCCESSOR_MS`] (a few links at most): whether a form
    /// came from another tab's page shown before this browser's password change or *sign out
    /// everywhere else*, which the tab sends with the new cookie (review 179).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot read the links.
    pub async fn went_on_from(
        &self,
        token_hash: &TokenHash,
        is_its_page: impl Fn(&TokenHash) -> bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut hash = *token_hash;
        for _ in 0..MOST_LINKS {
            let Some(previous) = self.store.sessions.predecessor(&hash, now).await? else { break };
            if is_its_page(&previous) {
                return Ok(true);
            }
            hash = previous;
        }
        Ok(false)
    }

    /// [`Sessions::end_all`], returning the handles of the sessions stored for the user just
    /// before (whatever their generation), for the log line that names them (review 218); how
    /// many ended is the count of the store's removal.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot list or remove them.
    pub async fn end_all_named(
        &self,
        user_key: &str,
        keep: Option<&TokenHash>,
    ) -> Result<(usize, Vec<SessionHandle>), StoreError> {
        let stored = self.store.sessions.list_for_user(user_key).await?;
        let handles =
            stored.iter().filter(|s| Some(&s.token_hash) != keep).map(|s| SessionHandle::of(&s.token_hash)).collect();
        Ok((self.end_all(user_key, keep).await?, handles))
    }

    /// Ends all of a user's sessions except `keep`, durably; returns how many ended.
    pub async fn end_all(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize, StoreError> {
        self.store.sessions.delete_for_user(user_key, keep).await
    }

    /// *Sign out everywhere else*: ends the user's pending second-step sign-ins, then begins a
    /// new credential generation ([`crate::store::UserStore::renew_generation`]) from
    /// `current`'s, which ends every session of the old one, and moves `current` onto it under
    /// a new token (same start and factors, as [`Sessions::renew`]). The generation is what
    /// also ends a sign-in whose password was being checked at that instant: its check was made
    /// under the old one, so it records no sign-in, and a session or pending sign-in stored by
    /// a step that read the user before is over when it is stored. A second step begun
    /// elsewhere with the password ends too, so whoever holds the password but not yet the
    /// factor must start again (and the user hears that one was waiting). The generation moves
    /// on only from `current`'s, so of two clicks sent at once one wins and the other ends
    /// nothing (the winner's new token is not one of the "others").
    ///
    /// Returns the browser's new token and what ended: `(token, sessions, pending)`, the
    /// sessions' handles as the user's page listed them (valid ones other than `current`), and
    /// how many pending sign-ins.
    ///
    /// # Errors
    /// [`EndOthersError::NothingEnded`] when the list, the pending sign-ins or the new
    /// generation could not be read or written (pending sign-ins go first, so a failure leaves
    /// every session as it was); [`EndOthersError::ThisEndedToo`] when this browser's new token
    /// could not be written: it must sign in again (failing closed);
    /// [`EndOthersError::Superseded`] when another change of generation came first.
    pub async fn end_others(
        &self,
        current: &ActiveSession,
        ip: std::net::IpAddr,
        user_agent: &str,
    ) -> Result<(SessionToken, Vec<SessionHandle>, usize), EndOthersError> {
        let user = &current.user;
        let listed = self.list(user).await.map_err(EndOthersError::NothingEnded)?;
        let sessions: Vec<SessionHandle> = listed
            .iter()
            .filter(|s| s.token_hash != current.token_hash)
            .map(|s| SessionHandle::of(&s.token_hash))
            .collect();
        let pending = self
            .store
            .factors
            .take_pending_of(&user.key, crate::store::now_ms())
            .await
            .map_err(EndOthersError::NothingEnded)?;
        // Also none once the passkey this session was signed in with is removed: its removal
        // ended this session, which must not end the others after it.
        let from = Some(crate::store::Holding::of(&current.record));
        let changed = match self.store.users.renew_generation(&user.key, now_ms(), from).await {
            Ok(Some(changed)) => changed,
            Ok(None) => return Err(EndOthersError::Superseded),
            Err(e) => return Err(EndOthersError::NothingEnded(e)),
        };
        // Over already, with the old generation: removed now rather than when next seen.
        if let Err(e) = self.end_all(&user.key, Some(&current.token_hash)).await {
            crate::fault_log::report(
                "could not remove the sessions of an ended generation (they are over all the same)",
                crate::fault_log::Severity::Warn,
                e.is_unavailable(),
                &e,
            );
        }
        match self.renew(current, &changed, ip, user_agent).await {
            Ok(token) => Ok((token, sessions, pending)),
            Err(error) => Err(EndOthersError::ThisEndedToo { sessions, pending, error }),
        }
    }

    /// Ends the one session of `current`'s user that `handle` names (from the user's list,
    /// [`Sessions::list`]: never another user's, never an expired one), durably, on every
    /// instance at once (the store is their one truth). Returns it as it was stored, or `None`
    /// when the user has no such session now (ended already: by its own sign-out, a timeout,
    /// or this same request sent twice). OWASP ASVS 4.0 §3.3.4: users can view and end any of
    /// their sessions.
    ///
    /// # Errors
    /// [`EndOneError::ThisSession`] when `handle` is `current`'s own (nothing ended);
    /// [`EndOneError::Store`] when the store cannot list or remove it (nothing ended).
    pub async fn end_listed(
        &self,
        current: &ActiveSession,
        handle: &SessionHandle,
    ) -> Result<Option<StoredSession>, EndOneError> {
        if SessionHandle::of(&current.token_hash) == *handle {
            return Err(EndOneError::ThisSession);
        }
        Ok(self.end_of(&current.user, handle).await?)
    }

    /// Ends the session of `user`'s list ([`Sessions::list`]) that `handle` names, durably:
    /// for the user ([`Sessions::end_listed`]) or an administrator (`user sessions NAME
    /// --end`). Returns it as it was stored, or `None` when the user has no such session now.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot list or remove it (nothing ended).
    pub async fn end_of(&self, user: &User, handle: &SessionHandle) -> Result<Option<StoredSession>, StoreError> {
        let listed = self.list(user).await?;
        let Some(chosen) = listed.into_iter().find(|s| SessionHandle::of(&s.token_hash) == *handle) else {
            return Ok(None);
        };
        Ok(self.end(&chosen.token_hash).await?.then_some(chosen))
    }

    /// The user's sessions that are still valid, newest first.
    pub async fn list(&self, user: &User) -> Result<Vec<StoredSession>, StoreError> {
        let sessions = self.store.sessions.list_for_user(&user.key).await?;
        Ok(self.valid_newest_first(sessions, user.password_changed_at, now_ms()))
    }

    /// Every user with their count of sessions still valid now (by [`Sessions::list`]'s
    /// rule), read at once: one statement on PostgreSQL, however many users.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot read them: never a count of 0 instead.
    pub async fn users_with_valid_counts(&self) -> Result<Vec<(crate::store::User, usize)>, StoreError> {
        self.store.users.list_with_sessions(self.cap(), now_ms()).await
    }

    /// The one rule for a session list a user sees ([`Sessions::list`],
    /// [`Sessions::resolve_listing`]): those of the user's credential generation `generation`
    /// still valid at `now` (Unix ms), newest first.
    fn valid_newest_first(&self, sessions: Vec<StoredSession>, generation: u64, now: u64) -> Vec<StoredSession> {
        let valid = |s: &StoredSession| s.record.password_changed_at == generation && !self.is_expired(&s.record, now);
        let mut sessions: Vec<_> = sessions.into_iter().filter(valid).collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.record.created_at));
        sessions
    }

    /// Removes expired sessions so the store does not grow forever.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let (idle, absolute) = (self.idle.as_millis() as u64, self.absolute.as_millis() as u64);
        self.store.sessions.purge_expired(idle, absolute, now_ms()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_round_trips_reveals_no_part_of_the_hash_and_junk_is_no_handle() {
        let hash = SessionToken::generate().unwrap().hash();
        let handle = SessionHandle::of(&hash);
        let text = handle.encode();
        assert_eq!(text.len(), 22);
        assert_eq!(SessionHandle::parse(&text), Some(handle));
        assert_ne!(&URL_SAFE_NO_PAD.decode(&text).unwrap()[..], &hash[..16]);
        assert_ne!(SessionHandle::of(&SessionToken::generate().unwrap().hash()), handle);
        for junk in ["", "AAAA", &format!("{text}A"), &text[..21], "!!!!!!!!!!!!!!!!!!!!!!"] {
            assert_eq!(SessionHandle::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn tokens_round_trip_and_junk_is_no_token() {
        let t = SessionToken::generate().unwrap();
        let encoded = t.encode();
        assert_eq!(encoded.len(), 43);
        assert_eq!(SessionToken::parse(&encoded).unwrap().hash(), t.hash());
        assert!(SessionToken::parse("").is_none());
        assert!(SessionToken::parse(&"A".repeat(44)).is_none());
        assert!(SessionToken::parse(&"!".repeat(43)).is_none());
        assert_ne!(SessionToken::generate().unwrap().encode(), encoded);
    }

    /// A fresh store (alive as long as the returned directory) and sessions on it.
    fn open_sessions() -> (tempfile::TempDir, Store, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sessions = Sessions::new(store.clone(), Duration::from_secs(600), Duration::from_secs(3600));
        (dir, store, sessions)
    }

    /// The user the tests' sessions are for (stored or not, as each test needs).
    fn alice() -> User {
        crate::store::conformance::user("alice")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn signing_in_past_the_limit_ends_the_least_recently_used_session() {
        let (_dir, store, sessions) = open_sessions();
        let ip = "127.0.0.1".parse().unwrap();
        let first = sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut later = Vec::new();
        for _ in 0..MAX_SESSIONS_PER_USER {
            later.push(sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap());
        }
        assert_eq!(sessions.list(&alice()).await.unwrap().len(), MAX_SESSIONS_PER_USER);
        assert!(store.sessions.get(&first.hash()).await.unwrap().is_none(), "the oldest went");
        assert!(store.sessions.get(&later[0].hash()).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simultaneous_sign_ins_at_the_limit_end_only_as_many_sessions_as_needed() {
        let (_dir, store, sessions) = open_sessions();
        let ip = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_SESSIONS_PER_USER - 8 {
            sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(24));
        let handles: Vec<_> = (0..24)
            .map(|_| {
                let (sessions, barrier) = (sessions.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap()
                })
            })
            .collect();
        let mut new: Vec<SessionToken> = Vec::new();
        for h in handles {
            new.push(h.await.unwrap());
        }
        assert_eq!(sessions.list(&alice()).await.unwrap().len(), MAX_SESSIONS_PER_USER);
        let mut kept = 0;
        for t in &new {
            kept += usize::from(store.sessions.get(&t.hash()).await.unwrap().is_some());
        }
        assert_eq!(kept, 24, "the older sessions go first, never one just handed out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_session_in_use_outlives_newer_idle_ones_at_the_limit() {
        let (_dir, store, sessions) = open_sessions();
        let ip = "127.0.0.1".parse().unwrap();
        let first = sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut later = vec![sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap()];
        tokio::time::sleep(Duration::from_millis(5)).await;
        for _ in 2..MAX_SESSIONS_PER_USER {
            later.push(sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap());
        }
        // The oldest session is used again: the index entry must learn it, not just the record.
        store.sessions.touch(&first.hash(), now_ms() + 1000).await.unwrap();
        sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        assert!(store.sessions.get(&first.hash()).await.unwrap().is_some(), "the session in use stays");
        assert!(store.sessions.get(&later[0].hash()).await.unwrap().is_none(), "the least recently used went");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_session_of_a_disabled_user_does_not_resolve_and_is_removed() {
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&crate::store::conformance::user("alice"), "$argon2id$...").await.unwrap();
        // As if a sign-in checked just before `user disable` started a session just after it.
        let token = sessions.create(&alice(), Factors::One, "127.0.0.1".parse().unwrap(), "ua").await.unwrap();
        assert!(sessions.resolve(&token.encode()).await.unwrap().is_some());
        store.users.set_disabled("alice", true).await.unwrap();
        assert!(sessions.resolve(&token.encode()).await.unwrap().is_none());
        assert!(store.sessions.get(&token.hash()).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_session_begun_under_an_older_password_does_not_resolve_and_is_not_listed() {
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&alice(), "$argon2id$...").await.unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let current = sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        // A password change (generation 1 → 2) ends every session; then a sign-in whose
        // password was checked before the change stores its session (the racing order).
        let changed = store.users.set_password_hash("alice", "$argon2id$new", 2, None).await.unwrap().unwrap();
        assert_eq!(sessions.end_all("alice", None).await.unwrap(), 1);
        let late = sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        let renewed = sessions.create(&changed, Factors::One, ip, "ua").await.unwrap();
        assert!(sessions.list(&changed).await.unwrap().iter().all(|s| s.token_hash != late.hash()));
        let (_, listed) = sessions.resolve_listing(&renewed.encode()).await.unwrap().unwrap();
        assert_eq!(listed.len(), 1, "only the session of the new password is listed");
        assert!(sessions.resolve(&late.encode()).await.unwrap().is_none());
        // Its record is left when seen (a change may be going on from it: `renew`); the next
        // change's sweep or its timeouts remove it.
        assert!(store.sessions.get(&late.hash()).await.unwrap().is_some(), "left when seen");
        assert_eq!(sessions.end_all("alice", Some(&renewed.hash())).await.unwrap(), 1);
        assert!(sessions.resolve(&current.encode()).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn signing_out_everywhere_else_ends_what_a_sign_in_checked_just_before_it_stores_just_after() {
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&alice(), "$argon2id$...").await.unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let here = sessions.create(&alice(), Factors::Two, ip, "ua").await.unwrap();
        let elsewhere = sessions.create(&alice(), Factors::One, ip, "ua").await.unwrap();
        let current = sessions.resolve(&here.encode()).await.unwrap().unwrap();
        // A sign-in elsewhere has read the user and is checking the password at the click.
        let checking = store.users.credential("alice").await.unwrap().unwrap();
        let (token, ended, pending) = sessions.end_others(&current, ip, "ua").await.unwrap();
        assert_eq!((ended, pending), (vec![SessionHandle::of(&elsewhere.hash())], 0));
        assert!(sessions.resolve(&elsewhere.encode()).await.unwrap().is_none());
        assert!(sessions.resolve(&here.encode()).await.unwrap().is_none(), "this browser's old token is over");
        assert!(store.sessions.get(&here.hash()).await.unwrap().is_none(), "and removed");
        let went_on = sessions.resolve(&token.encode()).await.unwrap().expect("this browser goes on");
        assert_eq!(
            (went_on.record.created_at, went_on.record.factors),
            (current.record.created_at, Factors::Two),
            "same start and factors"
        );
        // The check finishes: it records no sign-in, and a session stored by a step that read
        // the user before the click is over.
        assert_eq!(store.users.record_login(&checking, None, Some(now_ms())).await.unwrap(), None);
        let late = sessions.create(&checking.user, Factors::One, ip, "ua").await.unwrap();
        assert!(sessions.resolve(&late.encode()).await.unwrap().is_none());
        let listed = sessions.list(&went_on.user).await.unwrap();
        assert_eq!(listed.len(), 1, "only this browser is listed");
    }

    /// A session stored directly under a fresh token, with the given times.
    async fn stored(store: &Store, user_key: &str, created_at: u64, last_seen_at: u64) -> SessionToken {
        let token = SessionToken::generate().unwrap();
        let record = crate::store::conformance::session(user_key, created_at, last_seen_at);
        store.sessions.insert(&token.hash(), &record).await.unwrap();
        token
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_list_read_with_the_session_is_the_list_sessions_gives() {
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&crate::store::conformance::user("alice"), "$argon2id$...").await.unwrap();
        let now = now_ms();
        let current = stored(&store, "alice", now - 5_000, now - 1_000).await;
        stored(&store, "alice", now - 9_000, now - 2_000).await;
        stored(&store, "alice", now - 1_000, now - 1_000).await;
        stored(&store, "alice", now - 7_200_000, now - 1_000).await; // past the absolute timeout
        stored(&store, "alice", now - 900_000, now - 900_000).await; // idle too long
        stored(&store, "bob", now - 1_000, now - 1_000).await;
        let (active, listed) = sessions.resolve_listing(&current.encode()).await.unwrap().expect("signed in");
        assert_eq!(active.user.key, "alice");
        assert_eq!(listed, sessions.list(&alice()).await.unwrap(), "the same filter and order as Sessions::list");
        let created: Vec<u64> = listed.iter().map(|s| now - s.record.created_at).collect();
        assert_eq!(created, [1_000, 5_000, 9_000], "valid ones, newest first, alice's only");
        assert!(sessions.resolve(&current.encode()).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_listed_session_touched_by_its_own_request_shows_as_seen_now() {
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&crate::store::conformance::user("alice"), "$argon2id$...").await.unwrap();
        let before = now_ms();
        // Last seen a minute ago: past the 30 s grain of a 600 s idle timeout, so it is touched.
        let current = stored(&store, "alice", before - 120_000, before - 60_000).await;
        let (_, listed) = sessions.resolve_listing(&current.encode()).await.unwrap().expect("signed in");
        assert!(listed[0].record.last_seen_at >= before, "the page shows this request's activity");
        assert_eq!(listed, sessions.list(&alice()).await.unwrap(), "as a list read after the touch says");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_listing_resolve_ends_expired_sessions_and_those_of_deleted_users() {
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&crate::store::conformance::user("alice"), "$argon2id$...").await.unwrap();
        let now = now_ms();
        let idle = stored(&store, "alice", now - 900_000, now - 900_000).await;
        assert!(sessions.resolve_listing(&idle.encode()).await.unwrap().is_none());
        assert!(store.sessions.get(&idle.hash()).await.unwrap().is_none(), "an expired session is removed");
        let orphan = stored(&store, "carol", now - 1_000, now - 1_000).await;
        assert!(sessions.resolve_listing(&orphan.encode()).await.unwrap().is_none());
        assert!(sessions.resolve(&orphan.encode()).await.unwrap().is_none());
        assert!(store.sessions.get(&orphan.hash()).await.unwrap().is_none(), "a deleted user's session is removed");
        assert!(sessions.resolve_listing(&SessionToken::generate().unwrap().encode()).await.unwrap().is_none());
        assert!(sessions.resolve_listing("not a token").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn both_timeouts_expire_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let sessions =
            Sessions::new(Store::open(dir.path()).unwrap(), Duration::from_secs(60), Duration::from_secs(3600));
        let r = |created: u64, seen: u64| Session {
            user_key: "a".into(),
            created_at: created,
            last_seen_at: seen,
            ip: String::new(),
            user_agent: String::new(),
            factors: Factors::One,
            password_changed_at: 1,
            passkey_id: None,
        };
        let now = 10_000_000;
        assert!(!sessions.is_expired(&r(now - 1000, now - 1000), now));
        assert!(sessions.is_expired(&r(now - 1000, now - 61_000), now));
        assert!(sessions.is_expired(&r(now - 3_601_000, now - 1000), now));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_session_stamped_ahead_of_the_clock_by_more_than_the_skew_is_expired_and_not_recent() {
        // The clock stepped back by an hour (an NTP step, a restored snapshot): a session made
        // before the step must not live its timeouts plus the hour.
        let (_dir, store, sessions) = open_sessions();
        store.users.insert(&crate::store::conformance::user("alice"), "$argon2id$...").await.unwrap();
        let now = now_ms();
        let skew = crate::store::CLOCK_SKEW_MS;
        let near = stored(&store, "alice", now + skew / 2, now + skew / 2).await;
        let resolved = sessions.resolve(&near.encode()).await.unwrap().expect("within the skew: valid");
        assert!(resolved.authenticated_recently(now_ms()));
        let stepped = stored(&store, "alice", now - 1000, now + 3_600_000).await;
        assert!(sessions.resolve(&stepped.encode()).await.unwrap().is_none(), "seen an hour ahead: refused");
        let made_ahead = stored(&store, "alice", now + 3_600_000, now).await;
        assert!(sessions.resolve(&made_ahead.encode()).await.unwrap().is_none(), "made an hour ahead: refused");
        // Ended, not kept to revive with its timeouts stretched once the clock catches up
        // (a review: a sign-out meanwhile ended nothing).
        assert!(store.sessions.get(&stepped.hash()).await.unwrap().is_none());
        let mut old = resolved.clone();
        old.record.created_at = now - 3_600_000;
        old.confirmed_at = Some(now + 3_600_000);
        assert!(!old.authenticated_recently(now), "a proof an hour ahead is not recent");
        old.record.created_at = now - 1000;
        assert!(old.authenticated_recently(now), "nor does it hide a sign-in that is");
    }
}
