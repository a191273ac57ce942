//! Passkeys (WebAuthn, W3C Web Authentication Level 3) with webauthn-rs: registration on
//! `/account`, discoverable sign-in from `/login`, and a passkey as the second factor. The
//! protocol (challenges, origin and RP-id checks, signatures, user verification) is
//! webauthn-rs's; this module keeps the passkeys per user, and the state of a registration or
//! a second-factor check in the store, bound to the browser by a random cookie, for
//! [`CEREMONY_LIFETIME`] and one use. A discoverable sign-in names no user, so nothing bounds
//! how many are begun: its state goes to the browser instead, sealed to the sign-in form
//! (`csrf::Csrf::seal_ceremony`), and the store keeps none.
//!
//! User verification is required in every ceremony (SPEC.md "Second factors"), so a passkey
//! sign-in proves two factors: the device (something you have) and its PIN or biometric.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use url::Url;
use webauthn_rs::prelude::{
    AuthenticationResult, CreationChallengeResponse, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Uuid, Webauthn,
    WebauthnBuilder, WebauthnError,
};

use crate::session::SessionToken;
use crate::store::passkeys::{Ceremony, CeremonyKind, PasskeyUse, StoredPasskey, MAX_CREDENTIAL_ID_BYTES};
use crate::store::{now_ms, Store, StoreError, TokenHash, User};
use sha2::{Digest, Sha256};

/// The cookie that binds an open ceremony to the browser that began it (`__Host-`: Secure,
/// Path=/, no Domain; HttpOnly, so the page's script never sees it).
pub const CEREMONY_COOKIE: &str = "__Host-portcullis-webauthn";

/// How long a begun ceremony may be finished: long enough to find and touch a security key,
/// short enough that a stolen challenge is soon void (W3C WebAuthn §15.1 recommends a
/// timeout of 5 minutes for user verification).
pub const CEREMONY_LIFETIME: Duration = Duration::from_secs(300);

/// Longest passkey name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Most passkeys one user may register (bounds the account page and each sign-in's work).
pub const MAX_PER_USER: usize = 20;

/// Why a passkey operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// The relying-party id is an IP address, which browsers refuse (W3C WebAuthn §5.1.3
    /// step 8): set `public_url` (or `webauthn_rp_id`) to a host name.
    #[error("passkeys need a host name, not an IP address, as the relying-party id")]
    Disabled,
    /// No open ceremony for this browser: never begun, already used, expired, or begun for
    /// something else or someone else.
    #[error("no open passkey ceremony for this browser")]
    NoCeremony,
    /// The browser's answer failed webauthn-rs's checks, or names a credential this server
    /// does not know, or one of another user.
    #[error("the passkey was not accepted: {0}")]
    Rejected(String),
    /// A verified answer that was used already (the same answer sent twice): nothing new was
    /// proved or guessed.
    #[error("this passkey answer was used already")]
    AnswerUsed,
    /// A verified answer whose signature counter did not move past the stored one: two copies
    /// of the key may be in use (W3C WebAuthn §6.1.1). Refused; the passkey is flagged
    /// ([`StoredPasskey::clone_suspected_at`]) before this is returned.
    #[error("the passkey's signature counter did not move forward: a copy of it may be in use")]
    PossibleClone {
        /// The owner's normalised username.
        user_key: String,
        /// The passkey's name, as its owner gave it.
        name: String,
    },
    /// The passkey is registered already (to this user or another).
    #[error("this passkey is registered already")]
    Duplicate,
    /// The name is empty, too long or holds control characters.
    #[error("a passkey name is 1 to 64 printable characters")]
    BadName,
    /// Another of the user's passkeys has this name, or one that can pass for it.
    #[error("another of your passkeys has this name, or one that looks like it")]
    NameTaken,
    /// The user has [`MAX_PER_USER`] passkeys.
    #[error("at most {MAX_PER_USER} passkeys per user")]
    TooMany,
    /// The user's credential generation moved on while the passkey was added (`user
    /// reset-factors`, a password change, *sign out everywhere else*): it was taken back, and
    /// the session that asked is over.
    #[error("the account changed while the passkey was added")]
    Superseded,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SessionsNotEnded(#[from] SessionsNotEnded),
}

/// Removes `user_key`'s passkey `id` from `store` and ends the sessions it signed in but
/// `keep`: [`Passkeys::remove`] for a user on `/account`, and for an administrator
/// (`user factors --remove-passkey`, no session kept), who needs no relying party.
///
/// # Errors
/// [`RemoveError::Store`] when nothing was removed; [`RemoveError::SessionsNotEnded`] when
/// the passkey was, but its sessions could not be ended.
pub async fn remove(
    store: &Store,
    user_key: &str,
    id: &[u8],
    keep: Option<&TokenHash>,
) -> Result<Option<Removed>, RemoveError> {
    let Some(passkey) = store.passkeys.passkey(id).await?.filter(|p| p.user_key == user_key) else {
        return Ok(None);
    };
    if !store.passkeys.remove_passkey(user_key, id, now_ms()).await? {
        return Ok(None);
    }
    let codes_voided = crate::factors::void_codes_without_factor(store, user_key).await;
    let sessions_ended = match store.sessions.delete_for_passkey(user_key, id, keep).await {
        Ok(n) => n,
        Err(source) => return Err(SessionsNotEnded { removed: Box::new(passkey), source }.into()),
    };
    Ok(Some(Removed { passkey, codes_voided, sessions_ended }))
}

/// Why [`remove`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SessionsNotEnded(#[from] SessionsNotEnded),
}

/// The passkey was removed (`removed`, as it was stored), but the sessions it signed in could
/// not be ended: they are still signed in.
#[derive(Debug, thiserror::Error)]
#[error("the passkey was removed, but the sessions it signed in could not be ended: {source}")]
pub struct SessionsNotEnded {
    pub removed: Box<StoredPasskey>,
    #[source]
    pub source: StoreError,
}

impl From<RemoveError> for PasskeyError {
    fn from(e: RemoveError) -> Self {
        match e {
            RemoveError::Store(e) => PasskeyError::Store(e),
            RemoveError::SessionsNotEnded(e) => PasskeyError::SessionsNotEnded(e),
        }
    }
}

