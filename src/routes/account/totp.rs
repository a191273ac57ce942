//! The authenticator app (TOTP) on `/account`:
//! - `GET /account/totp`: a new secret, shown as a QR code drawn here (an SVG image, no
//!   script), as base32 text and as the `otpauth://` URI, with a form for the first code;
//! - `POST /account/totp`: enrols the secret if the code is valid for it and the user's
//!   authenticator is still the one the page was shown with (nothing changes otherwise: 400,
//!   or 409 when another window enrolled or removed one first); the first time, ten recovery
//!   codes are made and shown once (`recovery_codes`; a replaced app keeps the user's);
//! - `POST /account/totp/remove`.
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
use super::recovery_codes::codes_with_first_factor;
use super::SIGNED_OUT;
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::factors::{totp, Enrolment, FactorError, FactorKind, TotpRemoval};
use crate::routes::flash::Notice;
use crate::routes::{error_page, html_with_secret, read_form, see_other, signed_in, store_error, State};
use crate::session::ActiveSession;

#[derive(Template)]
#[template(path = "totp_enrol.html")]
struct EnrolPage<'a> {
    csrf: &'a str,
    secret: &'a str,
    /// The secret in groups of four, for typing.
    secret_grouped: &'a str,
    tag: &'a str,
    /// When the authenticator this enrolment replaces was enrolled (Unix ms), empty for none.
    replacing: &'a str,
    uri: &'a str,
    qr: &'a str,
    error: Option<&'a str>,
    replaces: bool,
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
    pub replacing: String,
    #[serde(default)]
    pub code: String,
}

impl Drop for EnrolForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
        zeroize::Zeroize::zeroize(&mut self.code);
    }
}

/// What binds a secret in the form to this session, and to the authenticator it replaces
/// (`replacing`: the form's field; domain-separated from notices, whose payloads are JSON
/// objects).
fn tag_payload(secret_b32: &str, replacing: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new([b"totp-enrol\0".as_slice(), secret_b32.as_bytes(), b"\0", replacing.as_bytes()].concat())
}

pub(super) fn factor_error(e: &FactorError, what: &'static str) -> Response {
    crate::fault_log::report(what, crate::fault_log::Severity::Error, e.is_unavailable(), e);
    error_page(crate::routes::fault_status(e.is_unavailable()))
}

/// The enrolment page for `secret`, for the authenticator `replacing` (the form's checked
/// field when the page is shown again for the same enrolment; `None`: the store's now).
async fn enrol_page(
    state: &AppState,
    session: &ActiveSession,
    secret: &[u8],
    status: StatusCode,
    error: Option<&str>,
    replacing: Option<&str>,
) -> Response {
    let b32 = totp::base32(secret);
    let mut grouped = Zeroizing::new(String::with_capacity(b32.len() * 5 / 4 + 1));
    for (i, c) in b32.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    let uri = match totp::uri(secret, &state.settings.totp_issuer, &session.user.display_name) {
        Ok(u) => u,
        Err(e) => return factor_error(&e.into(), "cannot make the otpauth URI"),
    };
    let qr = match totp::qr_data_uri(&uri) {
        Ok(q) => q,
        Err(e) => return factor_error(&e.into(), "cannot draw the QR code"),
    };
    // What the enrolment replaces, bound into the form: of two enrolments begun from one state
    // (two windows), one is stored, and the other is told so rather than shown codes that
    // would never work.
    // A page shown again (a wrong code) keeps the state its enrolment began from: reading the
    // store again would let a mistyped code turn "set up" into "replace" another window's.
    let replacing = match replacing {
        Some(r) => r.to_string(),
        None => match state.factors.totp_enrolled_at(&session.user.key).await {
            Ok(at) => at.map(|ms| ms.to_string()).unwrap_or_default(),
            Err(e) => return store_error(&e, "could not read the user's second factors"),
        },
    };
    let csrf = state.csrf.session_token(&session.token_hash);
    let tag = state.csrf.notice_tag(&session.token_hash, &tag_payload(&b32, &replacing));
    html_with_secret(
        status,
        &EnrolPage {
            csrf: &csrf,
            secret: &b32,
            secret_grouped: &grouped,
            tag: &tag,
            replacing: &replacing,
            uri: &uri,
            qr: &qr,
            error,
            replaces: !replacing.is_empty(),
        },
    )
}

