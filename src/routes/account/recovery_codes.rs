//! Recovery codes on `/account`: `POST /account/recovery-codes` makes a new set (the old
//! ones stop working) and the first second factor, an authenticator app or a passkey, comes
//! with a set; either way the codes are shown once, on a page of their own, and stored only
//! as hashes (`factors::recovery`).

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Body, Request, Response};
use zeroize::Zeroizing;

use super::totp::factor_error;
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::factors::{FactorKind, NewCodes};
use crate::routes::{html_with_secret, see_other, store_error, State};
use crate::session::ActiveSession;

#[derive(Template)]
#[template(path = "recovery_codes.html")]
struct CodesPage<'a> {
    codes: &'a [Zeroizing<String>],
    /// Shown above the codes: what just happened.
    headline: &'a str,
}

/// After a second factor was added: a fresh set of recovery codes, shown once under
/// `headline`, when the new factor is the user's only one (the first factor comes with them,
/// so a lost phone or key does not lock the user out) or the user has none left; else
/// `otherwise`. Codes found beside a first factor predate it (a store written before removing
/// the last factor voided them): they are replaced, never revived. A factor that `replaced`
/// one of its kind (an authenticator app set up on a new phone) is no first factor: the
/// user's codes stay as they are, printed for the account rather than for a device.
/// `signed_out`: what [`first_factor_generation`] did before the factor was stored, said under
/// the headline, with what this does once more now that it is stored.
pub(crate) async fn codes_with_first_factor(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
    headline: &str,
    replaced: bool,
    otherwise: Response,
    signed_out: Option<Result<usize, ()>>,
) -> Response {
    let signed_out = match signed_out {
        Some(before) => Some(sweep_after_the_first_factor(req, state, session, before).await),
        None => None,
    };
    match state.factors.summary(&session.user.key).await {
        Ok(s) if (!replaced && s.second_factors() == 1) || s.recovery_codes == 0 => {}
        Ok(_) => return otherwise,
        Err(e) => return store_error(&e, "could not read the user's second factors"),
    }
    let said = match signed_out {
        Some(Ok(count)) if count > 0 => {
            let others = crate::text::counted(count as u64, "other session", "other sessions");
            let verb = if count == 1 { "it is" } else { "they are" };
            format!("{headline} Your {others} signed in without it, so {verb} now signed out.")
        }
        // The generation moved on, so they are over, though their records could not be removed.
        Some(Err(())) => format!("{headline} Your other sessions, which signed in without it, are now signed out."),
        _ => headline.to_string(),
    };
    issue_codes(req, state, session, &said, None).await
}

/// Before the first second factor of `session`'s user is stored (none yet, and `session`
/// signed in with the password alone): a new credential generation, as *sign out everywhere
/// else* begins, which ends the user's other sessions and the password sign-ins under way,
/// each signed in without the factor (one the password was phished for would otherwise keep its
/// access, and under `second_factor = all` pass as enrolled: reviews 129 and 131). `session`
/// goes on into it under the same token ([`crate::session::Sessions::restamp`]), so a second
/// window's form and a double click's twin stay good, and the factor is then stored in the new
/// generation. Of two sessions adding a first factor at once (an app and a passkey), the
/// compare-and-set lets one begin it; the other is over and stores nothing (review 132 kept
/// both when the generation moved after the factors were stored).
///
/// `Ok(None)`: not a first factor, nothing done. `Ok(Some((session, Ok(n))))`: the session as it
/// goes on, `n` others ended; `Ok(Some((session, Err(()))))`: the generation moved on, so the
/// others are over, but their records could not be removed (reported).
///
/// # Errors
/// The answer to give: 409 when another change came first (this session is over), 503 when the
/// store failed before anything changed.
/// `resp` with a new device cookie for `user_key` in the user's current credential
/// generation (the one this browser's session goes on in), replacing the browser's old one:
/// after [`first_factor_generation`], as after a password change.
pub(crate) fn with_device_cookie(req: &Request, state: &AppState, user_key: &str, mut resp: Response) -> Response {
    let previous = crate::cookies::get(req, crate::csrf::DEVICE_COOKIE);
    match state.csrf.issue_device_cookie(user_key, previous.as_deref(), crate::store::now_ms()) {
        Ok(value) => {
            if let Ok(v) = crate::routes::login::device_cookie(&value).parse() {
                resp.headers_mut().append(poem::http::header::SET_COOKIE, v);
            }
        }
        // Only the browser's place in a flood is at stake: it signs in as a stranger once.
        Err(e) => tracing::warn!(error = %e, "no new device token after a first second factor"),
    }
    resp
}