/// The owner ([`Ceremony::owner`]) of a second-step passkey check: the user and the pending
/// sign-in it checks (`pending`, the hash of its `__Host-portcullis-mfa` cookie), so each
/// pending sign-in has its own check and a new begin ends only that sign-in's earlier ones.
/// One per user let whoever knew the password end the owner's check under way by beginning
/// one of their own, every few seconds (a review refused 7 of the owner's 12 sign-ins so).
pub fn second_step_owner(user_key: &str, pending: &TokenHash) -> String {
    let hex: String = pending.iter().map(|b| format!("{b:02x}")).collect();
    // The hash's 64 hex digits end it, so no two pairs give one owner whatever the key holds.
    format!("{user_key}/{hex}")
}

/// What a sign-in answer names ([`Passkeys::claimed`]).
#[derive(Debug)]
pub enum Claimed {
    /// A registered passkey.
    Passkey(StoredPasskey),
    /// A passkey removed from this user (normalised username) within `audit_retention`.
    Removed(String),
    /// No passkey this server knows, or no credential at all.
    Nothing,
}

/// What [`remove`] did.
#[derive(Debug)]
pub struct Removed {
    /// The passkey, as it was stored.
    pub passkey: StoredPasskey,
    /// How many recovery codes went with it (`void_codes_without_factor`).
    pub codes_voided: usize,
    /// How many sessions it had signed in were ended.
    pub sessions_ended: usize,
}

impl PasskeyError {
    /// Whether the store could not answer (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PasskeyError::Store(e) if e.is_unavailable())
            || matches!(self, PasskeyError::Store(StoreError::Random(_)))
    }
}

/// A begun ceremony: the options for `navigator.credentials` and the cookie value to bind it.
pub struct Begun {
    /// JSON for the browser (`{"publicKey": …}`); holds no secret.
    pub options: String,
    /// The [`CEREMONY_COOKIE`] value.
    pub cookie: String,
}

/// A begun discoverable sign-in: the options for `navigator.credentials`, and webauthn-rs's
/// state as JSON, for the caller to seal into the ceremony cookie (nothing is stored).
pub struct BegunSignIn {
    pub options: String,
    /// Holds nothing secret (its challenge is in `options` too).
    pub state: String,
}

/// A registration's server state: webauthn-rs's, and the user handle offered with it (kept
/// with the passkey, to match the handle a discoverable sign-in returns).
#[derive(serde::Serialize, serde::Deserialize)]
struct Registration {
    handle: [u8; 16],
    state: PasskeyRegistration,
}

/// A verified passkey use: whose it is, and which.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user_key: String,
    /// The credential id (raw bytes).
    pub passkey_id: Vec<u8>,
    pub passkey_name: String,
}

/// The passkey service.
#[derive(Clone)]
pub struct Passkeys {
    webauthn: Option<Arc<Webauthn>>,
    store: Store,
    /// Discoverable sign-ins one address may begin (`login_quota_per_ip`'s rate, counted
    /// apart from the password form's, in this process): pressing the passkey button again
    /// and again must not use up the address's password sign-ins.
    begins_per_address: Arc<crate::rate_limit::Limiter<crate::client::AddressKey>>,
}

/// The relying-party id for `webauthn_rp_id` (when set) or `origin`'s host (SPEC.md:
/// `webauthn_rp_id` defaults to `cookie_domain`, else `public_url`'s host).
pub fn rp_id(setting: Option<&str>, origin: &Url) -> Option<String> {
    match setting {
        Some(s) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => origin.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()),
    }
}

impl Passkeys {
    /// The service for relying party `rp_id` at `origin` (`public_url`). With an IP address
    /// as `rp_id` passkeys are off ([`Passkeys::enabled`] is false) and every ceremony is
    /// [`PasskeyError::Disabled`].
    ///
    /// # Errors
    /// When `origin`'s host is neither `rp_id` nor under it (W3C WebAuthn §5.1.3 step 8): a
    /// setting error, reported at start.
    pub fn new(
        store: Store,
        rp_id: &str,
        origin: &Url,
        per_address: Option<crate::config::Rate>,
    ) -> anyhow::Result<Self> {
        let begins_per_address = Arc::new(crate::rate_limit::Limiter::new(per_address, crate::rate_limit::MAX_KEYS));
        if rp_id.parse::<IpAddr>().is_ok() {
            return Ok(Passkeys { webauthn: None, store, begins_per_address });
        }
        let webauthn = WebauthnBuilder::new(rp_id, origin)
            .map_err(|e| anyhow::anyhow!("webauthn_rp_id {rp_id:?} does not fit public_url {origin}: {e}"))?
            .rp_name("portcullis")
            .timeout(CEREMONY_LIFETIME)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up WebAuthn for {rp_id:?} at {origin}: {e}"))?;
        Ok(Passkeys { webauthn: Some(Arc::new(webauthn)), store, begins_per_address })
    }

    /// Whether passkeys can be used here (see [`Passkeys::new`]).
    pub fn enabled(&self) -> bool {
        self.webauthn.is_some()
    }

    fn webauthn(&self) -> Result<&Webauthn, PasskeyError> {
        self.webauthn.as_deref().ok_or(PasskeyError::Disabled)
    }

