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
use crate::factors::FactorKind;
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
pub(crate) async fn codes_with_first_factor(
    state: &AppState,
    session: &ActiveSession,
    headline: &str,
    replaced: bool,
    otherwise: Response,
) -> Response {
    match state.factors.summary(&session.user.key).await {
        Ok(s) if s.recovery_codes == 0 || (!replaced && s.second_factors() == 1) => {
            issue_codes(state, session, headline).await
        }
        Ok(_) => otherwise,
        Err(e) => store_error(&e, "could not read the user's second factors"),
    }
}

#[handler]
pub async fn new_recovery_codes(req: &Request, body: Body, state: State<'_>) -> Response {
    let session = match super::recent_session_posting(req, body, &state).await {
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
    html_with_secret(StatusCode::OK, &CodesPage { codes: &codes, headline })
}
