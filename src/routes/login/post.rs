//! `POST /login`: CSRF, credentials, a fresh session, and a 303.

use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use crate::audit::{AuthEvent, FailureReason};
use crate::authentication::AuthError;
use crate::csrf::PRELOGIN_COOKIE;
use crate::password::Password;
use crate::routes::{error_page, read_form, see_other, State};
use crate::session::{SessionToken, SESSION_COOKIE};
use crate::{client, cookies};

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
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
    let next = super::safe_next(form.next.as_deref());
    let now = crate::store::now_ms() / 1000;

    let csrf_ok = cookies::get(req, PRELOGIN_COOKIE).is_some_and(|pre| state.csrf.check_login(&pre, &form.csrf, now));
    if !csrf_ok {
        state.audit.record(&AuthEvent::LoginFailed {
            username: &form.username,
            client: &client,
            reason: FailureReason::Csrf,
        });
        let message = "This form has expired or was not sent from this site. Please sign in again.";
        return super::render(req, &state, StatusCode::FORBIDDEN, Some(message), &form.username, next);
    }

    let password = Password::new(&form.password);
    let user = match state.auth.authenticate(&form.username, password).await {
        Ok(user) => user,
        Err(AuthError::InvalidCredentials(reason)) => {
            state.audit.record(&AuthEvent::LoginFailed { username: &form.username, client: &client, reason });
            return super::render(
                req,
                &state,
                StatusCode::UNAUTHORIZED,
                Some(super::GENERIC_FAILURE),
                &form.username,
                next,
            );
        }
        Err(AuthError::Overloaded) => return error_page(StatusCode::SERVICE_UNAVAILABLE),
        Err(AuthError::Unexpected(e)) => {
            tracing::error!(error = %format!("{e:#}"), "login failed unexpectedly");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };

    // Session fixation: whatever session this browser had is ended, and a new token issued.
    if let Some(old) = cookies::get(req, SESSION_COOKIE).and_then(|c| SessionToken::parse(&c)) {
        if let Err(e) = state.sessions.end(&old.hash()).await {
            tracing::error!(error = %e, "could not end the previous session");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    let token = match state.sessions.create(&user.key, &client.ip, &client.user_agent) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "could not create a session");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    state.audit.record(&AuthEvent::LoginSucceeded { username: &user.display_name, client: &client });

    let mut resp = see_other(next.unwrap_or("/"));
    let h = resp.headers_mut();
    for cookie in [cookies::set(SESSION_COOKIE, &token.encode(), None), cookies::clear(PRELOGIN_COOKIE)] {
        if let Ok(v) = cookie.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}
