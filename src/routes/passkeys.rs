//! Passkey routes (issue 14). Each `…/begin` answers the JSON options for
//! `navigator.credentials` (read by `static/passkey.js`) and binds the ceremony to the browser
//! with the `__Host-portcullis-webauthn` cookie; the page then posts the browser's answer as an
//! ordinary form field, so a finish is a normal form post (CSRF, 303, error pages).
//! - `POST /login/passkey/begin`, `POST /login/passkey`: discoverable sign-in from `/login`.
//! - `GET /account/passkeys`: the passkeys section alone (it is also on `/account`); errors of
//!   the forms below are shown there.
//! - `POST /account/passkeys/begin`, `POST /account/passkeys`: register one, with a name.
//! - `POST /account/passkeys/rename`, `POST /account/passkeys/remove`.

use askama::Template;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use super::account::confirm::{signed_in_recently, Then};
use super::account::CsrfOnly;
use crate::app::AppState;
use crate::audit::{AuthEvent, FailureReason};
use crate::fault_log::Severity;
use crate::passkeys::{Begun, PasskeyError, CEREMONY_COOKIE, CEREMONY_LIFETIME};
use crate::routes::{error_page, html, read_form, see_other, signed_in, State};
use crate::session::{ActiveSession, SessionToken, SESSION_COOKIE};
use crate::sign_in::{BeginOutcome, Outcome, PasskeyAttempt};
use crate::store::now_ms;
use crate::text::printable;
use crate::{client, cookies};

/// Where the browser goes after a change: the account page's passkeys section.
pub const ACCOUNT_PASSKEYS: &str = "/account#passkeys-heading";

/// Largest credential JSON accepted from a browser, in bytes (well under the form cap).
const MAX_CREDENTIAL_JSON: usize = 12 * 1024;

/// What the passkey pages say of a name `passkeys::parse_name` refuses.
const BAD_NAME: &str = "Please give the passkey a name of 1 to 64 characters that shows something, with no control or invisible characters (such as direction marks or joiners), no unassigned ones, and no mark twice or more than 4 on one letter.";
/// A name another of the user's passkeys has, or one that can pass for it.
const NAME_TAKEN: &str = "You have a passkey with that name, or one that looks like it. Please choose another name, so the list tells them apart.";

/// `POST /account/passkeys/begin`: the CSRF token, and the name typed so far (pages from
/// before it was sent send none).
#[derive(serde::Deserialize)]
pub struct BeginForm {
    #[serde(default)]
    pub csrf: String,
    pub name: Option<String>,
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    credential: String,
    next: Option<String>,
    /// Forward auth's return address, checked before use.
    rd: Option<String>,
}

#[derive(Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
pub struct RenameForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
pub struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
}

/// One passkey as the account page shows it.
pub struct PasskeyView {
    /// The credential id, base64url (the form's `id`).
    pub id: String,
    pub name: String,
    pub created: super::Moment,
    /// When it was added, Unix ms.
    pub created_at: u64,
    /// Marked *added lately* after the owner's answer to a thief
    /// (`routes::account::mark_added_lately`).
    pub lately: bool,
    pub last_used: Option<super::Moment>,
    /// When a sign-in with it was last refused because its signature counter went back (a
    /// copy of it may exist: W3C WebAuthn §6.1.1).
    pub clone_suspected: Option<super::Moment>,
}

/// The user's passkeys for the page (`templates/account_passkeys.html` reads `passkeys`,
/// `passkeys_enabled`, `passkey_error` and `csrf`).
///
/// # Errors
/// The store's.
pub async fn views(state: &AppState, user_key: &str) -> Result<Vec<PasskeyView>, PasskeyError> {
    Ok(state
        .passkeys
        .list(user_key)
        .await?
        .into_iter()
        .map(|p| PasskeyView {
            id: URL_SAFE_NO_PAD.encode(&p.id),
            name: crate::text::printable_label(&p.name).into_owned(),
            created: super::Moment::at(p.created_at),
            created_at: p.created_at,
            lately: false,
            last_used: p.last_used_at.map(super::Moment::at),
            clone_suspected: p.clone_suspected_at.map(super::Moment::at),
        })
        .collect())
}