    /// The user `key` names (to check a passkey's owner still exists and is enabled).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn user(&self, key: &str) -> Result<Option<User>, StoreError> {
        self.store.users.get(key).await
    }

    /// The user's passkeys, oldest first.
    ///
    /// # Errors
    /// [`PasskeyError::Store`].
    pub async fn list(&self, user_key: &str) -> Result<Vec<StoredPasskey>, PasskeyError> {
        Ok(self.store.passkeys.passkeys_of(user_key).await?)
    }

    /// Whether the user has a passkey.
    ///
    /// # Errors
    /// [`PasskeyError::Store`].
    pub async fn has_any(&self, user_key: &str) -> Result<bool, PasskeyError> {
        Ok(!self.list(user_key).await?.is_empty())
    }

    /// Begins adding a passkey to `user`'s account: a discoverable credential with user
    /// verification, none of the user's present passkeys again. `name`, when the form sent
    /// it, is checked now as the finish will check it, so the device does not make a passkey
    /// the server then refuses for its name.
    ///
    /// # Errors
    /// [`PasskeyError::Disabled`], [`PasskeyError::TooMany`], [`PasskeyError::BadName`],
    /// [`PasskeyError::NameTaken`], [`PasskeyError::Store`].
    pub async fn begin_registration(&self, user: &User, name: Option<&str>) -> Result<Begun, PasskeyError> {
        let webauthn = self.webauthn()?;
        let existing = self.list(&user.key).await?;
        if existing.len() >= MAX_PER_USER {
            return Err(PasskeyError::TooMany);
        }
        if let Some(name) = name {
            name_for(&parse_name(name)?, &existing, None)?;
        }
        let handle = match existing.first() {
            Some(p) => Uuid::from_bytes(p.user_handle),
            None => {
                let mut b = [0u8; 16];
                crate::random::fill(&mut b).map_err(StoreError::from)?;
                Uuid::from_bytes(b)
            }
        };
        let exclude: Vec<_> = existing.iter().map(|p| p.id.clone()).collect();
        let (ccr, state): (CreationChallengeResponse, PasskeyRegistration) = webauthn
            .start_passkey_registration(handle, &user.display_name, &user.display_name, Some(exclude))
            .map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        // webauthn-rs leaves resident keys "discouraged" for plain passkeys; signing in from
        // /login without a username needs a discoverable credential (W3C WebAuthn §6.2.2).
        // (webauthn-rs does not export the proto type; the JSON is the browser's input anyway.)
        let mut ccr = serde_json::to_value(&ccr).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        if let Some(sel) = ccr.pointer_mut("/publicKey/authenticatorSelection").and_then(|v| v.as_object_mut()) {
            sel.insert("residentKey".into(), "required".into());
            sel.insert("requireResidentKey".into(), true.into());
        }
        let state = Registration { handle: *handle.as_bytes(), state };
        self.open(CeremonyKind::Register, Some(&user.key), &state, &ccr).await
    }

    /// Finishes adding a passkey for `user`, named `name`, from the browser's answer
    /// `credential` (JSON) and the ceremony cookie, asked by `asker` (the user's session):
    /// [`Passkeys::verify_registration`], then [`Passkeys::store_registration`].
    ///
    /// # Errors
    /// As those two.
    pub async fn finish_registration(
        &self,
        user: &User,
        asker: &crate::factors::Asker<'_>,
        cookie: Option<&str>,
        credential: &str,
        name: &str,
    ) -> Result<StoredPasskey, PasskeyError> {
        let verified = self.verify_registration(user, cookie, credential, name).await?;
        self.store_registration(asker, verified).await
    }

    /// Checks the browser's answer `credential` (JSON) to the registration this browser began
    /// (the ceremony cookie), and the name, storing nothing: the passkey to store, with
    /// [`Passkeys::store_registration`]. The ceremony is spent either way.
    ///
    /// # Errors
    /// [`PasskeyError::NoCeremony`] unless this browser began a registration for this user
    /// within [`CEREMONY_LIFETIME`] and has not finished it; [`PasskeyError::Rejected`];
    /// [`PasskeyError::BadName`]; [`PasskeyError::NameTaken`]; [`PasskeyError::Store`].
    pub async fn verify_registration(
        &self,
        user: &User,
        cookie: Option<&str>,
        credential: &str,
        name: &str,
    ) -> Result<StoredPasskey, PasskeyError> {
        let name = parse_name(name)?;
        name_for(&name, &self.list(&user.key).await?, None)?;
        let webauthn = self.webauthn()?;
        let Registration { handle, state } = self.take(cookie, CeremonyKind::Register, Some(&user.key)).await?;
        let reg: RegisterPublicKeyCredential =
            serde_json::from_str(credential).map_err(|e| PasskeyError::Rejected(format!("not a credential: {e}")))?;
        made_on_our_pages(&reg.response.client_data_json)?;
        if has_bytes_past_its_end(&reg.response.attestation_object) {
            return Err(PasskeyError::Rejected("the authenticator data has bytes past its end".into()));
        }
        let passkey: Passkey =
            webauthn.finish_passkey_registration(&reg, &state).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        if passkey.cred_id().len() > MAX_CREDENTIAL_ID_BYTES {
            return Err(PasskeyError::Rejected("credential id too long".into()));
        }
        Ok(StoredPasskey {
            id: passkey.cred_id().to_vec(),
            user_key: user.key.clone(),
            user_handle: handle,
            name,
            passkey: serde_json::to_string(&passkey).map_err(|e| PasskeyError::Rejected(e.to_string()))?,
            created_at: now_ms(),
            last_used_at: None,
            sign_count: 0,
            clone_suspected_at: None,
            last_client_data_hash: None,
        })
    }

    /// Stores a passkey [`Passkeys::verify_registration`] accepted, asked by `asker` (the
    /// user's session): taken back if that session was ended meanwhile
    /// ([`crate::factors::Asker::still_holds`]).
    ///
    /// # Errors
    /// [`PasskeyError::Superseded`] (taken back); [`PasskeyError::Duplicate`];
    /// [`PasskeyError::NameTaken`] for a name another write took at the same moment (taken
    /// back); [`PasskeyError::Store`].
    pub async fn store_registration(
        &self,
        asker: &crate::factors::Asker<'_>,
        stored: StoredPasskey,
    ) -> Result<StoredPasskey, PasskeyError> {
        match self.store.passkeys.add_passkey(&stored).await {
            Ok(()) if !asker.still_holds(&self.store).await? => {
                // Added after the asking session ended (a reset that removed the user's
                // factors, the removal of its passkey): taken back.
                self.store.passkeys.remove_passkey(&stored.user_key, &stored.id, now_ms()).await?;
                Err(PasskeyError::Superseded)
            }
            Ok(()) if !self.still_apart(&stored.user_key, &stored.id, &stored.name).await? => {
                self.store.passkeys.remove_passkey(&stored.user_key, &stored.id, now_ms()).await?;
                Err(PasskeyError::NameTaken)
            }
            Ok(()) => Ok(stored),
            Err(StoreError::AlreadyExists) => Err(PasskeyError::Duplicate),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames the user's passkey `id`; false when the user has no such passkey.
    ///
    /// # Errors
    /// [`PasskeyError::BadName`]; [`PasskeyError::NameTaken`] when another of the user's
    /// passkeys has a name that can pass for it, also one written at the same moment (the
    /// rename is undone then); [`PasskeyError::Store`].
    pub async fn rename(&self, user_key: &str, id: &[u8], name: &str) -> Result<bool, PasskeyError> {
        let name = parse_name(name)?;
        name_for(&name, &self.list(user_key).await?, Some(id))?;
        let Some(before) = self.store.passkeys.rename_passkey(user_key, id, &name, None).await? else {
            return Ok(false);
        };
        if !self.still_apart(user_key, id, &name).await? {
            // Back to the name this rename replaced, and only while it still bears this one:
            // a rename made since stands.
            self.store.passkeys.rename_passkey(user_key, id, &before, Some(&name)).await?;
            return Err(PasskeyError::NameTaken);
        }
        Ok(true)
    }

    /// Whether the passkey `id`, just written as `name`, still stands apart from the user's
    /// others, read again after the write. Two writes checked at the same moment can each pass
    /// [`name_for`] before the other lands; the later one's check sees both and undoes it (or
    /// both do, and the user tries again), so lookalikes never stay.
    async fn still_apart(&self, user_key: &str, id: &[u8], name: &str) -> Result<bool, PasskeyError> {
        Ok(name_for(name, &self.list(user_key).await?, Some(id)).is_ok())
    }

    /// Removes the user's passkey `id`, and ends the sessions it signed in (as the first factor
    /// or the second) but `keep` (the asker's, who has just proved who they are): a lost or
    /// stolen passkey's sessions are over with it. The last second factor removed takes the
    /// recovery codes (`void_codes_without_factor`). `None` when the user has
    /// no such passkey.
    ///
    /// A sign-in that checked the passkey just before the removal and stores its session just
    /// after ends that session itself ([`crate::session::Sessions::create_in_place_of`]); a
    /// password change or *sign out everywhere else* one of its sessions asked is made only
    /// while the passkey is there ([`crate::store::Holding`]).
    ///
    /// # Errors
    /// [`PasskeyError::Store`] when nothing was removed; [`PasskeyError::SessionsNotEnded`]
    /// when the passkey was, but its sessions could not be ended.
    pub async fn remove(&self, user_key: &str, id: &[u8], keep: &TokenHash) -> Result<Option<Removed>, PasskeyError> {
        Ok(remove(&self.store, user_key, id, Some(keep)).await?)
    }

    /// Takes one of `address`'s discoverable sign-in begins; `Err(seconds)` to wait when its
    /// quota is spent.
    pub fn spend_begin_quota(&self, address: &crate::client::AddressKey) -> Result<(), u64> {
        self.begins_per_address.check(address)
    }

    /// Begins a discoverable sign-in (no username: the authenticator offers its passkeys for
    /// this site; W3C WebAuthn §7.2 with an empty `allowCredentials`). The state is the
    /// caller's to keep (the module note): nothing is stored.
    ///
    /// # Errors
    /// [`PasskeyError::Disabled`]; [`PasskeyError::Rejected`] when webauthn-rs cannot begin
    /// (no random challenge) or its state cannot be written.
    pub fn begin_sign_in(&self) -> Result<BegunSignIn, PasskeyError> {
        let (mut rcr, state): (RequestChallengeResponse, DiscoverableAuthentication) =
            self.webauthn()?.start_discoverable_authentication().map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        // webauthn-rs asks for conditional mediation (autofill); ours is a button.
        rcr.mediation = None;
        let state = serde_json::to_string(&state).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        let options = serde_json::to_string(&rcr).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        Ok(BegunSignIn { options, state })
    }

    /// The passkey a sign-in answer names, before it is verified, for the record of its
    /// attempt (the module note of `sign_in::passkey`): [`Claimed::Removed`] with its former
    /// owner when it was removed, so that a lost key still being tried shows under its user.
    ///
    /// # Errors
    /// [`PasskeyError::Store`].
    pub async fn claimed(&self, credential: &str) -> Result<Claimed, PasskeyError> {
        let Ok(cred) = serde_json::from_str::<PublicKeyCredential>(credential) else { return Ok(Claimed::Nothing) };
        let id = cred.get_credential_id();
        if id.is_empty() || id.len() > MAX_CREDENTIAL_ID_BYTES {
            return Ok(Claimed::Nothing);
        }
        if let Some(passkey) = self.store.passkeys.passkey(id).await? {
            return Ok(Claimed::Passkey(passkey));
        }
        Ok(self.store.passkeys.former_owner(id).await?.map_or(Claimed::Nothing, Claimed::Removed))
    }

    /// Finishes a discoverable sign-in: verifies the answer against `state` (what
    /// [`Passkeys::begin_sign_in`] gave, as the browser kept it, its seal checked by the
    /// caller) and the passkey the answer names (whose user handle must match), and notes the
    /// use; as its owner's last use only when `signs_in` (the account is not disabled).
    ///
    /// # Errors
    /// [`PasskeyError::NoCeremony`] for a state that is not one; [`PasskeyError::Rejected`]
    /// for an unknown passkey, a wrong user handle or a failed verification;
    /// [`PasskeyError::PossibleClone`] for a verified answer whose signature counter did not
    /// move forward (a cloned authenticator, W3C WebAuthn §6.1.1), unless it is the answer
    /// last noted, sent again: [`PasskeyError::AnswerUsed`]; [`PasskeyError::Store`].
    pub async fn finish_sign_in(
        &self,
        state: &str,
        credential: &str,
        signs_in: bool,
    ) -> Result<Verified, PasskeyError> {
        let webauthn = self.webauthn()?;
        let state: DiscoverableAuthentication = serde_json::from_str(state).map_err(|_| PasskeyError::NoCeremony)?;
        let cred: PublicKeyCredential =
            serde_json::from_str(credential).map_err(|e| PasskeyError::Rejected(format!("not a credential: {e}")))?;
        made_on_our_pages(&cred.response.client_data_json)?;
        let (handle, id) =
            webauthn.identify_discoverable_authentication(&cred).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        let stored =
            self.store.passkeys.passkey(id).await?.ok_or_else(|| PasskeyError::Rejected("unknown passkey".into()))?;
        if stored.user_handle != *handle.as_bytes() {
            return Err(PasskeyError::Rejected("user handle does not match the passkey".into()));
        }
        let mut passkey: Passkey = parse_passkey(&stored)?;
        let result = webauthn.finish_discoverable_authentication_v2(&cred, state, &passkey);
        self.note_use(&stored, &mut passkey, &cred, result, signs_in).await
    }

    /// Begins a passkey check for `user_key` as the second factor of the pending sign-in
    /// `pending` (the user is known: the password was right), offering only that user's
    /// passkeys; it ends that sign-in's earlier check, no other ([`second_step_owner`]).
    ///
    /// # Errors
    /// [`PasskeyError::Disabled`], [`PasskeyError::Rejected`] when the user has no passkey,
    /// [`PasskeyError::Store`].
    pub async fn begin_second_factor(&self, user_key: &str, pending: &TokenHash) -> Result<Begun, PasskeyError> {
        let webauthn = self.webauthn()?;
        let keys = self.list(user_key).await?.iter().map(parse_passkey).collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(PasskeyError::Rejected("no passkey".into()));
        }
        let (rcr, state): (RequestChallengeResponse, PasskeyAuthentication) =
            webauthn.start_passkey_authentication(&keys).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        self.open(CeremonyKind::SecondFactor, Some(&second_step_owner(user_key, pending)), &state, &rcr).await
    }

    /// Finishes a second-factor passkey check for `user_key` and the pending sign-in `pending`.
    ///
    /// # Errors
    /// As [`Passkeys::finish_sign_in`]; the passkey must be `user_key`'s; an answer to another
    /// challenge (an earlier check's) is [`PasskeyError::NoCeremony`].
    pub async fn finish_second_factor(
        &self,
        user_key: &str,
        pending: &TokenHash,
        cookie: Option<&str>,
        credential: &str,
    ) -> Result<Verified, PasskeyError> {
        let webauthn = self.webauthn()?;
        let key = ceremony_key(cookie)?;
        let owner = second_step_owner(user_key, pending);
        // Read, not yet taken: an answer to another challenge must leave this check open.
        let read = self.store.passkeys.ceremony(&key, now_ms()).await?;
        let state: PasskeyAuthentication = state_for(read, CeremonyKind::SecondFactor, Some(&owner))?;
        let checked = async {
            let cred: PublicKeyCredential = serde_json::from_str(credential)
                .map_err(|e| PasskeyError::Rejected(format!("not a credential: {e}")))?;
            let stored = self
                .store
                .passkeys
                .passkey(cred.get_credential_id())
                .await?
                .filter(|p| p.user_key == user_key)
                .ok_or_else(|| PasskeyError::Rejected("not this user's passkey".into()))?;
            // W3C WebAuthn L3 §7.2 step 6: the user was known before the ceremony, so a user
            // handle the answer gives must be theirs (review 171: another user's was let by).
            if cred.get_user_unique_id().is_some_and(|handle| handle != stored.user_handle) {
                return Err(PasskeyError::Rejected("user handle does not match the passkey".into()));
            }
            made_on_our_pages(&cred.response.client_data_json)?;
            let passkey = parse_passkey(&stored)?;
            let result = webauthn.finish_passkey_authentication(&cred, &state);
            Ok::<_, PasskeyError>((cred, stored, passkey, result))
        }
        .await;
        if let Ok((.., Err(WebauthnError::MismatchedChallenge))) = &checked {
            // An answer to an earlier check of this sign-in, in a tab of the same browser,
            // whose one ceremony cookie a newer begin replaced: that check is over, and
            // nothing was checked (the challenge is compared before the signature). This one
            // stays open for its own answer (a review saw the old answer end it too).
            return Err(PasskeyError::NoCeremony);
        }
        // Any other answer uses the check up: of two sent at once, one takes it.
        if self.store.passkeys.take_ceremony(&key, now_ms()).await?.is_none() {
            return Err(PasskeyError::NoCeremony);
        }
        let (cred, stored, mut passkey, result) = checked?;
        self.note_use(&stored, &mut passkey, &cred, result, true).await
    }

    /// Notes a verified use of `stored` (`answer`; `result`: webauthn-rs's verdict on it), or
    /// flags the passkey when its signature counter did not move forward. `signs_in`: whether
    /// the use signs someone in, and so is its owner's last use ([`PasskeyUse::at`]).
    async fn note_use(
        &self,
        stored: &StoredPasskey,
        passkey: &mut Passkey,
        answer: &PublicKeyCredential,
        result: Result<AuthenticationResult, WebauthnError>,
        signs_in: bool,
    ) -> Result<Verified, PasskeyError> {
        let client_data_hash: [u8; 32] = Sha256::digest(&answer.response.client_data_json).into();
        let result = match result {
            Ok(r) => r,
            // Reported only after the signature checked out (webauthn-rs-core's
            // `authenticate_single_credential`), so nobody without the key can flag it.
            Err(WebauthnError::CredentialPossibleCompromise) => {
                return Err(self.possible_clone(stored, &client_data_hash).await?)
            }
            Err(e) => return Err(PasskeyError::Rejected(e.to_string())),
        };
        if !result.user_verified() {
            // webauthn-rs requires it already; kept here so a change there cannot weaken us.
            return Err(PasskeyError::Rejected("user not verified".into()));
        }
        passkey.update_credential(&result);
        let json = serde_json::to_string(&*passkey).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        let at = signs_in.then(now_ms);
        let used = PasskeyUse { passkey: &json, sign_count: result.counter(), client_data_hash, at };
        if !self.store.passkeys.record_passkey_use(&stored.id, &used).await? {
            // Another use with a higher counter was noted since this one's passkey was read.
            return Err(self.possible_clone(stored, &client_data_hash).await?);
        }
        Ok(Verified {
            user_key: stored.user_key.clone(),
            passkey_id: stored.id.clone(),
            passkey_name: stored.name.clone(),
        })
    }

    /// The error for a verified answer of `stored` (whose client data hashes to
    /// `client_data_hash`) with a counter behind the stored one: [`PasskeyError::AnswerUsed`]
    /// when the last use noted was this very answer (sent twice, as a double click or a
    /// retried request does: not a copy), else the passkey is flagged as possibly cloned and
    /// the error says so; [`PasskeyError::Rejected`] if it was removed meanwhile.
    ///
    /// # Errors
    /// [`PasskeyError::Store`] when the flag cannot be written: the sign-in fails closed.
    async fn possible_clone(
        &self,
        stored: &StoredPasskey,
        client_data_hash: &[u8; 32],
    ) -> Result<PasskeyError, PasskeyError> {
        // Read again: the use that moved the counter may have been noted after `stored` was read.
        let latest = self.store.passkeys.passkey(&stored.id).await?;
        if latest.as_ref().is_some_and(|p| p.last_client_data_hash.as_ref() == Some(client_data_hash)) {
            return Ok(PasskeyError::AnswerUsed);
        }
        if latest.is_none() || !self.store.passkeys.flag_possible_clone(&stored.id, now_ms()).await? {
            return Ok(PasskeyError::Rejected("the passkey was removed".into()));
        }
        Ok(PasskeyError::PossibleClone { user_key: stored.user_key.clone(), name: stored.name.clone() })
    }

    /// Stores a ceremony's state under a new cookie's hash; returns the options and cookie.
    async fn open<S: serde::Serialize, O: serde::Serialize>(
        &self,
        kind: CeremonyKind,
        owner: Option<&str>,
        state: &S,
        options: &O,
    ) -> Result<Begun, PasskeyError> {
        let token = SessionToken::generate()?;
        let ceremony = Ceremony {
            kind,
            owner: owner.map(str::to_string),
            state: serde_json::to_string(state).map_err(|e| PasskeyError::Rejected(e.to_string()))?,
            expires_at: now_ms() + CEREMONY_LIFETIME.as_millis() as u64,
        };
        self.store.passkeys.put_ceremony(&token.hash(), &ceremony).await?;
        let options = serde_json::to_string(options).map_err(|e| PasskeyError::Rejected(e.to_string()))?;
        Ok(Begun { options, cookie: token.encode() })
    }

    /// Takes (once) the ceremony bound to `cookie`, if it is of `kind` for `owner`.
    async fn take<S: serde::de::DeserializeOwned>(
        &self,
        cookie: Option<&str>,
        kind: CeremonyKind,
        owner: Option<&str>,
    ) -> Result<S, PasskeyError> {
        let taken = self.store.passkeys.take_ceremony(&ceremony_key(cookie)?, now_ms()).await?;
        state_for(taken, kind, owner)
    }

    /// Removes expired ceremonies (a background task calls this).
    ///
    /// # Errors
    /// [`PasskeyError::Store`].
    pub async fn purge(&self) -> Result<usize, PasskeyError> {
        // The per-address begin quota's keys back at a full bucket go too.
        self.begins_per_address.prune();
        Ok(self.store.passkeys.purge_ceremonies(now_ms()).await?)
    }
}

