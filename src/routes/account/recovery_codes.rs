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
///
/// The first second factor also ends the user's other sessions and password sign-ins in
/// flight, with a new credential generation (as *sign out everywhere else* does): each signed
/// in with the password alone, and one the password was phished for would otherwise keep its
/// access, and under `second_factor = all` pass as enrolled, after the owner set up the factor
/// (found by review 129, which minted recovery codes from such a session; review 131 kept one
/// whose password check was under way). This session, which has just proved the factor, goes
/// on into the new generation under the same token ([`crate::session::Sessions::restamp`]), so
/// a second window's form and a double click's twin stay good.
pub(crate) async fn codes_with_first_factor(
    req: &Request,
    state: &AppState,
    session: &ActiveSession,
    headline: &str,
    replaced: bool,
    otherwise: Response,
) -> Response {
    let first = match state.factors.summary(&session.user.key).await {
        Ok(s) if !replaced && s.second_factors() == 1 => true,
        Ok(s) if s.recovery_codes == 0 => false,
        Ok(_) => return otherwise,
        Err(e) => return store_error(&e, "could not read the user's second factors"),
    };
    if !first {
        return issue_codes(state, session, headline, None).await;
    }
    // The codes are shown whatever the sign-out did: this page is their only showing.
    let headline = match others_signed_out(req, state, session).await {
        Ok(0) => headline.to_string(),
        Ok(count) => {
            let others = crate::text::counted(count as u64, "other session", "other sessions");
            let verb = if count == 1 { "it is" } else { "they are" };
            format!("{headline} Your {others} signed in without it, so {verb} now signed out.")
        }
        Err(Ended::ThisToo) => format!(
            "{headline} This session was signed out meanwhile, with your others: sign in again once the codes are kept."
        ),
        Err(Ended::NotOthers) => format!(
            "{headline} Your other sessions could not be signed out just now: use Sign out everywhere else on your account page."
        ),
    };
    issue_codes(state, session, &headline, None).await
}

/// How [`others_signed_out`] did not finish.
enum Ended {
    /// The others are over, and this session too (signed out or changed meanwhile).
    ThisToo,
    /// The store failed before the others were ended (reported).
    NotOthers,
}

/// A new credential generation for `session`'s user, its other sessions removed, and
/// `session` moved into it under its token; how many others ended.
async fn others_signed_out(req: &Request, state: &AppState, session: &ActiveSession) -> Result<usize, Ended> {
    let user = &session.user;
    let report = |what: &'static str, e: &crate::store::StoreError, unavailable: bool| {
        crate::fault_log::report_error(what, crate::fault_log::Severity::Error, unavailable, e);
    };
    let from = Some(crate::store::Holding::of(&session.record));
    let changed = match state.store.users.renew_generation(&user.key, crate::store::now_ms(), from).await {
        Ok(Some(changed)) => changed,
        Ok(None) => return Err(Ended::ThisToo),
        Err(e) => {
            report("a first second factor could not end the other sessions", &e, e.is_unavailable());
            return Err(Ended::NotOthers);
        }
    };
    // Over already, with the old generation: removed now rather than when their time is up.
    let count = match state.sessions.end_all(&user.key, Some(&session.token_hash)).await {
        Ok(n) => n,
        Err(e) => {
            report(
                "could not remove the sessions of an ended generation (they are over all the same)",
                &e,
                e.is_unavailable(),
            );
            0
        }
    };
    if count > 0 {
        let client = crate::client::client(req, &state.settings.trusted_proxies);
        let username = &user.display_name;
        state.audit.record(&AuthEvent::SessionsEnded { username, count, pending: 0, by: username, client: &client });
    }
    match state.sessions.restamp(session, &changed).await {
        Ok(()) => Ok(count),
        Err(crate::session::StartError::Store(e)) => {
            report("ended the other sessions but could not go on with this one", &e, e.is_unavailable());
            Err(Ended::ThisToo)
        }
        Err(_) => Err(Ended::ThisToo),
    }
}

/// The account page's *Make new recovery codes* form.
#[derive(serde::Deserialize)]
struct NewCodesForm {
    #[serde(default)]
    csrf: String,
    /// The codes the page was shown with ([`crate::factors::SecondFactors::codes_seen`]).
    /// Absent (a page from before the field, a hand-made request) matches no set: 409, as
    /// a page shown before the codes changed, since what it would replace is unknown.
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
    let headline = "Your new recovery codes are ready; the old ones no longer work.";
    issue_codes(&state, &session, headline, Some(&form.seen)).await
}

/// Makes a new set of recovery codes in place of the set `seen` (`None`: whatever the user
/// has) and shows them, once.
async fn issue_codes(state: &AppState, session: &ActiveSession, headline: &str, seen: Option<&str>) -> Response {
    let codes = match state.factors.new_recovery_codes(&session.user.key, seen).await {
        Ok(NewCodes::Made(c)) => c,
        Ok(NewCodes::Changed) => return made_elsewhere(),
        Ok(NewCodes::NoUser) => return see_other("/login"),
        Err(e) => return factor_error(&e, "could not make recovery codes"),
    };
    let username = &session.user.display_name;
    state.audit.record(&AuthEvent::MfaAdded { username, kind: FactorKind::RecoveryCodes.as_str() });
    html_with_secret(StatusCode::OK, &CodesPage { codes: &codes, headline })
}

/// 409 when the user's codes changed after the page that asked was shown (new ones made in
/// another tab, or by the same click sent twice): none are made, so the set printed from the
/// other answer stays the one that works.
fn made_elsewhere() -> Response {
    crate::routes::error_page_leading(
        StatusCode::CONFLICT,
        "Recovery codes not made",
        "Your recovery codes were changed after this page was shown (new ones were made in another window, or this button was pressed twice), so no new ones were made here. If you have the newest set, keep it. If you did not see it, make new codes again from your account page.",
        ("/account", "Your account"),
    )
}