#[derive(Template)]
#[template(path = "passkeys.html")]
struct PasskeysPage<'a> {
    username: &'a str,
    csrf: &'a str,
    passkeys: Vec<PasskeyView>,
    passkeys_enabled: bool,
    passkey_error: Option<&'a str>,
    /// What `passkey_error` is about ([`ErrorAbout`]).
    passkey_error_for: ErrorAbout,
    /// Shown only on the account page (see its `passkey_notice`).
    passkey_notice: Option<String>,
    /// The session may add a passkey without confirming its password first.
    recent: bool,
    /// What removing one takes with it ([`crate::routes::account::removal_note`]).
    removal_note: Option<String>,
}

/// Which field of the passkeys section an error is about: that one is marked invalid, tied to
/// the error and focused (WCAG 3.3.1; review 209 saw a rename's error tied to nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ErrorAbout {
    /// The section as a whole.
    #[default]
    Section,
    /// The name for a new passkey.
    NewName,
    /// The rename box of the passkey with this id (base64url, as [`PasskeyView::id`]), and
    /// the name typed there, shown again to be mended.
    Rename { id: String, typed: String },
}

impl ErrorAbout {
    /// Whether the error is about the rename box of the passkey `id`.
    pub fn renames(&self, id: &str) -> bool {
        matches!(self, ErrorAbout::Rename { id: about, .. } if about == id)
    }

    /// The name to show in the rename box of the passkey `id` whose stored name shows as `name`.
    pub fn rename_value<'a>(&'a self, id: &str, name: &'a str) -> &'a str {
        match self {
            ErrorAbout::Rename { id: about, typed } if about == id => typed,
            _ => name,
        }
    }
}

/// Marks a page as one with a passkey button: [`super::security_headers`] gives it
/// [`super::PASSKEY_CSP`] (scripts from this origin only) instead of the script-free CSP.
pub fn with_passkey_script(mut resp: Response) -> Response {
    resp.extensions_mut().insert(super::PasskeyScript);
    resp
}

fn json(status: StatusCode, body: String) -> Response {
    Response::builder().status(status).content_type("application/json").body(body)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let resp = json(status, serde_json::json!({ "error": message }).to_string());
    // As every other 503 (`routes::error_page`).
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return crate::routes::with_retry_after(resp, 1);
    }
    resp
}

/// The per-address quota (`login_quota_per_ip`), which beginning a ceremony spends as a
/// sign-in attempt does: each begin is a durable write, so a signed-in user or a pending
/// sign-in looping on one must not make the store write without bound. A refusal is a 429
/// with `Retry-After`; a state that cannot answer, a 503.
async fn ceremony_quota(req: &Request, state: &AppState) -> Result<(), Response> {
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    match state.sign_in.spend_address_quota(client.key(), now_ms()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(wait)) => Err(crate::routes::with_retry_after(
            json_error(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Please wait a moment and try again."),
            wait.retry_after_secs(),
        )),
        Err(e) => {
            crate::fault_log::report("could not take a quota", Severity::Error, true, &e);
            Err(json_error(StatusCode::SERVICE_UNAVAILABLE, "The server is busy. Please try again."))
        }
    }
}

