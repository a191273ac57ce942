//! Second factors: what a user can prove besides the password, and the checks of each.
//! [`FactorKind`] names the kinds (the log's `kind`), [`Proof`] is what a client offers at
//! `/login/second-factor`, and [`SecondFactors`] checks a proof against the store (each TOTP
//! step and each recovery code is accepted once) and manages enrolment. NIST SP 800-63B §5.1.4
//! (single-factor OTP devices) and §5.1.2 (look-up secrets) are the rules followed.

pub mod key;
pub mod recovery;
pub mod totp;

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit::FailureReason;
use crate::session::SessionToken;
use crate::store::{
    now_ms, FactorSummary, Holding, PendingSignIn, RecoveryCodeUse, Store, StoreError, TokenHash, TotpFactor, User,
};
pub use key::{FactorKey, KeyError};

/// The cookie that carries a pending two-step sign-in between the password and the second
/// factor (`__Host-`: this origin only, Secure, Path=/).
pub const MFA_COOKIE: &str = "__Host-portcullis-mfa";

/// How long a pending two-step sign-in lasts (SPEC.md: 5 minutes).
pub const PENDING_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// How long the browser keeps [`MFA_COOKIE`]: an hour past [`PENDING_LIFETIME`], so that a
/// step finished too late still names its pending sign-in, and the page says it ran out
/// (`/login?ended=step`) rather than showing a bare sign-in form (review 209: the cookie went
/// with the step, so the promised notice never showed). The server judges the lifetime.
pub const MFA_COOKIE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5 * 60 + 3600);

/// A kind of second factor, as logged (`mfa_added`/`mfa_removed` `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorKind {
    /// An authenticator app (RFC 6238).
    Totp,
    /// A set of single-use recovery codes.
    RecoveryCodes,
    /// A passkey (WebAuthn, user-verified): see [`crate::passkeys`].
    Passkey,
}

impl FactorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FactorKind::Totp => "totp",
            FactorKind::RecoveryCodes => "recovery_codes",
            FactorKind::Passkey => "passkey",
        }
    }
}

/// What [`SecondFactors::new_recovery_codes`] did.
#[derive(Debug)]
pub enum NewCodes {
    /// The new codes, stored, to be shown once.
    Made(Vec<Zeroizing<String>>),
    /// The user's codes changed between reading and replacing them (another set was made at
    /// the same moment): nothing stored; the other set is the one that works.
    Changed,
    /// No such user (deleted meanwhile).
    NoUser,
}

/// What a client offers as its second factor. Holds a secret: no `Debug`.
pub enum Proof {
    /// A TOTP code as typed or pasted.
    Totp(Zeroizing<String>),
    /// A recovery code as typed.
    RecoveryCode(Zeroizing<String>),
    /// A passkey's answer (`PublicKeyCredential` JSON) to the ceremony bound to the browser's
    /// `__Host-portcullis-webauthn` cookie (its value, if sent).
    Passkey { ceremony: Option<String>, credential: String },
}

impl Proof {
    /// The proof a form's fields make: `code` (the one-time-code input; a recovery code typed
    /// there is read as one) or `recovery_code`. `None` when both are empty.
    pub fn from_fields(code: &str, recovery_code: &str) -> Option<Proof> {
        if !recovery_code.trim().is_empty() {
            return Some(Proof::RecoveryCode(Zeroizing::new(recovery_code.to_string())));
        }
        let code = code.trim();
        if code.is_empty() {
            None
        } else if totp::normalise_code(code).is_none() && recovery::normalise(code).is_some() {
            Some(Proof::RecoveryCode(Zeroizing::new(code.to_string())))
        } else {
            Some(Proof::Totp(Zeroizing::new(code.to_string())))
        }
    }
}

