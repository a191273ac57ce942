//! The sign-in policy: the brute-force sequence of a password sign-in, free of HTTP, so the
//! login form (and any later sign-in path) only reads its input, calls [`SignIn::attempt`]
//! and renders the [`Outcome`]. The order keeps each defence cheap and fair:
//! 0. a hash pool with no room is a 503 at once, before anything is spent or recorded,
//!    and a form another site sent (`Attempt::from_another_site`) is refused as CSRF,
//! 1. the per-address quota (every other attempt counts),
//! 2. CSRF: the pre-login value must be one this server issued, unexpired and not retired,
//!    and the form's token must be bound to it,
//! 3. the captcha, when this address or username has failed too often (for a browser with a
//!    device cookie of the user's generation, this address only); otherwise the
//!    attempt reserves its place among the `captcha_after_failures` checks allowed without
//!    one, so simultaneous attempts cannot all slip past (see [`crate::failures`]),
//! 4. the per-username quota (only attempts that got this far count, so nobody can use up
//!    a user's quota without solving captchas or passing CSRF); the browsers with a device
//!    cookie for the username spend a quota of the same rate kept for them instead, so a
//!    flood aimed at the username does not keep its owner's browsers out (OWASP, "Slow Down
//!    Online Guessing Attacks with Device Cookies"), and their checks wait in the hash
//!    pool's known lane,
//! 5. the password, on the hash pool (an unknown user costs and answers the same),
//! 6. on success: the pre-login value is retired (the form signs in once); then, for a user
//!    with a second factor, a pending sign-in is started ([`Outcome::SecondFactorNeeded`]) and
//!    logged (`authn_login_mfa_pending`), and nothing else happens: the username's failures
//!    stay counted until the second factor is given at [`SignIn::second_step`]. Otherwise the
//!    username's failures are counted for the record (and left to lapse: cleared, the name's
//!    captcha demand would go for real accounts only, a way to tell them from names nobody
//!    has), the previous session ends and a new one is made,
//!    and the success is recorded; a success (or a right password owing its second factor)
//!    that cannot be recorded does not happen.
//!
//! All of the brute-force state (quotas, failure counts and reservations, open challenges,
//! retired pre-login ids) is reached through [`BruteForceState`], which several instances
//! can share; when it cannot be reached the attempt fails closed (503).
//!
//! The second step ([`SignIn::second_step`], `/login/second-factor`) runs the same defences
//! around the factor check: the pending sign-in (single use, 5 minutes, bound to the user's
//! password), CSRF bound to it, the per-address quota, the captcha threshold for a code
//! (reached, a code is checked only with the pending sign-in's own captcha solved, one check
//! per picture, as on `/account/confirm`; a passkey's answer, a signature nobody can guess,
//! meets none), the per-username
//! quota, then the factor; a wrong or reused code or a refused answer counts as a failure
//! like a wrong password. A pending sign-in whose password step solved the captcha meets no
//! threshold but carries one check, used up by it (right: signed in; wrong: the password and
//! a captcha again), so failures others caused never keep the user who solved it out, and
//! every guess past the threshold costs a captcha. It costs no argon2 verify: one per
//! two-step sign-in in all.
//!
//! Every refusal is recorded durably before it is reported; if it cannot be recorded the
//! attempt is [`SignInError`] (503) rather than an unrecorded refusal (OWASP ASVS 4.0 §7.2.1).

mod passkey;
pub use passkey::{BeginOutcome, PasskeyAttempt};

use std::sync::Arc;

use crate::audit::{Audit, AuditError, AuthEvent, Client, FailureReason, SignInMethod};
use crate::authentication::{AuthError, Authenticator};
use crate::brute_force::{BruteForceState, Held, QuotaKey, Retire, StateError, Wait};
use crate::captcha::Captchas;
use crate::client::AddressKey;
use crate::config::Rate;
use crate::config::SecondFactorPolicy;
use crate::csrf::Csrf;
use crate::domain::normalise_key;
use crate::factors::{FactorError, FactorKind, Proof, SecondFactors, Verdict};
use crate::failures::{Asker, CaptchaDemanded, Recorded};
use crate::password::{Lane, Password};
use crate::rate_limit::username_digest;
use crate::session::{SessionToken, Sessions, SignedInWith, StartError};
use crate::store::{now_ms, Factors, RecoveryCodeUse, StoreError, TokenHash, User};

/// Characters of the typed username kept as the key of the per-username defences: enough
/// for any accepted username (64), bounded whatever an attacker types.
const USER_KEY_CHARS: usize = 256;

/// The typed username as the per-username defences key it: its normalised form's first 256
/// characters, whose [`username_digest`] the quotas and failure counts use. Also what `GET
/// /login` asks the captcha demand of, for a username the form already had.
pub fn typed_user_key(typed: &str) -> String {
    normalise_key(typed).chars().take(USER_KEY_CHARS).collect()
}

/// One sign-in attempt, as the client sent it. Nothing here has been checked.
pub struct Attempt<'a> {
    /// Who is asking (address after `trusted_proxies`, user agent).
    pub client: &'a Client,
    /// The username as typed.
    pub username: &'a str,
    pub password: Password,
    /// The form's CSRF token.
    pub csrf: &'a str,
    /// The `__Host-portcullis-pre` cookie's value, if any.
    pub prelogin: Option<&'a str>,
    /// The captcha answer as typed (empty when none was sent).
    pub captcha: &'a str,
    /// The browser's current session, ended on success (session fixation, OWASP ASVS 3.2.1).
    pub previous_session: Option<SessionToken>,
    /// Where to go afterwards (already checked by `safe_next`), kept with a pending sign-in.
    pub next: Option<&'a str>,
    /// The `__Host-portcullis-device` cookie's value, if any: a token issued for this
    /// username puts the password check in the hash pool's known lane and on the quota of the
    /// username's known browsers instead of the strangers' one.
    pub device: Option<&'a str>,
    /// The browser says another site's page sent the form (`Sec-Fetch-Site` `cross-site` or
    /// `same-site`, W3C Fetch Metadata): refused as CSRF before any quota is spent, since such
    /// a form never carries a token of ours, and another site's page could otherwise spend
    /// its visitor's address quota (review 169: 20 `fetch()`es a minute kept the real user's
    /// right password at 429).
    pub from_another_site: bool,
}

/// What a browser brings to the end of its sign-in.
struct Browser<'a> {
    /// Its current session, ended (session fixation, OWASP ASVS 3.2.1).
    session: Option<&'a SessionToken>,
    /// Its device cookie, whose tokens for other usernames the new value keeps.
    device: Option<&'a str>,
    /// When this sign-in began to be judged (Unix ms): its new device token bears this time,
    /// not the time it is issued, so a change of the user's credentials made while it was
    /// judged voids it as it ends the session (review 186: a sign-in racing *sign out
    /// everywhere else* got a dead session and a token stamped after the change).
    began_at: u64,
}

/// What became of an attempt. (No `Debug`: it can hold a session token.)
pub enum Outcome {
    /// Signed in: the new session's token, for the cookie. The pre-login value is retired.
    /// `must_enrol`: the `second_factor` policy wants a second factor this user lacks, so
    /// the session may use `/account` only until one is enrolled. `device_cookie`: a new
    /// `__Host-portcullis-device` value for this user. `wrong_codes_before`: for a passkey
    /// sign-in, the wrong codes typed for the user in sign-ins since their last one (up to
    /// [`WRONG_CODES_IN_A_ROW`]; 0 for a password, which a user with codes cannot sign in
    /// with alone, or when unread), for the owner to see.
    SignedIn { token: SessionToken, must_enrol: bool, device_cookie: String, wrong_codes_before: u64 },
    /// The password was right and a second factor is owed: the pending sign-in's token, for
    /// the `__Host-portcullis-mfa` cookie. No session exists yet.
    SecondFactorNeeded { pending: SessionToken },
    /// Refused, and recorded.
    Refused(Refusal),
    /// The password was right, but the account's credential generation moved on while it was
    /// checked (*sign out everywhere else* at that instant): no sign-in, no failure counted or
    /// recorded (`authn_login_interrupted` is logged), the check's place given back. The form
    /// may be sent again.
    Interrupted,
}

/// One attempt at the second step, as the client sent it.
pub struct SecondAttempt<'a> {
    pub client: &'a Client,
    /// The `__Host-portcullis-mfa` cookie's value, if any.
    pub pending: Option<&'a str>,
    /// The form's CSRF token (bound to the pending sign-in).
    pub csrf: &'a str,
    /// What the client offers; `None` when the form was empty.
    pub proof: Option<Proof>,
    /// The browser's current session, ended on success.
    pub previous_session: Option<SessionToken>,
    /// The browser's device cookie, if any: a token for the user puts the check on the quota
    /// of the user's known browsers, and the others are kept with the new token.
    pub device: Option<&'a str>,
    /// The answer to the pending sign-in's captcha ([`pending_captcha_key`]), empty when the
    /// page showed none: past the threshold a code is checked only with it solved.
    pub captcha: &'a str,
}

/// What became of a second-step attempt.
pub enum StepOutcome {
    /// Signed in with two factors; `next` as given at the first step; a new device cookie;
    /// the unused recovery codes left when one signed in (`None` otherwise, or unread); the
    /// wrong codes typed for the user in other sign-ins since their last one (up to
    /// [`WRONG_CODES_IN_A_ROW`]; 0 when unread): whoever typed them had the password.
    SignedIn {
        token: SessionToken,
        next: Option<String>,
        device_cookie: String,
        recovery_codes_left: Option<usize>,
        wrong_codes_before: u64,
    },
    /// Refused and recorded. `restart`: the pending sign-in is over (its one check after a
    /// captcha solved at the password step was spent), so the password must be given again.
    Refused { refusal: Refusal, restart: bool },
    /// No pending sign-in (none, expired, used, or the user or password changed): start at
    /// `/login` again. Nothing was checked, so nothing is recorded.
    Restart,
    /// Nothing was checked (nothing typed, or a passkey answer whose check is over): the form
    /// again, nothing recorded or counted.
    Unchecked,
}