/// The options with the ceremony cookie.
fn begun(b: Begun) -> Response {
    let mut resp = json(StatusCode::OK, b.options);
    if let Ok(v) = cookies::set(CEREMONY_COOKIE, &b.cookie, Some(CEREMONY_LIFETIME.as_secs())).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

fn passkey_failure(e: &PasskeyError, what: &'static str) -> Response {
    match e {
        PasskeyError::Store(s) => crate::routes::store_error(s, what),
        PasskeyError::Disabled => error_page(StatusCode::NOT_FOUND),
        _ => error_page(StatusCode::BAD_REQUEST),
    }
}

// ----- sign-in from /login -----

#[handler]
pub async fn login_begin(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: CsrfOnly = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if !state.passkeys.enabled() {
        return json_error(StatusCode::NOT_FOUND, "Passkeys are not available on this server.");
    }
    let client = client::client(req, &state.settings.trusted_proxies);
    let prelogin = cookies::get(req, crate::csrf::PRELOGIN_COOKIE);
    match state.sign_in.begin_passkey(&state.passkeys, &client, &form.csrf, prelogin.as_deref()).await {
        Ok(BeginOutcome::Begun(b)) => begun(b),
        Ok(BeginOutcome::Refused(r)) if r.reason == FailureReason::RateLimited => {
            let resp =
                json_error(StatusCode::TOO_MANY_REQUESTS, "Too many sign-in attempts. Please wait and try again.");
            crate::routes::with_retry_after(resp, r.retry_after.unwrap_or(1))
        }
        Ok(BeginOutcome::Refused(_)) => {
            json_error(StatusCode::FORBIDDEN, "This page has expired. Please reload it and try again.")
        }
        Err(e) => {
            crate::fault_log::report("passkey sign-in not begun", Severity::Error, e.is_unavailable(), &e);
            let status = crate::routes::fault_status(e.is_unavailable());
            json_error(status, "The server could not start a passkey sign-in. Please try again.")
        }
    }
}

#[handler]
pub async fn login_finish(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: SignInForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if !state.passkeys.enabled() {
        return error_page(StatusCode::NOT_FOUND);
    }
    if form.credential.len() > MAX_CREDENTIAL_JSON {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let client = client::client(req, &state.settings.trusted_proxies);
    let prelogin = cookies::get(req, crate::csrf::PRELOGIN_COOKIE);
    let ceremony = cookies::get(req, CEREMONY_COOKIE);
    let device = cookies::get(req, crate::csrf::DEVICE_COOKIE);
    let attempt = PasskeyAttempt {
        client: &client,
        csrf: &form.csrf,
        prelogin: prelogin.as_deref(),
        ceremony: ceremony.as_deref(),
        credential: &form.credential,
        previous_session: cookies::get(req, SESSION_COOKIE).and_then(|c| SessionToken::parse(&c)),
        device: device.as_deref(),
    };
    let next = super::login::safe_next(form.next.as_deref());
    let rd = super::login::checked_rd(&state, form.rd.as_deref());
    let judged = state.sign_in.with_passkey(&state.passkeys, attempt).await;
    super::login::count_judged_passkey(&state.metrics, &judged);
    let mut resp = match judged {
        Ok(Outcome::SignedIn { token, device_cookie, wrong_codes_before, .. }) => {
            let (to, notice) = super::login::landing(rd.as_deref(), next, wrong_codes_before);
            let resp = super::login::after_sign_in(&to, &token, &device_cookie, crate::csrf::PRELOGIN_COOKIE);
            match notice {
                Some(notice) => notice.attach(&state.csrf, &token.hash(), resp),
                None => resp,
            }
        }
        Ok(Outcome::Refused(mut refusal)) => {
            // A passkey whose user is disabled or gone reads as any refused passkey, as a
            // disabled user's right password reads as a wrong one: only the record says why.
            if matches!(refusal.reason, FailureReason::Disabled | FailureReason::UnknownUser) {
                refusal.reason = FailureReason::BadPasskey;
            }
            super::login::post::refused(req, &state, "", next, rd.as_deref(), &client, refusal, false).await
        }
        // A passkey sign-in never asks for another factor, nor checks a password.
        Ok(Outcome::SecondFactorNeeded { .. } | Outcome::Interrupted) => error_page(StatusCode::INTERNAL_SERVER_ERROR),
        Err(e) => {
            crate::fault_log::report_error("passkey sign-in not judged", Severity::Error, e.is_unavailable(), &e);
            error_page(crate::routes::fault_status(e.is_unavailable()))
        }
    };
    // The ceremony was used (or void): the cookie goes either way.
    if let Ok(v) = cookies::clear(CEREMONY_COOKIE).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

// ----- the account's passkeys -----

/// Where a signed-out visitor to these routes is sent.
const SIGNED_OUT: &str = "/login";

async fn page(
    state: &AppState,
    session: &ActiveSession,
    status: StatusCode,
    error: Option<&str>,
    about: ErrorAbout,
) -> Response {
    let passkeys = match views(state, &session.user.key).await {
        Ok(v) => v,
        Err(e) => return passkey_failure(&e, "could not list passkeys"),
    };
    let factors = match state.factors.summary(&session.user.key).await {
        Ok(f) => f,
        Err(e) => return crate::routes::store_error(&e, "could not read the user's second factors"),
    };
    let required = state.settings.second_factor.requires(session.user.admin);
    let csrf = state.csrf.session_token(&session.token_hash);
    let page = PasskeysPage {
        username: &printable(&session.user.display_name),
        csrf: &csrf,
        passkeys,
        passkeys_enabled: state.passkeys.enabled(),
        passkey_error: error,
        passkey_error_for: about,
        passkey_notice: None,
        recent: session.authenticated_recently(now_ms()),
        removal_note: crate::routes::account::removal_note(&factors, required),
    };
    with_passkey_script(html(status, &page))
}

#[handler]
pub async fn list(req: &Request, state: State<'_>) -> Response {
    match signed_in(req, &state, &Then::Passkeys.sign_in_url()).await {
        Ok(session) => page(&state, &session, StatusCode::OK, None, ErrorAbout::Section).await,
        Err(resp) => resp,
    }
}

#[handler]
pub async fn register_begin(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: BeginForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in(req, &state, SIGNED_OUT).await {
        Ok(s) => s,
        // A store that cannot say whose session this is answers its fault (already logged),
        // never "signed out".
        Err(resp) if resp.status().is_server_error() => {
            return json_error(resp.status(), "The server could not check your session. Please try again.")
        }
        Err(_) => return json_error(StatusCode::UNAUTHORIZED, "Please sign in again."),
    };
    if !state.csrf.check_session(&session.token_hash, &form.csrf) {
        return json_error(StatusCode::FORBIDDEN, "This page has expired. Please reload it and try again.");
    }
    if !session.authenticated_recently(now_ms()) {
        return json_error(StatusCode::FORBIDDEN, "Please reload the page and confirm your password first.");
    }
    if let Err(resp) = ceremony_quota(req, &state).await {
        return resp;
    }
    // The name box's text, escapes read back as at the finish; none from an older page.
    let name = form.name.as_deref().map(crate::text::unprintable);
    match state.passkeys.begin_registration(&session.user, name.as_deref()).await {
        Ok(b) => begun(b),
        Err(PasskeyError::Disabled) => json_error(StatusCode::NOT_FOUND, "Passkeys are not available on this server."),
        Err(PasskeyError::TooMany) => json_error(StatusCode::BAD_REQUEST, &PasskeyError::TooMany.to_string()),
        Err(PasskeyError::BadName) => json_error(StatusCode::BAD_REQUEST, BAD_NAME),
        Err(PasskeyError::NameTaken) => json_error(StatusCode::BAD_REQUEST, NAME_TAKEN),
        Err(e) => {
            crate::fault_log::report("passkey registration not begun", Severity::Error, e.is_unavailable(), &e);
            let status = crate::routes::fault_status(e.is_unavailable());
            json_error(status, "The server could not start adding a passkey. Please try again.")
        }
    }
}

#[handler]
pub async fn register(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: RegisterForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Passkeys).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if form.credential.len() > MAX_CREDENTIAL_JSON {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let ceremony = cookies::get(req, CEREMONY_COOKIE);
    // The name as the page showed it: escapes read back, so a name saved unchanged stays the same.
    let name = crate::text::unprintable(&form.name);
    // Checked first: an answer that is refused changes nothing (review 200: a refused one, even
    // `{}` without a ceremony, had begun the new generation below and signed the user's other
    // sessions out, as often as sent, past *Sign out everywhere else*'s quota).
    let verified =
        state.passkeys.verify_registration(&session.user, ceremony.as_deref(), &form.credential, &name).await;
    // A first factor begins a new generation before it is stored.
    let (session, signed_out) = match &verified {
        Ok(_) => match crate::routes::account::recovery_codes::first_factor_generation(req, &state, &session).await {
            Ok(Some((going_on, ended))) => (going_on, Some(ended)),
            Ok(None) => (session, None),
            Err(resp) => return resp,
        },
        Err(_) => (session, None),
    };
    let asker = crate::factors::Asker::of(&session.record);
    let result = match verified {
        Ok(passkey) => state.passkeys.store_registration(&asker, passkey).await,
        Err(e) => Err(e),
    };
    let mut resp = match result {
        Ok(added) => {
            tracing::info!(passkey = %added.name, "passkey added");
            state.audit.record(&AuthEvent::MfaAdded {
                username: &session.user.display_name,
                kind: crate::factors::FactorKind::Passkey.as_str(),
                passkey: Some(&added.name),
                client: &crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash),
            });
            // As with an authenticator app (a server that turns passkeys off must not lock
            // the user out either).
            let name = crate::text::printable_label(&added.name).into_owned();
            let notice = crate::routes::flash::Notice::PasskeyAdded { name };
            let otherwise = notice.attach(&state.csrf, &session.token_hash, see_other(ACCOUNT_PASSKEYS));
            crate::routes::account::recovery_codes::codes_with_first_factor(
                req,
                &state,
                &session,
                "Your passkey is added.",
                false,
                otherwise,
                signed_out,
            )
            .await
        }
        Err(e @ PasskeyError::Store(_)) => passkey_failure(&e, "could not add a passkey"),
        Err(PasskeyError::Superseded) => crate::routes::account::not_changed(
            "Passkey not added",
            "Your device may still list the passkey it made: remove it there, as it will not sign in.",
        ),
        Err(e) => {
            let about = match e {
                PasskeyError::BadName | PasskeyError::NameTaken => ErrorAbout::NewName,
                _ => ErrorAbout::Section,
            };
            let message = match e {
                PasskeyError::BadName => BAD_NAME.to_string(),
                PasskeyError::NameTaken => NAME_TAKEN.to_string(),
                PasskeyError::Duplicate => "That passkey is registered already.".to_string(),
                PasskeyError::NoCeremony => {
                    "Adding the passkey took too long or was not started here. Please try again.".to_string()
                }
                PasskeyError::Disabled => "Passkeys are not available on this server.".to_string(),
                other => {
                    tracing::info!(error = %other, "passkey registration refused");
                    "The passkey could not be added. Please try again.".to_string()
                }
            };
            page(&state, &session, StatusCode::BAD_REQUEST, Some(&message), about).await
        }
    };
    if let Ok(v) = cookies::clear(CEREMONY_COOKIE).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    // A new generation began: this browser's device token goes on in it (as for an app).
    if signed_out.is_some() {
        return crate::routes::account::recovery_codes::with_device_cookie(req, &state, &session.user.key, resp);
    }
    resp
}

fn credential_id(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .filter(|b| !b.is_empty() && b.len() <= crate::store::passkeys::MAX_CREDENTIAL_ID_BYTES)
}

#[handler]
pub async fn rename(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: RenameForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    // As adding and removing one: a name is what the owner goes by to remove the right passkey
    // (review 187: a session copied long after its sign-in swapped names unseen).
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Passkeys).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let Some(id) = credential_id(&form.id) else { return error_page(StatusCode::BAD_REQUEST) };
    // The rename box holds the name as the page shows it: escapes read back, so a name saved
    // unchanged stays the same (a review saw `🔐` grow `\u{5c}u{1f510}` with each save).
    let name = crate::text::unprintable(&form.name);
    // Its name before, for the log line (review 191: the new name alone tied to nothing).
    let was = match state.passkeys.list(&session.user.key).await {
        Ok(stored) => stored.into_iter().find(|p| p.id == id).map(|p| p.name),
        Err(e) => return passkey_failure(&e, "could not read the passkeys"),
    };
    match state.passkeys.rename(&session.user.key, &id, &name).await {
        // Said, as a removal is (a review saw nothing change on the page but the name).
        Ok(true) => {
            state.audit.record(&AuthEvent::MfaRenamed {
                username: &session.user.display_name,
                passkey: name.trim(),
                was: was.as_deref(),
                client: &crate::client::client(req, &state.settings.trusted_proxies),
            });
            let name = crate::text::printable_label(name.trim()).into_owned();
            let notice = crate::routes::flash::Notice::PasskeyRenamed { name };
            notice.attach(&state.csrf, &session.token_hash, see_other(ACCOUNT_PASSKEYS))
        }
        Ok(false) => error_page(StatusCode::NOT_FOUND),
        Err(e @ (PasskeyError::BadName | PasskeyError::NameTaken)) => {
            let message = if matches!(e, PasskeyError::BadName) { BAD_NAME } else { NAME_TAKEN };
            let about = ErrorAbout::Rename { id: form.id.clone(), typed: form.name.clone() };
            page(&state, &session, StatusCode::BAD_REQUEST, Some(message), about).await
        }
        Err(e) => passkey_failure(&e, "could not rename a passkey"),
    }
}

#[handler]
pub async fn remove(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: RemoveForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match signed_in_recently(req, &state, SIGNED_OUT, &form.csrf, Then::Passkeys).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let Some(id) = credential_id(&form.id) else { return error_page(StatusCode::BAD_REQUEST) };
    let username = &session.user.display_name;
    let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
    let kind = crate::factors::FactorKind::Passkey;
    match state.passkeys.remove(&session.user.key, &id, &session.token_hash).await {
        Ok(Some(removed)) => {
            tracing::info!(passkey = %removed.passkey.name, "passkey removed");
            let removal = crate::audit::FactorRemoval {
                kind,
                sessions: removed.sessions_ended,
                codes_voided: removed.codes_voided,
                passkey: Some(&removed.passkey.name),
            };
            state.audit.factor_removed(username, removal, username, Some(&client));
            // As the page showed it: a name typed as the text `\u{202e}` must not pass for an
            // escaped direction mark here either (a review saw the notice print it bare).
            let name = crate::text::printable_label(&removed.passkey.name).into_owned();
            let notice = crate::routes::flash::Notice::PasskeyRemoved { name, ended: removed.sessions_ended };
            notice.attach(&state.csrf, &session.token_hash, see_other(ACCOUNT_PASSKEYS))
        }
        Ok(None) => error_page(StatusCode::NOT_FOUND),
        Err(PasskeyError::SessionsNotEnded(crate::passkeys::SessionsNotEnded { removed, source })) => {
            let status = crate::routes::store_fault(&source, "removed a passkey but could not end its sessions");
            // Recorded as removed, since it is; the sessions are said to be open.
            let removal =
                crate::audit::FactorRemoval { kind, sessions: 0, codes_voided: 0, passkey: Some(&removed.name) };
            state.audit.factor_removed(username, removal, username, Some(&client));
            let name = crate::text::printable_label(&removed.name);
            let message = format!(
                "Your passkey \u{201c}{name}\u{201d} is removed, but the server could not sign out the sessions it signed in: they are still signed in. Please use Sign out everywhere else on your account page in a moment."
            );
            crate::routes::error_page_saying(status, "Passkey removed, its sessions not signed out", &message)
        }
        Err(e) => passkey_failure(&e, "could not remove a passkey"),
    }
}

// ----- the second step of a sign-in -----

/// `POST /login/second-factor/passkey/begin`: the options for the pending sign-in's user's
/// passkeys (the password was right; the `__Host-portcullis-mfa` cookie names the pending
/// sign-in, and the form's CSRF token is bound to it). The answer is posted to
/// `/login/second-factor` as `credential`.
#[handler]
pub async fn second_factor_begin(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: CsrfOnly = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let cookie = match crate::routes::pending_cookie(req, &state).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Some(cookie) = cookie else {
        return json_error(StatusCode::UNAUTHORIZED, "Please sign in again.");
    };
    let (hash, user) = match state.factors.pending(&cookie).await {
        Ok(Some((hash, _, user))) => (hash, user),
        Ok(None) => return json_error(StatusCode::UNAUTHORIZED, "Please sign in again."),
        Err(e) => {
            crate::fault_log::report("could not read a pending sign-in", Severity::Error, e.is_unavailable(), &e);
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "The server is busy. Please try again.");
        }
    };
    if !state.csrf.check_session(&hash, &form.csrf) {
        return json_error(StatusCode::FORBIDDEN, "This page has expired. Please reload it and try again.");
    }
    if let Err(resp) = ceremony_quota(req, &state).await {
        return resp;
    }
    match state.passkeys.begin_second_factor(&user.key, &hash).await {
        Ok(b) => begun(b),
        Err(PasskeyError::Disabled) => json_error(StatusCode::NOT_FOUND, "Passkeys are not available on this server."),
        Err(PasskeyError::Rejected(_)) => json_error(StatusCode::BAD_REQUEST, "You have no passkey."),
        Err(e) => {
            crate::fault_log::report("passkey check not begun", Severity::Error, e.is_unavailable(), &e);
            let status = crate::routes::fault_status(e.is_unavailable());
            json_error(status, "The server could not start a passkey check. Please try again.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_503_says_when_to_try_again_like_every_other_503() {
        let resp = json_error(StatusCode::SERVICE_UNAVAILABLE, "busy");
        assert_eq!(resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("1"));
        assert!(json_error(StatusCode::FORBIDDEN, "no").headers().get(header::RETRY_AFTER).is_none());
    }
}