/// What a proof came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the kind of factor, and for a passkey its credential id (raw bytes), which
    /// the session keeps so that removing the passkey ends it.
    Accepted(FactorKind, Option<Vec<u8>>),
    /// One of the user's unused recovery codes, by its keyed hash: accepted, but not used up
    /// yet. The sign-in uses it up ([`SecondFactors::use_recovery_code`]) once its session is
    /// stored and before it is answered, so that a store failing in between costs no code; of
    /// two sign-ins with one code, the one that uses it up goes on.
    RecoveryCodeUnused([u8; 32]),
    /// Refused, with the log's reason (`bad_second_factor` or `reused_code`).
    Refused(FailureReason),
    /// A passkey refused because its signature counter did not move forward (a copy of it may
    /// be in use; the passkey is flagged): a wrong factor (`bad_second_factor`), worth an
    /// event of its own. Holds the passkey's name.
    PossibleClone(String),
    /// Nothing was checked: the passkey answer's ceremony is not this pending sign-in's open
    /// one (it expired, was used by the same answer sent at once, or the sign-in began another
    /// since), or the answer is to another challenge. Not a wrong factor: nothing was guessed.
    Unchecked,
}

/// How a removal of the authenticator app ended ([`SecondFactors::remove_totp`]).
#[derive(Debug)]
pub enum TotpRemoval {
    /// Removed, with the recovery codes that went with it (no factor left), and the other
    /// sessions it (or a recovery code) signed in that were ended: an error when they could
    /// not be, though the app is removed.
    Removed { codes_voided: usize, sessions_ended: Result<usize, StoreError> },
    /// No app is set up (it was removed already: the form sent twice, or from two windows).
    NotThere,
    /// Another app than the one asked about is set up now (replaced from another window
    /// since the page was shown): nothing was removed.
    Changed,
}

/// How an authenticator enrolment ended ([`SecondFactors::enrol_totp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolment {
    Enrolled,
    /// The code is not valid for the secret now: nothing changed.
    WrongCode,
    /// The user's authenticator is no longer the one the enrolment began with (another
    /// window enrolled or removed one first), or the user is gone: nothing changed.
    Changed,
    /// The session that asked was ended while the enrolment was written (`user
    /// reset-factors`, a password change, *sign out everywhere else*, the removal of the
    /// passkey it was signed in with): what it wrote was taken back ([`Asker::still_holds`]).
    Superseded,
    /// This very secret is the user's authenticator already: the same form was sent twice (a
    /// double click), and the other sending set it up. Nothing changed here.
    SentTwice,
}

/// Who asks for a change of factors: the user, and what the session asking holds (its
/// credential generation and passkey, as it was read for the request).
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    pub user_key: &'a str,
    pub holding: Holding<'a>,
}

impl<'a> Asker<'a> {
    /// The session `session` asking.
    pub fn of(session: &'a crate::store::Session) -> Self {
        Asker { user_key: &session.user_key, holding: Holding::of(session) }
    }

    /// A session of `user_key` in `generation` signed in without a passkey.
    pub fn in_generation(user_key: &'a str, generation: u64) -> Self {
        Asker { user_key, holding: Holding::generation(generation) }
    }

    /// Whether the asking session still stands: its user still in its credential generation,
    /// and the passkey it was signed in with, if any, still the user's. A factor a signed-in
    /// request adds stands only if this holds after the write, so nothing under way undoes what
    /// ended the session meanwhile: a `user reset-factors` (which begins a new generation
    /// before it removes the factors), *sign out everywhere else*, a password change, or the
    /// removal of that passkey (which removes the passkey before its sessions). A user who is
    /// gone holds nothing.
    ///
    /// # Errors
    /// [`StoreError`] when the user or the passkey cannot be read.
    pub async fn still_holds(&self, store: &Store) -> Result<bool, StoreError> {
        let Holding { generation, passkey_id } = self.holding;
        let in_generation = store.users.get(self.user_key).await?.is_some_and(|u| u.password_changed_at == generation);
        if !in_generation {
            return Ok(false);
        }
        match passkey_id {
            Some(id) => store.passkeys.holds(self.user_key, id).await,
            None => Ok(true),
        }
    }
}

