//! `/account/confirm`: the password asked again before a session adds or removes a second
//! factor, once its sign-in is older than [`RECENT_AUTHENTICATION`] (OWASP ASVS 4.0 §3.7.1;
//! NIST SP 800-63B §6.1.2.1). Without it a stolen session could register the thief's own
//! passkey (which then signs in without the password) or remove the owner's factors.
//! The right password gives this browser a new session (a new token, same factors), whose
//! start is the confirmation; a wrong one counts like a wrong password at the login form.

use askama::Template;
use poem::http::{header, StatusCode};
use poem::web::Query;
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use super::password::{check_current, with_retry_after, NotConfirmed};
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::routes::{html, read_form, see_other, signed_in, signed_in_with, State};
use crate::session::{ActiveSession, RECENT_AUTHENTICATION, SESSION_COOKIE};
use crate::store::now_ms;
use crate::text::printable;
use crate::{client, cookies};

/// This page.
pub const PATH: &str = "/account/confirm";
const SIGNED_OUT: &str = "/login?next=/account";

/// Where a confirmation goes on to: one of the pages whose changes ask for it. Anything
/// else sent as `next` reads as `/account`, so the parameter cannot redirect elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Account,
    Totp,
    Passkeys,
}

impl Then {
    /// Parses `next`; unknown or absent is [`Then::Account`].
    pub fn parse(next: Option<&str>) -> Self {
        match next {
            Some("/account/totp") => Then::Totp,
            Some("/account/passkeys") => Then::Passkeys,
            _ => Then::Account,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Then::Account => "/account",
            Then::Totp => "/account/totp",
            Then::Passkeys => "/account/passkeys",
        }
    }

    /// This page, asking for the password and then going on to `self`.
    pub fn confirm_url(self) -> String {
        match self {
            Then::Account => PATH.to_string(),
            other => format!("{PATH}?next={}", other.path()),
        }
    }
}

/// `session` if it signed in recently enough to change its second factors; otherwise the
/// answer to send instead: 303 to this page, which comes back to `then`.
#[allow(clippy::result_large_err)]
pub(crate) fn recently_authenticated(session: ActiveSession, then: Then) -> Result<ActiveSession, Response> {
    if session.authenticated_recently(now_ms()) {
        Ok(session)
    } else {
        Err(see_other(&then.confirm_url()))
    }
}

/// [`signed_in_with`] (a session and its CSRF token) for a form that adds or removes a second
/// factor, which a session may post only while [`recently_authenticated`].
pub(crate) async fn signed_in_recently(
    req: &Request,
    state: &AppState,
    signed_out: &str,
    csrf: &str,
    then: Then,
) -> Result<ActiveSession, Response> {
    recently_authenticated(signed_in_with(req, state, signed_out, csrf).await?, then)
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage<'a> {
    username: &'a str,
    csrf: &'a str,
    next: &'a str,
    minutes: u64,
    error: Option<&'a str>,
}

#[derive(Deserialize)]
pub struct ConfirmQuery {
    next: Option<String>,
}

/// The form as posted; the password is wiped on drop.
#[derive(Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    next: Option<String>,
}

impl Drop for ConfirmForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.current);
    }
}

#[handler]
pub async fn show(req: &Request, state: State<'_>, query: Option<Query<ConfirmQuery>>) -> Response {
    let then = Then::parse(query.as_ref().and_then(|q| q.next.as_deref()));
    let session = match signed_in(req, &state, SIGNED_OUT).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if session.authenticated_recently(now_ms()) {
        return see_other(then.path());
    }
    page(&state, &session, then, StatusCode::OK, None)
}

#[handler]
pub async fn confirm(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: ConfirmForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let then = Then::parse(form.next.as_deref());
    let session = match signed_in_with(req, &state, SIGNED_OUT, &form.csrf).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    match check_current(req, &state, &session, &form.current).await {
        Ok(()) => {}
        Err(NotConfirmed::Wrong) => {
            return page(&state, &session, then, StatusCode::UNAUTHORIZED, Some("That is not your password."))
        }
        Err(NotConfirmed::TooMany { retry_after }) => {
            let message = "Too many password checks. Please wait and try again.";
            return with_retry_after(
                page(&state, &session, then, StatusCode::TOO_MANY_REQUESTS, Some(message)),
                retry_after,
            );
        }
        Err(NotConfirmed::Fault(resp)) => return resp,
    }
    // A new token whose session starts now: the confirmation is the session's start, and a
    // token seen before it (in a log, a stolen cookie) is worth nothing after it.
    let user = &session.user;
    let client = client::client(req, &state.settings.trusted_proxies);
    let token = match state
        .sessions
        .create_in_place_of(Some(&session.token_hash), &user.key, session.record.factors, client.ip, &client.user_agent)
        .await
    {
        Ok(t) => t,
        Err(e) => return crate::routes::store_error(&e, "could not renew the session"),
    };
    state.audit.record(&AuthEvent::Reauthenticated { username: &user.display_name, client: &client });
    let mut resp = see_other(then.path());
    if let Ok(v) = cookies::set(SESSION_COOKIE, &token.encode(), None).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

fn page(state: &AppState, session: &ActiveSession, then: Then, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = state.csrf.session_token(&session.token_hash);
    html(
        status,
        &ConfirmPage {
            username: &printable(&session.user.display_name),
            csrf: &csrf,
            next: then.path(),
            minutes: RECENT_AUTHENTICATION.as_secs() / 60,
            error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_that_ask_for_a_confirmation_are_places_to_go_on_to() {
        assert_eq!(Then::parse(Some("/account/passkeys")), Then::Passkeys);
        assert_eq!(Then::parse(Some("/account/totp")), Then::Totp);
        for other in [None, Some(""), Some("https://evil.example/"), Some("//evil.example"), Some("/admin/unlock")] {
            assert_eq!(Then::parse(other), Then::Account, "{other:?}");
        }
        assert_eq!(Then::Passkeys.confirm_url(), "/account/confirm?next=/account/passkeys");
        assert_eq!(Then::Account.confirm_url(), "/account/confirm");
    }
}