/// Why an attempt was refused, and what the client must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SPEC's `reason`, for the log and to choose the message and status; an unknown
    /// user and a wrong password must be shown the same.
    pub reason: FailureReason,
    /// Seconds to wait (a `Retry-After`), for a quota refusal; at least 1.
    pub retry_after: Option<u64>,
    /// Whether the next attempt from this address or for this username must carry a solved
    /// captcha.
    pub captcha_demanded: bool,
}

impl SignIn {
    /// When the newest device token `device` (the browser's device cookie) holds for
    /// `user_key` was issued (Unix ms; [`Csrf::known_device_issued`]) at `now` (Unix ms):
    /// the browser signed in as the user before, which the records' `known_browser` says.
    fn device_token_issued(&self, device: Option<&str>, user_key: &str, now: u64) -> Option<u64> {
        device.and_then(|d| self.csrf.known_device_issued(d, user_key, now))
    }

    /// Whether a device token issued at `issued` gives the known browsers' queue and quota:
    /// only in the user's current credential generation `generation` (`None`: no such user),
    /// so a browser that signed in before a password change, a factor reset, a disable or
    /// *sign out everywhere else* (a thief's, say) waits as a stranger until it signs in anew.
    /// Both are milliseconds: tokens kept whole seconds, and one from the change's own second
    /// counted, so a thief signing in again and again kept a token from just before the change
    /// for its 90 days (review 185).
    fn of_generation(issued: Option<u64>, generation: Option<u64>) -> bool {
        issued.zip(generation).is_some_and(|(issued, g)| issued >= g)
    }

    /// Who asks for a check of `user_key` with the browser's device cookie `device`:
    /// [`Asker::KnownBrowser`] when it holds a token for the user of the user's current
    /// credential generation, else [`Asker::Stranger`]. For the pages that show whether a
    /// picture will be asked for, as [`SignIn::attempt`] and [`SignIn::second_step`] judge it.
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the user's generation cannot be read (only for a
    /// browser with a token for the name).
    pub async fn asker(&self, device: Option<&str>, user_key: &str) -> Result<Asker, crate::store::StoreError> {
        let Some(issued) = self.device_token_issued(device, user_key, now_ms()) else {
            return Ok(Asker::Stranger);
        };
        let (_, generation) = self.factors.summary_with_generation(user_key).await?;
        Ok(Asker::of(Self::of_generation(Some(issued), generation)))
    }

    /// The username digest whose failures demand a picture of this browser for `user_key`
    /// (`None` for a known browser, [`SignIn::asker`]): what the pages that show whether a
    /// picture will be asked for pass to [`BruteForceState::needs_captcha`].
    ///
    /// # Errors
    /// As [`SignIn::asker`].
    pub async fn counted_username(
        &self,
        device: Option<&str>,
        user_key: &str,
    ) -> Result<Option<u128>, crate::store::StoreError> {
        Ok(match self.asker(device, user_key).await? {
            Asker::KnownBrowser => None,
            Asker::Stranger => Some(username_digest(user_key)),
        })
    }

    /// [`SignIn::counted_username`] for the second step's page: a known browser's exemption
    /// ends with [`WrongCodes`], as the step's check judges it.
    ///
    /// # Errors
    /// As [`SignIn::asker`], and when the failure records cannot be read.
    pub async fn counted_username_for_codes(
        &self,
        device: Option<&str>,
        user_key: &str,
    ) -> Result<Option<u128>, crate::store::StoreError> {
        let counted = self.counted_username(device, user_key).await?;
        if counted.is_none() && self.codes_failed_lately(user_key, now_ms()).await? {
            return Ok(Some(username_digest(user_key)));
        }
        Ok(counted)
    }

    /// Past the captcha threshold: why an attempt whose `answer` is for the challenge issued
    /// under `key` is refused (`captcha_required` with none typed, `bad_captcha` for a wrong
    /// one; a checked answer is used up either way), or `None` when it was solved.
    async fn captcha_refusal(&self, key: &str, answer: &str, now: u64) -> Result<Option<FailureReason>, SignInError> {
        if answer.trim().is_empty() {
            return Ok(Some(FailureReason::CaptchaRequired));
        }
        Ok((!self.captchas.check(key, answer, now).await?).then_some(FailureReason::BadCaptcha))
    }
}

/// A captcha answered on a signed-in account form, for [`SignIn::check_password`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptchaAnswer<'a> {
    /// The key its challenge was issued under: [`account_captcha_key`] of the session.
    pub key: &'a str,
    /// What was typed; empty when the form showed no captcha.
    pub answer: &'a str,
}

/// What [`SignIn::check_password`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The user's password.
    Right,
    /// Not the user's password; counted and recorded like a wrong password at the login form.
    /// `captcha_next`: the next check wants a captcha solved (this one was past the threshold,
    /// or brought the count to it), so the form shows a picture at once.
    Wrong { captcha_next: bool },
    /// A quota is spent: try again after `retry_after` seconds.
    TooMany { retry_after: u64 },
    /// The username or address has failed often enough (checks in flight included) to be
    /// asked for a captcha, and none was solved (none typed, or a wrong answer: recorded as
    /// `captcha_required` or `bad_captcha`): no password was checked. The form shows a new
    /// challenge, issued under [`account_captcha_key`].
    CaptchaDemanded,
    /// Nothing was typed: a form not filled in, not a guess, so nothing was checked, counted
    /// or recorded.
    NothingTyped,
}

/// The key a signed-in account form's captcha challenge is issued and checked under
/// (`Captchas::issue`, `Captchas::check`): the session's, so an answer is good for the session
/// that was shown the picture only, and apart from every login form's.
pub fn account_captcha_key(session_hash: &crate::store::TokenHash) -> String {
    captcha_key("session", session_hash)
}

/// The key a pending sign-in's captcha is issued under (the second step's page past the
/// threshold): `pending.` and the base64url of the hash of its `__Host-portcullis-mfa` cookie.
pub fn pending_captcha_key(pending_hash: &crate::store::TokenHash) -> String {
    captcha_key("pending", pending_hash)
}

