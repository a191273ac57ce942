//! `POST /login`, in the order that keeps each defence cheap and fair:
//! 1. the per-address quota (every attempt counts),
//! 2. CSRF,
//! 3. the captcha, when this address or username has failed too often; otherwise the
//!    attempt reserves its place among the `captcha_after_failures` checks allowed without
//!    one, so simultaneous attempts cannot all slip past (see [`crate::failures`]),
//! 4. the per-username quota (only attempts that got this far count, so nobody can use up
//!    a user's quota without solving captchas),
//! 5. the password, on the hash pool.
//!
//! Every refusal is recorded durably before the answer goes out; if it cannot be recorded the
//! server answers 503 rather than letting unrecorded attempts through.

use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use super::{Form, GENERIC_FAILURE};
use crate::app::AppState;
use crate::audit::{AuthEvent, Client, FailureReason};
use crate::authentication::AuthError;
use crate::csrf::PRELOGIN_COOKIE;
use crate::domain::normalise_key;
use crate::failures::CaptchaDemanded;
use crate::password::Password;
use crate::rate_limit::username_digest;
use crate::routes::{error_page, read_form, see_other, store_error, State};
use crate::session::{SessionToken, SESSION_COOKIE};
use crate::store::now_ms;
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
}

impl Drop for LoginForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// One attempt being judged.
struct Attempt<'a> {
    req: &'a Request,
    state: &'a AppState,
    client: Client,
    username: &'a str,
    user_key: String,
    next: Option<&'a str>,
}

impl Attempt<'_> {
    /// Records a refusal and answers with the form again.
    async fn refuse(
        &self,
        reason: FailureReason,
        status: StatusCode,
        retry_after: Option<u64>,
        max_reached: bool,
    ) -> Response {
        if let Err(e) = self.state.audit.record_failure(self.username, &self.client, reason, max_reached).await {
            // (Below the disk reserve, Audit says so once a minute, not once per refusal.)
            if !matches!(e, crate::audit::AuditError::Reserve) {
                tracing::error!(error = %e, "cannot record a failed login; refusing service");
            }
            return error_page(StatusCode::SERVICE_UNAVAILABLE);
        }
        let error = match reason {
            FailureReason::RateLimited => format!(
                "Too many sign-in attempts. Please wait {} and try again.",
                humantime::format_duration(std::time::Duration::from_secs(retry_after.unwrap_or(1)))
            ),
            FailureReason::Csrf => "This form has expired or was not sent from this site. Please try again.".into(),
            FailureReason::CaptchaRequired => "Please also type the characters shown in the picture.".into(),
            _ => GENERIC_FAILURE.into(),
        };
        let key = self.client.key();
        let captcha = self.state.failures.needs_captcha(key, &self.user_key, now_ms()).then_some(key);
        let form =
            Form { error: Some(error), username: self.username, captcha, retry_after, ..Form::new(status, self.next) };
        super::render(self.req, self.state, form).await
    }
}

#[handler]
pub async fn login(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: LoginForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let user_key: String = normalise_key(&form.username).chars().take(256).collect();
    let attempt = Attempt {
        req,
        state: &state,
        client: client::client(req, &state.settings.trusted_proxies),
        username: &form.username,
        user_key,
        next: super::safe_next(form.next.as_deref()),
    };
    let ip = attempt.client.ip;
    let address = attempt.client.key();
    let now = now_ms();

    if let Err(wait) = state.quotas.per_address.check(&address) {
        return attempt.refuse(FailureReason::RateLimited, StatusCode::TOO_MANY_REQUESTS, Some(wait), false).await;
    }

    let prelogin = super::prelogin(req, &state, now / 1000);
    let csrf_ok = prelogin.as_ref().is_some_and(|pre| state.csrf.check_login(pre.value(), &form.csrf, now / 1000));
    let Some(prelogin) = prelogin.filter(|_| csrf_ok) else {
        return attempt.refuse(FailureReason::Csrf, StatusCode::FORBIDDEN, None, false).await;
    };

    // Held until the password is judged: dropped (released) on any other way out.
    let reservation = state.failures.reserve(address, &attempt.user_key, now);
    if let Err(CaptchaDemanded) = reservation {
        let refused = if form.captcha.trim().is_empty() {
            Some(FailureReason::CaptchaRequired)
        } else if !state.captchas.check(prelogin.value(), &form.captcha, now) {
            Some(FailureReason::BadCaptcha)
        } else {
            None
        };
        if let Some(reason) = refused {
            return attempt.refuse(reason, StatusCode::UNAUTHORIZED, None, false).await;
        }
    }

    if let Err(wait) = state.quotas.per_username.check(&username_digest(&attempt.user_key)) {
        return attempt.refuse(FailureReason::RateLimited, StatusCode::TOO_MANY_REQUESTS, Some(wait), false).await;
    }

    let user = match state.auth.authenticate(&form.username, Password::new(&form.password)).await {
        Ok(user) => user,
        Err(AuthError::InvalidCredentials(reason)) => {
            let counted = match reservation {
                Ok(r) => r.failed(now_ms()),
                Err(CaptchaDemanded) => state.failures.record_failure(address, &attempt.user_key, now_ms()),
            };
            return attempt.refuse(reason, StatusCode::UNAUTHORIZED, None, counted.reached_threshold).await;
        }
        Err(AuthError::Overloaded) => return error_page(StatusCode::SERVICE_UNAVAILABLE),
        Err(AuthError::Store(e)) => return store_error(&e, "login failed: the store cannot be used"),
        Err(AuthError::Unexpected(e)) => {
            tracing::error!(error = %format!("{e:#}"), "login failed unexpectedly");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    drop(reservation);
    // The form signs in once: retired before the session exists, and of two sign-ins sent
    // with one form at once only the first to get here goes on.
    if !state.csrf.retire(&prelogin, now_ms() / 1000) {
        return attempt.refuse(FailureReason::Csrf, StatusCode::FORBIDDEN, None, false).await;
    }
    let after_failures = state.failures.record_success(&user.key);

    // Session fixation: whatever session this browser had is ended, and a new token issued.
    if let Some(old) = cookies::get(req, SESSION_COOKIE).and_then(|c| SessionToken::parse(&c)) {
        if let Err(e) = state.sessions.end(&old.hash()).await {
            return store_error(&e, "could not end the previous session");
        }
    }
    let token = match state.sessions.create(&user.key, ip, &attempt.client.user_agent).await {
        Ok(t) => t,
        Err(e) => return store_error(&e, "could not create a session"),
    };
    // A sign-in that cannot be recorded does not happen: end the new session and say so.
    if let Err(e) = state.audit.record_checked(&AuthEvent::LoginSucceeded {
        username: &user.display_name,
        client: &attempt.client,
        after_failures,
    }) {
        tracing::error!(error = %e, "cannot record a successful login; refusing it");
        if let Err(e) = state.sessions.end(&token.hash()).await {
            tracing::error!(error = %e, "could not end the unrecorded session");
        }
        return error_page(StatusCode::SERVICE_UNAVAILABLE);
    }

    let mut resp = see_other(attempt.next.unwrap_or("/"));
    let h = resp.headers_mut();
    for cookie in [cookies::set(SESSION_COOKIE, &token.encode(), None), cookies::clear(PRELOGIN_COOKIE)] {
        if let Ok(v) = cookie.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}
