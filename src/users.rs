//! Managing users: the operations behind `portcullis user ...`, whether the CLI runs them on
//! the store directly or asks a running server through the admin socket.

use serde::{Deserialize, Serialize};

use crate::audit::{rfc3339, Audit, AuthEvent};
use crate::brute_force::StateError;
use crate::domain::{Group, Username, UsernameError, ADMINS_GROUP};
use crate::password::{HashPool, Password, PasswordPolicy, PolicyError, PoolError, WeakPassword};
use crate::random::RandomError;
use crate::session::Sessions;
use crate::store::{now_ms, FactorSummary, Store, StoreError, StoredSession, User};
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid username: {0}")]
    InvalidUsername(#[from] UsernameError),
    #[error("no user named {}", crate::text::quoted_name(.0))]
    UnknownUser(String),
    #[error("a user named {} already exists", crate::text::quoted_name(.0))]
    AlreadyExists(String),
    #[error("the username looks like that of the existing user {}", crate::text::quoted_name(.0))]
    LooksLike(String),
    #[error("weak password: {0}")]
    WeakPassword(#[from] WeakPassword),
    #[error("the password check stopped unexpectedly")]
    PolicyCheck,
    /// `admins` is given by the administrator flag alone (SPEC.md, "Gating other
    /// applications"): listed by hand it would reach applications as `Remote-Groups: admins`
    /// for someone portcullis does not treat as an administrator.
    #[error(
        "the admins group cannot be listed: it follows the administrator flag (portcullis user admin NAME --grant)"
    )]
    ReservedGroup,
    /// `user sessions NAME --end X`: the user has no session of that handle now (review 216: it
    /// exited 0, as if done).
    #[error("{user} has no session {handle}: it has ended already, or is not theirs (portcullis user sessions {user} lists them)")]
    SessionGone { user: String, handle: String },
    /// `user sessions NAME --end X`: X is not a session's handle as the listing shows one.
    #[error("{} is not a session as `portcullis user sessions NAME` lists them (22 characters)", crate::text::quoted(.0))]
    NoSuchSession(String),
    /// `user groups NAME --add G --remove G`: which one was meant cannot be known.
    #[error("the group {} is both added and removed: give it once", crate::text::quoted(.0))]
    AddedAndRemoved(String),
    /// The user's credential generation moved on after the change was asked for under it (a
    /// `user passwd`, a reset of factors, a disable or *sign out everywhere else* meanwhile):
    /// nothing changed.
    #[error("the account changed meanwhile: nothing was changed")]
    Superseded,
    /// `user factors NAME --remove-passkey P`: the user has no passkey named P.
    #[error("{} has no passkey named {} ({} lists them)", crate::text::quoted_name(.user), crate::text::quoted(.passkey), factors_command(.user))]
    NoSuchPasskey { user: String, passkey: String },
    /// `user factors NAME --remove-passkey P`: several of the user's passkeys are named P
    /// (stored before names had to differ): which one is meant cannot be known.
    #[error("{count} passkeys of {} are named {}: the user can rename one on /account, or portcullis user reset-factors removes them all", crate::text::quoted_name(.user), crate::text::quoted(.passkey))]
    SamePasskeyName { user: String, passkey: String, count: usize },
    /// The passkey was removed, but the sessions it signed in could not be ended.
    #[error("the passkey is removed, but the sessions it signed in could not be ended: {0}")]
    PasskeySessionsNotEnded(StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] PoolError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Refuses a listing of `admins` by hand: only the administrator flag gives that group.
///
/// # Errors
/// [`UserError::ReservedGroup`] when `groups` lists `admins`.
pub fn refuse_reserved(groups: &[Group]) -> Result<(), UserError> {
    match groups.iter().any(|g| g.as_str() == ADMINS_GROUP) {
        true => Err(UserError::ReservedGroup),
        false => Ok(()),
    }
}

/// What [`UserAdmin::set_password`] did.
#[derive(Debug)]
pub struct PasswordSet {
    /// The user as the change left it.
    pub user: User,
    /// How many of the user's sessions ended.
    pub sessions_ended: usize,
    /// How many of the user's sign-ins waiting for their second step ended (the new password
    /// voids them anyway; counted so that the answer says what went).
    pub pending_ended: usize,
}

