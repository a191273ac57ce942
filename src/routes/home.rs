//! `GET /`: the signed-in home page (greeting, the user's sessions, sign-out buttons),
//! `POST /sessions/end-others`: "sign out everywhere else", and `POST /sessions/end`: one
//! session of the list signed out.

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Body, Request, Response};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::audit::AuthEvent;
use crate::brute_force::QuotaKey;
use crate::rate_limit::{username_digest, SIGN_OUTS_ELSEWHERE};
use crate::routes::flash::{self, Notice};
use crate::routes::passkeys::PasskeyView;
use crate::routes::{current_session, enrolled_session_listing, html, read_form, see_other, State};
use crate::session::{EndOneError, EndOthersError, SessionHandle, StartError};
use crate::text::printable;

pub(super) struct SessionView {
    pub created: super::Moment,
    pub last_seen: super::Moment,
    pub ip: String,
    pub user_agent: String,
    /// How it signed in ("with …"): "password", "two factors", or the passkey by name.
    pub signed_in_with: String,
    pub current: bool,
    /// What its *End this session* button sends ([`SessionHandle`]).
    pub handle: String,
}

/// The user's sessions as the pages show them, newest first; `passkeys` are the user's, as
/// their section shows them, to name the passkey a session signed in with.
pub(super) fn session_views(
    sessions: Vec<crate::store::StoredSession>,
    current: &[u8; 32],
    passkeys: &[PasskeyView],
) -> Vec<SessionView> {
    sessions
        .into_iter()
        .map(|s| SessionView {
            created: super::Moment::at(s.record.created_at),
            last_seen: super::Moment::at(s.record.last_seen_at),
            signed_in_with: signed_in_with(&s.record, passkeys),
            ip: s.record.ip,
            // Invisible and control characters shown as escapes, as on every other page.
            user_agent: printable(&s.record.user_agent).into_owned(),
            current: &s.token_hash == current,
            handle: SessionHandle::of(&s.token_hash).encode(),
        })
        .collect()
}

/// What the sessions table says a session signed in with, so a user about to remove a
/// passkey sees which sessions go with it.
fn signed_in_with(session: &crate::store::Session, passkeys: &[PasskeyView]) -> String {
    match &session.passkey_id {
        Some(id) => {
            let id = URL_SAFE_NO_PAD.encode(id);
            match passkeys.iter().find(|p| p.id == id) {
                // Already escaped for display (`printable_label`); the template escapes HTML.
                Some(p) => format!("passkey \u{201c}{}\u{201d}", p.name),
                None => "a removed passkey".to_string(),
            }
        }
        None if session.factors == crate::store::Factors::Two => "two factors".to_string(),
        None => "password".to_string(),
    }
}

/// The user's passkeys as their section shows them when one of `sessions` was signed in
/// with a passkey (to name it there), else none and no store read.
///
/// # Errors
/// The page for a store that cannot answer.
pub(super) async fn passkeys_named_by(
    state: &crate::app::AppState,
    user_key: &str,
    sessions: &[crate::store::StoredSession],
) -> Result<Vec<PasskeyView>, Response> {
    if sessions.iter().all(|s| s.record.passkey_id.is_none()) {
        return Ok(Vec::new());
    }
    match crate::routes::passkeys::views(state, user_key).await {
        Ok(v) => Ok(v),
        Err(crate::passkeys::PasskeyError::Store(e)) => Err(crate::routes::store_error(&e, "could not list passkeys")),
        Err(_) => Ok(Vec::new()),
    }
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage<'a> {
    username: &'a str,
    admin: bool,
    csrf: &'a str,
    sessions: Vec<SessionView>,
    /// Where ending one session lands: here ("").
    sessions_from: &'static str,
    notice: Option<String>,
    /// The notice asks the person to do something: shown as an alert.
    notice_alert: bool,
    /// Carried into the sign-out form: an application's "sign out" link can name where to
    /// land afterwards (checked like every `rd`).
    rd: Option<String>,
    /// After the wrong-codes alert of a sign-in on its way to an application
    /// ([`crate::routes::login::landing`]): that application's address (the checked `rd`).
    continue_to: Option<String>,
}

#[derive(serde::Deserialize)]
pub struct HomeQuery {
    rd: Option<String>,
}

