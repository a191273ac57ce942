//! `/login/second-factor`: the second step of a sign-in for a user with a second factor.
//! `GET` shows the form (one code field that takes a pasted code, and a recovery code), bound
//! to the pending sign-in named by the `__Host-portcullis-mfa` cookie; `POST` asks the sign-in
//! service ([`crate::sign_in::SignIn::second_step`]) and renders its outcome: 303 with the
//! session cookie (two factors) on success, the form again with 401 for a wrong or reused
//! code, and 303 to `/login` when there is no pending sign-in to finish. Past the captcha
//! threshold the form shows the pending sign-in's own picture, whose answer goes with a code.

use crate::metrics::LoginResult;
use askama::Template;
use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use crate::app::AppState;
use crate::audit::FailureReason;
use crate::factors::{Proof, MFA_COOKIE};
use crate::routes::{html, read_form, see_other, State};
use crate::session::{SessionToken, SESSION_COOKIE};
use crate::sign_in::{SecondAttempt, StepOutcome};
use crate::{client, cookies};

/// The route.
pub const PATH: &str = "/login/second-factor";

#[derive(Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage<'a> {
    csrf: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    /// The pending sign-in is over: only a link back to `/login`.
    restart: bool,
    /// No code is checked for the user any more (`sign_in::WRONG_CODES_IN_A_ROW`): the code
    /// forms are left out, the passkey (which lifts it) and *Cancel* stay.
    locked: bool,
    /// The user has a passkey: offer it (and load `static/passkey.js`).
    passkey: bool,
    /// The user has an authenticator app: ask for its code.
    totp: bool,
    /// Past the captcha threshold: the pending sign-in's picture (a `data:` URI), whose
    /// answer goes with a code.
    captcha: Option<String>,
    /// Past the threshold, on a page another site's led to: a link that draws the picture.
    offer_picture: bool,
}

/// The form as posted. (The codes are wiped on drop.)
#[derive(Deserialize)]
pub struct SecondFactorForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub recovery_code: String,
    /// A passkey's answer (JSON), from `static/passkey.js`.
    #[serde(default)]
    pub credential: String,
    /// The answer to the pending sign-in's captcha, when the page showed one.
    #[serde(default)]
    pub captcha: String,
}

impl Drop for SecondFactorForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.code);
        zeroize::Zeroize::zeroize(&mut self.recovery_code);
    }
}