/// A user as `user list` shows it: never the hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserSummary {
    pub username: String,
    pub admin: bool,
    pub created_at: String,
    pub last_login_at: Option<String>,
    pub active_sessions: usize,
    #[serde(default)]
    pub disabled: bool,
    /// The groups access rules see, `admins` included for an administrator.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Clears the brute-force failure state for a username key (set by the server; the state
/// may be shared, so this can fail).
pub type UnlockHook = std::sync::Arc<
    dyn Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StateError>> + Send>> + Send + Sync,
>;

#[derive(Clone)]
pub struct UserAdmin {
    store: Store,
    pool: HashPool,
    policy: PasswordPolicy,
    sessions: Sessions,
    audit: Audit,
    /// Called after `unlock` to clear in-memory failure counts (set by the server).
    on_unlock: Option<UnlockHook>,
}

/// What an administrator's command ended: the user's sessions, and their sign-ins waiting
/// for a second step (`user passwd`, `disable`, `del` and `reset-factors` end both, and say
/// so alike: review 197 saw only `passwd` name the sign-ins it ended).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    pub sessions: usize,
    pub pending: usize,
}

impl std::fmt::Display for Ended {
    /// `2 session(s) ended`, or `2 session(s) and 1 sign-in(s) waiting for a second step ended`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pending {
            0 => write!(f, "{} session(s) ended", self.sessions),
            n => write!(f, "{} session(s) and {n} sign-in(s) waiting for a second step ended", self.sessions),
        }
    }
}

impl UserAdmin {
    pub fn new(store: Store, pool: HashPool, policy: PasswordPolicy, sessions: Sessions, audit: Audit) -> Self {
        UserAdmin { store, pool, policy, sessions, audit, on_unlock: None }
    }

    pub fn with_unlock_hook(mut self, hook: UnlockHook) -> Self {
        self.on_unlock = Some(hook);
        self
    }

    async fn existing(&self, name: &str) -> Result<(Username, User), UserError> {
        let key = self.existing_key(name).await?;
        let record = self.store.users.get(&key).await?.ok_or_else(|| UserError::UnknownUser(name.to_string()))?;
        Ok((Username::from_stored(record.display_name.clone(), key), record))
    }