/// `kind.` and the base64url of `hash`: keys of the two kinds cannot meet.
fn captcha_key(kind: &str, hash: &crate::store::TokenHash) -> String {
    use base64::Engine as _;
    format!("{kind}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash))
}

/// Why an attempt could not be judged. Each is a 503 except where
/// [`SignInError::is_unavailable`] says otherwise (a 500).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("too many password checks in progress")]
    Overloaded,
    #[error("cannot record a failed login; refusing service")]
    RefusalUnrecorded(#[source] AuditError),
    #[error("cannot record a successful login; refusing it")]
    SuccessUnrecorded(#[source] AuditError),
    #[error("{what}")]
    Store {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("sign-in failed unexpectedly")]
    Unexpected(#[source] anyhow::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("second factor not judged")]
    Factor(#[from] FactorError),
}

impl SignInError {
    /// Whether the attempt may succeed later (503), as opposed to a fault (500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            SignInError::Store { source, .. } => source.is_unavailable(),
            SignInError::Unexpected(_) => false,
            SignInError::Factor(e) => e.is_unavailable(),
            _ => true,
        }
    }

    /// Whether the error is worth a log line of its own: an overloaded pool is the normal
    /// answer to a flood, and being below the disk reserve is said once a minute by `Audit`.
    pub fn is_worth_logging(&self) -> bool {
        !matches!(self, SignInError::Overloaded | SignInError::RefusalUnrecorded(AuditError::Reserve))
    }
}

/// The sign-in service: the defences and the domain services a password sign-in uses. The
/// brute-force state is reached only through [`BruteForceState`], so it can be shared.
#[derive(Clone)]
pub struct SignIn {
    pub state: Arc<dyn BruteForceState>,
    /// `login_quota_per_ip` (`None`: off).
    pub per_address: Option<Rate>,
    /// `login_quota_per_user` (`None`: off).
    pub per_username: Option<Rate>,
    pub captchas: Arc<Captchas>,
    pub csrf: Csrf,
    pub auth: Authenticator,
    pub sessions: Sessions,
    pub audit: Audit,
    /// Users' second factors and pending two-step sign-ins.
    pub factors: SecondFactors,
    /// `second_factor`: who must have one.
    pub policy: SecondFactorPolicy,
    /// When wrong codes end a known browser's exemption at the second step.
    pub wrong_codes: WrongCodes,
}

/// How many wrong second-factor codes for a user (`captcha_after_failures`), within how long
/// (`failure_window`, milliseconds), end the exemption from the username's count that a
/// browser the user signed in with before has at the second step: past them it meets the
/// picture a stranger does, one per code checked. Without this, whoever held the password and
/// a copy of the browser's device cookie guessed codes without pictures for ever (review 187).
/// Counted from the durable failure records, so every instance counts the same.
/// Most wrong codes (`bad_second_factor`) in a row for one user before the second step stops
/// checking codes (TOTP and recovery codes; a passkey's answer cannot be guessed and is still
/// checked): NIST SP 800-63B §5.2.2 limits consecutive failed attempts on an account to 100.
/// "In a row" is since the user's last sign-in or credential generation (a password change,
/// `user passwd`, `user reset-factors`), whichever is later (`code_run`), so either ends it.
/// Only whoever has the password reaches the second step, so no stranger can lock a user out
/// this way; without the cap, whoever had it guessed 3 codes every `failure_window` without
/// pictures, for ever (review 207: about 288 a day, a 27 % chance a year of the right code).
/// Counted with the user's factors ([`crate::store::FactorStore::add_wrong_code`]), each code
/// before it is checked, so codes sent at once cannot pass it together (review 210: 114 were
/// checked); a right one signs in, which begins a new run.
pub const WRONG_CODES_IN_A_ROW: u32 = 100;

/// When `user`'s run of wrong codes began (Unix ms): the later of their last sign-in and their
/// credential generation.
fn code_run(user: &User) -> u64 {
    user.last_login_at.unwrap_or(0).max(user.password_changed_at)
}

#[derive(Clone, Copy, Debug)]
pub struct WrongCodes {
    pub threshold: u32,
    pub window_ms: u64,
}

impl SignIn {
    /// Spends one of the address's attempts (`login_quota_per_ip`; none set: free). `Err`:
    /// none left, with how long to wait.
    ///
    /// # Errors
    /// [`StateError`] when the brute-force state cannot answer.
    pub async fn spend_address_quota(&self, address: AddressKey, now: u64) -> Result<Result<(), Wait>, StateError> {
        self.spend(self.per_address, QuotaKey::Address(address), now).await
    }

    /// Spends one of the username's password checks (`login_quota_per_user`), as
    /// [`SignIn::spend_address_quota`].
    async fn spend_username_quota(&self, digest: u128, now: u64) -> Result<Result<(), Wait>, StateError> {
        self.spend(self.per_username, QuotaKey::Username(digest), now).await
    }

    /// Spends one password check of a sign-in from the username's quota: the one of its known
    /// browsers when `known` (a device cookie for it, [`Csrf::is_known_device`]), else the
    /// strangers' one.
    async fn spend_password_quota(&self, digest: u128, known: bool, now: u64) -> Result<Result<(), Wait>, StateError> {
        let key = if known { QuotaKey::KnownUsername(digest) } else { QuotaKey::Username(digest) };
        self.spend(self.per_username, key, now).await
    }

    /// Spends one second-step code check from the username's quota of codes
    /// ([`QuotaKey::SecondStep`], apart from its password checks), known browsers' or
    /// strangers' as [`SignIn::spend_password_quota`].
    async fn spend_code_quota(&self, digest: u128, known: bool, now: u64) -> Result<Result<(), Wait>, StateError> {
        let key = if known { QuotaKey::KnownSecondStep(digest) } else { QuotaKey::SecondStep(digest) };
        self.spend(self.per_username, key, now).await
    }

    async fn spend(&self, rate: Option<Rate>, key: QuotaKey, now: u64) -> Result<Result<(), Wait>, StateError> {
        match rate {
            Some(rate) => self.state.take(key, rate, now).await,
            None => Ok(Ok(())),
        }
    }

    /// Counts a failed check for this address and username digest: the reservation becomes the
    /// failure when the check held one, else (its captcha was solved) the failure is recorded
    /// on its own.
    async fn count_failure(
        &self,
        reservation: Option<Held>,
        address: crate::client::AddressKey,
        digest: u128,
    ) -> Result<Recorded, StateError> {
        match reservation {
            Some(r) => r.fail(now_ms()).await,
            None => self.state.record_failure(address, Some(digest), now_ms()).await,
        }
    }

    /// Whether [`WrongCodes`]' count of wrong codes for the user is reached within its window
    /// up to `now` (Unix ms).
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the failure records cannot be read.
    async fn codes_failed_lately(&self, user_key: &str, now: u64) -> Result<bool, crate::store::StoreError> {
        let WrongCodes { threshold, window_ms } = self.wrong_codes;
        let query = crate::store::FailureQuery {
            since: Some(now.saturating_sub(window_ms)),
            user_key: Some(user_key.to_string()),
            reason: Some(FailureReason::BadSecondFactor),
            limit: threshold.max(1) as usize,
            ..Default::default()
        };
        let records = self.audit.failures(&query).await?;
        Ok(records.iter().map(|(_, r)| r.count.max(1)).sum::<u64>() >= u64::from(threshold))
    }

    /// Whether `user` is past [`WRONG_CODES_IN_A_ROW`]: no code of theirs is checked until their
    /// next sign-in (by a passkey) or credential generation.
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the count cannot be read.
    pub async fn codes_locked(&self, user: &User) -> Result<bool, crate::store::StoreError> {
        Ok(self.factors.wrong_codes(&user.key, code_run(user)).await? >= WRONG_CODES_IN_A_ROW)
    }

    /// The codes checked for `user` in the run of wrong codes now ([`code_run`]), up to
    /// [`WRONG_CODES_IN_A_ROW`] and one more: every code is counted before it is checked.
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the count cannot be read.
    async fn codes_in_the_run(&self, user: &User) -> Result<u64, crate::store::StoreError> {
        Ok(u64::from(self.factors.wrong_codes(&user.key, code_run(user)).await?))
    }

    /// Ends the pending sign-in `cookie` names (its `hash`) after its factor was accepted, read
    /// again so a password change or `user disable` meanwhile stops it: its user and `next`,
    /// for the one caller that ended it; `None` for any other, or when it is no longer valid.
    async fn take_pending(
        &self,
        cookie: &str,
        hash: &TokenHash,
    ) -> Result<Option<(User, Option<String>)>, SignInError> {
        let store_err = |what| move |source| SignInError::Store { what, source };
        let Some((_, pending, user)) =
            self.factors.pending(cookie).await.map_err(store_err("could not read a pending sign-in"))?
        else {
            return Ok(None);
        };
        let ended = self.factors.finish(hash).await.map_err(store_err("could not end a pending sign-in"))?;
        Ok(ended.then_some((user, pending.next)))
    }

    /// Counts and records a wrong second factor; `restart`: the pending sign-in's one check
    /// (after a solved captcha) was spent on it.
    async fn refuse_step(
        &self,
        judged: Judged<'_>,
        reason: FailureReason,
        reservation: Option<Held>,
        address: crate::client::AddressKey,
        digest: u128,
        restart: bool,
    ) -> Result<StepOutcome, SignInError> {
        let counted = self.count_failure(reservation, address, digest).await?;
        match judged.refuse_counted(reason, counted).await? {
            Outcome::Refused(refusal) => Ok(StepOutcome::Refused { refusal, restart }),
            _ => Ok(StepOutcome::Restart),
        }
    }

    /// Judges one attempt in the order of the module note.
    ///
    /// # Errors
    /// [`SignInError`] when the attempt cannot be judged or recorded (the pool is full, the
    /// store, the log or the brute-force state cannot be used): the client gets a 503 (or
    /// 500), never a sign-in or a refusal that was not recorded.
    #[tracing::instrument(name = "sign_in", skip_all)]
    pub async fn attempt(&self, attempt: Attempt<'_>) -> Result<Outcome, SignInError> {
        let Attempt {
            client,
            username,
            password,
            csrf,
            prelogin,
            captcha,
            previous_session,
            next,
            device,
            from_another_site,
        } = attempt;
        let user_key = typed_user_key(username);
        let digest = username_digest(&user_key);
        let address = client.key();
        let now = now_ms();
        // A browser that signed in as this username before waits apart from a flood (and its
        // refusals say so in the records).
        let token = self.device_token_issued(device, &user_key, now);
        let mut judged = Judged {
            service: self,
            client,
            username,
            digest: Some(digest),
            known_browser: token.is_some(),
            username_exempt: false,
        };
        // Whether the token is of the user's generation is read with the factors below; until
        // then, the pool's room is judged in the lane it would give.
        let lane = if token.is_some() { Lane::Known } else { Lane::Open };
        if from_another_site {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        }

        // A full hash pool is a 503 before anything is spent: in a flood from elsewhere, the
        // real user's tries would otherwise use up their address's quota on checks that never
        // ran, and meet 429 once the flood was over (a review saw Retry-After: 80).
        if !self.auth.has_room(lane) {
            return Err(SignInError::Overloaded);
        }
        if let Err(wait) = self.spend_address_quota(address, now).await? {
            return judged.refuse(FailureReason::RateLimited, Some(wait.retry_after_secs()), false).await;
        }

        // The signature and the token's binding first (no state needed); whether the value
        // was retired comes with the reservation, in one step of the state.
        let prelogin = prelogin
            .and_then(|v| self.csrf.prelogin(v, now / 1000))
            .filter(|pre| self.csrf.check_login(pre.value(), csrf, now / 1000));
        let Some(prelogin) = prelogin else {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        };
        // The user's factors, read before the password is checked, so the check knows whether
        // it ends the sign-in (and sets the last sign-in time) or only opens the second step,
        // with the user's generation in the same statement. Nobody's key has no factors; the
        // read costs the same either way. A browser with a device token reads them now, so its
        // token is judged before its captcha threshold and quota are chosen; the others after
        // their quota.
        let key = user_key.as_str();
        let read_factors = || async move {
            self.factors
                .summary_with_generation(key)
                .await
                .map_err(|source| SignInError::Store { what: "could not read the user's second factors", source })
        };
        let early = if token.is_some() { Some(read_factors().await?) } else { None };
        let known = Self::of_generation(token, early.as_ref().and_then(|(_, generation)| *generation));
        judged.username_exempt = known;
        let Some(reserved) = self.state.reserve_for_form(prelogin.id(), address, digest, Asker::of(known), now).await?
        else {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        };

        // Held until the password is judged: given back on any other way out. Past the
        // threshold there is none, and the captcha, solved, goes with a second step.
        let (reservation, captcha_solved) = match reserved {
            Ok(r) => (Some(Held::new(Arc::clone(&self.state), r)), false),
            Err(CaptchaDemanded) => {
                if let Some(reason) = self.captcha_refusal(prelogin.value(), captcha, now).await? {
                    return judged.refuse(reason, None, false).await;
                }
                (None, true)
            }
        };

        let lane = if known { Lane::Known } else { Lane::Open };
        if let Err(wait) = self.spend_password_quota(digest, known, now).await? {
            if let Some(r) = reservation {
                r.release().await?;
            }
            return judged.refuse(FailureReason::RateLimited, Some(wait.retry_after_secs()), false).await;
        }
        let (factors, generation) = match early {
            Some(read) => read,
            None => read_factors().await?,
        };
        let checked = self.auth.authenticate(username, password, !factors.has_second_factor(), generation, lane).await;
        let user = match checked {
            Ok(user) => user,
            Err(AuthError::InvalidCredentials(reason)) => {
                let counted = self.count_failure(reservation, address, digest).await?;
                return judged.refuse_counted(reason, counted).await;
            }
            Err(AuthError::Superseded { username }) => {
                if let Some(r) = reservation {
                    r.release().await?;
                }
                // A right password all the same: whoever typed it knows it (as a second
                // step's `authn_login_mfa_pending` says), so it is on the record.
                self.audit.record(&AuthEvent::LoginInterrupted { username: &username, client });
                return Ok(Outcome::Interrupted);
            }
            Err(AuthError::Overloaded) => return Err(SignInError::Overloaded),
            Err(AuthError::Store(source)) => {
                return Err(SignInError::Store { what: "login failed: the store cannot be used", source })
            }
            Err(AuthError::Unexpected(e)) => return Err(SignInError::Unexpected(e)),
        };
        // The factors read above are this user's: a username's key is `normalise_key` of what
        // was typed (`Username::parse`), at most 64 characters, so the counting key is the same.
        debug_assert_eq!(user.key, user_key);
        // One step of the state: the check's place given back; the form retired (it signs in
        // once: retired before the session exists, and of two sign-ins sent with one form at
        // once only the first to get here goes on); and, for a user who is signed in by the
        // password alone, the username's failures counted for the success's record.
        let retire = Retire::of(&prelogin);
        let tally = (!factors.has_second_factor()).then(|| username_digest(&user.key));
        let ended = match reservation {
            Some(r) => r.succeed(Some(retire), tally, now_ms()).await?,
            None => self.state.succeed(None, Some(retire), tally, now_ms()).await?,
        };
        let Some(after_failures) = ended else {
            return judged.refuse(FailureReason::Csrf, None, false).await;
        };
        if factors.has_second_factor() {
            // The password alone proves one factor: no session, and the failures stay counted.
            let pending = self
                .factors
                .begin(&user, next, captcha_solved)
                .await
                .map_err(|source| SignInError::Store { what: "could not start a two-step sign-in", source })?;
            // Like a success, a right password that cannot be recorded is not answered as one.
            let owed = AuthEvent::SecondFactorPending { username: &user.display_name, client };
            if let Err(e) = self.audit.record_checked(&owed) {
                // Its cookie is never sent; the record would only lapse in five minutes.
                if let Err(e) = self.factors.finish(&pending.hash()).await {
                    let what = "could not end an unrecorded pending sign-in";
                    crate::fault_log::report(what, crate::fault_log::Severity::Error, e.is_unavailable(), &e);
                }
                return Err(SignInError::SuccessUnrecorded(e));
            }
            return Ok(Outcome::SecondFactorNeeded { pending });
        }
        let with = SignedInWith::from(Factors::One);
        let browser = Browser { session: previous_session.as_ref(), device, began_at: now };
        let method = SignInMethod::Password;
        let proved = Proved { with, method, app_at_check: None, recovery_code: None };
        let Completion::SignedIn { token, device_cookie, .. } =
            self.complete(&user, proved, client, browser, after_failures).await?
        else {
            // A first second factor was stored while the password was checked: the password
            // alone signs in no more, and the sign-in starts over (at the second step).
            self.audit.record(&AuthEvent::LoginInterrupted { username: &user.display_name, client });
            return Ok(Outcome::Interrupted);
        };
        let must_enrol = self.policy.requires(user.admin);
        Ok(Outcome::SignedIn { token, must_enrol, device_cookie, wrong_codes_before: 0 })
    }

    /// Checks that `password` is `user`'s for a signed-in account form (`/account/confirm`,
    /// `/account/password`), the way [`SignIn::attempt`] checks one: the per-address quota,
    /// a reservation of the captcha threshold (so concurrent checks cannot pass it either),
    /// the per-username quota, the hash on the pool; a wrong one counted toward the threshold
    /// and recorded as `bad_password`, each refusal before it recorded too. Past the threshold
    /// a password is checked only with `captcha`, the session's challenge
    /// ([`account_captcha_key`]), solved: one check per solved captcha, as at the login form.
    /// So a stolen session cannot guess faster than the login form allows, nor write more
    /// records, and failures others caused (three wrong passwords typed for the username at
    /// the login form, from anywhere) cannot keep the user from changing their password: a
    /// browser with a device cookie (`device`) of the user's generation meets its address's
    /// threshold alone, and any other one picture. An empty password is no guess
    /// ([`PasswordCheck::NothingTyped`]). Nothing here signs anyone in or clears a failure.
    ///
    /// # Errors
    /// As [`SignIn::attempt`].
    pub async fn check_password(
        &self,
        client: &Client,
        user: &crate::store::User,
        password: Password,
        captcha: CaptchaAnswer<'_>,
        device: Option<&str>,
    ) -> Result<PasswordCheck, SignInError> {
        if password.expose().is_empty() {
            return Ok(PasswordCheck::NothingTyped);
        }
        // The session's own browser, if it signed in as the user before (its device cookie),
        // meets its address's threshold alone, as at the login form: three wrong passwords a
        // stranger typed for the name kept the owner from changing a leaked password or
        // removing a lost passkey without a picture (review 190).
        let asker = self
            .asker(device, &user.key)
            .await
            .map_err(|source| SignInError::Store { what: "could not read the user's credential generation", source })?;
        let digest = username_digest(&user.key);
        // The records' `known_browser` is the login form's: what this check comes with is a
        // session, and a stolen one is no owner mistyping.
        let judged = Judged {
            service: self,
            client,
            username: &user.display_name,
            digest: Some(digest),
            known_browser: false,
            username_exempt: false,
        };
        let address = client.key();
        // As at sign-in: a full pool spends nothing. A signed-in user is known.
        if !self.auth.has_room(Lane::Known) {
            return Err(SignInError::Overloaded);
        }
        if let Err(wait) = self.spend_address_quota(address, now_ms()).await? {
            judged.record(FailureReason::RateLimited, false).await?;
            return Ok(PasswordCheck::TooMany { retry_after: wait.retry_after_secs() });
        }
        // Given back on every way out but a failure (a dropped request included). Past the
        // threshold there is none: the solved captcha goes with this one check.
        let held = match self.state.reserve(address, digest, asker, now_ms()).await? {
            Ok(r) => Some(Held::new(Arc::clone(&self.state), r)),
            Err(CaptchaDemanded) => {
                if let Some(reason) = self.captcha_refusal(captcha.key, captcha.answer, now_ms()).await? {
                    judged.record(reason, false).await?;
                    return Ok(PasswordCheck::CaptchaDemanded);
                }
                None
            }
        };
        // The strangers' quota, though the check waits in the known lane: a stolen session
        // gets no second quota of guesses (a flood aimed at the username can hold this at 429).
        if let Err(wait) = self.spend_username_quota(digest, now_ms()).await? {
            if let Some(h) = held {
                h.release().await?;
            }
            judged.record(FailureReason::RateLimited, false).await?;
            return Ok(PasswordCheck::TooMany { retry_after: wait.retry_after_secs() });
        }
        match self.auth.verify_current(&user.key, password).await {
            Ok(true) => {
                if let Some(h) = held {
                    h.release().await?;
                }
                Ok(PasswordCheck::Right)
            }
            Ok(false) => {
                let past_threshold = held.is_none();
                let counted = self.count_failure(held, address, digest).await?;
                judged.record(FailureReason::BadPassword, counted.reached_threshold).await?;
                // The state's answer counts the username: asked again without it for a known browser.
                let next = match asker {
                    Asker::Stranger => counted.reached_threshold,
                    Asker::KnownBrowser => self.state.needs_captcha(address, None, now_ms()).await?,
                };
                Ok(PasswordCheck::Wrong { captcha_next: past_threshold || next })
            }
            Err(AuthError::Overloaded) => Err(SignInError::Overloaded),
            Err(AuthError::Store(source)) => Err(SignInError::Store { what: "could not check the password", source }),
            // `verify_current` answers a wrong password with `false`, and records no sign-in
            // that could be superseded.
            Err(e @ (AuthError::InvalidCredentials(_) | AuthError::Superseded { .. })) => {
                Err(SignInError::Unexpected(anyhow::anyhow!(e)))
            }
            Err(AuthError::Unexpected(e)) => Err(SignInError::Unexpected(e)),
        }
    }

    /// The end of every sign-in, once the username's failures are counted (`after_failures`:
    /// how many there are within `failure_window`): the browser's previous session ended and a
    /// new one made with the factors and passkey `proved` says in one durable step, the
    /// recovery code it names used up, the success recorded (a success that cannot be recorded
    /// does not happen). [`Completion::Restart`], with no session and nothing recorded, when
    /// the passkey the sign-in used was removed while it was checked, a password-only
    /// sign-in's user got a second factor meanwhile, or the authenticator app was removed or
    /// replaced since [`Proved::app_at_check`].
    async fn complete(
        &self,
        user: &crate::store::User,
        proved: Proved<'_>,
        client: &Client,
        browser: Browser<'_>,
        after_failures: usize,
    ) -> Result<Completion, SignInError> {
        let Proved { with, mut method, app_at_check, recovery_code } = proved;
        // Made first: a random source that fails stops the sign-in before anything is written.
        let device_cookie = self
            .csrf
            .issue_device_cookie(&user.key, browser.device, browser.began_at)
            .map_err(|e| SignInError::Unexpected(anyhow::anyhow!(e)))?;
        if with.factors == Factors::Two {
            // The password step left the last sign-in time alone: this is the sign-in.
            self.auth
                .record_sign_in(&user.key)
                .await
                .map_err(|source| SignInError::Store { what: "could not record the sign-in", source })?;
        }
        let password_only = with.factors == Factors::One;
        // Session fixation: whatever session this browser had is ended, and a new token issued.
        let previous = browser.session.map(SessionToken::hash);
        let token = match self
            .sessions
            .create_in_place_of(previous.as_ref(), user, with, client.ip, &client.user_agent)
            .await
        {
            Ok(token) => token,
            // (`SignedOut` is `renew`'s only: a sign-in replaces a session, it does not go on.)
            Err(StartError::PasskeyRemoved | StartError::SignedOut) => return Ok(Completion::Restart),
            Err(StartError::Store(source)) => {
                return Err(SignInError::Store { what: "could not create a session", source })
            }
        };
        // A password alone signs in only a user with no second factor. The factors were read
        // before the password was checked, in this generation; a first factor is stored after
        // its generation begins, so one may have come since (review 136). Read once more, now
        // that the session is stored: a factor stored after this read finds the session in
        // the setup's sweep that follows it (`recovery_codes::codes_with_first_factor`).
        // Alike, a second step by the app's code or a recovery code signs in only while the
        // app is the one there when the code was checked: its removal or replacement stores
        // the change, then ends the sessions those codes signed in (`SecondFactors::remove_totp`,
        // `end_app_sessions`), so of the two one sees the other (review 139 kept such
        // sessions, a recovery code's too, in 5 of 40 races).
        let changed = if password_only {
            self.factors.summary(&user.key).await.map(|f| f.has_second_factor())
        } else if let Some(app) = app_at_check {
            self.factors.totp_enrolled_at(&user.key).await.map(|now| now != app)
        } else {
            Ok(false)
        };
        match changed {
            Ok(false) => {}
            Ok(true) => {
                self.sessions.discard(&token).await;
                return Ok(Completion::Restart);
            }
            Err(source) => {
                self.sessions.discard(&token).await;
                return Err(SignInError::Store { what: "could not read the user's second factors", source });
            }
        }
        // The recovery code is used up only now that its session is stored: a store failing
        // between the two once lost the user the code behind a 503 (review 200). A session
        // stored for a code that then cannot be used up is ended; its token was never sent.
        if let Some(hash) = recovery_code {
            match self.factors.use_recovery_code(&user.key, &hash).await {
                Ok(RecoveryCodeUse::Used) => {}
                Ok(other) => {
                    self.sessions.discard(&token).await;
                    return Ok(Completion::CodeRefused(match other {
                        RecoveryCodeUse::UsedBefore => FailureReason::ReusedCode,
                        _ => FailureReason::BadSecondFactor,
                    }));
                }
                Err(source) => {
                    self.sessions.discard(&token).await;
                    return Err(SignInError::Store { what: "could not use up a recovery code", source });
                }
            }
        }
        let mut recovery_codes_left = None;
        if let SignInMethod::RecoveryCode { left } = &mut method {
            // Read after the code was used up: what is left now.
            *left = self.factors.summary(&user.key).await.ok().map(|f| f.recovery_codes);
            recovery_codes_left = *left;
        }
        // A sign-in that cannot be recorded does not happen: end the new session and say so.
        let username = &user.display_name;
        // Where the failures came from, while their records are there (review 214: a flood
        // after the sign-in pushed them out, leaving a count that said from nowhere).
        let failures_from = match after_failures {
            0 => None,
            _ => {
                let query = crate::store::FailureQuery {
                    since: Some(now_ms().saturating_sub(self.wrong_codes.window_ms)),
                    user_key: Some(user.key.clone()),
                    limit: 200,
                    ..Default::default()
                };
                // Only a line's detail: a store that cannot say leaves it out, not the sign-in.
                self.audit.failures(&query).await.ok().and_then(|r| crate::audit::failures_from(&r))
            }
        };
        // The line names the session it made, as every later line of that session does.
        let client = &client.in_session(&token.hash());
        let succeeded = AuthEvent::LoginSucceeded {
            username,
            client,
            after_failures,
            method,
            failures_from: failures_from.as_deref(),
        };
        if let Err(e) = self.audit.record_checked(&succeeded) {
            self.sessions.discard(&token).await;
            return Err(SignInError::SuccessUnrecorded(e));
        }
        Ok(Completion::SignedIn { token, device_cookie, recovery_codes_left })
    }

    /// Judges a second-step attempt in the order of the module note.
    ///
    /// # Errors
    /// [`SignInError`] when the attempt cannot be judged or recorded: a 503 (or 500).
    #[tracing::instrument(name = "second_factor", skip_all)]
    pub async fn second_step(&self, attempt: SecondAttempt<'_>) -> Result<StepOutcome, SignInError> {
        let SecondAttempt { client, pending, csrf, proof, previous_session, device, captcha } = attempt;
        let store_err = |what| move |source| SignInError::Store { what, source };
        let Some(cookie) = pending else { return Ok(StepOutcome::Restart) };
        let Some((hash, first, user)) =
            self.factors.pending(cookie).await.map_err(store_err("could not read a pending sign-in"))?
        else {
            return Ok(StepOutcome::Restart);
        };
        let digest = username_digest(&user.key);
        let address = client.key();
        let now = now_ms();
        // A browser known to the user spends its known browsers' quota, as at the password step.
        let token = self.device_token_issued(device, &user.key, now);
        let guessable = !matches!(proof, Some(Proof::Passkey { .. }));
        let known = Self::of_generation(token, Some(user.password_changed_at))
            && !(guessable
                && proof.is_some()
                && self.codes_failed_lately(&user.key, now).await.map_err(store_err("could not count wrong codes"))?);
        let judged = Judged {
            service: self,
            client,
            username: &user.display_name,
            digest: Some(digest),
            known_browser: token.is_some(),
            username_exempt: known,
        };
        let refused = |o: Outcome| match o {
            Outcome::Refused(refusal) => StepOutcome::Refused { refusal, restart: false },
            // `refuse` only ever answers `Refused`.
            _ => StepOutcome::Restart,
        };
        // The quota first, as on the password step: every attempt counts, a forged one too,
        // so a loop of bad CSRF tokens cannot make store work the quota does not meter.
        if let Err(wait) = self.spend_address_quota(address, now).await? {
            let o = judged.refuse(FailureReason::RateLimited, Some(wait.retry_after_secs()), false).await?;
            return Ok(refused(o));
        }
        if !self.csrf.check_session(&hash, csrf) {
            return Ok(refused(judged.refuse(FailureReason::Csrf, None, false).await?));
        }
        let Some(proof) = proof else { return Ok(StepOutcome::Unchecked) };
        // Past the wrong codes a row allows, no code is checked: 429 without a `Retry-After`,
        // until a sign-in with a passkey or a new credential generation.
        if guessable && self.codes_locked(&user).await.map_err(store_err("could not count wrong codes"))? {
            return Ok(refused(judged.refuse(FailureReason::RateLimited, None, false).await?));
        }
        // A pending sign-in whose password step solved the captcha carries one code check,
        // whatever the counts say by now: failures others caused (three wrong passwords typed
        // for this name, or by colleagues behind one address) cannot keep the user who solved
        // it from the second step, and each guess still costs a solved captcha, as on the
        // login form. Any other pending sign-in meets the threshold here: past it a code is
        // checked only with the pending sign-in's own captcha solved, one check per picture,
        // as on `/account/confirm`, so the user stays at this step (a stranger's three wrong
        // passwords used to send them back to the password) and each guess costs a picture.
        //
        // A passkey's answer is a signature: it cannot be guessed, so neither the threshold nor
        // the one check, which are there to make guessing codes cost captchas, applies to it.
        // Otherwise three wrong passwords typed for the name, by anyone from anywhere, would
        // end the user's check under way and refuse its right answer. A refused answer still
        // counts as a failure, and the check stays open for the right one.
        let one_check = first.captcha_solved && guessable;
        let reservation = if one_check || !guessable {
            None
        } else {
            match self.state.reserve(address, digest, Asker::of(known), now).await? {
                Ok(r) => Some(Held::new(Arc::clone(&self.state), r)),
                Err(CaptchaDemanded) => {
                    let key = pending_captcha_key(&hash);
                    if let Some(reason) = self.captcha_refusal(&key, captcha, now).await? {
                        return Ok(refused(judged.refuse(reason, None, false).await?));
                    }
                    // Solved (and so spent): this one check goes with it.
                    None
                }
            }
        };
        if let Err(wait) = self.spend_code_quota(digest, known, now).await? {
            if let Some(r) = reservation {
                r.release().await?;
            }
            let o = judged.refuse(FailureReason::RateLimited, Some(wait.retry_after_secs()), false).await?;
            return Ok(refused(o));
        }
        // Counted before it is checked, so codes sent at once cannot pass the cap together
        // (review 210 saw 114 checked): a right one signs in, which starts a new run.
        if guessable {
            let run = self.factors.add_wrong_code(&user.key, code_run(&user)).await;
            if run.map_err(store_err("could not count a code"))? > WRONG_CODES_IN_A_ROW {
                if let Some(r) = reservation {
                    r.release().await?;
                }
                return Ok(refused(judged.refuse(FailureReason::RateLimited, None, false).await?));
            }
        }
        // The app as it is before a code is checked: a removal or replacement after this read
        // is seen again once the session is stored (`SignIn::complete`).
        let app_at_check = match &proof {
            Proof::Totp(_) | Proof::RecoveryCode(_) => Some(
                self.factors
                    .totp_enrolled_at(&user.key)
                    .await
                    .map_err(store_err("could not read the user's authenticator"))?,
            ),
            Proof::Passkey { .. } => None,
        };
        // The one check is used up before it is made, so two requests with the cookie get one.
        // Any other code check holds the pending sign-in while it is made, and gives it back
        // unless it signs in: a code is spent as it is checked, and of two requests with one
        // pending sign-in only the one that signs in may spend theirs (review 189: two recovery
        // codes sent at once were both spent for one sign-in, the second without a record).
        let held = guessable && !one_check;
        if (one_check || held)
            && !self.factors.finish(&hash).await.map_err(store_err("could not end a pending sign-in"))?
        {
            if let Some(r) = reservation {
                r.release().await?;
            }
            return Ok(StepOutcome::Restart);
        }
        let give_back = || async {
            self.factors.put_back(&hash, &first).await.map_err(store_err("could not keep a pending sign-in"))
        };
        // Given back after a refused code, counting it as its own.
        let give_back_refused = || async {
            let counted =
                crate::store::PendingSignIn { codes_refused: first.codes_refused.saturating_add(1), ..first.clone() };
            self.factors.put_back(&hash, &counted).await.map_err(store_err("could not keep a pending sign-in"))
        };
        let verdict = match self.factors.verify(&user.key, &hash, &proof, now / 1000).await {
            Ok(verdict) => verdict,
            Err(e) => {
                // Not checked: the pending sign-in stays for the next try, if the store lets it.
                if held {
                    let _ = give_back().await;
                }
                return Err(e.into());
            }
        };
        if let Verdict::PossibleClone(passkey) = &verdict {
            let (username, client) = (user.key.as_str(), judged.client);
            self.audit.record(&AuthEvent::PasskeyCloneSuspected { username, passkey, client });
        }
        // A recovery code is accepted as any code is, and used up once its session is stored.
        let (verdict, recovery_code) = match verdict {
            Verdict::RecoveryCodeUnused(hash) => (Verdict::Accepted(FactorKind::RecoveryCodes, None), Some(hash)),
            verdict => (verdict, None),
        };
        match verdict {
            // (`RecoveryCodeUnused` is `Accepted` by now.)
            Verdict::RecoveryCodeUnused(_) | Verdict::Unchecked => {
                if let Some(r) = reservation {
                    r.release().await?;
                }
                // Nothing was checked, so the one check is not spent: the pending sign-in
                // goes back as it was (a passkey answer whose ceremony another begin had
                // ended would otherwise cost a password and a captcha again).
                if one_check || held {
                    give_back().await?;
                }
                Ok(StepOutcome::Unchecked)
            }
            Verdict::Refused(reason) => {
                if held {
                    give_back_refused().await?;
                }
                self.refuse_step(judged, reason, reservation, address, digest, one_check).await
            }
            Verdict::PossibleClone(_) => {
                let reason = FailureReason::BadSecondFactor;
                self.refuse_step(judged, reason, reservation, address, digest, one_check).await
            }
            Verdict::Accepted(kind, passkey_id) => {
                // Single use: of two attempts that both got here, one goes on (a code check
                // held the pending sign-in from before it was made). The user is read again,
                // so a password change or `user disable` meanwhile stops it.
                let taken = if one_check {
                    Some((user.clone(), first.next.clone()))
                } else if held {
                    let holder = self.factors.holder(&first).await.map_err(store_err("could not read a user"))?;
                    holder.map(|user| (user, first.next.clone()))
                } else {
                    self.take_pending(cookie, &hash).await?
                };
                let Some((user, next)) = taken else {
                    if let Some(r) = reservation {
                        r.release().await?;
                    }
                    return Ok(StepOutcome::Restart);
                };
                // Read before this sign-in is recorded as the last: the codes of the run but
                // this one and those this pending sign-in typed itself, for the owner to see
                // (counted with the factors, which no flood of others' failures can push out:
                // review 210).
                let in_run = self.codes_in_the_run(&user).await.unwrap_or(0);
                let own = u64::from(guessable) + u64::from(first.codes_refused);
                let wrong_codes_before = in_run.saturating_sub(own);
                // The check's place given back and the username's failures counted, in one
                // step (the pending sign-in is this user's, so `digest` is theirs).
                let counted = match reservation {
                    Some(r) => r.succeed(None, Some(digest), now_ms()).await?,
                    None => self.state.succeed(None, None, Some(digest), now_ms()).await?,
                };
                let after_failures = counted.unwrap_or(0);
                let with = SignedInWith { factors: Factors::Two, passkey_id };
                let browser = Browser { session: previous_session.as_ref(), device, began_at: now };
                let method = match kind {
                    FactorKind::Totp => SignInMethod::Totp,
                    // (`complete` reads what is left once the code is used up.)
                    FactorKind::RecoveryCodes => SignInMethod::RecoveryCode { left: None },
                    FactorKind::Passkey => SignInMethod::Passkey(None),
                };
                let proved = Proved { with, method, app_at_check, recovery_code };
                match self.complete(&user, proved, client, browser, after_failures).await? {
                    Completion::SignedIn { token, device_cookie, recovery_codes_left } => Ok(StepOutcome::SignedIn {
                        token,
                        next,
                        device_cookie,
                        recovery_codes_left,
                        wrong_codes_before,
                    }),
                    // The passkey or the app was removed while it was checked: it signs
                    // nobody in, and the sign-in starts again at the password.
                    Completion::Restart => Ok(StepOutcome::Restart),
                    // Another sign-in used the code up first (or a new set voided it): refused
                    // as a code used before would have been, and a held pending sign-in stays
                    // for the next code.
                    Completion::CodeRefused(reason) => {
                        if held {
                            give_back_refused().await?;
                        }
                        self.refuse_step(judged, reason, None, address, digest, one_check).await
                    }
                }
            }
        }
    }
}

/// How a sign-in proved who it is ([`SignIn::complete`]).
struct Proved<'a> {
    /// The factors and passkey its session is made with.
    with: SignedInWith,
    /// How, for its record.
    method: SignInMethod<'a>,
    /// For a second step by the app's code or a recovery code: when the authenticator app
    /// there as the code was checked was set up (Unix ms; `None` inside: no app), read again
    /// once the session is stored. `None` for other sign-ins.
    app_at_check: Option<Option<u64>>,
    /// For a second step by a recovery code: its keyed hash, used up once the session is
    /// stored ([`Verdict::RecoveryCodeUnused`]).
    recovery_code: Option<[u8; 32]>,
}

/// How [`SignIn::complete`] ended.
enum Completion {
    /// Signed in: the session's token, the browser's device cookie's new value (with a token
    /// for this user), and after a recovery code how many unused ones are left (`None` when
    /// they could not be read, and after any other factor).
    SignedIn { token: SessionToken, device_cookie: String, recovery_codes_left: Option<usize> },
    /// No session and nothing recorded: what the sign-in proved no longer holds.
    Restart,
    /// No session: the recovery code was used up by another sign-in meanwhile, or voided by a
    /// new set or a reset; refused for the reason given (`reused_code`, `bad_second_factor`).
    CodeRefused(FailureReason),
}

/// An attempt being judged, with what every refusal needs.
struct Judged<'a> {
    service: &'a SignIn,
    client: &'a Client,
    username: &'a str,
    /// The username's key digest, for the captcha question; `None`: the attempt names none to
    /// count (a passkey sign-in).
    digest: Option<u128>,
    /// A device token for the username came with the attempt ([`Csrf::is_known_device`]):
    /// written into the refusal's record.
    known_browser: bool,
    /// The token is of the user's generation ([`Asker::KnownBrowser`]): the username's count
    /// demands no captcha of this browser, so the form a refusal shows again asks for none
    /// (review 185: it drew a required picture the check then ignored).
    username_exempt: bool,
}