/// To `/login`, forgetting the pending sign-in's cookie.
/// Back to the password: a pending sign-in cookie the request carried that names none any
/// more (past its 5 minutes, used, or ended by a sign-out everywhere, a password change or an
/// administrator) is said on the form (`ended=step`), which came bare (review 196).
fn restart(req: &Request) -> Response {
    let ended = cookies::get(req, MFA_COOKIE).is_some();
    let mut resp = see_other(if ended { "/login?ended=step" } else { "/login" });
    if let Ok(v) = cookies::clear(MFA_COOKIE).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[handler]
pub async fn show(req: &Request, state: State<'_>) -> Response {
    page(req, state).await
}

/// `HEAD /login/second-factor`: the headers `GET` would send, with no picture drawn (poem
/// answers a `HEAD` with the `GET` handler, as a `GET`, so that one cannot tell).
#[handler]
pub async fn show_head(req: &Request, state: State<'_>) -> Response {
    let mut resp = page(req, state).await;
    resp.set_body(());
    resp
}

/// Whether `refusal` is the cap on wrong codes in a row (a quota refusal without a wait).
fn locks_codes(refusal: &crate::sign_in::Refusal) -> bool {
    refusal.reason == FailureReason::RateLimited && refusal.retry_after.is_none()
}

/// What the page says once no code is checked for the user (`sign_in::WRONG_CODES_IN_A_ROW`).
fn codes_locked() -> String {
    format!(
        "Codes are no longer accepted for this account: {} wrong codes were typed since its last sign-in, so someone may know its password. Sign in with a passkey if you have one, or ask your administrator to set a new password.",
        crate::sign_in::WRONG_CODES_IN_A_ROW
    )
}

async fn page(req: &Request, state: State<'_>) -> Response {
    let cookie = match crate::routes::pending_cookie(req, &state).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Some(cookie) = cookie else { return restart(req) };
    match state.factors.pending(&cookie).await {
        Ok(Some((hash, pending, user))) => {
            let offers = match offers(&state, &user.key).await {
                Ok(o) => o,
                Err(resp) => return resp,
            };
            // Said before a code is typed, not only after (review 208).
            let locked = match state.sign_in.codes_locked(&user).await {
                Ok(locked) => locked.then(codes_locked),
                Err(e) => return crate::routes::store_error(&e, "could not count wrong codes"),
            };
            // The mfa cookie is `SameSite=Lax`, so another site's navigations bring it, and
            // a sibling host's `<img>`s too: a picture only for this site's own (review 170).
            let step = (&hash, &pending);
            let captcha = match super::picture_for(req) {
                super::Picture::Draw => match captcha_if_past_threshold(req, &state, step, &user.key, None).await {
                    Ok(c) => c.map_or(Captcha::Absent, Captcha::Picture),
                    Err(resp) => return resp,
                },
                super::Picture::Offer => match past_threshold(req, &state, &pending, &user.key).await {
                    Ok(true) => Captcha::Link,
                    Ok(false) => Captcha::Absent,
                    Err(resp) => return resp,
                },
            };
            let shown = if locked.is_some() { Shown::PasskeyOnly } else { Shown::Factors };
            render(&state, &hash, &user.display_name, StatusCode::OK, locked.as_deref(), shown, offers, captcha)
        }
        Ok(None) => restart(req),
        Err(e) => crate::routes::store_error(&e, "could not read a pending sign-in"),
    }
}

/// What the page offers the user: (an authenticator app, a passkey when passkeys are on).
// The error is the very response the handler returns at once.
#[allow(clippy::result_large_err)]
async fn offers(state: &AppState, user_key: &str) -> Result<(bool, bool), Response> {
    let summary =
        state.factors.summary(user_key).await.map_err(|e| crate::routes::store_error(&e, "could not read factors"))?;
    Ok((summary.totp, summary.passkeys > 0 && state.passkeys.enabled()))
}

/// The pending sign-in's captcha picture when the user's name or the client's address is past
/// the threshold, so a code can be checked (`SignIn::second_step`); `None` below it, and for
/// a pending sign-in whose password step solved one (its one check needs no other). `known`:
/// whether it is past, when a refusal just said so (no need to read the counts again).
// The error is the very response the handler returns at once.
#[allow(clippy::result_large_err)]
async fn captcha_if_past_threshold(
    req: &Request,
    state: &AppState,
    (hash, pending): (&[u8; 32], &crate::store::PendingSignIn),
    user_key: &str,
    known: Option<bool>,
) -> Result<Option<String>, Response> {
    let past = match known {
        Some(past) => past && !pending.captcha_solved,
        None => past_threshold(req, state, pending, user_key).await?,
    };
    match past {
        false => Ok(None),
        true => crate::routes::draw_captcha(req, state, &crate::sign_in::pending_captcha_key(hash)).await.map(Some),
    }
}

/// Whether the pending sign-in's next check needs a picture: the user's name or the client's
/// address is past the threshold, and its password step solved none.
// The error is the very response the handler returns at once.
#[allow(clippy::result_large_err)]
async fn past_threshold(
    req: &Request,
    state: &AppState,
    pending: &crate::store::PendingSignIn,
    user_key: &str,
) -> Result<bool, Response> {
    if pending.captcha_solved {
        return Ok(false);
    }
    let address = client::client(req, &state.settings.trusted_proxies).key();
    // A browser the user signed in with before meets its address's threshold alone (until its
    // wrong codes reach it), as the check will.
    let device = crate::cookies::get(req, crate::csrf::DEVICE_COOKIE);
    let digest = state
        .sign_in
        .counted_username_for_codes(device.as_deref(), user_key)
        .await
        .map_err(|e| crate::routes::store_error(&e, "could not read the user's credential generation"))?;
    match state.brute_force.needs_captcha(address, digest, crate::store::now_ms()).await {
        Ok(past) => Ok(past),
        Err(e) => Err(crate::routes::unavailable("cannot read the failure counts", &e)),
    }
}

/// The second step's picture as its page shows it.
enum Captcha {
    /// Below the threshold.
    Absent,
    /// A `data:` URI, whose answer goes with a code.
    Picture(String),
    /// A link that draws it ([`super::Picture::Offer`]).
    Link,
}

/// Which forms the page holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The codes' forms and the passkey's, as the user has them.
    Factors,
    /// The passkey's alone: codes are locked (`sign_in::WRONG_CODES_IN_A_ROW`; review 211 saw
    /// the code fields still offered under the message saying none is accepted).
    PasskeyOnly,
    /// None: the pending sign-in is over, only a link back to `/login`.
    Restart,
}