#[handler]
pub async fn home(req: &Request, state: State<'_>, query: Option<poem::web::Query<HomeQuery>>) -> Response {
    let rd = crate::routes::login::checked_rd(&state, query.as_ref().and_then(|q| q.rd.as_deref()));
    // The session, its user and the list in one store read: one statement on PostgreSQL.
    let (session, sessions) = match enrolled_session_listing(req, &state).await {
        Ok(Some(found)) => found,
        // An application's sign-out link followed by someone signed out already: signed out,
        // as asked, so on to where it said (review 137 was left at the sign-in page).
        Ok(None) => return crate::routes::to_sign_in(req, rd.as_deref().unwrap_or("/login")),
        Err(resp) => return resp,
    };
    let passkeys = match passkeys_named_by(&state, &session.user.key, &sessions).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let views = session_views(sessions, &session.token_hash, &passkeys);
    // From what the server did (a cookie set by "sign out everywhere else"), never the URL.
    let notice = flash::take_now(req, &state, &session).await;
    let csrf = state.csrf.session_token(&session.token_hash);
    let page = html(
        StatusCode::OK,
        &HomePage {
            // A name stored before invisible characters were refused shows them escaped.
            username: &printable(&session.user.display_name),
            admin: session.user.admin,
            csrf: &csrf,
            sessions: views,
            sessions_from: "",
            notice_alert: notice.as_ref().is_some_and(flash::Notice::asks_action),
            continue_to: rd.clone().filter(|_| matches!(notice, Some(Notice::WrongCodesBefore { .. }))),
            notice: notice.map(|n| n.text()),
            rd,
        },
    );
    flash::cleared(req, page)
}

/// *Sign out everywhere else*, from the home page or `/account` (`from=account`: back there).
#[derive(serde::Deserialize)]
pub struct EndOthersForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub from: String,
}