/// The store key of the ceremony a `__Host-portcullis-webauthn` cookie names.
fn ceremony_key(cookie: Option<&str>) -> Result<TokenHash, PasskeyError> {
    Ok(cookie.and_then(SessionToken::parse).ok_or(PasskeyError::NoCeremony)?.hash())
}

/// The webauthn-rs state `ceremony` holds, if it is one of `kind` for `owner`.
fn state_for<S: serde::de::DeserializeOwned>(
    ceremony: Option<Ceremony>,
    kind: CeremonyKind,
    owner: Option<&str>,
) -> Result<S, PasskeyError> {
    let c = ceremony.filter(|c| c.kind == kind && c.owner.as_deref() == owner).ok_or(PasskeyError::NoCeremony)?;
    serde_json::from_str(&c.state).map_err(|e| PasskeyError::Store(StoreError::Corrupt(e.to_string())))
}

/// What an answer's client data says of the page the ceremony ran in (W3C WebAuthn L3 §5.8.1,
/// `CollectedClientData`): `crossOrigin` true, and `topOrigin`, for a frame inside another
/// origin's page.
#[derive(serde::Deserialize)]
struct Embedding {
    #[serde(rename = "crossOrigin", default)]
    cross_origin: Option<bool>,
    #[serde(rename = "topOrigin", default)]
    top_origin: Option<serde::de::IgnoredAny>,
}