/// Why a proof could not be judged or a factor not changed.
#[derive(Debug, thiserror::Error)]
pub enum FactorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot make a TOTP secret or QR code: {0}")]
    Totp(#[from] totp::TotpError),
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

impl FactorError {
    /// Whether the store could not be used (answer 503, fail closed).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, FactorError::Store(e) if e.is_unavailable()) || matches!(self, FactorError::Random(_))
    }
}

/// Voids the user's recovery codes once no second factor is left: every way of removing the
/// last authenticator app or passkey ends here, after the removal. They stand in for a factor:
/// kept, they would wait to come back into use with the next one, so codes handed to whoever
/// added a factor the owner has since removed could work again.
///
/// Returns how many codes were voided, for the caller to log their removal beside the
/// factor's (`mfa_removed` with kind `recovery_codes`).
///
/// A store that fails here is reported, not returned: the removal before it happened and is
/// answered and logged as one. Codes left behind sign nobody in (without a second factor no
/// second step is asked for, and new codes need a factor), and the next first factor replaces
/// them whatever is stored (`routes::account::recovery_codes::codes_with_first_factor`).
pub(crate) async fn void_codes_without_factor(store: &Store, user_key: &str) -> usize {
    let voided = async {
        let summary = store.factors.summary(user_key).await?;
        if summary.has_second_factor() || summary.recovery_codes == 0 {
            return Ok(0);
        }
        store.factors.set_recovery_codes(user_key, &[], None).await?;
        Ok::<usize, StoreError>(summary.recovery_codes)
    };
    voided.await.unwrap_or_else(|e| {
        let what = "could not void the recovery codes left without a second factor";
        crate::fault_log::report(what, crate::fault_log::Severity::Error, e.is_unavailable(), &e);
        0
    })
}

/// A code as typed (TOTP, recovery) without the spaces, tabs and dashes people and apps put in
/// it, each other character through `map`, after NFKC (UAX #15), so full-width digits and
/// letters, as a Japanese or Chinese input method types them (`１２３４５６`), are the ASCII
/// ones (review 137). Wiped when dropped, a code or not; sized up front so no reallocation
/// leaves a copy behind (NFKC never lengthens a full-width or ASCII character).
fn compact_code(typed: &str, map: impl Fn(char) -> char) -> Zeroizing<String> {
    use unicode_normalization::UnicodeNormalization;
    let mut code = Zeroizing::new(String::with_capacity(typed.len()));
    code.extend(typed.nfkc().filter(|c| !c.is_whitespace() && *c != '-').map(map));
    code
}

/// The second-factor service: checks and enrolment, over the store and the factor key.
#[derive(Clone)]
pub struct SecondFactors {
    store: Store,
    key: Arc<FactorKey>,
    /// Checks passkey proofs; `None` (no passkey proof accepted) until set.
    passkeys: Option<crate::passkeys::Passkeys>,
}

impl SecondFactors {
    pub fn new(store: Store, key: Arc<FactorKey>) -> Self {
        SecondFactors { store, key, passkeys: None }
    }

    /// The same service, checking passkey proofs with `passkeys`.
    pub fn with_passkeys(mut self, passkeys: crate::passkeys::Passkeys) -> Self {
        self.passkeys = Some(passkeys);
        self
    }

