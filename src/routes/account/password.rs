//! `POST /account/password`: a user changes their own password (SPEC.md, "Second factors and
//! the account page"). The current password is checked on the hash pool like a sign-in and
//! counts like one: it spends the per-username quota, and a wrong one is a recorded
//! `bad_password` failure that counts toward the captcha threshold, so a stolen session
//! cannot be used to guess the password faster than the login form allows. Success ends every
//! other session and gives this browser a new token (OWASP ASVS 4.0 §3.3.3, §3.2.1).

use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use crate::app::AppState;
use crate::audit::FailureReason;
use crate::authentication::AuthError;
use crate::brute_force::{Held, QuotaKey};
use crate::failures::CaptchaDemanded;
use crate::password::Password;
use crate::rate_limit::username_digest;
use crate::routes::flash::Notice;
use crate::routes::{current_session, error_page, read_form, see_other, with_retry_after, State};
use crate::session::ActiveSession;
use crate::session::SESSION_COOKIE;
use crate::store::now_ms;
use crate::users::UserError;
use crate::{client, cookies};

/// The form as posted; the passwords are wiped on drop.
#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub new: String,
    #[serde(default)]
    pub repeat: String,
}

impl Drop for PasswordForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.current);
        zeroize::Zeroize::zeroize(&mut self.new);
        zeroize::Zeroize::zeroize(&mut self.repeat);
    }
}

