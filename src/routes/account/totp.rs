//! The authenticator app (TOTP) and recovery codes on `/account`:
//! - `GET /account/totp`: a new secret, shown as a QR code drawn here (an SVG image, no
//!   script), as base32 text and as the `otpauth://` URI, with a form for the first code;
//! - `POST /account/totp`: enrols the secret if the code is valid for it (nothing changes
//!   otherwise); the first time, ten recovery codes are made and shown once;
//! - `POST /account/totp/remove` and `POST /account/recovery-codes` (new codes void the old).
//!
//! The secret travels in the enrolment form, tagged with an HMAC bound to the session, so the
//! server keeps no state for an enrolment that is never finished, and nobody can make another
//! user's browser enrol a secret they chose.

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Body, Request, Response};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::confirm::{recently_authenticated, signed_in_recently, Then};
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::factors::{totp, FactorError, FactorKind};
use crate::routes::flash::Notice;
use crate::routes::{error_page, html, read_form, see_other, signed_in, store_error, State};
use crate::session::ActiveSession;

#[derive(Template)]
#[template(path = "totp_enrol.html")]
struct EnrolPage<'a> {
    csrf: &'a str,
    secret: &'a str,
    /// The secret in groups of four, for typing.
    secret_grouped: &'a str,
    tag: &'a str,
    uri: &'a str,
    qr: &'a str,
    error: Option<&'a str>,
    replaces: bool,
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
struct CodesPage<'a> {
    codes: &'a [Zeroizing<String>],
    /// Shown above the codes: what just happened.
    headline: &'a str,
}

/// The enrolment form as posted.
#[derive(Deserialize)]
pub struct EnrolForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub code: String,
}

impl Drop for EnrolForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
        zeroize::Zeroize::zeroize(&mut self.code);
    }
}

/// A form with only the CSRF token.
#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

/// What binds a secret in the form to this session (domain-separated from notices, whose
/// payloads are JSON objects).
fn tag_payload(secret_b32: &str) -> Vec<u8> {
    [b"totp-enrol\0".as_slice(), secret_b32.as_bytes()].concat()
}

/// Where a signed-out visitor to these routes is sent.
const SIGNED_OUT: &str = "/login?next=/account";

fn factor_error(e: &FactorError, what: &'static str) -> Response {
    crate::fault_log::report(what, crate::fault_log::Severity::Error, e.is_unavailable(), e);
    error_page(crate::routes::fault_status(e.is_unavailable()))
}

/// The enrolment page for `secret`.
async fn enrol_page(
    state: &AppState,
    session: &ActiveSession,
    secret: &[u8],
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let b32 = totp::base32(secret);
    let grouped =
        b32.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ");
    let uri = match totp::uri(secret, &state.settings.totp_issuer, &session.user.display_name) {
        Ok(u) => u,
        Err(e) => return factor_error(&e.into(), "cannot make the otpauth URI"),
    };
    let qr = match totp::qr_data_uri(&uri) {
        Ok(q) => q,
        Err(e) => return factor_error(&e.into(), "cannot draw the QR code"),
    };
    let replaces = match state.factors.summary(&session.user.key).await {
        Ok(f) => f.totp,
        Err(e) => return store_error(&e, "could not read the user's second factors"),
    };
    let csrf = state.csrf.session_token(&session.token_hash);
    let tag = state.csrf.notice_tag(&session.token_hash, &tag_payload(&b32));
    html(
        status,
        &EnrolPage {
            csrf: &csrf,
            secret: &b32,
            secret_grouped: &grouped,
            tag: &tag,
            uri: &uri,
            qr: &qr,
            error,
            replaces,
        },
    )
}

#[handler]
pub async fn enrol(req: &Request, state: State<'_>) -> Response {
    let session = match signed_in(req, &state, SIGNED_OUT).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let session = match recently_authenticated(session, Then::Totp) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let secret = match totp::new_secret() {
        Ok(s) => s,
        Err(e) => return factor_error(&e.into(), "cannot make a TOTP secret"),
    };
    enrol_page(&state, &session, &secret, StatusCode::OK, None).await
}

#[handler]
pub async fn confirm(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: EnrolForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Totp).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    // Only a secret this server put in this session's form.
    let tagged = state.csrf.check_notice(&session.token_hash, &tag_payload(&form.secret), &form.tag);
    let Some(secret) = totp::from_base32(&form.secret).filter(|_| tagged) else {
        return error_page(StatusCode::BAD_REQUEST);
    };
    let user = &session.user;
    let enrolled = match state.factors.enrol_totp(&user.key, &secret, &form.code).await {
        Ok(e) => e,
        Err(e) => return factor_error(&e, "could not enrol an authenticator"),
    };
    if !enrolled {
        let message = "That code is not right. Type the code the app shows now (and check that the phone's clock is set automatically).";
        return enrol_page(&state, &session, &secret, StatusCode::BAD_REQUEST, Some(message)).await;
    }
    state.audit.record(&AuthEvent::MfaAdded { username: &user.display_name, kind: FactorKind::Totp.as_str() });
    let otherwise = Notice::TotpEnabled.attach(&state.csrf, &session.token_hash, see_other("/account"));
    codes_with_first_factor(&state, &session, "Your authenticator app is set up.", otherwise).await
}

/// After a second factor was added: a fresh set of recovery codes, shown once under
/// `headline`, when the new factor is the user's only one (the first factor comes with them,
/// so a lost phone or key does not lock the user out) or the user has none left; else
/// `otherwise`. Codes found beside a first factor predate it (a store written before removing
/// the last factor voided them): they are replaced, never revived.
pub(crate) async fn codes_with_first_factor(
    state: &AppState,
    session: &ActiveSession,
    headline: &str,
    otherwise: Response,
) -> Response {
    match state.factors.summary(&session.user.key).await {
        Ok(s) if s.recovery_codes == 0 || s.second_factors() == 1 => issue_codes(state, session, headline).await,
        Ok(_) => otherwise,
        Err(e) => store_error(&e, "could not read the user's second factors"),
    }
}

#[handler]
pub async fn remove(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: CsrfOnly = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Account).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    match state.factors.remove_totp(&session.user.key).await {
        Ok(true) => {
            let username = &session.user.display_name;
            state.audit.record(&AuthEvent::MfaRemoved { username, kind: FactorKind::Totp.as_str() });
            Notice::TotpRemoved.attach(&state.csrf, &session.token_hash, see_other("/account"))
        }
        Ok(false) => see_other("/account"),
        Err(e) => store_error(&e, "could not remove the authenticator"),
    }
}

#[handler]
pub async fn new_recovery_codes(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: CsrfOnly = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Account).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    // Codes stand in for a second factor: without one there is nothing to recover.
    match state.factors.summary(&session.user.key).await {
        Ok(f) if f.has_second_factor() => {}
        Ok(_) => return see_other("/account"),
        Err(e) => return store_error(&e, "could not read the user's second factors"),
    }
    issue_codes(&state, &session, "Your new recovery codes are ready; the old ones no longer work.").await
}

/// Makes a new set of recovery codes and shows them, once.
async fn issue_codes(state: &AppState, session: &ActiveSession, headline: &str) -> Response {
    let codes = match state.factors.new_recovery_codes(&session.user.key).await {
        Ok(Some(c)) => c,
        Ok(None) => return see_other("/login"),
        Err(e) => return factor_error(&e, "could not make recovery codes"),
    };
    let username = &session.user.display_name;
    state.audit.record(&AuthEvent::MfaAdded { username, kind: FactorKind::RecoveryCodes.as_str() });
    html(StatusCode::OK, &CodesPage { codes: &codes, headline })
}