/// Ends `session`'s user's other sessions once more, the first second factor now stored;
/// returns what both sweeps ended (`before`: the first's). A password sign-in that read "no
/// second factor" in the new generation, after the first sweep and before the factor was
/// stored, may have started a password-only session in between, which the first sweep could
/// not see (review 136: 4 of 9 such races kept one, with full access under `second_factor =
/// all`). One that starts after this sweep finds the factor when it checks again before it
/// answers (`SignIn::complete`).
async fn sweep_after_the_first_factor(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
    before: Result<usize, ()>,
) -> Result<usize, ()> {
    let now = end_other_sessions(req, state, session).await?;
    before.map(|n| n + now)
}

/// Ends every session of `session`'s user but `session`, for a first second factor, and logs
/// how many went (`session_revoked`); `Err` when their records could not be removed
/// (reported: they are over all the same, being of an older generation or swept again).
async fn end_other_sessions(req: &Request, state: &AppState, session: &ActiveSession) -> Result<usize, ()> {
    let user = &session.user;
    let (count, handles) = match state.sessions.end_all_named(&user.key, Some(&session.token_hash)).await {
        Ok(ended) => ended,
        Err(e) => {
            let what = "a first second factor could not remove the other sessions (they are over all the same)";
            crate::fault_log::report_error(what, crate::fault_log::Severity::Error, e.is_unavailable(), &e);
            return Err(());
        }
    };
    if count > 0 {
        let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
        let username = &user.display_name;
        let handles = handles.iter().map(crate::session::SessionHandle::encode).collect::<Vec<_>>().join(",");
        let ended = Some(handles.as_str()).filter(|h| !h.is_empty());
        state.audit.record(&AuthEvent::SessionsEnded {
            username,
            count,
            ended,
            renewed: None,
            pending: 0,
            by: username,
            client: &client,
        });
    }
    Ok(count)
}

/// What a first factor refused by [`first_factor_generation`] leaves to tidy.
const LEFTOVER: &str = "If you added an entry for it to an authenticator app, remove that entry.";

pub(crate) async fn first_factor_generation(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
) -> Result<Option<(ActiveSession, Result<usize, ()>)>, Response> {
    let user = &session.user;
    if session.record.factors != crate::store::Factors::One {
        return Ok(None);
    }
    match state.factors.summary(&user.key).await {
        Ok(s) if s.has_second_factor() => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(store_error(&e, "could not read the user's second factors")),
    }
    let from = Some(crate::store::Holding::of(&session.record));
    let changed = match state.store.users.renew_generation(&user.key, crate::store::now_ms(), from).await {
        Ok(Some(changed)) => changed,
        Ok(None) => return Err(super::not_changed("Second factor not set up", LEFTOVER)),
        Err(e) => return Err(store_error(&e, "could not begin a new credential generation")),
    };
    let ended = end_other_sessions(req, state, session).await;
    match state.sessions.restamp(session, &changed).await {
        Ok(()) => {}
        Err(crate::session::StartError::Store(e)) => return Err(store_error(&e, "could not go on with this session")),
        Err(_) => return Err(super::not_changed("Second factor not set up", LEFTOVER)),
    }
    let mut record = session.record.clone();
    record.password_changed_at = changed.password_changed_at;
    let going_on = ActiveSession { record, user: changed, ..session.clone() };
    Ok(Some((going_on, ended)))
}