    /// What factors the user has.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn summary(&self, user_key: &str) -> Result<FactorSummary, StoreError> {
        self.store.factors.summary(user_key).await
    }

    /// [`SecondFactors::summary`] with the user's credential generation (`None`: no such
    /// user), in the same one read ([`crate::store::FactorStore::summary_with_generation`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn summary_with_generation(&self, user_key: &str) -> Result<(FactorSummary, Option<u64>), StoreError> {
        self.store.factors.summary_with_generation(user_key).await
    }

    /// Checks `proof` for `user_key` at `now_secs`, the second step of the pending sign-in
    /// `pending` (a passkey answers that sign-in's own check), and uses it up when accepted
    /// (a TOTP step is accepted once, RFC 6238 §5.2); a recovery code, accepted once (NIST SP
    /// 800-63B §5.1.2.2), is used up by the caller with the session it signs in
    /// ([`Verdict::RecoveryCodeUnused`]).
    ///
    /// # Errors
    /// [`FactorError`] when the store cannot be used or the secret cannot be opened.
    pub async fn verify(
        &self,
        user_key: &str,
        pending: &TokenHash,
        proof: &Proof,
        now_secs: u64,
    ) -> Result<Verdict, FactorError> {
        let bad = Verdict::Refused(FailureReason::BadSecondFactor);
        match proof {
            Proof::Totp(code) => {
                let Some(stored) = self.store.factors.totp(user_key).await? else { return Ok(bad) };
                let secret = self.key.open(user_key, &stored.sealed_secret)?;
                let Some(step) = totp::check(&secret, code, now_secs) else { return Ok(bad) };
                if self.store.factors.use_totp_step(user_key, step).await? {
                    Ok(Verdict::Accepted(FactorKind::Totp, None))
                } else {
                    Ok(Verdict::Refused(FailureReason::ReusedCode))
                }
            }
            Proof::RecoveryCode(code) => {
                let Some(code) = recovery::normalise(code) else { return Ok(bad) };
                let hash = self.key.recovery_hash(user_key, &code);
                // Checked here and used up only once the session it signs in is stored
                // ([`SecondFactors::use_recovery_code`]): used up first, a store that failed in
                // between lost the user the code behind a 503 (review 200).
                if self.store.factors.recovery_codes(user_key).await?.contains(&hash) {
                    return Ok(Verdict::RecoveryCodeUnused(hash));
                }
                // Not an unused code: the store tells a used one from a wrong one, changing
                // nothing for either.
                match self.store.factors.use_recovery_code(user_key, &hash).await? {
                    // Issued between the two reads (a new set made meanwhile) and used up now.
                    RecoveryCodeUse::Used => Ok(Verdict::Accepted(FactorKind::RecoveryCodes, None)),
                    RecoveryCodeUse::UsedBefore => Ok(Verdict::Refused(FailureReason::ReusedCode)),
                    RecoveryCodeUse::NotIssued => Ok(bad),
                }
            }
            Proof::Passkey { ceremony, credential } => {
                let Some(passkeys) = &self.passkeys else { return Ok(bad) };
                // The ceremony is taken (one use; an answer to another challenge leaves it) and
                // the counter noted inside; any refusal of an answer checked (another user's
                // passkey, a bad signature) is a wrong factor.
                match passkeys.finish_second_factor(user_key, pending, ceremony.as_deref(), credential).await {
                    Ok(used) => Ok(Verdict::Accepted(FactorKind::Passkey, Some(used.passkey_id))),
                    Err(crate::passkeys::PasskeyError::Store(e)) => Err(e.into()),
                    Err(crate::passkeys::PasskeyError::NoCeremony | crate::passkeys::PasskeyError::AnswerUsed) => {
                        Ok(Verdict::Unchecked)
                    }
                    Err(crate::passkeys::PasskeyError::PossibleClone { name, .. }) => Ok(Verdict::PossibleClone(name)),
                    Err(e) => {
                        tracing::debug!(error = %e, "passkey refused as a second factor");
                        Ok(bad)
                    }
                }
            }
        }
    }

    /// Uses up the recovery code whose keyed hash [`Verdict::RecoveryCodeUnused`] gave, durably:
    /// [`RecoveryCodeUse::Used`] if it was still unused, else what it is now (used by another
    /// sign-in meanwhile, or void: a new set was made or the factors were reset).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write it.
    pub async fn use_recovery_code(&self, user_key: &str, hash: &[u8; 32]) -> Result<RecoveryCodeUse, StoreError> {
        self.store.factors.use_recovery_code(user_key, hash).await
    }

    /// Counts one more wrong code for the user in the run that began at `run_began` (Unix ms);
    /// the run's count now ([`crate::store::FactorStore::add_wrong_code`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write it.
    pub async fn add_wrong_code(&self, user_key: &str, run_began: u64) -> Result<u32, StoreError> {
        self.store.factors.add_wrong_code(user_key, run_began).await
    }

    /// The wrong codes counted for the user in the run that began at `run_began` (Unix ms).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn wrong_codes(&self, user_key: &str, run_began: u64) -> Result<u32, StoreError> {
        self.store.factors.wrong_codes(user_key, run_began).await
    }

    /// When the user's authenticator app was enrolled (Unix ms), if they have one: what an
    /// enrolment page shows it would replace ([`SecondFactors::enrol_totp`]'s `replacing`).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn totp_enrolled_at(&self, user_key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.store.factors.totp(user_key).await?.map(|t| t.created_at))
    }

    /// Enrols `secret` as the user's authenticator if `code` is valid for it now and the
    /// authenticator they have is still `replacing` ([`SecondFactors::totp_enrolled_at`] when
    /// the enrolment began; `None`: none); the code's step counts as used.
    ///
    /// # Errors
    /// [`FactorError`] when the store cannot be used, or records another factor key
    /// ([`KeyError::OtherKey`]).
    pub async fn enrol_totp(
        &self,
        asker: &Asker<'_>,
        secret: &[u8],
        code: &str,
        replacing: Option<u64>,
    ) -> Result<Enrolment, FactorError> {
        let user_key = asker.user_key;
        let now = now_ms();
        let Some(step) = totp::check(secret, code, now / 1000) else { return Ok(Enrolment::WrongCode) };
        self.keys_agree().await?;
        let sealed = self.key.seal(user_key, secret)?;
        // The enrolment code cannot sign in afterwards: its step is taken (or a later one was)
        // before the authenticator is stored, so a store failing between the two writes leaves
        // a used step and no authenticator, never an authenticator whose enrolment code still
        // signs in after a 503. A refusal (the step was used before) changes nothing here.
        self.store.factors.use_totp_step(user_key, step).await?;
        let totp = TotpFactor { sealed_secret: sealed, created_at: now };
        if self.store.factors.set_totp(user_key, &totp, replacing).await? {
            // Written after the asking session ended (a reset, *sign out everywhere else*, its
            // passkey removed): taken back. No other enrolment can have come between, as it
            // would have found this one and been refused. A replacement taken back leaves no
            // authenticator: the one it replaced is gone, and an app the session that is over
            // chose must not stay.
            if !asker.still_holds(&self.store).await? {
                self.remove_app(user_key, Some(totp.created_at)).await?;
                return Ok(Enrolment::Superseded);
            }
            Ok(Enrolment::Enrolled)
        } else {
            // The same form sent twice: the other sending stored this secret (review 129 was
            // told to delete a working entry from the app). Compared in constant time, as
            // secrets are.
            if let Some(stored) = self.store.factors.totp(user_key).await? {
                let opened = self.key.open(user_key, &stored.sealed_secret)?;
                if bool::from(subtle::ConstantTimeEq::ct_eq(opened.as_slice(), secret)) {
                    return Ok(Enrolment::SentTwice);
                }
            }
            // Another session's first factor came first and ended this one (review 131 was
            // offered a new secret "to replace it", as if still signed in).
            if !asker.still_holds(&self.store).await? {
                return Ok(Enrolment::Superseded);
            }
            // Another enrolment (another window) or a removal came first, or the user is gone.
            Ok(Enrolment::Changed)
        }
    }

    /// Checks, before keying anything, that this server's factor key is the one the store
    /// records (and records it if none is, as after `store forget-factor-key`): a server left
    /// running with another key must not seal factors the others cannot open.
    ///
    /// # Errors
    /// [`KeyError::OtherKey`] when the store records another key; [`FactorError::Store`]
    /// when it cannot be read.
    async fn keys_agree(&self) -> Result<(), FactorError> {
        let ours = self.key.fingerprint();
        if self.store.secrets.claim(key::FINGERPRINT_NAME, &ours).await? != ours {
            return Err(KeyError::OtherKey.into());
        }
        Ok(())
    }

    /// Whether the store records a factor key other than this server's: another was recorded
    /// after `store forget-factor-key` while this server ran on. It can then neither open
    /// what the other servers seal nor seal what they can open, so it is not ready
    /// (`GET /readyz`). No key recorded is no disagreement: the next enrolment records this
    /// server's.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn has_another_key(&self) -> Result<bool, StoreError> {
        let recorded = self.store.secrets.get(key::FINGERPRINT_NAME).await?;
        Ok(recorded.is_some_and(|r| r != self.key.fingerprint()))
    }

    /// Removes the user's authenticator app if it is the one set up at `enrolled_at` (Unix ms,
    /// as the page that asked showed it; `None`: whichever it is); when no other second factor
    /// is left the recovery codes go too (they stand in for a factor the user no longer has).
    /// Then signs out the user's other sessions whose second step was not a passkey (the app's
    /// code or a recovery code: [`SecondFactors::end_app_sessions`]), but `keep`: as a passkey's
    /// removal ends the sessions it signed in, so a phone that is lost stops counting where it
    /// signed in too (review 137: a thief's session kept passing `two_factor` rules).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be used; nothing was removed then.
    pub async fn remove_totp(
        &self,
        user_key: &str,
        enrolled_at: Option<u64>,
        keep: Option<&TokenHash>,
    ) -> Result<TotpRemoval, StoreError> {
        let Some(codes_voided) = self.remove_app(user_key, enrolled_at).await? else {
            return Ok(match self.store.factors.totp(user_key).await? {
                Some(_) => TotpRemoval::Changed,
                None => TotpRemoval::NotThere,
            });
        };
        let sessions_ended = self.end_app_sessions(user_key, keep).await;
        Ok(TotpRemoval::Removed { codes_voided, sessions_ended })
    }

    /// Signs out the user's sessions but `keep` whose second step was not a passkey: those the
    /// authenticator app signed in (or a recovery code; a session does not tell them apart),
    /// after the app was removed or replaced. Returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be used.
    pub async fn end_app_sessions(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize, StoreError> {
        self.store.sessions.delete_for_app(user_key, keep).await
    }

    /// Removes the app ([`FactorStore::remove_totp`]) and, with it the last factor, the
    /// recovery codes: `None` when no such app was there, else how many codes went.
    async fn remove_app(&self, user_key: &str, enrolled_at: Option<u64>) -> Result<Option<usize>, StoreError> {
        if !self.store.factors.remove_totp(user_key, enrolled_at).await? {
            return Ok(None);
        }
        Ok(Some(void_codes_without_factor(&self.store, user_key).await))
    }

    /// A fingerprint of the user's recovery codes as they are now, for a page's form to send
    /// back with a request for new ones ([`SecondFactors::new_recovery_codes`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn codes_seen(&self, user_key: &str) -> Result<String, StoreError> {
        Ok(recovery::fingerprint(&self.store.factors.recovery_codes(user_key).await?))
    }

    /// Makes a new set of recovery codes for the user in place of the set they have now (the
    /// old ones are void) and returns them to be shown once. `seen`: the
    /// [`SecondFactors::codes_seen`] of the page that asked, whose codes are the ones to
    /// replace (`None`: whatever the user has now). Of two sets asked for from the same old
    /// set (two tabs, a double submit, two instances), one is stored and the other is
    /// [`NewCodes::Changed`], never shown as if it worked. (Unlike the factors, codes written
    /// after a reset need no taking back: without a factor they sign nobody in, and the next
    /// first factor replaces them: `void_codes_without_factor`.)
    ///
    /// # Errors
    /// [`FactorError`] when no random bytes can be had, the store cannot be used, or it
    /// records another factor key ([`KeyError::OtherKey`]).
    pub async fn new_recovery_codes(&self, user_key: &str, seen: Option<&str>) -> Result<NewCodes, FactorError> {
        self.keys_agree().await?;
        let before = self.store.factors.recovery_codes(user_key).await?;
        if seen.is_some_and(|seen| seen != recovery::fingerprint(&before)) {
            return Ok(NewCodes::Changed);
        }
        let codes = recovery::generate()?;
        let hashes: Vec<[u8; 32]> =
            codes.iter().filter_map(|c| recovery::normalise(c)).map(|c| self.key.recovery_hash(user_key, &c)).collect();
        if self.store.factors.set_recovery_codes(user_key, &hashes, Some(&before)).await? {
            return Ok(NewCodes::Made(codes));
        }
        Ok(match self.store.users.get(user_key).await? {
            Some(_) => NewCodes::Changed,
            None => NewCodes::NoUser,
        })
    }
}