/// Refuses an answer whose client data says it was made in a frame inside another origin's
/// page (W3C WebAuthn L3 §7.1 step 10 and §7.2 step 13 leave that to the relying party's
/// policy): this server's pages are never framed (`frame-ancestors 'none'`), so such an answer
/// was not made on them. webauthn-rs checks `crossOrigin` only when a passkey is registered
/// (review 171: a sign-in's was let by), and `topOrigin` never. Client data that does not
/// read is left to webauthn-rs, which refuses it.
///
/// # Errors
/// [`PasskeyError::Rejected`] for `crossOrigin: true` or any `topOrigin`.
fn made_on_our_pages(client_data_json: &[u8]) -> Result<(), PasskeyError> {
    match serde_json::from_slice::<Embedding>(client_data_json) {
        Ok(Embedding { cross_origin: Some(true), .. } | Embedding { top_origin: Some(_), .. }) => {
            Err(PasskeyError::Rejected("made in a frame of another origin's page".into()))
        }
        _ => Ok(()),
    }
}

/// Whether a registration's authenticator data goes on past its parts (W3C WebAuthn L3 §6.1:
/// 37 bytes, the attested credential data when the AT flag is set, ending with the
/// credential's public key in CBOR, then extensions in CBOR only when the ED flag is set, and
/// nothing after). webauthn-rs reads the parts and lets what follows by (review 171: two
/// bytes past the key were taken). An attestation object or data that does not read is left
/// to webauthn-rs, which refuses it.
fn has_bytes_past_its_end(attestation_object: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct AttestationObject<'a> {
        #[serde(rename = "authData")]
        auth_data: &'a [u8],
    }
    /// `bytes` after the one CBOR item they begin with; `None` when none reads.
    fn after_cbor_item(bytes: &[u8]) -> Option<&[u8]> {
        let mut de = serde_cbor_2::Deserializer::from_slice(bytes);
        <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de).ok()?;
        bytes.get(de.byte_offset()..)
    }
    let parts = || {
        let data = serde_cbor_2::from_slice::<AttestationObject>(attestation_object).ok()?.auth_data;
        let flags = *data.get(32)?;
        let mut rest = data.get(37..)?;
        if flags & 0x40 != 0 {
            let id_len = usize::from(u16::from_be_bytes(rest.get(16..18)?.try_into().ok()?));
            rest = after_cbor_item(rest.get(18 + id_len..)?)?;
        }
        if flags & 0x80 != 0 {
            rest = after_cbor_item(rest)?;
        }
        Some(!rest.is_empty())
    };
    parts().unwrap_or(false)
}

