//! `POST /account/password`: a user changes their own password (SPEC.md, "Second factors and
//! the account page"). The current password is checked on the hash pool like a sign-in and
//! counts like one: it spends the per-username quota, and a wrong one is a recorded
//! `bad_password` failure that counts toward the captcha threshold, so a stolen session
//! cannot be used to guess the password faster than the login form allows; past the threshold
//! the form asks for a captcha, as the login form does. Success ends every other session and
//! gives this browser a new token (OWASP ASVS 4.0 §3.3.3, §3.2.1).

use poem::http::StatusCode;
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use super::PasswordFault as Fault;
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::client;
use crate::password::Password;
use crate::routes::flash::Notice;
use crate::routes::{current_session, error_page, read_form, with_retry_after, State};
use crate::session::{ActiveSession, StartError};
use crate::sign_in::{account_captcha_key, CaptchaAnswer, PasswordCheck};
use crate::users::UserError;

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
    /// The captcha's answer, when the form showed one.
    #[serde(default)]
    pub captcha: String,
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
        Ok(None) => return crate::routes::to_sign_in(req, "/login?next=/account"),
        Err(resp) => return resp,
    };
    if !state.csrf.check_session(&session.token_hash, &form.csrf) {
        return crate::routes::stale_form();
    }
    let again = |status, fault, message: &'static str| {
        let session = session.clone();
        let state = state.0.clone();
        async move { super::render(&state, &session, status, Some((fault, message)), None).await }
    };
    if form.new != form.repeat {
        return again(StatusCode::BAD_REQUEST, Fault::Repeat, "The new password and its repeat differ.").await;
    }
    // Nothing to hash or check: the user typed both. Judged as the policy judges a new
    // password (case-folded, trimmed), not only as typed.
    let (new, current) = (crate::password::Password::new(&form.new), crate::password::Password::new(&form.current));
    let same = crate::password::same_when_folded(&new, &current);
    if same && !form.new.is_empty() {
        let message = "The new password is the one you have now: choose another.";
        return again(StatusCode::BAD_REQUEST, Fault::New, message).await;
    }
    match check_current(req, &state, &session, &form.current, &form.captcha).await {
        Ok(PasswordCheck::Right) => {}
        Ok(PasswordCheck::Wrong { captcha_next }) => {
            let message = "Your current password is not right.";
            let image = match captcha_if(captcha_next, req, &state, &session).await {
                Ok(image) => image,
                Err(resp) => return resp,
            };
            let error = Some((Fault::Current, message));
            return super::render(&state, &session, StatusCode::UNAUTHORIZED, error, image).await;
        }
        Ok(PasswordCheck::TooMany { retry_after }) => {
            let message = "Too many password checks. Please wait and try again.";
            let resp = again(StatusCode::TOO_MANY_REQUESTS, Fault::Form, message);
            return with_retry_after(resp.await, retry_after);
        }
        Ok(PasswordCheck::CaptchaDemanded) => {
            let image = match new_captcha(req, &state, &session).await {
                Ok(image) => image,
                Err(resp) => return resp,
            };
            let error = Some((Fault::Form, CAPTCHA_DEMANDED));
            return super::render(&state, &session, StatusCode::FORBIDDEN, error, Some(image)).await;
        }
        Ok(PasswordCheck::NothingTyped) => {
            return again(StatusCode::BAD_REQUEST, Fault::Current, "Type your current password.").await
        }
        Err(resp) => return resp,
    }
    let user = &session.user;
    let client = client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
    // Ends every other session of the user (this one goes on below, or ends there) and logs
    // `authn_password_change`.
    // Only in the generation the current password was just checked in: a `user passwd`, a
    // reset, a disable or *sign out everywhere else* landing meanwhile is not undone by it.
    let from = Some(crate::store::Holding::of(&session.record));
    let new = Password::new(&form.new);
    let set = match state
        .users
        .set_password(&user.display_name, new, &user.display_name, from, Some(&session.token_hash))
        .await
    {
        Ok(set) => set,
        Err(UserError::Superseded) => {
            // The same form sent twice (a double click): the other sending changed it, to this
            // very password, and its answer carries the session's new token (review 129 was
            // told nothing was changed). Checked only here, at one argon2 verify.
            if matches!(state.auth.verify_current(&user.key, Password::new(&form.new)).await, Ok(true)) {
                return crate::routes::error_page_leading(
                    StatusCode::CONFLICT,
                    "Password changed",
                    "Your password is changed to the new one you typed: this form was sent twice (the page reloaded, or the button pressed twice), and the first sending changed it.",
                    ("/account", "Your account"),
                );
            }
            return super::changed_meanwhile(
                "Password not changed",
                // Another tab's change to another password leaves this browser signed in under the
                // token that change's answer carried (review 176: "Please sign in again" was wrong).
                "While you were changing it, your password was changed elsewhere (perhaps in another tab), your account was signed out everywhere, or the passkey this session was signed in with was removed: this change was not made. If this browser was signed out, sign in again.",
            );
        }
        Err(UserError::WeakPassword(why)) => {
            // Its reason as a sentence of its own: a colon within it read as a second one
            // (review 196: "…new password: the password is too short: use…").
            let why = why.to_string();
            let mut chars = why.chars();
            let why: String = chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
            let message = format!("Please choose another new password. {why}.");
            return super::render(&state, &session, StatusCode::BAD_REQUEST, Some((Fault::New, &message)), None).await;
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
        Err(StartError::Store(e)) => return crate::routes::store_error(&e, "could not create a session"),
        // Removed while the password was changed: the removal ended the sessions it signed
        // in, this one with them.
        Err(StartError::PasskeyRemoved) => {
            return super::changed_meanwhile(
                "Password changed, signed out",
                "Your password is changed, but the passkey this session was signed in with was removed meanwhile, so this session is over too. Please sign in again.",
            )
        }
        // Signed out (another tab) while the password was hashed: the sign-out wins, and
        // this browser is told the change happened all the same (found by review 129).
        Err(StartError::SignedOut) => {
            return super::changed_meanwhile(
                "Password changed, signed out",
                "Your password is changed, but this session was signed out meanwhile, so it stays signed out. Please sign in again with the new password.",
            )
        }
    };
    // Which handle the session goes on under, so its later lines are tied to this one (review
    // 218: nothing named it after a password change).
    let renewed = crate::session::SessionHandle::of(&token.hash()).encode();
    state.audit.record(&AuthEvent::SessionRenewed { username: &user.display_name, renewed: &renewed, client: &client });
    // The session keeps its start, so the password just typed counts as a confirmation.
    let mut resp = super::confirm::continued(&state, "/account", &token, Some(crate::store::now_ms()));
    // This browser has just typed the password, as at a sign-in: its device token is renewed in
    // the new generation, which voids the old ones (a thief's among them), so it stays known.
    let previous = crate::cookies::get(req, crate::csrf::DEVICE_COOKIE);
    match state.csrf.issue_device_cookie(&user.key, previous.as_deref(), crate::store::now_ms()) {
        Ok(value) => {
            if let Ok(v) = crate::routes::login::device_cookie(&value).parse() {
                resp.headers_mut().append(poem::http::header::SET_COOKIE, v);
            }
        }
        // Only the browser's place in a flood is at stake: it signs in as a stranger once.
        Err(e) => tracing::warn!(error = %e, "no new device token after a password change"),
    }
    Notice::PasswordChanged { ended: set.sessions_ended, pending: set.pending_ended }.attach(
        &state.csrf,
        &token.hash(),
        resp,
    )
}

