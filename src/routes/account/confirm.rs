//! `/account/confirm`: the password asked again before a session adds or removes a second
//! factor, once its sign-in is older than [`RECENT_AUTHENTICATION`] (OWASP ASVS 4.0 §3.7.1;
//! NIST SP 800-63B §6.1.2.1). Without it a stolen session could register the thief's own
//! passkey (which then signs in without the password) or remove the owner's factors.
//! The right password is remembered for [`RECENT_AUTHENTICATION`] in a cookie signed for this
//! session ([`CONFIRMED_COOKIE`]): the session itself is unchanged, so its absolute timeout,
//! its factors and its token stay what they were. A wrong one counts like a wrong password at
//! the login form, and past the captcha threshold a password is checked here only with a
//! captcha solved, one check per picture ([`super::password::check_current`]).

use askama::Template;
use poem::http::{header, StatusCode};
use poem::web::Query;
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use super::password::check_current;
use super::SIGNED_OUT;
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::routes::{html, read_form, see_other, signed_in, signed_in_with, with_retry_after, State};
use crate::session::{ActiveSession, RECENT_AUTHENTICATION};
use crate::sign_in::PasswordCheck;
use crate::store::now_ms;
use crate::text::printable;
use crate::{client, cookies};

/// This page.
pub const PATH: &str = "/account/confirm";

/// Remembers a confirmation: `{unix ms}.{tag}`, the tag an HMAC of the time under the
/// server's key and this session's token hash, so it is worth nothing to another session,
/// cannot be moved forward in time, and ends with the session. `__Host-` as the session's.
pub const CONFIRMED_COOKIE: &str = "__Host-portcullis-confirmed";

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

    /// The sign-in form that comes back to `self`'s page.
    pub fn sign_in_url(self) -> String {
        format!("/login?next={}", self.path())
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
    /// Whether the session's last password is older than `minutes` (the page can be reached
    /// without: a form posted straight to it on a fresh session).
    due: bool,
    error: Option<&'a str>,
    /// A captcha challenge (a `data:` URI), when the check wants one solved.
    captcha: Option<String>,
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
    /// The captcha's answer, when the form showed one.
    #[serde(default)]
    captcha: String,
}

impl Drop for ConfirmForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.current);
    }
}

#[handler]
pub async fn show(req: &Request, state: State<'_>, query: Option<Query<ConfirmQuery>>) -> Response {
    let then = Then::parse(query.as_ref().and_then(|q| q.next.as_deref()));
    // Signed out: a sign-in is recent, so straight on to the page the confirmation was for.
    let session = match signed_in(req, &state, &then.sign_in_url()).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if session.authenticated_recently(now_ms()) {
        return see_other(then.path());
    }
    page(&state, &session, then, StatusCode::OK, None, None)
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
    match check_current(req, &state, &session, &form.current, &form.captcha).await {
        Ok(PasswordCheck::Right) => {}
        Ok(PasswordCheck::Wrong { captcha_next }) => {
            let image = match super::password::captcha_if(captcha_next, req, &state, &session).await {
                Ok(image) => image,
                Err(resp) => return resp,
            };
            return page(&state, &session, then, StatusCode::UNAUTHORIZED, Some("That is not your password."), image);
        }
        Ok(PasswordCheck::TooMany { retry_after }) => {
            let message = "Too many password checks. Please wait and try again.";
            return with_retry_after(
                page(&state, &session, then, StatusCode::TOO_MANY_REQUESTS, Some(message), None),
                retry_after,
            );
        }
        Ok(PasswordCheck::NothingTyped) => {
            return page(&state, &session, then, StatusCode::BAD_REQUEST, Some("Type your password."), None)
        }
        Ok(PasswordCheck::CaptchaDemanded) => {
            let image = match super::password::new_captcha(req, &state, &session).await {
                Ok(image) => image,
                Err(resp) => return resp,
            };
            let demanded = Some(super::password::CAPTCHA_DEMANDED);
            return page(&state, &session, then, StatusCode::FORBIDDEN, demanded, Some(image));
        }
        Err(resp) => return resp,
    }
    let client = client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
    state.audit.record(&AuthEvent::Reauthenticated { username: &session.user.display_name, client: &client });
    let mut resp = see_other(then.path());
    remember_confirmation(&state, &session.token_hash, &mut resp);
    resp
}

/// Adds to `resp` the [`CONFIRMED_COOKIE`] saying the session whose token hash is
/// `session_hash` typed its password now.
fn remember_confirmation(state: &AppState, session_hash: &[u8; 32], resp: &mut Response) {
    carry_confirmation(state, session_hash, now_ms(), resp);
}

/// A 303 to `to` for a browser whose session went on under the new token `token`
/// (`Sessions::renew`: a password change, *sign out everywhere else*): the session cookie set
/// to it, and a password confirmation made at `confirmed_at` (Unix ms) carried over to it.
pub(crate) fn continued(
    state: &AppState,
    to: &str,
    token: &crate::session::SessionToken,
    confirmed_at: Option<u64>,
) -> Response {
    let mut resp = crate::routes::see_other(to);
    if let Ok(v) = cookies::set(crate::session::SESSION_COOKIE, &token.encode(), None).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Some(at) = confirmed_at {
        carry_confirmation(state, &token.hash(), at, &mut resp);
    }
    resp
}

/// Remembers a confirmation made at `at` (Unix ms) for the session `session_hash`: one made
/// under the token a session had before it was given a new one (*sign out everywhere else*),
/// so the new token is as recently confirmed as the old, no more.
/// The cookie lasts what is left of the confirmation's time; one already over is not sent.
fn carry_confirmation(state: &AppState, session_hash: &[u8; 32], at: u64, resp: &mut Response) {
    let left_ms = (RECENT_AUTHENTICATION.as_millis() as u64).saturating_sub(now_ms().saturating_sub(at));
    if left_ms == 0 {
        return;
    }
    let value = format!("{at}.{}", state.csrf.notice_tag(session_hash, &confirmed_payload(at)));
    if let Ok(v) = cookies::set(CONFIRMED_COOKIE, &value, Some(left_ms.div_ceil(1000))).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn confirmed_payload(at_ms: u64) -> Vec<u8> {
    format!("confirmed:{at_ms}").into_bytes()
}

/// `session` with the time of its last confirmation, read from this request's
/// [`CONFIRMED_COOKIE`] when its tag is right for this session (otherwise `None`).
pub(crate) fn with_confirmation(req: &Request, state: &AppState, mut session: ActiveSession) -> ActiveSession {
    session.confirmed_at = cookies::get(req, CONFIRMED_COOKIE).and_then(|v| {
        let (at, tag) = v.split_once('.')?;
        let at: u64 = at.parse().ok()?;
        state.csrf.check_notice(&session.token_hash, &confirmed_payload(at), tag).then_some(at)
    });
    session
}

fn page(
    state: &AppState,
    session: &ActiveSession,
    then: Then,
    status: StatusCode,
    error: Option<&str>,
    captcha: Option<String>,
) -> Response {
    let csrf = state.csrf.session_token(&session.token_hash);
    html(
        status,
        &ConfirmPage {
            username: &printable(&session.user.display_name),
            csrf: &csrf,
            next: then.path(),
            minutes: RECENT_AUTHENTICATION.as_secs() / 60,
            due: !session.authenticated_recently(now_ms()),
            error,
            captcha,
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