#[handler]
pub async fn enrol(req: &Request, state: State<'_>) -> Response {
    let session = match signed_in(req, &state, &Then::Totp.sign_in_url()).await {
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
    enrol_page(&state, &session, &secret, StatusCode::OK, None, None).await
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
    // Only a secret this server put in this session's form, for the state it was shown in.
    let payload = tag_payload(&form.secret, &form.replacing);
    let tagged = state.csrf.check_notice(&session.token_hash, &payload, &form.tag);
    let replacing = match form.replacing.as_str() {
        "" => Some(None),
        ms => ms.parse::<u64>().ok().map(Some),
    };
    let (Some(secret), Some(replacing)) = (totp::from_base32(&form.secret).filter(|_| tagged), replacing) else {
        return error_page(StatusCode::BAD_REQUEST);
    };
    // A first factor begins a new generation before it is stored (a code that is not right
    // changes nothing, so it is checked first; `enrol_totp` checks it again).
    let mut signed_out = None;
    let session = match totp::check(&secret, &form.code, crate::store::now_ms() / 1000) {
        None => session,
        Some(_) => match super::recovery_codes::first_factor_generation(req, &state, &session).await {
            Ok(Some((going_on, ended))) => {
                signed_out = Some(ended);
                going_on
            }
            Ok(None) => session,
            Err(resp) => return resp,
        },
    };
    let bumped = signed_out.is_some();
    // Every answer after a new generation began (the factor stored or not) gives this browser a
    // device token of the new generation, which voided the old ones, as a password change does:
    // it must not become a stranger to the brute-force defence by setting up a factor.
    let resp = async {
        let user = &session.user;
        let asker = crate::factors::Asker::of(&session.record);
        let enrolled = match state.factors.enrol_totp(&asker, &secret, &form.code, replacing).await {
            Ok(e) => e,
            Err(e) => return factor_error(&e, "could not enrol an authenticator"),
        };
        match enrolled {
            Enrolment::Enrolled => {}
            Enrolment::WrongCode => {
                let message = "That code is not right. Type the code the app shows now (and check that the phone's clock is set automatically).";
                let began = Some(form.replacing.as_str());
                return enrol_page(&state, &session, &secret, StatusCode::BAD_REQUEST, Some(message), began).await;
            }
            Enrolment::Superseded => {
                let leftover = "Remove the entry you just added from your authenticator app.";
                return super::not_changed("Authenticator app not set up", leftover);
            }
            Enrolment::SentTwice => {
                return crate::routes::error_page_leading(
                    StatusCode::CONFLICT,
                    "Authenticator app set up",
                    "Your authenticator app is set up: this form was sent twice (the page reloaded, or the button pressed twice), and the first sending set it up, so keep the entry you added to the app. If this is the first authenticator of your account, its recovery codes were shown in answer to the first sending; if you did not see them, make new ones from your account page.",
                    ("/account", "Your account"),
                )
            }
            Enrolment::Changed => {
                // This secret is worth nothing now: remove it from the app, start again.
                let message =
                    "Your authenticator app was changed in another window meanwhile, so this one was not set up: \
                    remove the entry you just added from the app, and scan this new code if you want to replace it.";
                let fresh = match totp::new_secret() {
                    Ok(s) => s,
                    Err(e) => return factor_error(&e.into(), "cannot make a TOTP secret"),
                };
                return enrol_page(&state, &session, &fresh, StatusCode::CONFLICT, Some(message), None).await;
            }
        }
        let username = &user.display_name;
        let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
        let app = |sessions| crate::audit::FactorRemoval { kind: FactorKind::Totp, sessions, codes_voided: 0, passkey: None };
        let added = AuthEvent::MfaAdded { username, kind: FactorKind::Totp.as_str(), passkey: None, client: &client };
        let replaced = replacing.is_some();
        // The old app's codes sign in no more: nor do the sessions they signed in (as on its
        // removal), but this one, whose user has just proved who they are. Logged as the old
        // app's removal, with the sessions it ended, then the new one's addition (review 139:
        // a replacement read as a first setup, and its sign-outs were in no record).
        let notice = if replaced {
            let ended = match state.factors.end_app_sessions(&user.key, Some(&session.token_hash)).await {
                Ok(n) => n,
                Err(source) => {
                    let what = "replaced the authenticator but could not end its sessions";
                    let status = crate::routes::store_fault(&source, what);
                    state.audit.factor_removed(username, app(0), username, Some(&client));
                    state.audit.record(&added);
                    return crate::routes::error_page_saying(
                        status,
                        "Authenticator app replaced, its sessions not signed out",
                        "Your new authenticator app is set up, but the server could not sign out the other sessions the old one's codes signed in: they are still signed in. Please use Sign out everywhere else on your account page in a moment.",
                    );
                }
            };
            state.audit.factor_removed(username, app(ended), username, Some(&client));
            Notice::TotpReplaced { ended }
        } else {
            Notice::TotpEnabled
        };
        state.audit.record(&added);
        let otherwise = notice.attach(&state.csrf, &session.token_hash, see_other("/account"));
        let headline = "Your authenticator app is set up.";
        codes_with_first_factor(req, &state, &session, headline, replaced, otherwise, signed_out).await
    }
    .await;
    if bumped {
        return super::recovery_codes::with_device_cookie(req, &state, &session.user.key, resp);
    }
    resp
}

/// The account page's *Remove authenticator app* form.
#[derive(serde::Deserialize)]
struct RemoveForm {
    #[serde(default)]
    csrf: String,
    /// When the app the page showed was set up (Unix ms): a page shown before the app was
    /// replaced in another window must not remove the new one (review 137). Absent or
    /// unreadable (a hand-made request): 400, since what it would remove is unknown.
    #[serde(default)]
    enrolled_at: String,
}

#[handler]
pub async fn remove(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: RemoveForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Account).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let Ok(shown) = form.enrolled_at.parse::<u64>() else {
        return super::form_without("authenticator app");
    };
    let username = &session.user.display_name;
    let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
    let app = |sessions, codes_voided| crate::audit::FactorRemoval {
        kind: FactorKind::Totp,
        sessions,
        codes_voided,
        passkey: None,
    };
    match state.factors.remove_totp(&session.user.key, Some(shown), Some(&session.token_hash)).await {
        Ok(TotpRemoval::Removed { codes_voided, sessions_ended: Ok(ended) }) => {
            state.audit.factor_removed(username, app(ended, codes_voided), username, Some(&client));
            Notice::TotpRemoved { ended }.attach(&state.csrf, &session.token_hash, see_other("/account"))
        }
        Ok(TotpRemoval::Removed { codes_voided, sessions_ended: Err(source) }) => {
            let status = crate::routes::store_fault(&source, "removed the authenticator but could not end its sessions");
            // Recorded as removed, since it is; the sessions are said to be open.
            state.audit.factor_removed(username, app(0, codes_voided), username, Some(&client));
            crate::routes::error_page_saying(
                status,
                "Authenticator app removed, its sessions not signed out",
                "Your authenticator app is removed, but the server could not sign out the other sessions its codes signed in: they are still signed in. Please use Sign out everywhere else on your account page in a moment.",
            )
        }
        // Sent twice, or removed from another window: it is gone, as asked.
        Ok(TotpRemoval::NotThere) => see_other("/account"),
        Ok(TotpRemoval::Changed) => crate::routes::error_page_leading(
            StatusCode::CONFLICT,
            "Authenticator app not removed",
            "Your authenticator app was replaced in another window after this page was shown, so nothing was removed. Open your account page again to see the app you have now, and remove it from there if you want to.",
            ("/account", "Your account"),
        ),
        Err(e) => store_error(&e, "could not remove the authenticator"),
    }
}