#[allow(clippy::too_many_arguments)] // one call per outcome; a struct would only rename them
fn render(
    state: &AppState,
    hash: &[u8; 32],
    username: &str,
    status: StatusCode,
    error: Option<&str>,
    shown: Shown,
    (totp, passkey): (bool, bool),
    captcha: Captcha,
) -> Response {
    let csrf = state.csrf.session_token(hash);
    let username = crate::text::printable(username);
    let offer_picture = matches!(captcha, Captcha::Link);
    let captcha = match captcha {
        Captcha::Picture(image) => Some(image),
        Captcha::Absent | Captcha::Link => None,
    };
    let (restart, locked) = (shown == Shown::Restart, shown == Shown::PasskeyOnly);
    let page = SecondFactorPage {
        csrf: &csrf,
        username: &username,
        error,
        restart,
        locked,
        passkey,
        totp,
        captcha,
        offer_picture,
    };
    let resp = html(status, &page);
    if passkey {
        crate::routes::passkeys::with_passkey_script(resp)
    } else {
        resp
    }
}

/// What the second step's page says of an attempt that did not sign in: `refusal` (`None`:
/// nothing was checked), `over` (the pending sign-in ended with it), `passkey` (a passkey
/// answer was sent).
fn step_message(refusal: Option<&crate::sign_in::Refusal>, over: bool, passkey: bool) -> (StatusCode, String) {
    let unauthorized = |m: &str| (StatusCode::UNAUTHORIZED, m.to_string());
    let Some(refusal) = refusal else {
        // Nothing was checked: an empty form, or a passkey answer whose check is over (it
        // expired, this sign-in began another, or its twin sent at the same moment used it):
        // nothing recorded, as an expired form.
        return match passkey {
            true => (StatusCode::FORBIDDEN, "That passkey check is over. Please try again.".to_string()),
            false => unauthorized("Please type the code from your authenticator app."),
        };
    };
    match refusal.reason {
        // No wait: the wrong codes in a row are used up (`sign_in::WRONG_CODES_IN_A_ROW`).
        FailureReason::RateLimited if locks_codes(refusal) => (StatusCode::TOO_MANY_REQUESTS, codes_locked()),
        FailureReason::RateLimited => {
            let wait = std::time::Duration::from_secs(refusal.retry_after.unwrap_or(1));
            let message = format!("Too many attempts. Please wait {} and try again.", humantime::format_duration(wait));
            (StatusCode::TOO_MANY_REQUESTS, message)
        }
        FailureReason::Csrf => (
            StatusCode::FORBIDDEN,
            "This form has expired or was not sent from this site. Please try again.".to_string(),
        ),
        FailureReason::CaptchaRequired => unauthorized(
            "There have been too many wrong attempts for this account or from this network: please also type the characters in the picture.",
        ),
        FailureReason::BadCaptcha => unauthorized(
            "The characters did not match the picture, so the code was not checked. Please try again with the new picture.",
        ),
        _ => match (passkey, over) {
            (true, true) => unauthorized("That passkey was not accepted. Please sign in again with your password."),
            (true, false) => unauthorized("That passkey was not accepted. Please try again."),
            (false, true) => {
                unauthorized("That code is not right, or was already used. Please sign in again with your password.")
            }
            (false, false) => unauthorized("That code is not right, or was already used."),
        },
    }
}