#[handler]
pub async fn change(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: PasswordForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match current_session(req, &state).await {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/login"),
        Err(resp) => return resp,
    };
    if !state.csrf.check_session(&session.token_hash, &form.csrf) {
        return error_page(StatusCode::FORBIDDEN);
    }
    let again = |status, message: &'static str| {
        let session = session.clone();
        let state = state.0.clone();
        async move { super::render(&state, &session, status, Some(message)).await }
    };
    if form.new != form.repeat {
        return again(StatusCode::BAD_REQUEST, "The new password and its repeat differ.").await;
    }
    match check_current(req, &state, &session, &form.current).await {
        Ok(()) => {}
        Err(NotConfirmed::Wrong) => {
            return again(StatusCode::UNAUTHORIZED, "Your current password is not right.").await
        }
        Err(NotConfirmed::TooMany { retry_after }) => {
            let resp = again(StatusCode::TOO_MANY_REQUESTS, "Too many password checks. Please wait and try again.");
            return with_retry_after(resp.await, retry_after);
        }
        Err(NotConfirmed::CaptchaDemanded) => return again(StatusCode::FORBIDDEN, CAPTCHA_DEMANDED).await,
        Err(NotConfirmed::Fault(resp)) => return resp,
    }
    let user = &session.user;
    let client = client::client(req, &state.settings.trusted_proxies);
    // Ends every session of the user (this one too) and logs `authn_password_change`.
    let set = match state.users.set_password(&user.display_name, Password::new(&form.new), &user.display_name).await {
        Ok(set) => set,
        Err(UserError::WeakPassword(why)) => {
            let message = format!("Please choose another new password: {why}.");
            return super::render(&state, &session, StatusCode::BAD_REQUEST, Some(&message)).await;
        }
        Err(UserError::Store(e)) => return crate::routes::store_error(&e, "could not change the password"),
        Err(UserError::Hashing(_)) => return error_page(StatusCode::SERVICE_UNAVAILABLE),
        Err(e) => {
            crate::fault_log::report("password change failed", crate::fault_log::Severity::Error, false, &e);
            return error_page(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    // This browser goes on with a new token, as many factors as before.
    let token = match state.sessions.renew(&session, &set.user, client.ip, &client.user_agent).await {
        Ok(t) => t,
        Err(e) => return crate::routes::store_error(&e, "could not create a session"),
    };
    let mut resp = see_other("/account");
    if let Ok(v) = cookies::set(SESSION_COOKIE, &token.encode(), None).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    // The session keeps its start, so the password just typed counts as a confirmation.
    super::confirm::remember_confirmation(&state, &token.hash(), &mut resp);
    Notice::PasswordChanged { ended: set.sessions_ended.saturating_sub(1) }.attach(&state.csrf, &token.hash(), resp)
}

/// What the account's password forms say once [`check_current`] no longer checks.
pub(super) const CAPTCHA_DEMANDED: &str = "There have been too many wrong passwords for this account. To go on, sign out and sign in again (you will be asked to type the characters in a picture), or try again later.";

/// Why [`check_current`] did not accept the password.
pub(super) enum NotConfirmed {
    /// Not the user's password; counted and recorded like a wrong password at the login form.
    Wrong,
    /// The per-username quota is spent: try again after `retry_after` seconds.
    TooMany { retry_after: u64 },
    /// The store or the hash pool failed: this answer (503 or 500) is to be sent as it is.
    Fault(Response),
    /// The username or address has failed often enough (checks in flight included) to be
    /// asked for a captcha, which only the login form gives: no password is checked here.
    CaptchaDemanded,
}

/// Checks that `current` is the signed-in user's password, the way a sign-in would: on the
/// hash pool, spending the per-address quota, under a reservation of the captcha threshold
/// (so concurrent checks cannot pass it either), spending the per-username quota, and a wrong
/// one counted toward the threshold and recorded as an `authn_login_fail` with reason
/// `bad_password`. Past the threshold no
/// password is checked here: only the login form, with its captcha, takes guesses then. So a
/// stolen session cannot guess the password faster than the login form allows, nor spend the
/// user's quota beyond the threshold.
///
/// # Errors
/// [`NotConfirmed`] saying why not.
pub(super) async fn check_current(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
    current: &str,
) -> Result<(), NotConfirmed> {
    let user = &session.user;
    let client = client::client(req, &state.settings.trusted_proxies);
    let digest = username_digest(&user.key);
    // The login form's per-address quota first, as there: past it every check is refused with
    // 429 and counted per minute, so a session hammering a form past the captcha threshold
    // (each a 403 of its own) writes no more records than the login form would let it.
    if let Some(rate) = state.settings.login_quota_per_ip {
        match state.brute_force.take(QuotaKey::Address(client.key()), rate, now_ms()).await {
            Ok(Ok(())) => {}
            Ok(Err(wait)) => {
                refusal_recorded(state, session, &client, FailureReason::RateLimited).await?;
                return Err(NotConfirmed::TooMany { retry_after: wait.retry_after_secs() });
            }
            Err(e) => {
                return Err(NotConfirmed::Fault(crate::routes::unavailable("cannot reach the brute-force state", &e)));
            }
        }
    }
    // Given back on every way out but a failure (a dropped request included).
    let held = match state.brute_force.reserve(client.key(), digest, now_ms()).await {
        Ok(Ok(r)) => Held::new(std::sync::Arc::clone(&state.brute_force), r),
        Ok(Err(CaptchaDemanded)) => {
            refusal_recorded(state, session, &client, FailureReason::CaptchaRequired).await?;
            return Err(NotConfirmed::CaptchaDemanded);
        }
        Err(e) => {
            return Err(NotConfirmed::Fault(crate::routes::unavailable("cannot read the failure counts", &e)));
        }
    };
    if let Some(rate) = state.settings.login_quota_per_user {
        match state.brute_force.take(QuotaKey::Username(digest), rate, now_ms()).await {
            Ok(Ok(())) => {}
            Ok(Err(wait)) => {
                held.release().await.map_err(|e| {
                    let what = "could not give back a password-check reservation";
                    NotConfirmed::Fault(crate::routes::unavailable(what, &e))
                })?;
                refusal_recorded(state, session, &client, FailureReason::RateLimited).await?;
                return Err(NotConfirmed::TooMany { retry_after: wait.retry_after_secs() });
            }
            Err(e) => {
                return Err(NotConfirmed::Fault(crate::routes::unavailable("cannot reach the brute-force state", &e)));
            }
        }
    }
    match state.auth.verify_current(&user.key, Password::new(current)).await {
        Ok(true) => held.release().await.map_err(|e| {
            NotConfirmed::Fault(crate::routes::unavailable("could not give back a password-check reservation", &e))
        }),
        Ok(false) => {
            let counted = match held.fail(now_ms()).await {
                Ok(c) => c,
                Err(e) => {
                    let what = "cannot count a failed password check";
                    return Err(NotConfirmed::Fault(crate::routes::unavailable(what, &e)));
                }
            };
            let recorded = state
                .audit
                .record_failure(&user.display_name, &client, FailureReason::BadPassword, counted.reached_threshold)
                .await;
            if let Err(e) = recorded {
                let what = "cannot record a failed password check";
                return Err(NotConfirmed::Fault(crate::routes::unavailable(what, &e)));
            }
            Err(NotConfirmed::Wrong)
        }
        Err(AuthError::Overloaded) => Err(NotConfirmed::Fault(error_page(StatusCode::SERVICE_UNAVAILABLE))),
        Err(AuthError::Store(e)) => {
            Err(NotConfirmed::Fault(crate::routes::store_error(&e, "could not check the password")))
        }
        Err(e) => {
            crate::fault_log::report("password check failed", crate::fault_log::Severity::Error, false, &e);
            Err(NotConfirmed::Fault(error_page(StatusCode::INTERNAL_SERVER_ERROR)))
        }
    }
}

/// Records a password check refused before any password was checked (`captcha_required` past
/// the threshold, `rate_limited` past the per-username quota), as the login form records its
/// refusals, so the audit shows a stolen session probing the account pages.
///
/// # Errors
/// [`NotConfirmed::Fault`] (503) when the record cannot be written: the refusal is not sent
/// as if it had been recorded.
async fn refusal_recorded(
    state: &AppState,
    session: &ActiveSession,
    client: &crate::audit::Client,
    reason: FailureReason,
) -> Result<(), NotConfirmed> {
    // Not a failure that counts toward the threshold: nothing was checked.
    match state.audit.record_failure(&session.user.display_name, client, reason, false).await {
        Ok(()) => Ok(()),
        Err(e) => Err(NotConfirmed::Fault(crate::routes::unavailable("cannot record a refused password check", &e))),
    }
}
