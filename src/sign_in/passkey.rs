//! Signing in with a passkey from `/login` (a discoverable credential: no username, no
//! password, no captcha). The same defences as a password sign-in, in the same order where
//! they apply (see the parent module):
//! 1. the per-address quota (beginning a ceremony counts against a quota of its own at the
//!    same rate, in this process; the answer against the password form's),
//! 2. CSRF, bound to the pre-login cookie; the ceremony's state, sealed to that cookie's
//!    value when it began (`csrf::Csrf::seal_ceremony`), is kept by the browser, not the
//!    store, and is used once because the value is retired by the sign-in,
//! 3. no captcha: a user-verified passkey is not guessable, and this is the accessible way
//!    past the picture (WCAG 2.2 SC 3.3.8, "Accessible Authentication (Minimum)"),
//! 4. the assertion (webauthn-rs); a failure adds to the address's failure count and is
//!    recorded with reason `bad_passkey` for the user the answer names (the owner of a passkey
//!    removed within `audit_retention` too: a lost key still tried shows under its user),
//! 5. on success the same as a password sign-in, with a session of [`Factors::Two`].
//!
//! No per-username defence: an assertion is a signature, nothing to guess, and the
//! credential id that names its user is not a secret. Spending the named user's quota or
//! failure count would let anyone who has seen an id (a second step's options list them)
//! keep that user's password sign-in at 429 or behind the captcha without solving one. The
//! per-address quota and count bound the attempts.

use super::{Judged, Outcome, SignIn, SignInError};
use crate::audit::{AuthEvent, Client, FailureReason};
use crate::brute_force::Retire;
use crate::passkeys::{Begun, Claimed, PasskeyError, Passkeys, CEREMONY_LIFETIME};
use crate::rate_limit::username_digest;
use crate::session::{SessionToken, SignedInWith};
use crate::store::{now_ms, Factors};

/// A passkey sign-in as the client sent it. Nothing here has been checked.
pub struct PasskeyAttempt<'a> {
    pub client: &'a Client,
    /// The form's CSRF token.
    pub csrf: &'a str,
    /// The `__Host-portcullis-pre` cookie's value, if any.
    pub prelogin: Option<&'a str>,
    /// The `__Host-portcullis-webauthn` cookie's value, if any.
    pub ceremony: Option<&'a str>,
    /// The browser's `PublicKeyCredential`, as JSON.
    pub credential: &'a str,
    /// The browser's current session, ended on success.
    pub previous_session: Option<SessionToken>,
    /// The browser's device cookie, if any, kept with the new token.
    pub device: Option<&'a str>,
}

/// What beginning a passkey sign-in gave.
pub enum BeginOutcome {
    Begun(Begun),
    Refused(super::Refusal),
}

fn store(what: &'static str) -> impl FnOnce(PasskeyError) -> SignInError {
    move |e| match e {
        PasskeyError::Store(source) => SignInError::Store { what, source },
        other => SignInError::Unexpected(anyhow::anyhow!(other)),
    }
}

impl SignIn {
    /// Begins a passkey sign-in: the address quota and CSRF, then a ceremony sealed to the
    /// pre-login value (nothing stored).
    ///
    /// # Errors
    /// As [`SignIn::attempt`]; [`SignInError::Unexpected`] when passkeys are off.
    pub async fn begin_passkey(
        &self,
        passkeys: &Passkeys,
        client: &Client,
        csrf: &str,
        prelogin: Option<&str>,
    ) -> Result<BeginOutcome, SignInError> {
        let judged =
            Judged { service: self, client, username: "", digest: None, known_browser: false, username_exempt: false };
        // A quota of its own, not the password form's: a button pressed again and again (a
        // passkey not found, an office behind one address) must not use up the address's
        // sign-ins.
        if let Err(wait) = passkeys.spend_begin_quota(&client.key()) {
            let refused = judged.refuse(FailureReason::RateLimited, Some(wait), false).await;
            return Ok(BeginOutcome::Refused(refusal(refused)?));
        }
        let now = now_ms();
        let Some(prelogin) = self.valid_prelogin(csrf, prelogin, now).await? else {
            return Ok(BeginOutcome::Refused(refusal(judged.refuse(FailureReason::Csrf, None, false).await)?));
        };
        let begun = passkeys.begin_sign_in().map_err(store("could not begin a passkey sign-in"))?;
        let expires_at = now / 1000 + CEREMONY_LIFETIME.as_secs();
        let cookie = self.csrf.seal_ceremony(&prelogin, &begun.state, expires_at);
        Ok(BeginOutcome::Begun(Begun { options: begun.options, cookie }))
    }