#[handler]
pub async fn submit(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: SecondFactorForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let client = client::client(req, &state.settings.trusted_proxies);
    let cookie = match crate::routes::pending_cookie(req, &state).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let device = cookies::get(req, crate::csrf::DEVICE_COOKIE);
    let attempt = SecondAttempt {
        client: &client,
        pending: cookie.as_deref(),
        csrf: &form.csrf,
        proof: if form.credential.is_empty() {
            Proof::from_fields(&form.code, &form.recovery_code)
        } else {
            let ceremony = cookies::get(req, crate::passkeys::CEREMONY_COOKIE);
            Some(Proof::Passkey { ceremony, credential: form.credential.clone() })
        },
        previous_session: cookies::get(req, SESSION_COOKIE).and_then(|c| SessionToken::parse(&c)),
        device: device.as_deref(),
        captcha: &form.captcha,
    };
    let outcome = match state.sign_in.second_step(attempt).await {
        Ok(o) => o,
        Err(e) => return crate::routes::not_judged("second factor not judged", &e),
    };
    match &outcome {
        StepOutcome::SignedIn { .. } => state.metrics.login_attempt(LoginResult::Success),
        StepOutcome::Refused { refusal, .. } => state.metrics.login_attempt(LoginResult::Refused(refusal.reason)),
        StepOutcome::Restart | StepOutcome::Unchecked => {}
    }
    match outcome {
        StepOutcome::SignedIn { token, next, device_cookie, recovery_codes_left, wrong_codes_before } => {
            use crate::routes::flash::Notice;
            let rd = super::checked_rd(&state, next.as_deref());
            let (to, wrong_codes) =
                super::landing(rd.as_deref(), super::safe_next(next.as_deref()), wrong_codes_before);
            let resp = super::after_sign_in(&to, &token, &device_cookie, MFA_COOKIE);
            // Wrong codes others typed (this site's page, whatever `rd` said), or else how many
            // recovery codes are left, on this site's next page (an application's address in
            // `rd` shows none; the notice waits a minute for ours).
            let notice = match (wrong_codes, recovery_codes_left) {
                (Some(wrong), _) => Some(wrong),
                (None, Some(left)) if rd.is_none() => Some(Notice::RecoveryCodeUsed { left }),
                (None, _) => None,
            };
            match notice {
                Some(notice) => notice.attach(&state.csrf, &token.hash(), resp),
                None => resp,
            }
        }
        StepOutcome::Restart => restart(req),
        StepOutcome::Unchecked | StepOutcome::Refused { .. } => {
            let (refusal, over) = match outcome {
                StepOutcome::Refused { refusal, restart } => (Some(refusal), restart),
                _ => (None, false),
            };
            let (status, message) = step_message(refusal.as_ref(), over, !form.credential.is_empty());
            // The page needs the pending sign-in's name and token binding: read it again (a
            // refusal never ends it, except a wrong code on the one check a captcha solved at
            // the password step gave).
            let pending = match &cookie {
                Some(c) if !over => match state.factors.pending(c).await {
                    Ok(p) => p,
                    Err(e) => return crate::routes::store_error(&e, "could not read a pending sign-in"),
                },
                _ => None,
            };
            let mut resp = match pending {
                Some((hash, pending, user)) => {
                    let offers = match offers(&state, &user.key).await {
                        Ok(o) => o,
                        Err(resp) => return resp,
                    };
                    let known = refusal.as_ref().map(|r| r.captcha_demanded);
                    let captcha =
                        match captcha_if_past_threshold(req, &state, (&hash, &pending), &user.key, known).await {
                            Ok(c) => c.map_or(Captcha::Absent, Captcha::Picture),
                            Err(resp) => return resp,
                        };
                    let locked = refusal.as_ref().is_some_and(locks_codes);
                    let shown = if locked { Shown::PasskeyOnly } else { Shown::Factors };
                    render(&state, &hash, &user.display_name, status, Some(&message), shown, offers, captcha)
                }
                None => {
                    let mut r = render(
                        &state,
                        &[0; 32],
                        "",
                        status,
                        Some(&message),
                        Shown::Restart,
                        (false, false),
                        Captcha::Absent,
                    );
                    if let Ok(v) = cookies::clear(MFA_COOKIE).parse() {
                        r.headers_mut().append(header::SET_COOKIE, v);
                    }
                    r
                }
            };
            match refusal.and_then(|r| r.retry_after) {
                Some(secs) => crate::routes::with_retry_after(resp, secs),
                None => resp,
            }
        }
    }
}