/// What the account's password forms say when [`check_current`] wants a captcha solved.
/// Said when the username's or the address's failures demand a captcha: which one is not said,
/// since a signed-in user whose account had no failure read "too many wrong passwords for
/// this account" as an attack on it (review 161).
pub(super) const CAPTCHA_DEMANDED: &str = "There have been too many wrong passwords for this account or from this network. Fill in the form again, with the characters in the picture.";

/// Checks that `current` is the signed-in user's password, with the login form's defences
/// ([`crate::sign_in::SignIn::check_password`]); `captcha`: the answer to the session's
/// challenge, if the form showed one.
///
/// # Errors
/// The answer to send (503 or 500) when the check could not be made.
pub(super) async fn check_current(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
    current: &str,
    captcha: &str,
) -> Result<PasswordCheck, Response> {
    let client = client::client(req, &state.settings.trusted_proxies);
    let key = account_captcha_key(&session.token_hash);
    let answer = CaptchaAnswer { key: &key, answer: captcha };
    let device = crate::cookies::get(req, crate::csrf::DEVICE_COOKIE);
    let (user, current) = (&session.user, Password::new(current));
    let checked = state.sign_in.check_password(&client, user, current, answer, device.as_deref()).await;
    checked.map_err(|e| crate::routes::not_judged("password check not judged", &e))
}

/// [`new_captcha`] when `wanted` (a wrong password whose next check wants a captcha, so the
/// picture comes at once rather than after another refusal), else none.
///
/// # Errors
/// As [`new_captcha`].
pub(super) async fn captcha_if(
    wanted: bool,
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
) -> Result<Option<String>, Response> {
    if !wanted {
        return Ok(None);
    }
    new_captcha(req, state, session).await.map(Some)
}

/// A new captcha challenge for `session`'s account forms (replacing its open one), as a
/// `data:` URI ([`crate::routes::draw_captcha`]).
///
/// # Errors
/// As [`crate::routes::draw_captcha`].
pub(super) async fn new_captcha(req: &Request, state: &AppState, session: &ActiveSession) -> Result<String, Response> {
    crate::routes::draw_captcha(req, state, &account_captcha_key(&session.token_hash)).await
}