fn parse_passkey(stored: &StoredPasskey) -> Result<Passkey, PasskeyError> {
    serde_json::from_str(&stored.passkey).map_err(|e| PasskeyError::Store(StoreError::Corrupt(e.to_string())))
}

/// A passkey name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, none hidden, control or
/// unassigned (nor U+FFFD, what invalid UTF-8 in a form becomes), nor a symbol that draws
/// nothing (U+2800, U+FFFC, U+1D159, U+16FE4), at least one that draws something (not only
/// blanks or marks), not starting with a mark, and no more
/// marks stacked on one character than a username may carry, none twice (UTS #39 §5.4,
/// `domain::MAX_MARK_RUN`).
///
/// # Errors
/// [`PasskeyError::BadName`].
pub fn parse_name(name: &str) -> Result<String, PasskeyError> {
    use icu_properties::props::GeneralCategory;
    use icu_properties::CodePointMapData;
    let categories = CodePointMapData::<GeneralCategory>::new();
    let mark = |c: char| {
        matches!(
            categories.get(c),
            GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark | GeneralCategory::SpacingMark
        )
    };
    // Unassigned (noncharacters included), and U+FFFD: what a form's invalid UTF-8 became.
    let unknown = |c: char| categories.get(c) == GeneralCategory::Unassigned || c == char::REPLACEMENT_CHARACTER;
    // Symbols that draw nothing in most fonts, refused anywhere (review 188 named passkeys
    // with U+1D159 and U+FFFC alone, and 198 `phone` and `phone` + U+FFFC side by side): they
    // are not whitespace, and the Hangul fillers are already hidden.
    let blank = |c: char| matches!(c, '\u{2800}' | '\u{FFFC}' | '\u{1D159}' | '\u{16FE4}');
    let shows = |c: char| !c.is_whitespace() && !mark(c);
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.chars().any(|c| c.is_control() || crate::text::is_hidden(c) || unknown(c) || blank(c))
        && name.chars().any(shows)
        && !name.chars().next().is_some_and(mark)
        && !crate::domain::has_mark_run(name);
    ok.then(|| name.to_string()).ok_or(PasskeyError::BadName)
}