#[handler]
pub async fn end_other_sessions(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: EndOthersForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match current_session(req, &state).await {
        Ok(Some(session)) => session,
        Ok(None) => return crate::routes::to_sign_in(req, "/login"),
        // The session could not even be read: nothing was ended either, and said so.
        Err(resp) => return others_not_signed_out(resp.status()),
    };
    if !state.csrf.check_session(&session.token_hash, &form.csrf) {
        return crate::routes::stale_form();
    }
    let session = crate::routes::account::confirm::with_confirmation(req, &state, session);
    let quota = QuotaKey::SignOutsElsewhere(username_digest(&session.user.key));
    match state.brute_force.take(quota, SIGN_OUTS_ELSEWHERE, crate::store::now_ms()).await {
        Ok(Ok(())) => {}
        Ok(Err(wait)) => return too_many_sign_outs(wait.retry_after_secs()),
        Err(e) => {
            // Said as any failure to sign out is: "busy" alone reads as done.
            let what = "could not spend the sign-out quota";
            crate::fault_log::report_error(what, crate::fault_log::Severity::Error, true, &e);
            return others_not_signed_out(StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
    let record = |ended: &[crate::session::SessionHandle], pending, renewed: Option<&crate::session::SessionToken>| {
        let handles = ended.iter().map(SessionHandle::encode).collect::<Vec<_>>().join(",");
        let renewed = renewed.map(|t| SessionHandle::of(&t.hash()).encode());
        state.audit.record(&AuthEvent::SessionsEnded {
            username: &session.user.display_name,
            count: ended.len(),
            ended: Some(&handles).filter(|h| !h.is_empty()).map(String::as_str),
            renewed: renewed.as_deref(),
            pending,
            by: &session.user.display_name,
            client: &client,
        })
    };
    match state.sessions.end_others(&session, client.ip, &client.user_agent).await {
        Ok((token, ended, pending)) => {
            record(&ended, pending, Some(&token));
            let count = ended.len();
            // Passkeys added lately are marked on the account page, where they can be removed:
            // a passkey signs in alone and outlives this (review 191: from the home page the
            // notice said nothing of the one a thief had added).
            let lately = match state.passkeys.list(&session.user.key).await {
                Ok(passkeys) => crate::routes::account::any_added_lately(&passkeys, crate::store::now_ms()),
                // Ended all the same: the page said so; the list is read again there.
                Err(_) => true,
            };
            let back = if form.from == "account" || lately { "/account" } else { "/" };
            // This browser goes on under the new credential generation, with a new token.
            let resp = crate::routes::account::confirm::continued(&state, back, &token, session.confirmed_at);
            Notice::SessionsEnded { count, pending }.attach(&state.csrf, &token.hash(), resp)
        }
        Err(EndOthersError::NothingEnded(e)) => {
            others_not_signed_out(crate::routes::store_fault(&e, "could not end sessions"))
        }
        Err(EndOthersError::ThisEndedToo { sessions, pending, error }) => {
            record(&sessions, pending, None);
            let (status, why) = match error {
                StartError::Store(e) => (
                    crate::routes::store_fault(&e, "ended the other sessions but could not go on with this one"),
                    "the server could not keep it signed in",
                ),
                StartError::PasskeyRemoved => {
                    (StatusCode::CONFLICT, "the passkey it was signed in with was removed meanwhile")
                }
                StartError::SignedOut => (StatusCode::CONFLICT, "it was signed out meanwhile"),
            };
            crate::routes::error_page_leading(
                status,
                "Signed out everywhere",
                &format!("Your other sessions are signed out, and this one with them: {why}. Please sign in again."),
                crate::routes::SIGN_IN_AGAIN,
            )
        }
        // This session was over before this request ended anything (the same click sent twice:
        // the other one did it). A browser that kept the other answer's cookie is signed in.
        Err(EndOthersError::Superseded) => see_other("/login"),
    }
}

/// One session of the user's list signed out, from the home page or `/account`
/// (`from=account`: back to its list).
#[derive(serde::Deserialize)]
pub struct EndOneForm {
    #[serde(default)]
    pub csrf: String,
    /// The session's [`SessionHandle`], as its row's button sends it.
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub from: String,
}

/// `POST /sessions/end`: ends the one session of the user's list that the form names, on
/// every instance, and lands back on the list saying so (OWASP ASVS 4.0 §3.3.4). A session
/// that had ended already is said to have; none is ever another user's. Logged
/// `session_revoked` with a count of 1 and the ended session's address and browser. No quota:
/// a request ends at most one of the user's own sessions, and writes a line only when it does.
#[handler]
pub async fn end_one_session(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: EndOneForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let session = match current_session(req, &state).await {
        Ok(Some(session)) => session,
        Ok(None) => return crate::routes::to_sign_in(req, "/login"),
        Err(resp) => return session_not_signed_out(resp.status()),
    };
    if !state.csrf.check_session(&session.token_hash, &form.csrf) {
        return crate::routes::stale_form();
    }
    let back = if form.from == "account" { "/account#sessions" } else { "/" };
    let Some(handle) = SessionHandle::parse(form.session.trim()) else {
        return crate::routes::error_page_leading(
            StatusCode::BAD_REQUEST,
            "No such session",
            "The form named no session of yours. Please choose one from your list of sessions.",
            (back, "Your sessions"),
        );
    };
    let ended = match state.sessions.end_listed(&session, &handle).await {
        Ok(ended) => ended,
        Err(EndOneError::ThisSession) => {
            return crate::routes::error_page_leading(
                StatusCode::BAD_REQUEST,
                "This is your session",
                "That is the session you are using now: to end it, use Sign out.",
                (back, "Your sessions"),
            )
        }
        Err(EndOneError::Store(e)) => {
            return session_not_signed_out(crate::routes::store_fault(&e, "could not end a session"))
        }
    };
    if let Some(ended) = &ended {
        let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
        state.audit.record(&AuthEvent::SessionEnded {
            username: &session.user.display_name,
            by: &session.user.display_name,
            ended: &handle.encode(),
            ended_ip: &ended.record.ip,
            ended_user_agent: &ended.record.user_agent,
            client: Some(&client),
        });
    }
    let notice = match ended {
        Some(ended) => Notice::SessionEnded { already: false, ip: ended.record.ip, browser: ended.record.user_agent },
        None => Notice::SessionEnded { already: true, ip: String::new(), browser: String::new() },
    };
    notice.attach(&state.csrf, &session.token_hash, see_other(back))
}

/// The page for a session of the list the store could not end (`status`, a 503 or 500).
fn session_not_signed_out(status: StatusCode) -> Response {
    crate::routes::error_page_saying(
        status,
        "Session not signed out",
        "The server could not sign out that session just now: it is still signed in. Please try again in a moment.",
    )
}

/// 429 for a user past [`SIGN_OUTS_ELSEWHERE`], with the other ways to end a session now.
fn too_many_sign_outs(retry_after: u64) -> Response {
    let minutes = retry_after.div_ceil(60);
    let message = format!(
        "Your account was signed out everywhere else several times in the last few minutes, so it cannot be again for about {minutes} minute(s): nothing was signed out now. To end a session you do not know at once, change your password, or remove the passkey it signed in with (your account page says which)."
    );
    let page = crate::routes::error_page_leading(
        StatusCode::TOO_MANY_REQUESTS,
        "Please wait",
        &message,
        ("/account", "Your account"),
    );
    crate::routes::with_retry_after(page, retry_after)
}

/// The page for *sign out everywhere else* when the store could not do it (`status`, a 503 or
/// 500). Said plainly: "busy" alone read as done, with the other sessions still open.
fn others_not_signed_out(status: StatusCode) -> Response {
    crate::routes::error_page_saying(
        status,
        "Other sessions not signed out",
        "The server could not sign out your other sessions just now: they are still signed in. Please try again in a moment.",
    )
}
