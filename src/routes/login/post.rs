//! `POST /login`: reads the form, asks the sign-in service ([`crate::sign_in`], which holds
//! the order of the brute-force checks and records every refusal) and renders its outcome.
//! Post/redirect/get: a success is a 303 with the new session cookie.

use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use super::{Form, CAPTCHA_REQUIRED, GENERIC_FAILURE, GENERIC_FAILURE_WITH_PICTURE};
use crate::app::AppState;
use crate::audit::{Client, FailureReason};
use crate::csrf::{DEVICE_COOKIE, PRELOGIN_COOKIE};
use crate::factors::MFA_COOKIE;
use crate::password::Password;
use crate::routes::{read_form, see_other, State};
use crate::session::{SessionToken, SESSION_COOKIE};
use crate::sign_in::{Attempt, Outcome, Refusal};
use crate::{client, cookies};

/// The login form as posted. Public so the fuzz targets and property tests parse exactly
/// this shape.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub captcha: String,
    pub next: Option<String>,
    /// Forward auth's return address, checked before use.
    pub rd: Option<String>,
}

impl Drop for LoginForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

#[handler]
pub async fn login(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: LoginForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let client = client::client(req, &state.settings.trusted_proxies);
    let prelogin = cookies::get(req, PRELOGIN_COOKIE);
    let device = cookies::get(req, DEVICE_COOKIE);
    let rd = super::checked_rd(&state, form.rd.as_deref());
    let attempt_from_another_site = crate::routes::sent_by_another_site(req);
    let attempt = Attempt {
        client: &client,
        username: &form.username,
        password: Password::new(&form.password),
        csrf: &form.csrf,
        prelogin: prelogin.as_deref(),
        captcha: &form.captcha,
        previous_session: cookies::get(req, SESSION_COOKIE).and_then(|c| SessionToken::parse(&c)),
        // A second step ends where this one would have: at `rd` (checked again there) or `next`.
        next: rd.as_deref().or(super::safe_next(form.next.as_deref())),
        device: device.as_deref(),
        from_another_site: attempt_from_another_site,
    };
    let next = super::safe_next(form.next.as_deref());
    let outcome = state.sign_in.attempt(attempt).await;
    super::count_judged(&state.metrics, &outcome);
    match outcome {
        Ok(Outcome::SecondFactorNeeded { pending }) => {
            let mut resp = see_other(super::second_factor::PATH);
            let lifetime = crate::factors::MFA_COOKIE_LIFETIME.as_secs();
            let h = resp.headers_mut();
            for cookie in [cookies::set(MFA_COOKIE, &pending.encode(), Some(lifetime)), cookies::clear(PRELOGIN_COOKIE)]
            {
                if let Ok(v) = cookie.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Ok(Outcome::SignedIn { token, must_enrol, device_cookie, .. }) => {
            // The `second_factor` policy: enrol first, then go on.
            let to = if must_enrol { "/account" } else { rd.as_deref().or(next).unwrap_or("/") };
            super::after_sign_in(to, &token, &device_cookie, PRELOGIN_COOKIE)
        }
        // Recorded, and answered as every route answers another site's form: no new form,
        // whose pre-login cookie would void the one open in the visitor's tab (review 170).
        Ok(Outcome::Refused(_)) if attempt_from_another_site => crate::routes::sent_from_another_site(),
        Ok(Outcome::Refused(refusal)) => {
            let answered = !form.captcha.trim().is_empty();
            refused(req, &state, &form.username, next, rd.as_deref(), &client, refusal, answered).await
        }
        // The password was right: the form again, with the username, saying what happened.
        Ok(Outcome::Interrupted) => {
            let error = Some(INTERRUPTED.to_string());
            let form =
                Form { error, username: &form.username, rd: rd.as_deref(), ..Form::new(StatusCode::CONFLICT, next) };
            super::render(req, &state, form).await
        }
        Err(e) => crate::routes::not_judged("sign-in not judged", &e),
    }
}

/// What the form says when the account changed while its password was checked
/// ([`Outcome::Interrupted`]).
pub(crate) const INTERRUPTED: &str =
    "Your account was signed out everywhere while you were signing in. Please sign in again.";

/// The form again, saying why: 429 for a quota (with `Retry-After`), 403 for CSRF, and 401
/// with one message for every wrong username, password or captcha (`picture_answered`: the
/// form carried the picture's characters, which the message then names too).
#[allow(clippy::too_many_arguments)] // two callers, each with its own; a struct would only rename them
pub(crate) async fn refused(
    req: &Request,
    state: &AppState,
    username: &str,
    next: Option<&str>,
    rd: Option<&str>,
    client: &Client,
    refusal: Refusal,
    picture_answered: bool,
) -> Response {
    let (status, error) = match refusal.reason {
        FailureReason::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many sign-in attempts. Please wait {} and try again.",
                humantime::format_duration(std::time::Duration::from_secs(refusal.retry_after.unwrap_or(1)))
            ),
        ),
        FailureReason::Csrf => {
            (StatusCode::FORBIDDEN, "This form has expired or was not sent from this site. Please try again.".into())
        }
        FailureReason::BadPasskey => (
            StatusCode::UNAUTHORIZED,
            "That passkey was not accepted. Please try again, or sign in with your password.".into(),
        ),
        FailureReason::CaptchaRequired => (StatusCode::UNAUTHORIZED, CAPTCHA_REQUIRED.into()),
        _ if picture_answered => (StatusCode::UNAUTHORIZED, GENERIC_FAILURE_WITH_PICTURE.into()),
        _ => (StatusCode::UNAUTHORIZED, GENERIC_FAILURE.into()),
    };
    let captcha = refusal.captcha_demanded.then_some(client.key());
    let form =
        Form { error: Some(error), username, captcha, rd, retry_after: refusal.retry_after, ..Form::new(status, next) };
    super::render(req, state, form).await
}