    /// The store key of an existing user named `name`. A name the current rules refuse (say
    /// `admin` + U+2060, accepted before invisible characters were) still finds its user, so
    /// such an account can be disabled, deleted or given a new password.
    async fn existing_key(&self, name: &str) -> Result<String, UserError> {
        match Username::parse(name) {
            Ok(username) => Ok(username.key().to_string()),
            Err(UsernameError::ControlCharacter) => {
                let key = crate::domain::normalise_key(name);
                if self.store.users.get(&key).await?.is_some() {
                    Ok(key)
                } else {
                    Err(UserError::UnknownUser(name.to_string()))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The password if it meets the policy for this user (judged off the async workers).
    async fn checked(&self, password: Password, username_key: &str) -> Result<Password, UserError> {
        match self.policy.check_in_turn(password, username_key).await {
            Ok(p) => Ok(p),
            Err(PolicyError::Weak(why)) => Err(UserError::WeakPassword(why)),
            Err(PolicyError::Stopped) => Err(UserError::PolicyCheck),
        }
    }

    /// Creates a user, durably.
    pub async fn add(&self, name: &str, password: Password, admin: bool, by: &str) -> Result<Username, UserError> {
        self.add_in_groups(name, password, admin, Vec::new(), by).await
    }

    /// Creates a user listed in `groups`, durably.
    pub async fn add_in_groups(
        &self,
        name: &str,
        password: Password,
        admin: bool,
        mut groups: Vec<Group>,
        by: &str,
    ) -> Result<Username, UserError> {
        refuse_reserved(&groups)?;
        groups.sort();
        groups.dedup();
        let username = Username::parse_new(name)?;
        if let Some(existing) = self.store.users.get(username.key()).await? {
            // Named as stored: `ＡＤＭＩＮ` is the existing `admin`, not a user "ADMIN".
            return Err(UserError::AlreadyExists(crate::text::printable(&existing.display_name).into_owned()));
        }
        // A second name that reads as an existing one (UTS #39 §4 confusables: Cyrillic `а`
        // for Latin `a`, `rn` for `m`), or is drawn as one (§4.1 bidi skeletons: Hebrew `2דוד`
        // beside `דוד2`), is refused. One pass over the users: `user add` is an administrator's
        // act, not a request path.
        let looks = username.looks();
        let alike = |u: &User| crate::domain::Looks::of(&u.display_name).alike(&looks);
        if let Some(twin) = self.store.users.list().await?.into_iter().find(alike) {
            return Err(UserError::LooksLike(crate::text::printable(&twin.display_name).into_owned()));
        }
        let password = self.checked(password, username.key()).await?;
        let hash = self.pool.hash(password).await?;
        let now = now_ms();
        let user = User {
            key: username.key().to_string(),
            display_name: username.as_str().to_string(),
            admin,
            created_at: now,
            password_changed_at: now,
            last_login_at: None,
            disabled: false,
            groups,
        };
        match self.store.users.insert(&user, &hash).await {
            Err(StoreError::AlreadyExists) => return Err(UserError::AlreadyExists(username.to_string())),
            other => other?,
        }
        // A new user has no second factor. One stored under this name now was written for a
        // deleted namesake by a request that checked the user still existed just before the
        // delete: it would ask the new user for a code they never set up.
        self.remove_second_factors(username.key()).await?;
        self.audit.record(&AuthEvent::UserAdded { username: username.as_str(), admin, by });
        Ok(username)
    }

    /// Sets a new password and ends all the user's sessions, durably. Returns the user as the
    /// change left it (its new credential generation, which the sessions ended here and any a
    /// racing sign-in starts are not of) and how many sessions ended.
    ///
    /// `from`: what the change was asked under (a signed-in user's own change, whose current
    /// password was checked in its session's generation); the change is made only while it
    /// holds ([`crate::store::Holding`]), so a `user passwd`, a reset, a disable or *sign out
    /// everywhere else* that lands while the passwords are hashed is not undone by it, nor
    /// is the removal of the passkey the session was signed in with. `None` (an
    /// administrator's `user passwd`) changes it whatever it is. `keep`: that session, whose
    /// record is left for [`crate::session::Sessions::renew`] to go on from (its generation is
    /// over all the same), so that a sign-out of it meanwhile is seen there; not counted.
    ///
    /// # Errors
    /// [`UserError::Superseded`] when `from` no longer holds;
    /// [`UserError::UnknownUser`], [`UserError::WeakPassword`], and the store's and hash
    /// pool's errors.
    pub async fn set_password(
        &self,
        name: &str,
        password: Password,
        by: &str,
        from: Option<crate::store::Holding<'_>>,
        keep: Option<&crate::store::TokenHash>,
    ) -> Result<PasswordSet, UserError> {
        let (username, record) = self.existing(name).await?;
        if from.is_some_and(|f| record.password_changed_at != f.generation) {
            return Err(UserError::Superseded);
        }
        let password = self.checked(password, username.key()).await?;
        let hash = self.pool.hash(password).await?;
        let now = now_ms();
        // In place: a `user disable` or a sign-in meanwhile must not be overwritten.
        let record = match self.store.users.set_password_hash(username.key(), &hash, now, from).await? {
            Some(record) => record,
            None if from.is_some() => return Err(UserError::Superseded),
            None => return Err(UserError::UnknownUser(name.to_string())),
        };
        // Logged once it has happened, whatever comes next: the new generation already ends
        // every session at its next use; removing them is housekeeping that may fail alone.
        self.audit.record(&AuthEvent::PasswordChanged { username: &record.display_name, by });
        let ended = self.sessions.end_all(username.key(), keep).await?;
        let pending_ended = self.store.factors.take_pending_of(username.key(), now_ms()).await?;
        Ok(PasswordSet { user: record, sessions_ended: ended, pending_ended })
    }

    /// The user's second factors (what `user factors` prints), with the stored name.
    pub async fn factors(&self, name: &str) -> Result<(String, FactorSummary), UserError> {
        let (username, record) = self.existing(name).await?;
        let summary = self.store.factors.summary(username.key()).await?;
        Ok((record.display_name, summary))
    }

    /// The user's passkeys (stored name, credential id, added and last used), oldest first:
    /// what `user factors` lists, so an administrator told of a lost or stolen key can see
    /// which entries the account holds.
    ///
    /// # Errors
    /// [`UserError::UnknownUser`], and the store's errors.
    pub async fn passkeys(&self, name: &str) -> Result<Vec<crate::store::passkeys::StoredPasskey>, UserError> {
        let (username, _) = self.existing(name).await?;
        Ok(self.store.passkeys.passkeys_of(username.key()).await?)
    }

    /// Removes the user's passkey named `passkey` (exactly as stored, as `user factors` shows
    /// it) and ends the sessions it signed in, alone or as the second step: for a key its owner
    /// lost, who cannot reach `/account` without it. The last second factor removed takes the
    /// recovery codes, as on `/account`. Logged `mfa_removed` `by`. Returns the user's stored
    /// name and what was removed.
    ///
    /// # Errors
    /// [`UserError::UnknownUser`], [`UserError::NoSuchPasskey`],
    /// [`UserError::SamePasskeyName`] (nothing removed), [`UserError::PasskeySessionsNotEnded`]
    /// (removed, sessions still open), and the store's errors.
    pub async fn remove_passkey(
        &self,
        name: &str,
        passkey: &str,
        by: &str,
    ) -> Result<(String, crate::passkeys::Removed), UserError> {
        let (username, record) = self.existing(name).await?;
        let passkeys = self.store.passkeys.passkeys_of(username.key()).await?;
        // Exactly as stored; failing that, as a terminal shows it: a name stored decomposed
        // (`e` and U+0301) looks composed (`é`) in the listing, and the two are one text
        // (Unicode canonical equivalence, UAX #15), which no lookalike rule can tell apart.
        let mut named: Vec<_> = passkeys.iter().filter(|p| p.name == passkey).collect();
        if named.is_empty() {
            let nfc = |s: &str| s.nfc().collect::<String>();
            let wanted = nfc(passkey);
            named = passkeys.iter().filter(|p| nfc(&p.name) == wanted).collect();
        }
        let (user, passkey) = (record.display_name.clone(), passkey.to_string());
        let id = match named.as_slice() {
            [one] => one.id.clone(),
            [] => return Err(UserError::NoSuchPasskey { user, passkey }),
            _ => return Err(UserError::SamePasskeyName { user, passkey, count: named.len() }),
        };
        let kind = crate::factors::FactorKind::Passkey;
        match crate::passkeys::remove(&self.store, username.key(), &id, None).await {
            Ok(Some(removed)) => {
                let removal = crate::audit::FactorRemoval {
                    kind,
                    sessions: removed.sessions_ended,
                    codes_voided: removed.codes_voided,
                    passkey: Some(&removed.passkey.name),
                };
                self.audit.factor_removed(&user, removal, by, None);
                Ok((user, removed))
            }
            // Removed meanwhile (by its owner, or another administrator).
            Ok(None) => Err(UserError::NoSuchPasskey { user, passkey }),
            Err(crate::passkeys::RemoveError::SessionsNotEnded(crate::passkeys::SessionsNotEnded {
                source,
                removed,
            })) => {
                let removal =
                    crate::audit::FactorRemoval { kind, sessions: 0, codes_voided: 0, passkey: Some(&removed.name) };
                self.audit.factor_removed(&user, removal, by, None);
                Err(UserError::PasskeySessionsNotEnded(source))
            }
            Err(crate::passkeys::RemoveError::Store(e)) => Err(e.into()),
        }
    }

    /// Removes every second factor of the user and ends their sessions, durably (a lost phone:
    /// the user signs in with the password alone, then enrols again). Returns the stored name,
    /// what was removed, and how many sessions ended.
    pub async fn reset_factors(&self, name: &str, by: &str) -> Result<(String, FactorSummary, Ended), UserError> {
        let (username, record) = self.existing(name).await?;
        // A new generation before the removal too: a factor that a change under way writes
        // after the removal then finds its generation gone and takes itself back
        // (`factors::Asker::still_holds`), so the reset is not undone by it.
        self.begin_generation(username.key(), name).await?;
        let removed = self.remove_second_factors(username.key()).await?;
        // And after it: a sign-in that read the user before and proved a factor removed just
        // now starts a session of an old generation; one that reads it after finds no factor
        // to prove.
        let ended = self.end_generation(username.key(), name).await;
        // Logged whether or not the sessions could be ended: the factors are gone either way.
        let sessions = *ended.as_ref().unwrap_or(&0);
        self.audit.record(&AuthEvent::FactorsReset { username: &record.display_name, sessions, by });
        let sessions = ended?;
        // Over already (no factor left to give), removed now rather than when next looked at.
        let pending = self.store.factors.take_pending_of(username.key(), now_ms()).await?;
        Ok((record.display_name, removed, Ended { sessions, pending }))
    }

    /// Removes every second factor of the user `key`: authenticator app, recovery codes and
    /// passkeys. Returns what was removed.
    async fn remove_second_factors(&self, key: &str) -> Result<FactorSummary, UserError> {
        let mut removed = self.store.factors.clear(key).await?;
        removed.passkeys = self.store.passkeys.remove_passkeys_of(key, now_ms()).await?;
        Ok(removed)
    }

    /// Starts a new credential generation for the user `key` (`name` as typed, for the error)
    /// and ends their sessions: every session begun under the old one is over, including one a
    /// sign-in checked before now stores later (`store::Session::password_changed_at`).
    /// Returns how many sessions ended.
    async fn end_generation(&self, key: &str, name: &str) -> Result<usize, UserError> {
        self.begin_generation(key, name).await?;
        Ok(self.sessions.end_all(key, None).await?)
    }

    /// Starts a new credential generation for the user `key` (`name` as typed, for the error),
    /// whatever the current one is.
    ///
    /// # Errors
    /// [`UserError::UnknownUser`] when there is no such user; the store's errors.
    async fn begin_generation(&self, key: &str, name: &str) -> Result<(), UserError> {
        self.store
            .users
            .renew_generation(key, now_ms(), None)
            .await?
            .ok_or_else(|| UserError::UnknownUser(name.to_string()))?;
        Ok(())
    }

    /// Deletes the user (with their second factors) and ends their sessions, durably.
    pub async fn delete(&self, name: &str, by: &str) -> Result<(String, Ended), UserError> {
        let (username, record) = self.existing(name).await?;
        // Factors first: a user re-created under this name must not inherit them.
        self.store.factors.clear(username.key()).await?;
        self.store.users.delete(username.key()).await?;
        // Logged once it has happened: a session of a user who is gone is refused at its next
        // use whether or not the removal below succeeds.
        self.audit.record(&AuthEvent::UserDeleted { username: &record.display_name, by });
        let sessions = self.sessions.end_all(username.key(), None).await?;
        let pending = self.store.factors.take_pending_of(username.key(), now_ms()).await?;
        Ok((record.display_name, Ended { sessions, pending }))
    }

    /// Disables or enables the user, durably. Disabling also ends their sessions and sign-ins
    /// waiting for a second step; returns how many ended.
    pub async fn set_disabled(&self, name: &str, disabled: bool, by: &str) -> Result<(String, Ended), UserError> {
        let key = self.existing_key(name).await?;
        let record = self
            .store
            .users
            .set_disabled(&key, disabled)
            .await?
            .ok_or_else(|| UserError::UnknownUser(name.to_string()))?;
        let username = record.display_name.as_str();
        // Logged once it has happened: a disabled user's sessions are refused at their next
        // use whether or not ending them below succeeds.
        self.audit.record(&if disabled {
            AuthEvent::UserDisabled { username, by }
        } else {
            AuthEvent::UserEnabled { username, by }
        });
        // So a session a sign-in checked just before the disable stores after it is over for
        // good, not again after `user enable`.
        if !disabled {
            return Ok((record.display_name.clone(), Ended::default()));
        }
        let sessions = self.end_generation(&record.key, name).await?;
        let pending = self.store.factors.take_pending_of(&record.key, now_ms()).await?;
        Ok((record.display_name.clone(), Ended { sessions, pending }))
    }

    /// Makes the user an administrator (`Some(true)`), or no longer one (`Some(false)`),
    /// durably, or only reads whether they are (`None`); returns the user's name, whether they
    /// are one afterwards, and whether anything changed. Sessions stay: every request reads the
    /// user afresh, so the admin pages and the `admins` group follow at the next request on
    /// every instance. A change is logged `privilege_permissions_changed` (OWASP's Logging
    /// Vocabulary), a request for what already is changes and logs nothing.
    ///
    /// # Errors
    /// [`UserError::UnknownUser`] when there is no such user; the store's.
    pub async fn set_admin(
        &self,
        name: &str,
        admin: Option<bool>,
        by: &str,
    ) -> Result<(String, bool, bool), UserError> {
        let (_, before) = self.existing(name).await?;
        let Some(admin) = admin.filter(|&a| a != before.admin) else {
            return Ok((before.display_name, before.admin, false));
        };
        let record = self
            .store
            .users
            .set_admin(&before.key, admin)
            .await?
            .ok_or_else(|| UserError::UnknownUser(name.to_string()))?;
        self.audit.record(&AuthEvent::AdminChanged { username: &record.display_name, admin, by });
        Ok((record.display_name, record.admin, true))
    }

    /// The user's sessions still valid, newest first, with the user's name: what an
    /// administrator is shown to tell the owner's from a thief's (review 214: only a count).
    ///
    /// # Errors
    /// [`UserError::UnknownUser`] when there is no such user; the store's.
    pub async fn sessions(&self, name: &str) -> Result<(String, Vec<StoredSession>), UserError> {
        let (_, record) = self.existing(name).await?;
        let sessions = self.sessions.list(&record).await?;
        Ok((record.display_name, sessions))
    }

    /// Ends the one session of the user's that `handle` names (as [`UserAdmin::sessions`]
    /// lists it), durably, on every instance, logged `session_revoked` with `by`; returns the
    /// user's name and the session ended, or `None` when the user has no such session now.
    ///
    /// # Errors
    /// [`UserError::UnknownUser`] when there is no such user; the store's.
    pub async fn end_session(
        &self,
        name: &str,
        handle: &crate::session::SessionHandle,
        by: &str,
    ) -> Result<(String, Option<StoredSession>), UserError> {
        let (_, record) = self.existing(name).await?;
        let ended = self.sessions.end_of(&record, handle).await?;
        if let Some(ended) = &ended {
            self.audit.record(&AuthEvent::SessionEnded {
                username: &record.display_name,
                by,
                ended: &handle.encode(),
                ended_ip: &ended.record.ip,
                ended_user_agent: &ended.record.user_agent,
                client: None,
            });
        }
        Ok((record.display_name, ended))
    }

    /// Adds the user to `add` and takes them out of `remove`, durably; returns the user's name,
    /// listed groups afterwards, and whether anything changed (`false` for a request that asks
    /// for none, or only for what already is). Sessions stay: every verify reads the user's
    /// groups afresh, so a removal takes effect at the next request.
    pub async fn change_groups(
        &self,
        name: &str,
        add: &[Group],
        remove: &[Group],
        by: &str,
    ) -> Result<(String, Vec<Group>, bool), UserError> {
        // Removing it stays possible: a listing made before this rule can be taken back.
        refuse_reserved(add)?;
        if let Some(both) = add.iter().find(|g| remove.contains(g)) {
            return Err(UserError::AddedAndRemoved(both.as_str().to_string()));
        }
        if add.is_empty() && remove.is_empty() {
            // `user groups NAME` alone shows the groups: a read, with no write and no event
            // saying they changed.
            let (_, record) = self.existing(name).await?;
            let groups = record.effective_groups();
            return Ok((record.display_name, groups, false));
        }
        let (_, before) = self.existing(name).await?;
        if add.iter().all(|g| before.groups.contains(g)) && !remove.iter().any(|g| before.groups.contains(g)) {
            // Nothing to change (review 133: removing a group the user is not in logged a
            // change): no write, no event saying the groups changed.
            let groups = before.effective_groups();
            return Ok((before.display_name, groups, false));
        }
        let key = before.key.clone();
        let record = self
            .store
            .users
            .change_groups(&key, add, remove)
            .await?
            .ok_or_else(|| UserError::UnknownUser(name.to_string()))?;
        let listed = record.groups.iter().map(Group::as_str).collect::<Vec<_>>().join(",");
        self.audit.record(&AuthEvent::GroupsChanged { username: &record.display_name, groups: &listed, by });
        // What access rules and applications see: `admins` included for an administrator.
        let groups = record.effective_groups();
        Ok((record.display_name, groups, true))
    }

    /// Clears the user's failure count and captcha demand; returns the user's name.
    pub async fn unlock(&self, name: &str, by: &str) -> Result<String, UserError> {
        let (username, record) = self.existing(name).await?;
        if let Some(hook) = &self.on_unlock {
            hook(username.key()).await?;
        }
        self.audit.record(&AuthEvent::UserUnlocked { username: &record.display_name, by });
        Ok(record.display_name)
    }

    /// Every user with their count of valid sessions, by name: one store read (one statement
    /// on PostgreSQL), not one per user.
    ///
    /// # Errors
    /// [`UserError`] when the store cannot read users or sessions: a listing with counts it
    /// could not read would be wrong, so there is none.
    pub async fn list(&self) -> Result<Vec<UserSummary>, UserError> {
        let mut users = Vec::new();
        for (u, active_sessions) in self.sessions.users_with_valid_counts().await? {
            let groups = u.effective_groups().into_iter().map(String::from).collect();
            users.push(UserSummary {
                groups,
                username: u.display_name,
                admin: u.admin,
                created_at: rfc3339(u.created_at),
                last_login_at: u.last_login_at.map(rfc3339),
                active_sessions,
                disabled: u.disabled,
            });
        }
        users.sort_by_key(|u| u.username.to_lowercase());
        Ok(users)
    }

    /// Whether there are no users yet (the first start).
    pub async fn is_empty(&self) -> Result<bool, UserError> {
        Ok(self.store.users.count().await? == 0)
    }
}

/// A random password for the first administrator: 24 characters from an alphabet without
/// look-alikes, about 130 bits.
///
/// # Errors
/// [`RandomError`] when the system's random source fails: the password would be predictable,
/// so none is made.
pub fn generate_password() -> Result<Password, RandomError> {
    generate_password_from(crate::random::fill)
}

/// [`generate_password`] with the random source given (so a failing one can be tested).
fn generate_password_from(fill: impl FnOnce(&mut [u8]) -> Result<(), RandomError>) -> Result<Password, RandomError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = zeroize::Zeroizing::new([0u8; 24]);
    fill(bytes.as_mut_slice())?;
    let mut text = String::with_capacity(29);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 6 == 0 {
            text.push('-');
        }
        // 256 % 56 != 0 leaves a slight bias; with 24 characters the entropy stays far above 128 bits.
        text.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
    }
    let password = Password::new(&text);
    zeroize::Zeroize::zeroize(&mut text);
    Ok(password)
}

/// `portcullis user factors NAME` as a shell reads it back, for hints an operator may paste:
/// NAME quoted (a name may hold `$(…)`, `;` or a space, found by a review) and after `--` when
/// it starts with `-`, with anything a terminal would act on escaped.
fn factors_command(user: &str) -> String {
    let quoted = shlex::try_quote(user).map(|q| q.into_owned()).unwrap_or_else(|_| user.to_string());
    let dashes = if user.starts_with('-') { "-- " } else { "" };
    crate::text::printable(&format!("portcullis user factors {dashes}{quoted}")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_random_source_gives_no_password() {
        let failed = generate_password_from(|_| Err(getrandom::Error::UNSUPPORTED.into()));
        assert!(failed.is_err());
    }

    async fn admin_on(dir: &std::path::Path) -> UserAdmin {
        let settings = crate::config::Settings {
            data_dir: dir.join("data"),
            log_dir: dir.join("logs"),
            cert_dir: dir.join("certs"),
            argon2: crate::config::HashParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
            ..Default::default()
        };
        let services = crate::app::Services::open(&settings, 1).await.unwrap();
        services.users.clone()
    }

    #[tokio::test]
    async fn a_new_name_that_reads_as_an_existing_one_is_refused_and_the_old_one_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let users = admin_on(dir.path()).await;
        let password = || Password::new("plum tractor velvet orbit");
        users.add("admin", password(), true, "test").await.unwrap();
        users.add("a b", password(), false, "test").await.unwrap();
        for twin in ["\u{430}dmin", "adrnin", "ADMIN", "a  b"] {
            let refused = users.add(twin, password(), false, "test").await;
            assert!(
                matches!(
                    refused,
                    Err(UserError::LooksLike(_) | UserError::AlreadyExists(_) | UserError::InvalidUsername(_))
                ),
                "{twin}: {refused:?}"
            );
        }
        assert!(
            matches!(users.add("adrnin", password(), false, "test").await, Err(UserError::LooksLike(n)) if n == "admin")
        );
        users.add("alice", password(), false, "test").await.unwrap();
        assert_eq!(users.list().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn of_two_passkeys_stored_with_one_name_neither_is_removed_by_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let users = admin_on(dir.path()).await;
        users.add("alice", Password::new("plum tractor velvet orbit"), false, "test").await.unwrap();
        // As a version before names had to differ could have stored them.
        for id in [b"k1", b"k2"] {
            let p = crate::store::conformance::passkey(id, "alice", 1);
            users.store.passkeys.add_passkey(&p).await.unwrap();
        }
        let refused = users.remove_passkey("alice", "phone", "test").await;
        assert!(matches!(refused, Err(UserError::SamePasskeyName { count: 2, .. })), "{refused:?}");
        assert_eq!(users.store.passkeys.passkeys_of("alice").await.unwrap().len(), 2, "nothing removed");
        let missing = users.remove_passkey("alice", "Phone", "test").await;
        assert!(matches!(missing, Err(UserError::NoSuchPasskey { .. })), "names are matched exactly: {missing:?}");
    }

    #[test]
    fn the_hint_for_a_username_that_looks_like_an_option_is_a_command_that_parses() {
        let missing = UserError::NoSuchPasskey { user: "-bob".into(), passkey: "x".into() };
        assert!(missing.to_string().ends_with("(portcullis user factors -- -bob lists them)"), "{missing}");
        let missing = UserError::NoSuchPasskey { user: "x$(touch pwned);y".into(), passkey: "x".into() };
        assert!(missing.to_string().ends_with("(portcullis user factors 'x$(touch pwned);y' lists them)"), "{missing}");
    }

    #[tokio::test]
    async fn a_passkey_stored_decomposed_is_removed_by_its_composed_name_as_a_terminal_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let users = admin_on(dir.path()).await;
        users.add("alice", Password::new("plum tractor velvet orbit"), false, "test").await.unwrap();
        let mut p = crate::store::conformance::passkey(b"k1", "alice", 1);
        p.name = "Cafe\u{301} laptop".to_string();
        users.store.passkeys.add_passkey(&p).await.unwrap();
        let missing = users.remove_passkey("alice", "Cafe laptop", "test").await;
        assert!(matches!(missing, Err(UserError::NoSuchPasskey { .. })), "a mark is not dropped: {missing:?}");
        let (_, removed) = users.remove_passkey("alice", "Caf\u{e9} laptop", "test").await.unwrap();
        assert_eq!(removed.sessions_ended, 0);
        assert!(users.store.passkeys.passkeys_of("alice").await.unwrap().is_empty());
    }

    #[test]
    fn generated_passwords_differ() {
        let (a, b) = (generate_password().unwrap(), generate_password().unwrap());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.char_count(), 24 + 3);
    }
}