    /// The per-address quota (every attempt counts, before any store lookup), refusing
    /// (recorded) when it is used up.
    async fn address_quota(&self, judged: &Judged<'_>) -> Result<Option<super::Refusal>, SignInError> {
        if let Err(wait) = self.spend_address_quota(judged.client.key(), now_ms()).await? {
            let refused = judged.refuse(FailureReason::RateLimited, Some(wait.retry_after_secs()), false).await;
            return Ok(Some(refusal(refused)?));
        }
        Ok(None)
    }

    async fn valid_prelogin(
        &self,
        csrf: &str,
        prelogin: Option<&str>,
        now: u64,
    ) -> Result<Option<crate::csrf::PreLogin>, SignInError> {
        let pre = match prelogin.and_then(|v| self.csrf.prelogin(v, now / 1000)) {
            Some(pre) if !self.state.is_retired(pre.id()).await? => pre,
            _ => return Ok(None),
        };
        Ok(self.csrf.check_login(pre.value(), csrf, now / 1000).then_some(pre))
    }

    /// Judges a passkey sign-in in the order of the module note.
    ///
    /// # Errors
    /// As [`SignIn::attempt`].
    #[tracing::instrument(name = "sign_in_passkey", skip_all)]
    pub async fn with_passkey(&self, passkeys: &Passkeys, a: PasskeyAttempt<'_>) -> Result<Outcome, SignInError> {
        let began_at = now_ms();
        let anonymous = Judged {
            service: self,
            client: a.client,
            username: "",
            digest: None,
            known_browser: false,
            username_exempt: false,
        };
        if let Some(refused) = self.address_quota(&anonymous).await? {
            return Ok(Outcome::Refused(refused));
        }
        // The user the answer names, for the record only (see the module note).
        let claimed = passkeys.claimed(a.credential).await.map_err(store("could not look up a passkey"))?;
        let user_key = match &claimed {
            Claimed::Passkey(p) => p.user_key.clone(),
            // Refused below as any unknown passkey, and recorded under whose it was.
            Claimed::Removed(former_owner) => former_owner.clone(),
            Claimed::Nothing => String::new(),
        };
        // For the records only: a passkey sign-in spends no username's quota.
        let known_browser = !user_key.is_empty() && self.device_token_issued(a.device, &user_key, now_ms()).is_some();
        let judged = Judged { username: &user_key, known_browser, ..anonymous };
        let Some(prelogin) = self.valid_prelogin(a.csrf, a.prelogin, now_ms()).await? else {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        };
        let address = a.client.key();
        // No ceremony that opens (expired, begun in another browser or with another form, or
        // before a restart on sled): nothing was checked, nothing guessed, so it is an expired
        // form (403, reload), as for a password form, not a refused passkey counted towards
        // the address's captcha (a restart would otherwise count every sign-in in flight).
        let Some(state) = a.ceremony.and_then(|c| self.csrf.open_ceremony(&prelogin, c, now_ms() / 1000)) else {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        };
        // The user as read before the passkey is checked: its credential generation is the
        // session's, so a `user reset-factors` that removes this passkey after the check ends
        // the session however late it is stored (`UserAdmin::reset_factors`).
        let named = match &claimed {
            Claimed::Passkey(p) => passkeys
                .user(&p.user_key)
                .await
                .map_err(|source| SignInError::Store { what: "could not read the passkey's user", source })?,
            Claimed::Removed(_) | Claimed::Nothing => None,
        };
        // A disabled account's verified answer signs nobody in: not its passkey's last use.
        let signs_in = named.as_ref().is_some_and(|u| !u.disabled);
        let verified = match passkeys.finish_sign_in(&state, a.credential, signs_in).await {
            Ok(v) => v,
            Err(PasskeyError::Store(source)) => {
                return Err(SignInError::Store { what: "passkey sign-in failed: the store cannot be used", source })
            }
            // The same answer sent twice (a double click, a retried request): its twin signed
            // in, or is signing in, with this form, so this one is an expired form, as a
            // password form sent twice is (nothing new was proved or guessed, nothing flagged).
            Err(PasskeyError::AnswerUsed) => return judged.refuse(FailureReason::Csrf, None, false).await,
            Err(e) => {
                if let PasskeyError::PossibleClone { user_key, name } = &e {
                    let event =
                        AuthEvent::PasskeyCloneSuspected { username: user_key, passkey: name, client: a.client };
                    self.audit.record(&event);
                }
                tracing::debug!(error = %e, "passkey refused");
                let counted = self.state.record_failure(address, None, now_ms()).await?;
                return judged.refuse_counted(FailureReason::BadPasskey, counted).await;
            }
        };
        // The verified passkey is the claimed one (the same credential id), so its user is
        // `named`, unless the passkey moved meanwhile (removed and registered again).
        let user = match named.filter(|u| u.key == verified.user_key) {
            Some(u) if !u.disabled => u,
            found => {
                let reason = if found.is_some() { FailureReason::Disabled } else { FailureReason::UnknownUser };
                let counted = self.state.record_failure(address, None, now_ms()).await?;
                return judged.refuse_counted(reason, counted).await;
            }
        };
        // The form signs in once, as for a password, and the username's failures are
        // counted for the record, in one step of the state.
        let retire = Retire::of(&prelogin);
        let ended = self.state.succeed(None, Some(retire), Some(username_digest(&user.key)), now_ms()).await?;
        let Some(after_failures) = ended else {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        };
        let browser = super::Browser { session: a.previous_session.as_ref(), device: a.device, began_at };
        let name = Some(verified.passkey_name.as_str());
        let with = SignedInWith { factors: Factors::Two, passkey_id: Some(verified.passkey_id) };
        // Read before this sign-in is recorded as the last: the wrong codes typed since the one
        // before, for the owner to see (review 208: a passkey sign-in said nothing of them).
        let wrong_codes_before = self.codes_in_the_run(&user).await.unwrap_or(0);
        let method = crate::audit::SignInMethod::Passkey(name);
        let super::Completion::SignedIn { token, device_cookie, .. } = self
            .complete(
                &user,
                super::Proved { with, method, app_at_check: None, recovery_code: None },
                a.client,
                browser,
                after_failures,
            )
            .await?
        else {
            // Removed while it was checked: a removed passkey signs nobody in, and nothing was
            // guessed (not counted).
            return judged.refuse(FailureReason::BadPasskey, None, false).await;
        };
        // A user-verified passkey is two factors: the `second_factor` policy is met.
        Ok(Outcome::SignedIn { token, must_enrol: false, device_cookie, wrong_codes_before })
    }
}

/// The refusal `Judged::refuse` answered (it answers nothing else).
fn refusal(outcome: Result<Outcome, SignInError>) -> Result<super::Refusal, SignInError> {
    match outcome? {
        Outcome::Refused(r) => Ok(r),
        Outcome::SignedIn { .. } | Outcome::SecondFactorNeeded { .. } | Outcome::Interrupted => {
            Err(SignInError::Unexpected(anyhow::anyhow!("a refusal was not a refusal")))
        }
    }
}