impl SecondFactors {
    /// Starts a two-step sign-in for `user` (whose password was just verified): a pending
    /// sign-in in the store, under the hash of the returned token (the cookie's value);
    /// `captcha_solved`: the password step solved the captcha ([`PendingSignIn::captcha_solved`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write or no random token can be made.
    pub async fn begin(
        &self,
        user: &User,
        next: Option<&str>,
        captcha_solved: bool,
    ) -> Result<SessionToken, StoreError> {
        let token = SessionToken::generate()?;
        let now = now_ms();
        let pending = PendingSignIn {
            user_key: user.key.clone(),
            password_changed_at: user.password_changed_at,
            created_at: now,
            expires_at: now.saturating_add(PENDING_LIFETIME.as_millis() as u64),
            next: next.map(str::to_string),
            captcha_solved,
            codes_refused: 0,
        };
        self.store.factors.insert_pending(&token.hash(), &pending).await?;
        Ok(token)
    }

    /// Stores `pending` again under `hash`, as it was before [`SecondFactors::finish`] took it:
    /// for a step that turned out to check nothing.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write.
    pub async fn put_back(&self, hash: &TokenHash, pending: &PendingSignIn) -> Result<(), StoreError> {
        self.store.factors.insert_pending(hash, pending).await
    }

    /// The pending sign-in a cookie value names, if it is one, unexpired, and its user still
    /// exists, is enabled, has the password that was checked and a second factor to give
    /// (otherwise it is removed: after `user reset-factors` the step could only be failed).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn pending(&self, cookie: &str) -> Result<Option<(TokenHash, PendingSignIn, User)>, StoreError> {
        let Some(token) = SessionToken::parse(cookie) else { return Ok(None) };
        let hash = token.hash();
        let Some(pending) = self.store.factors.pending(&hash).await? else { return Ok(None) };
        match self.holder(&pending).await? {
            Some(u) => Ok(Some((hash, pending, u))),
            None => {
                self.store.factors.take_pending(&hash).await?;
                Ok(None)
            }
        }
    }

    /// The user `pending` may still sign in: unexpired, the user there, enabled, with the
    /// password that was checked and a second factor to give; `None` otherwise.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    pub async fn holder(&self, pending: &PendingSignIn) -> Result<Option<User>, StoreError> {
        let valid = pending.expires_at > now_ms();
        let user = self
            .store
            .users
            .get(&pending.user_key)
            .await?
            .filter(|u| valid && !u.disabled && u.password_changed_at == pending.password_changed_at);
        Ok(match user {
            Some(u) if self.summary(&u.key).await?.has_second_factor() => Some(u),
            _ => None,
        })
    }

    /// Ends a pending sign-in; `true` for the one caller that ended it (single use).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write.
    pub async fn finish(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        self.store.factors.take_pending(hash).await
    }

    /// Removes pending sign-ins past their lifetime; returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot write.
    pub async fn purge(&self) -> Result<usize, StoreError> {
        self.store.factors.purge_pending(now_ms()).await
    }
}