impl Judged<'_> {
    /// Records a refusal durably, then reports it with whether a captcha is now demanded.
    async fn refuse(
        &self,
        reason: FailureReason,
        retry_after: Option<u64>,
        max_reached: bool,
    ) -> Result<Outcome, SignInError> {
        self.refuse_with(reason, retry_after, max_reached, None).await
    }

    /// Records the refusal (`max_reached`: the failure that reached the captcha threshold);
    /// one that cannot be recorded is not made.
    async fn record(&self, reason: FailureReason, max_reached: bool) -> Result<(), SignInError> {
        let s = self.service;
        s.audit
            .record_failure(self.username, self.client, reason, max_reached, self.known_browser)
            .await
            .map_err(SignInError::RefusalUnrecorded)
    }

    /// [`Judged::refuse`] for a failure the state has just counted (for this client's address
    /// and this username), which may already say whether a captcha is now demanded.
    async fn refuse_counted(&self, reason: FailureReason, counted: Recorded) -> Result<Outcome, SignInError> {
        // The state's answer counts the username: asked again without it for a known browser.
        let demanded = counted.captcha_demanded.filter(|_| !self.username_exempt);
        self.refuse_with(reason, None, counted.reached_threshold, demanded).await
    }

    async fn refuse_with(
        &self,
        reason: FailureReason,
        retry_after: Option<u64>,
        max_reached: bool,
        captcha_demanded: Option<bool>,
    ) -> Result<Outcome, SignInError> {
        let s = self.service;
        self.record(reason, max_reached).await?;
        let captcha_demanded = match captcha_demanded {
            Some(known) => known,
            None => {
                let digest = self.digest.filter(|_| !self.username_exempt);
                s.state.needs_captcha(self.client.key(), digest, now_ms()).await?
            }
        };
        Ok(Outcome::Refused(Refusal { reason, retry_after, captcha_demanded }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::brute_force::InMemory;
    use crate::config::Rate;
    use crate::password::PoolError;

    const GOOD: &str = "quartz lantern velvet 8127 orbit";

    /// A sign-in service on a temporary store, with `alice` (password [`GOOD`]).
    struct Fixture {
        service: SignIn,
        client: Client,
        store: crate::store::Store,
        /// The device cookie the fixture's attempts send.
        device: Option<String>,
        _dir: tempfile::TempDir,
    }

    fn rate(burst: u32) -> Option<Rate> {
        Some(Rate { burst, period: Duration::from_secs(3600) })
    }

    async fn fixture(per_address: Option<Rate>, per_username: Option<Rate>, captcha_after: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let services = crate::app::services_with_alice(dir.path(), GOOD).await;
        let state: Arc<dyn BruteForceState> =
            Arc::new(InMemory::new(per_address, per_username, Duration::from_secs(900), captcha_after));
        let service = SignIn {
            captchas: Arc::new(Captchas::new([3; 32], Arc::clone(&state))),
            state,
            per_address,
            per_username,
            csrf: Csrf::new([4; 32]),
            auth: Authenticator::new(services.store.clone(), services.pool.clone()),
            sessions: services.sessions.clone(),
            audit: services.audit.clone(),
            factors: SecondFactors::new(
                services.store.clone(),
                Arc::new(crate::factors::FactorKey::from_bytes(&[5; 32])),
            ),
            policy: SecondFactorPolicy::Optional,
            wrong_codes: WrongCodes { threshold: captcha_after, window_ms: 15 * 60 * 1000 },
        };
        let client = Client { ip: "192.0.2.10".parse().unwrap(), user_agent: "test".into(), session: None };
        Fixture { service, client, store: services.store.clone(), device: None, _dir: dir }
    }

    /// A visitor's form: a pre-login value and the CSRF token bound to it.
    struct Form {
        prelogin: String,
        csrf: String,
    }

    impl Fixture {
        fn form(&self) -> Form {
            let now = now_ms() / 1000;
            let pre = self.service.csrf.issue_prelogin(now).unwrap();
            Form { csrf: self.service.csrf.login_token(pre.value(), now), prelogin: pre.value().to_string() }
        }

        /// The attempt's result, an error included.
        async fn judge(
            &self,
            form: &Form,
            csrf: &str,
            user: &str,
            password: &str,
            captcha: &str,
        ) -> Result<Outcome, SignInError> {
            let attempt = Attempt {
                client: &self.client,
                username: user,
                password: Password::new(password),
                csrf,
                prelogin: Some(&form.prelogin),
                captcha,
                previous_session: None,
                next: None,
                device: self.device.as_deref(),
                from_another_site: false,
            };
            self.service.attempt(attempt).await
        }

        async fn try_with(&self, form: &Form, csrf: &str, user: &str, password: &str, captcha: &str) -> Outcome {
            self.judge(form, csrf, user, password, captcha).await.unwrap()
        }

        async fn attempt(&self, user: &str, password: &str) -> Outcome {
            let form = self.form();
            self.try_with(&form, &form.csrf, user, password, "").await
        }

        async fn forged(&self, user: &str, password: &str) -> Outcome {
            self.try_with(&self.form(), "forged", user, password, "").await
        }
    }

    fn refusal(outcome: Outcome) -> Refusal {
        match outcome {
            Outcome::Refused(r) => r,
            Outcome::SignedIn { .. } | Outcome::SecondFactorNeeded { .. } => panic!("signed in"),
            Outcome::Interrupted => panic!("interrupted"),
        }
    }

    fn signed_in(outcome: &Outcome) -> bool {
        matches!(outcome, Outcome::SignedIn { .. })
    }

    #[tokio::test]
    async fn the_per_address_quota_is_spent_before_csrf_is_checked() {
        let f = fixture(rate(2), None, 100).await;
        assert_eq!(refusal(f.forged("alice", GOOD).await).reason, FailureReason::Csrf);
        assert_eq!(refusal(f.forged("alice", GOOD).await).reason, FailureReason::Csrf);
        let r = refusal(f.attempt("alice", GOOD).await);
        assert_eq!(r.reason, FailureReason::RateLimited, "even a good form waits once the quota is spent");
        assert!(r.retry_after.is_some_and(|s| s >= 1), "{r:?}");
    }

    /// A pool of one worker and open queue of one, both held by slow checks from strangers
    /// (a flood); the handles to wait for them.
    async fn flooded(f: &mut Fixture) -> Vec<tokio::task::JoinHandle<Result<crate::password::Verified, PoolError>>> {
        let slow = crate::config::HashParams { memory_kib: 32 * 1024, iterations: 24, parallelism: 1 };
        let pool = crate::password::pool::HashPool::start(slow, 1, 1).unwrap();
        f.service.auth = Authenticator::new(f.store.clone(), pool.clone());
        let mut flood = Vec::new();
        for queued in [false, true] {
            let p = pool.clone();
            flood.push(tokio::spawn(async move { p.verify(Password::new("x"), None, Lane::Open).await }));
            // The first is running (the queue empty again) before the second waits.
            while pool.waiting() < flood.len() || pool.has_room(Lane::Open) == queued {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        flood
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_hash_pool_is_a_503_before_the_address_quota_is_spent() {
        let mut f = fixture(rate(1), None, 100).await;
        let flood = flooded(&mut f).await;
        let form = f.form();
        assert!(matches!(f.judge(&form, &form.csrf, "alice", GOOD, "").await, Err(SignInError::Overloaded)));
        for check in flood {
            check.await.unwrap().unwrap();
        }
        // The one unit of the address's quota is still there: the 503 spent nothing.
        assert!(signed_in(&f.attempt("alice", GOOD).await));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_browser_that_signed_in_before_gets_past_a_flood_for_that_username_only() {
        let mut f = fixture(None, None, 100).await;
        let Outcome::SignedIn { device_cookie, .. } = f.attempt("alice", GOOD).await else { panic!("refused") };
        assert!(f.service.csrf.is_known_device(&device_cookie, "alice", now_ms()));
        let flood = flooded(&mut f).await;
        f.device = Some(device_cookie);
        let form = f.form();
        let bob = f.judge(&form, &form.csrf, "bob", GOOD, "").await;
        assert!(matches!(bob, Err(SignInError::Overloaded)), "alice's cookie does nothing for bob");
        let Outcome::SignedIn { device_cookie: renewed, .. } = f.attempt("Alice", GOOD).await else {
            panic!("refused")
        };
        assert!(f.service.csrf.is_known_device(&renewed, "alice", now_ms()), "and a new one is set");
        for check in flood {
            check.await.unwrap().unwrap();
        }
    }

    /// A browser the user signed in with before meets its address's captcha threshold alone:
    /// failures others cause for the name (which lapse, a sign-in clearing none) do not put it
    /// behind a picture (OWASP device cookies). A stranger still meets the name's; so does the
    /// same browser once the password changed. (That its failures still count for the name is
    /// the conformance suite's.)
    #[tokio::test]
    async fn a_browser_that_signed_in_before_meets_its_addresss_captcha_threshold_alone() {
        let mut f = fixture(None, None, 2).await;
        let Outcome::SignedIn { device_cookie, .. } = f.attempt("alice", GOOD).await else { panic!("refused") };
        let digest = username_digest("alice");
        for i in 0..2 {
            let from = crate::client::AddressKey::of(format!("198.51.100.{i}").parse().unwrap());
            f.service.state.record_failure(from, Some(digest), now_ms()).await.unwrap();
        }
        assert_eq!(refusal(f.attempt("alice", GOOD).await).reason, FailureReason::CaptchaRequired, "a stranger");
        f.device = Some(device_cookie.clone());
        assert_eq!(f.service.asker(Some(&device_cookie), "alice").await.unwrap(), Asker::KnownBrowser);
        let typo = refusal(f.attempt("alice", "wrong").await);
        assert_eq!(typo.reason, FailureReason::BadPassword, "checked");
        assert!(!typo.captcha_demanded, "nor does the form it gets again ask for a picture (review 185)");
        let Outcome::SignedIn { device_cookie, .. } = f.attempt("alice", GOOD).await else { panic!("her browser") };
        // A new credential generation, within the same second (review 185: tokens kept whole
        // seconds, and one from the change's second counted).
        f.device = Some(device_cookie.clone());
        assert!(f.store.users.renew_generation("alice", now_ms() + 1, None).await.unwrap().is_some());
        assert_eq!(f.service.asker(Some(&device_cookie), "alice").await.unwrap(), Asker::Stranger);
        assert_eq!(refusal(f.attempt("alice", GOOD).await).reason, FailureReason::CaptchaRequired, "stale");
    }

    /// A sign-in's device token bears the time it began to be judged, so a change of the
    /// user's credentials made meanwhile voids it as it ends the session (review 186: a
    /// sign-in racing *sign out everywhere else* kept a token stamped after the change).
    #[tokio::test]
    async fn a_device_token_bears_the_time_its_sign_in_began() {
        let f = fixture(None, None, 100).await;
        let began_at = now_ms();
        // The change, while the sign-in is judged.
        assert!(f.store.users.renew_generation("alice", began_at + 1, None).await.unwrap().is_some());
        let user_now = f.store.users.get("alice").await.unwrap().unwrap();
        let with = SignedInWith::from(Factors::One);
        let proved = Proved { with, method: SignInMethod::Password, app_at_check: None, recovery_code: None };
        let browser = Browser { session: None, device: None, began_at };
        let done = f.service.complete(&user_now, proved, &f.client, browser, 0).await.unwrap();
        let Completion::SignedIn { device_cookie, .. } = done else { panic!("not signed in") };
        assert_eq!(f.service.csrf.known_device_issued(&device_cookie, "alice", now_ms()), Some(began_at));
        assert_eq!(f.service.asker(Some(&device_cookie), "alice").await.unwrap(), Asker::Stranger);
    }

    #[tokio::test]
    async fn a_refusal_records_whether_the_browser_had_signed_in_as_the_username_before() {
        let mut f = fixture(None, None, 100).await;
        let Outcome::SignedIn { device_cookie, .. } = f.attempt("alice", GOOD).await else { panic!("refused") };
        refusal(f.attempt("alice", "wrong").await);
        f.device = Some(device_cookie);
        refusal(f.attempt("Alice", "wrong").await);
        refusal(f.attempt("bob", "wrong").await);
        refusal(f.forged("alice", GOOD).await);
        let records = f.store.failures.query(&crate::store::FailureQuery::default()).await.unwrap();
        let seen: Vec<(&str, FailureReason, bool)> =
            records.iter().rev().map(|(_, r)| (r.username.as_str(), r.reason, r.known_browser)).collect();
        assert_eq!(
            seen,
            [
                ("alice", FailureReason::BadPassword, false),
                ("alice", FailureReason::BadPassword, true),
                ("bob", FailureReason::UnknownUser, false),
                ("alice", FailureReason::Csrf, true),
            ],
            "a stranger, then her browser (any spelling), her browser typing another name, and a forged form from it"
        );
    }

    #[tokio::test]
    async fn a_browser_that_signed_in_before_the_credentials_changed_is_a_stranger_again() {
        let mut f = fixture(None, rate(2), 100).await;
        let Outcome::SignedIn { device_cookie, .. } = f.attempt("alice", GOOD).await else { panic!("refused") };
        // A thief's browser, say; the owner's password is then changed (a new generation, a
        // second later: the token keeps whole seconds).
        f.device = Some(device_cookie);
        let later = now_ms() + 1000;
        assert!(f.store.users.renew_generation("alice", later, None).await.unwrap().is_some());
        // It spends the strangers' quota (2, one spent by the sign-in), not her browsers' (2,
        // untouched); its records still say it signed in as her before.
        assert_eq!(refusal(f.attempt("alice", "wrong").await).reason, FailureReason::BadPassword);
        assert_eq!(refusal(f.attempt("alice", GOOD).await).reason, FailureReason::RateLimited);
        let records = f.store.failures.query(&crate::store::FailureQuery::default()).await.unwrap();
        assert!(records.iter().all(|(_, r)| r.known_browser), "{records:?}");
    }

    #[tokio::test]
    async fn known_browsers_spend_a_quota_of_their_own_so_a_flood_aimed_at_the_username_does_not_keep_them_out() {
        let mut f = fixture(None, rate(2), 100).await;
        let Outcome::SignedIn { device_cookie, .. } = f.attempt("alice", GOOD).await else { panic!("refused") };
        // Strangers spend the rest of alice's quota.
        assert_eq!(refusal(f.attempt("alice", "wrong").await).reason, FailureReason::BadPassword);
        assert_eq!(refusal(f.attempt("alice", GOOD).await).reason, FailureReason::RateLimited);
        // Her browsers have a quota of their own, at the same rate.
        f.device = Some(device_cookie);
        let Outcome::SignedIn { device_cookie: renewed, .. } = f.attempt("alice", GOOD).await else {
            panic!("her browser is kept out")
        };
        assert_eq!(refusal(f.attempt("alice", "wrong").await).reason, FailureReason::BadPassword);
        // Shared by all of them, however many tokens signing in makes.
        f.device = Some(renewed);
        let r = refusal(f.attempt("alice", GOOD).await);
        assert_eq!(r.reason, FailureReason::RateLimited, "and spent as anyone's: {r:?}");
    }

    #[tokio::test]
    async fn a_form_that_signed_in_stays_retired_past_its_expiry_by_the_slack() {
        let f = fixture(None, None, 100).await;
        let form = f.form();
        assert!(signed_in(&f.try_with(&form, &form.csrf, "alice", GOOD, "").await));
        let pre = f.service.csrf.prelogin(&form.prelogin, now_ms() / 1000).unwrap();
        let expiry_ms = pre.expires_at() * 1000;
        // A sign-in judged valid just before the expiry retires after its check: the
        // retirement must outlive the expiry, or a second sign-in with the form gets through.
        f.service.state.prune(expiry_ms + 60_000).await.unwrap();
        assert!(f.service.state.is_retired(pre.id()).await.unwrap(), "kept past the expiry");
        f.service.state.prune(pre.retired_until_ms() + 1).await.unwrap();
        assert!(!f.service.state.is_retired(pre.id()).await.unwrap(), "then forgotten");
    }

    #[tokio::test]
    async fn csrf_failures_do_not_spend_the_per_username_quota() {
        let f = fixture(None, rate(1), 100).await;
        for _ in 0..5 {
            assert_eq!(refusal(f.forged("alice", GOOD).await).reason, FailureReason::Csrf);
        }
        assert!(signed_in(&f.attempt("alice", GOOD).await), "the one unit is still there");
        let r = refusal(f.attempt("alice", GOOD).await);
        assert_eq!(r.reason, FailureReason::RateLimited);
    }

    #[tokio::test]
    async fn a_captcha_is_demanded_from_the_threshold_on_and_a_solved_one_lets_the_password_through() {
        let f = fixture(None, None, 2).await;
        let first = refusal(f.attempt("alice", "wrong").await);
        assert_eq!((first.reason, first.captcha_demanded), (FailureReason::BadPassword, false));
        let second = refusal(f.attempt("alice", "wrong").await);
        assert_eq!((second.reason, second.captcha_demanded), (FailureReason::BadPassword, true));
        // The right password is not even checked without the captcha.
        assert_eq!(refusal(f.attempt("alice", GOOD).await).reason, FailureReason::CaptchaRequired);
        let form = f.form();
        f.service.captchas.issue(&form.prelogin, now_ms()).await.unwrap();
        let r = refusal(f.try_with(&form, &form.csrf, "alice", GOOD, "wrong").await);
        assert_eq!((r.reason, r.captcha_demanded), (FailureReason::BadCaptcha, true));
        f.service.captchas.issue(&form.prelogin, now_ms()).await.unwrap();
        let answer = f.service.captchas.answer_for_tests(&form.prelogin).unwrap();
        assert!(signed_in(&f.try_with(&form, &form.csrf, "alice", GOOD, &answer).await));
        let elsewhere = crate::client::AddressKey::of("192.0.2.99".parse().unwrap());
        let demanded = f.service.state.needs_captcha(elsewhere, Some(username_digest("alice")), now_ms()).await;
        assert!(demanded.unwrap(), "a success leaves the username's failures to lapse");
    }

    /// A success leaves the name's captcha demand as an unknown name's stays (review 181: it
    /// went away when the owner signed in, so anyone who armed a name with failures could tell
    /// a real account from a name nobody has by watching for that).
    #[tokio::test]
    async fn a_names_captcha_demand_goes_the_same_way_whether_or_not_someone_signed_in_as_it() {
        let f = fixture(None, None, 2).await;
        // Two failures for each name, from addresses of their own (so the sign-in's is clear).
        for (i, name) in ["alice", "mallory"].into_iter().enumerate() {
            let from = crate::client::AddressKey::of(format!("198.51.100.{i}").parse().unwrap());
            for _ in 0..2 {
                f.service.state.record_failure(from, Some(username_digest(name)), now_ms()).await.unwrap();
            }
        }
        let form = f.form();
        f.service.captchas.issue(&form.prelogin, now_ms()).await.unwrap();
        let answer = f.service.captchas.answer_for_tests(&form.prelogin).unwrap();
        assert!(signed_in(&f.try_with(&form, &form.csrf, "alice", GOOD, &answer).await));
        let elsewhere = crate::client::AddressKey::of("192.0.2.99".parse().unwrap());
        for name in ["alice", "mallory"] {
            let demanded = f.service.state.needs_captcha(elsewhere, Some(username_digest(name)), now_ms()).await;
            assert!(demanded.unwrap(), "{name}");
        }
    }

    #[tokio::test]
    async fn an_unknown_user_and_a_wrong_password_are_refused_alike() {
        let f = fixture(None, None, 100).await;
        let unknown = refusal(f.attempt("mallory", "wrong").await);
        let wrong = refusal(f.attempt("alice", "wrong").await);
        assert_eq!(unknown.reason, FailureReason::UnknownUser);
        assert_eq!(wrong.reason, FailureReason::BadPassword);
        assert_eq!(Refusal { reason: FailureReason::BadPassword, ..unknown }, wrong, "only the log's reason differs");
    }

    #[tokio::test]
    async fn a_form_signs_in_once_and_csrf_is_checked_before_the_password() {
        let f = fixture(None, None, 100).await;
        let form = f.form();
        assert!(signed_in(&f.try_with(&form, &form.csrf, "alice", GOOD, "").await));
        let again = refusal(f.try_with(&form, &form.csrf, "alice", GOOD, "").await);
        assert_eq!(again.reason, FailureReason::Csrf, "the pre-login value is retired");
        let other = f.form();
        let r = refusal(f.try_with(&form, &other.csrf, "alice", GOOD, "").await);
        assert_eq!(r.reason, FailureReason::Csrf, "a token bound to another visitor");
        assert!(!f.service.state.needs_captcha(f.client.key(), None, now_ms()).await.unwrap());
    }

    #[tokio::test]
    async fn a_sign_in_ends_the_previous_session_and_makes_a_new_one() {
        let f = fixture(None, None, 100).await;
        let Outcome::SignedIn { token: old, .. } = f.attempt("alice", GOOD).await else { panic!("refused") };
        let form = f.form();
        let attempt = Attempt {
            client: &f.client,
            username: "Alice",
            password: Password::new(GOOD),
            csrf: &form.csrf,
            prelogin: Some(&form.prelogin),
            captcha: "",
            previous_session: SessionToken::parse(&old.encode()),
            next: None,
            device: None,
            from_another_site: false,
        };
        let Outcome::SignedIn { token: new, .. } = f.service.attempt(attempt).await.unwrap() else { panic!("refused") };
        assert!(f.service.sessions.resolve(&old.encode()).await.unwrap().is_none(), "the old session ended");
        assert!(f.service.sessions.resolve(&new.encode()).await.unwrap().is_some());
        assert_ne!(old.encode(), new.encode());
    }

    /// A brute-force state that cannot be reached (a shared database that is down).
    struct Unreachable;

    fn down<T>() -> Result<T, StateError> {
        Err(StateError(anyhow::anyhow!("the database is down")))
    }

    #[async_trait::async_trait]
    impl BruteForceState for Unreachable {
        async fn take(&self, _: QuotaKey, _: Rate, _: u64) -> Result<Result<(), crate::brute_force::Wait>, StateError> {
            down()
        }
        async fn reserve(
            &self,
            _: crate::client::AddressKey,
            _: u128,
            _: Asker,
            _: u64,
        ) -> Result<Result<crate::failures::Reservation, CaptchaDemanded>, StateError> {
            down()
        }
        async fn fail(&self, _: crate::failures::Reservation, _: u64) -> Result<crate::failures::Recorded, StateError> {
            down()
        }
        async fn release(&self, _: crate::failures::Reservation) -> Result<(), StateError> {
            down()
        }
        async fn record_failure(
            &self,
            _: crate::client::AddressKey,
            _: Option<u128>,
            _: u64,
        ) -> Result<crate::failures::Recorded, StateError> {
            down()
        }
        async fn needs_captcha(
            &self,
            _: crate::client::AddressKey,
            _: Option<u128>,
            _: u64,
        ) -> Result<bool, StateError> {
            down()
        }
        async fn clear_username(&self, _: u128) -> Result<usize, StateError> {
            down()
        }
        async fn username_failures(&self, _: u128, _: u64) -> Result<usize, StateError> {
            down()
        }
        async fn open_challenge(&self, _: [u8; 32], _: [u8; 32], _: u64, _: u64) -> Result<(), StateError> {
            down()
        }
        async fn take_challenge(&self, _: [u8; 32], _: u64) -> Result<Option<[u8; 32]>, StateError> {
            down()
        }
        async fn retire(&self, _: [u8; 16], _: u64, _: u64) -> Result<bool, StateError> {
            down()
        }
        async fn is_retired(&self, _: [u8; 16]) -> Result<bool, StateError> {
            down()
        }
        async fn prune(&self, _: u64) -> Result<(), StateError> {
            down()
        }
    }

    #[tokio::test]
    async fn an_unreachable_brute_force_state_fails_closed_with_or_without_quotas() {
        for quotas in [rate(100), None] {
            let mut f = fixture(quotas, quotas, 100).await;
            let state: Arc<dyn BruteForceState> = Arc::new(Unreachable);
            f.service.captchas = Arc::new(Captchas::new([3; 32], Arc::clone(&state)));
            f.service.state = state;
            let form = f.form();
            let err = match f.judge(&form, &form.csrf, "alice", GOOD, "").await {
                Err(e) => e,
                Ok(_) => panic!("judged without its state"),
            };
            assert!(matches!(err, SignInError::State(_)) && err.is_unavailable(), "{err:?}");
        }
    }
}