/// The account page's *Make new recovery codes* form.
#[derive(serde::Deserialize)]
struct NewCodesForm {
    #[serde(default)]
    csrf: String,
    /// The codes the page was shown with ([`crate::factors::SecondFactors::codes_seen`]).
    /// Absent (a hand-made request): 400, since what it would replace is unknown.
    #[serde(default)]
    seen: String,
}

#[handler]
pub async fn new_recovery_codes(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: NewCodesForm = match crate::routes::read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let then = super::confirm::Then::Account;
    let session = match super::confirm::signed_in_recently(req, &state, super::SIGNED_OUT, &form.csrf, then).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    // Codes stand in for a second factor: without one there is nothing to recover.
    match state.factors.summary(&session.user.key).await {
        Ok(f) if f.has_second_factor() => {}
        Ok(_) => return see_other("/account"),
        Err(e) => return store_error(&e, "could not read the user's second factors"),
    }
    if form.seen.is_empty() {
        return super::form_without("recovery codes");
    }
    let headline = "Your new recovery codes are ready; the old ones no longer work.";
    issue_codes(req, &state, &session, headline, Some(&form.seen)).await
}

/// Makes a new set of recovery codes in place of the set `seen` (`None`: whatever the user
/// has) and shows them, once. In place of a set (`seen`), the old codes sign in no more, nor do
/// the sessions they signed in, but this one (review 187: a session a leaked code opened
/// stayed signed in): as on the app's removal, every other session whose second step was not
/// a passkey is signed out, since a session does not tell an app's code from a recovery code.
async fn issue_codes(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
    headline: &str,
    seen: Option<&str>,
) -> Response {
    let codes = match state.factors.new_recovery_codes(&session.user.key, seen).await {
        Ok(NewCodes::Made(c)) => c,
        Ok(NewCodes::Changed) => return made_elsewhere(),
        Ok(NewCodes::NoUser) => return see_other("/login"),
        Err(e) => return factor_error(&e, "could not make recovery codes"),
    };
    let username = &session.user.display_name;
    let kind = FactorKind::RecoveryCodes;
    let client = crate::client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
    let added = AuthEvent::MfaAdded { username, kind: kind.as_str(), passkey: None, client: &client };
    let voided = |sessions| crate::audit::FactorRemoval { kind, sessions, codes_voided: 0, passkey: None };
    if seen.is_none() {
        state.audit.record(&added);
        return html_with_secret(StatusCode::OK, &CodesPage { codes: &codes, headline });
    }
    let said = match state.factors.end_app_sessions(&session.user.key, Some(&session.token_hash)).await {
        Ok(ended) => {
            state.audit.factor_removed(username, voided(ended), username, Some(&client));
            match ended {
                0 => headline.to_string(),
                n => {
                    let others = crate::text::counted(n as u64, "other session", "other sessions");
                    let verb = if n == 1 { "it is" } else { "they are" };
                    format!("{headline} Your {others} signed in with a code, so {verb} now signed out.")
                }
            }
        }
        Err(source) => {
            // The codes are made and must be shown now or never: said with them.
            let _ = crate::routes::store_fault(
                &source,
                "made recovery codes but could not end the sessions codes signed in",
            );
            state.audit.factor_removed(username, voided(0), username, Some(&client));
            format!("{headline} The server could not sign out the other sessions that signed in with a code: please use Sign out everywhere else on your account page in a moment.")
        }
    };
    state.audit.record(&added);
    html_with_secret(StatusCode::OK, &CodesPage { codes: &codes, headline: &said })
}

/// 409 when the user's codes changed after the page that asked was shown (new ones made in
/// another tab, or by the same click sent twice): none are made, so the set printed from the
/// other answer stays the one that works.
fn made_elsewhere() -> Response {
    crate::routes::error_page_leading(
        StatusCode::CONFLICT,
        "Recovery codes not made",
        "Your recovery codes were changed after this page was shown (new ones were made in another window, this page was reloaded, or its button was pressed twice), so no new ones were made here. If you have the newest set, keep it. If you did not see it, make new codes again from your account page.",
        ("/account", "Your account"),
    )
}