/// Whether `c` is a spacing combining mark (General_Category Mc), which [`crate::text::is_mark`]
/// leaves out.
fn is_spacing_mark(c: char) -> bool {
    use icu_properties::props::GeneralCategory;
    icu_properties::CodePointMapData::<GeneralCategory>::new().get(c) == GeneralCategory::SpacingMark
}

/// `name` (parsed) for a passkey among the user's `existing` ones, but `except` (the one
/// being renamed): refused when one of the others has a name that can pass for it (the same
/// confusable skeleton, or drawn alike: [`crate::domain::Looks`], UTS #39 §4), so each entry of
/// the list is told apart, and one added by whoever shares the account cannot pose as one of
/// the owner's (a review saw two entries named "Laptop").
fn name_for(name: &str, existing: &[StoredPasskey], except: Option<&[u8]>) -> Result<(), PasskeyError> {
    // As written, and in lower case: a skeleton reads a capital I as l (right for a username
    // shown as typed), which would tell `IPHONE` from `iPhone` (a review saw both kept).
    // And without their marks: a skeleton keeps them, and `Work laptop` with a small hook
    // (U+0345, U+0323, marks of other scripts) under its last letter stood beside `Work laptop`
    // (review 199).
    let unmarked = |n: &str| {
        use unicode_normalization::UnicodeNormalization;
        n.nfd().filter(|&c| !crate::text::is_mark(c) && !is_spacing_mark(c)).collect::<String>().to_lowercase()
    };
    let looks = |n: &str| {
        [
            crate::domain::Looks::of(n),
            crate::domain::Looks::of(&n.to_lowercase()),
            crate::domain::Looks::of(&unmarked(n)),
        ]
    };
    let [plain, lower, bare] = looks(name);
    let taken = existing.iter().filter(|p| Some(p.id.as_slice()) != except).any(|p| {
        let [their_plain, their_lower, their_bare] = looks(&p.name);
        their_plain.alike(&plain) || their_lower.alike(&lower) || their_bare.alike(&bare)
    });
    if taken {
        Err(PasskeyError::NameTaken)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("  my phone ").unwrap(), "my phone");
        let stacked = format!("Z{}", "\u{336}\u{30d}\u{357}".repeat(3));
        let long = "n".repeat(65);
        let refused = ["", "   ", "a\nb", "x\u{202e}y", long.as_str(), stacked.as_str()];
        // Blank, only marks, or unassigned (noncharacters too), or U+FFFD from invalid UTF-8.
        let blank_or_unknown = [
            "\u{2800}",
            "\u{2800}\u{2800}",
            "\u{1d159}",
            "\u{fffc} \u{16fe4}\u{2800}",
            "\u{3164}\u{ffa0}",
            "phone\u{fffc}",
            "my\u{2800}key",
            "key\u{1d159}",
            "\u{301}",
            "\u{301}abc",
            "a\u{ffff}b",
            "a\u{fdd0}b",
            "a\u{378}b",
            "a\u{fffd}b",
        ];
        for bad in refused.into_iter().chain(blank_or_unknown) {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
        // Symbols and emoji name devices well: a label shown only to its owner.
        let named = [
            "🔐 Yubikey",
            "iPhone ❤",
            "Zoë's laptop",
            "ノートパソコン",
            "Key\u{20e3}",
            "a\u{300}\u{301}\u{302}\u{303}",
        ];
        for good in named.into_iter().chain(["🇺🇸 👍🏽"]) {
            assert_eq!(parse_name(good).unwrap(), good);
        }
    }

    #[test]
    fn authenticator_data_past_its_key_and_flagged_extensions_is_told() {
        let object = |data: Vec<u8>| {
            let entry = (serde_cbor_2::Value::Text("authData".into()), serde_cbor_2::Value::Bytes(data));
            serde_cbor_2::to_vec(&serde_cbor_2::Value::Map([entry].into_iter().collect())).unwrap()
        };
        // rpIdHash, flags, counter; aaguid, a 1-byte id, the key {1: 2}; extensions {}.
        let data = |flags: u8, tail: &[u8]| {
            let mut d = vec![0u8; 32];
            d.extend([flags, 0, 0, 0, 1]);
            d.extend([0u8; 16]);
            d.extend([0, 1, 0xaa, 0xa1, 0x01, 0x02]);
            d.extend(tail);
            d
        };
        for (flags, tail, past) in [
            (0x45, &[][..], false),
            (0x45, &[0, 0][..], true),
            (0xc5, &[0xa0][..], false),
            (0xc5, &[0xa0, 0][..], true),
            // Extensions flagged but absent, and data cut short: webauthn-rs refuses them.
            (0xc5, &[][..], false),
            (0x45, &[0xa1][..], true),
        ] {
            assert_eq!(has_bytes_past_its_end(&object(data(flags, tail))), past, "{flags:#x} {tail:?}");
        }
        assert!(!has_bytes_past_its_end(&object(vec![0; 20])), "too short to read");
        assert!(!has_bytes_past_its_end(b"not cbor"));
    }

    #[test]
    fn only_client_data_of_a_page_not_framed_by_another_origin_passes() {
        let base = r#""type":"webauthn.get","challenge":"x","origin":"https://localhost:4000""#;
        for (extra, passes) in [
            ("", true),
            (r#","crossOrigin":false"#, true),
            (r#","crossOrigin":false,"topOrigin":null"#, true),
            (r#","crossOrigin":true"#, false),
            (r#","crossOrigin":true,"topOrigin":"https://evil.example""#, false),
            (r#","crossOrigin":false,"topOrigin":"https://evil.example""#, false),
            (r#","topOrigin":"https://localhost:4000""#, false),
        ] {
            let data = format!("{{{base}{extra}}}");
            assert_eq!(made_on_our_pages(data.as_bytes()).is_ok(), passes, "{data}");
        }
        // Not client data at all: webauthn-rs refuses it, with its own reason.
        assert!(made_on_our_pages(b"not json").is_ok());
    }

    #[tokio::test]
    async fn discoverable_sign_ins_store_nothing_and_a_state_that_is_not_one_is_no_ceremony() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let origin = Url::parse("https://localhost:4000").unwrap();
        let passkeys = Passkeys::new(store.clone(), "localhost", &origin, None).unwrap();
        for _ in 0..100 {
            let begun = passkeys.begin_sign_in().unwrap();
            assert!(begun.options.contains("challenge") && begun.state.contains("challenge"));
        }
        assert_eq!(store.passkeys.purge_ceremonies(u64::MAX).await.unwrap(), 0, "none stored");
        for state in ["", "{}", "not json"] {
            assert!(
                matches!(passkeys.finish_sign_in(state, "{}", true).await, Err(PasskeyError::NoCeremony)),
                "{state:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_purge_forgets_addresses_whose_begin_quota_is_full_again() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Url::parse("https://localhost:4000").unwrap();
        let quick = crate::config::Rate { burst: 1, period: std::time::Duration::from_millis(20) };
        let passkeys = Passkeys::new(Store::open(dir.path()).unwrap(), "localhost", &origin, Some(quick)).unwrap();
        let address = crate::client::AddressKey::of("192.0.2.7".parse().unwrap());
        passkeys.spend_begin_quota(&address).unwrap();
        assert!(passkeys.spend_begin_quota(&address).is_err(), "one begin per 20 ms");
        assert_eq!(passkeys.begins_per_address.len(), 1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        passkeys.purge().await.unwrap();
        assert_eq!(passkeys.begins_per_address.len(), 0, "pruned with the ceremonies");
    }

    /// Passkeys on a store in `dir` where alice has the passkeys `k1` ("one") and `k2` ("two").
    async fn alice_with_two_passkeys(dir: &std::path::Path) -> Arc<Passkeys> {
        let store = Store::open(dir).unwrap();
        let origin = Url::parse("https://localhost:4000").unwrap();
        let passkeys = Arc::new(Passkeys::new(store.clone(), "localhost", &origin, None).unwrap());
        store.users.insert(&crate::store::conformance::user("alice"), "hash").await.unwrap();
        for (id, name) in [(b"k1", "one"), (b"k2", "two")] {
            let p = StoredPasskey { name: name.into(), ..crate::store::conformance::passkey(id, "alice", 1) };
            store.passkeys.add_passkey(&p).await.unwrap();
        }
        passkeys
    }

    /// A mark added under a letter (a hook, a dot, another script's vowel sign) does not tell
    /// a name from one already there (review 199); `Zoë's` and `Zoe's` read alike too.
    #[tokio::test]
    async fn a_name_with_a_mark_added_passes_for_the_name_without() {
        let dir = tempfile::tempdir().unwrap();
        let passkeys = alice_with_two_passkeys(dir.path()).await;
        passkeys.rename("alice", b"k1", "Work laptop").await.unwrap();
        for lookalike in ["Work laptop\u{345}", "Work lap\u{323}top", "Work laptop\u{5b4}", "WORK LAPTO\u{301}P"] {
            let outcome = passkeys.rename("alice", b"k2", lookalike).await;
            assert!(matches!(outcome, Err(PasskeyError::NameTaken)), "{lookalike:?}: {outcome:?}");
        }
        assert!(passkeys.rename("alice", b"k2", "Work phone").await.unwrap());
    }

    /// Two renames checked at the same moment each pass the check before the other lands: the
    /// check again after the write undoes one (or both), never leaving lookalikes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_renames_to_lookalike_names_at_once_at_most_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let passkeys = alice_with_two_passkeys(dir.path()).await;
        for round in 0..200 {
            let (a, b) = (format!("Laptop {round}"), format!("LAPTOP {round}"));
            let renames = [(b"k1", a), (b"k2", b)].map(|(id, name)| {
                let passkeys = Arc::clone(&passkeys);
                tokio::spawn(async move { passkeys.rename("alice", id, &name).await })
            });
            for r in renames {
                let outcome = r.await.unwrap();
                assert!(matches!(outcome, Ok(true) | Err(PasskeyError::NameTaken)), "{outcome:?}");
            }
            let names: Vec<String> = passkeys.list("alice").await.unwrap().into_iter().map(|p| p.name).collect();
            assert!(
                name_for(&names[0], &passkeys.list("alice").await.unwrap(), Some(b"k1")).is_ok(),
                "round {round}: {names:?}"
            );
        }
    }

    /// A rename undone for a lookalike goes back to the name it replaced, and only while its
    /// own name stands: a third rename that answered well stays (a review saw one reverted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undoing_a_rename_keeps_a_rename_made_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let passkeys = alice_with_two_passkeys(dir.path()).await;
        for round in 0..200 {
            let renames = [
                (b"k1", format!("Laptop {round}")),
                (b"k2", format!("LAPTOP {round}")),
                (b"k1", format!("Desk {round}")),
            ]
            .map(|(id, name)| {
                let passkeys = Arc::clone(&passkeys);
                tokio::spawn(async move { passkeys.rename("alice", id, &name).await })
            });
            let mut outcomes = Vec::new();
            for r in renames {
                outcomes.push(r.await.unwrap());
            }
            let k1 = passkeys.list("alice").await.unwrap().into_iter().find(|p| p.id == b"k1").unwrap().name;
            if matches!(outcomes[2], Ok(true)) && matches!(outcomes[0], Err(PasskeyError::NameTaken)) {
                assert_eq!(k1, format!("Desk {round}"), "round {round}: {outcomes:?}");
            }
        }
    }

    #[test]
    fn the_rp_id_is_the_setting_or_else_the_public_host() {
        let origin = Url::parse("https://login.example.com:8443").unwrap();
        assert_eq!(rp_id(None, &origin).as_deref(), Some("login.example.com"));
        assert_eq!(rp_id(Some("example.com"), &origin).as_deref(), Some("example.com"));
        assert_eq!(rp_id(Some(""), &origin).as_deref(), Some("login.example.com"));
    }
}
