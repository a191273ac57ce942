//! `/account`: the signed-in user's own page: sessions (with *sign out everywhere else*), a
//! password change ([`password`]), the authenticator app ([`totp`]), recovery codes
//! ([`recovery_codes`]), and
//! the passkeys section (`templates/account_passkeys.html`, its routes in `routes::passkeys`).
//! Every action is a plain form with a CSRF token bound to the session; adding a passkey
//! needs `static/passkey.js`, so when passkeys are on the page has `PASSKEY_CSP`.

pub mod confirm;
pub mod password;
pub mod recovery_codes;
pub mod totp;

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Request, Response};

use super::home::{session_views, SessionView};
use crate::routes::flash;
use crate::routes::{current_session_listing, html, see_other, store_error, State};
use crate::session::ActiveSession;
use crate::store::{FactorSummary, StoredSession};
use crate::text::printable;

/// Where a signed-out visitor to the account's routes is sent.
const SIGNED_OUT: &str = "/login?next=/account";

/// A form with only the CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

/// 400 for an account form without the field naming what its page showed (`enrolled_at`,
/// `seen`): no page of ours leaves it out, so it is no sign of another window's change (the
/// 409's words), and nothing is changed since what was meant is unknown.
fn form_without(what: &str) -> Response {
    crate::routes::error_page_leading(
        StatusCode::BAD_REQUEST,
        "Nothing was changed",
        &format!("This form did not say which {what} its page showed, so nothing was changed. Open your account page again and use its button."),
        ("/account", "Your account"),
    )
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    username: &'a str,
    csrf: &'a str,
    sessions: Vec<SessionView>,
    /// Where ending one session lands: back to the list ("account").
    sessions_from: &'static str,
    /// A notice about one session of the list, shown under it, where ending one lands.
    sessions_notice: Option<String>,
    notice: Option<String>,
    /// The notice asks for something to be done (shown as an alert, not as news).
    notice_alert: bool,
    /// The password form's error, shown beside it.
    password_error: Option<&'a str>,
    /// The `id` of the field that error is about ([`PasswordFault`]), "" for the whole form.
    password_fault: &'static str,
    /// A captcha challenge for the password form (a `data:` URI), when its check wants one
    /// (`templates/captcha.html`).
    captcha: Option<String>,
    factors: FactorSummary,
    /// When the authenticator app was set up (RFC 3339), if it is.
    totp_since: Option<crate::routes::Moment>,
    /// When the app was set up (Unix ms), for its removal form: a page shown before the app
    /// was replaced removes nothing (`routes::account::totp::remove`).
    totp_enrolled_at: u64,
    /// The `second_factor` policy wants a factor this user lacks.
    must_enrol: bool,
    /// The passkeys section (`templates/account_passkeys.html`).
    passkeys: Vec<crate::routes::passkeys::PasskeyView>,
    passkeys_enabled: bool,
    passkey_error: Option<&'a str>,
    /// Always [`crate::routes::passkeys::ErrorAbout::Section`]: this page shows no passkey error.
    passkey_error_for: crate::routes::passkeys::ErrorAbout,
    /// A notice about passkeys, shown in their section, where the page lands after a removal.
    passkey_notice: Option<String>,
    /// The session may add or remove a second factor without confirming its password first
    /// ([`confirm`]).
    recent: bool,
    /// The recovery codes this page shows the count of, for its *Make new recovery codes*
    /// form ([`crate::factors::SecondFactors::codes_seen`]); empty without a second factor.
    codes_seen: String,
    /// `min_password_length`, for the new password's hint and `minlength` (a review found the
    /// hint saying 15 whatever the setting).
    min_password_length: usize,
    /// What removing a second factor takes with it, said before the removal is confirmed
    /// ([`removal_note`]).
    removal_note: Option<String>,
}

/// What removing one of the user's second factors (whose count and recovery codes `factors`
/// gives) would take with it, said beside the button that confirms the removal; `None` when
/// another second factor stays. `required`: the `second_factor` policy wants one for this user.
pub(crate) fn removal_note(factors: &FactorSummary, required: bool) -> Option<String> {
    if factors.second_factors() != 1 {
        return None;
    }
    let mut note = String::from("It is your only second factor: signing in will ask for your password alone");
    if factors.recovery_codes > 0 {
        let codes = crate::text::counted(factors.recovery_codes as u64, "recovery code", "recovery codes");
        note.push_str(&format!(", and your {codes} will stop working"));
    }
    note.push('.');
    if required {
        note.push_str(" This server will then ask you to set up another.");
    }
    Some(note)
}

#[handler]
pub async fn show(req: &Request, state: State<'_>) -> Response {
    // The session and the user's sessions in one store read.
    let (session, sessions) = match current_session_listing(req, &state).await {
        Ok(Some(found)) => found,
        Ok(None) => return crate::routes::to_sign_in(req, "/login?next=/account"),
        Err(resp) => return resp,
    };
    let notice = flash::take_now(req, &state, &session).await;
    let page = render_listed(&state, &session, Some(sessions), StatusCode::OK, notice, None, None).await;
    flash::cleared(req, page)
}

/// `GET /account/password`: the address bar after a refused password change (the page is the
/// POST's answer), opened again with Enter or from history: 303 to that form on `/account`,
/// not a 405 (found by a review).
#[handler]
pub fn to_password_form() -> Response {
    see_other("/account#password")
}

/// `GET /account/recovery-codes`: as [`to_password_form`], after new recovery codes were shown
/// (once: they are not shown again): 303 to their section on `/account`.
#[handler]
pub fn to_recovery_codes() -> Response {
    see_other("/account#recovery")
}

/// Which field of the password form an error is about: that one is marked invalid and tied to
/// the error (WCAG 3.3.1; review 211 saw the error tied to all three).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PasswordFault {
    Current,
    New,
    Repeat,
    /// The form as a whole (too many checks, a picture demanded).
    Form,
}

impl PasswordFault {
    /// The `id` of the field at fault, or "" for the form as a whole.
    fn field(self) -> &'static str {
        match self {
            PasswordFault::Current => "current",
            PasswordFault::New => "new",
            PasswordFault::Repeat => "repeat",
            PasswordFault::Form => "",
        }
    }
}

/// The page for `session`, with `status`, the password form's error and the field it is
/// about, and a captcha for it.
pub(super) async fn render(
    state: &crate::app::AppState,
    session: &ActiveSession,
    status: StatusCode,
    password_error: Option<(PasswordFault, &str)>,
    password_captcha: Option<String>,
) -> Response {
    render_listed(state, session, None, status, None, password_error, password_captcha).await
}

/// [`render`], with the user's sessions when they were read already (valid ones, newest
/// first, as `Sessions::list` gives them); `None` reads them here.
async fn render_listed(
    state: &crate::app::AppState,
    session: &ActiveSession,
    sessions: Option<Vec<StoredSession>>,
    status: StatusCode,
    notice: Option<flash::Notice>,
    password_error: Option<(PasswordFault, &str)>,
    password_captcha: Option<String>,
) -> Response {
    let user = &session.user;
    let password_fault = password_error.map_or("", |(fault, _)| fault.field());
    let password_error = password_error.map(|(_, message)| message);
    let sessions = match sessions {
        Some(s) => s,
        None => match state.sessions.list(user).await {
            Ok(s) => s,
            Err(e) => return store_error(&e, "could not list sessions"),
        },
    };
    let factors = match state.factors.summary(&user.key).await {
        Ok(f) => f,
        Err(e) => return store_error(&e, "could not read the user's second factors"),
    };
    let totp_enrolled_at = match state.factors.totp_enrolled_at(&user.key).await {
        Ok(at) => at,
        Err(e) => return store_error(&e, "could not read the user's authenticator"),
    };
    let totp_since = totp_enrolled_at.map(crate::routes::Moment::at);
    let mut passkeys = match crate::routes::passkeys::views(state, &user.key).await {
        Ok(v) => v,
        Err(crate::passkeys::PasskeyError::Store(e)) => return store_error(&e, "could not list passkeys"),
        Err(_) => Vec::new(),
    };
    let codes_seen = match factors.has_second_factor() {
        true => match state.factors.codes_seen(&user.key).await {
            Ok(seen) => seen,
            Err(e) => return store_error(&e, "could not read the user's recovery codes"),
        },
        false => String::new(),
    };
    let passkeys_enabled = state.passkeys.enabled();
    let csrf = state.csrf.session_token(&session.token_hash);
    // A notice about passkeys is shown in their section, where the page is scrolled to.
    let (passkey_notice, notice) = match notice {
        Some(n) if n.about_passkeys() => (Some(n.text()), None),
        other => (None, other),
    };
    let (sessions_notice, notice) = match notice {
        Some(n) if n.about_a_session() => (Some(n.text()), None),
        other => (None, other),
    };
    let lately = match &notice {
        Some(n) if n.ends_others() => mark_added_lately(&mut passkeys, crate::store::now_ms()),
        _ => None,
    };
    let notice_alert = lately.is_some() || notice.as_ref().is_some_and(flash::Notice::asks_action);
    let notice = notice.map(|n| match &lately {
        Some(lately) => format!("{} {lately}", n.text()),
        None => n.text(),
    });
    let page = html(
        status,
        &AccountPage {
            username: &printable(&user.display_name),
            csrf: &csrf,
            sessions: session_views(sessions, &session.token_hash, &passkeys),
            sessions_from: "account",
            sessions_notice,
            notice_alert,
            min_password_length: state.settings.min_password_length,
            notice,
            password_error,
            password_fault,
            captcha: password_captcha,
            factors,
            totp_since,
            totp_enrolled_at: totp_enrolled_at.unwrap_or_default(),
            must_enrol: state.settings.second_factor.requires(user.admin) && !factors.has_second_factor(),
            removal_note: removal_note(&factors, state.settings.second_factor.requires(user.admin)),
            passkeys,
            passkeys_enabled,
            passkey_error: None,
            passkey_error_for: crate::routes::passkeys::ErrorAbout::Section,
            passkey_notice,
            recent: session.authenticated_recently(crate::store::now_ms()),
            codes_seen,
        },
    );
    if passkeys_enabled {
        crate::routes::passkeys::with_passkey_script(page)
    } else {
        page
    }
}

/// How far back [`added_lately`] looks, in milliseconds: a stolen session lives no longer than
/// the absolute timeout, but its owner may notice days later.
const LATELY_MS: u64 = 30 * 24 * 3600 * 1000;

/// Whether a passkey is yours is told by when it was added and last used: whoever could add
/// one could rename yours (review 193 swapped the names of the owner's and a thief's).
const BY_DATES: &str =
    "Go by when each was added and last used, not by its name: whoever added one could also have renamed yours.";

/// Whether any of `passkeys` (as the store lists them) was added within [`LATELY_MS`] of `now`.
pub(crate) fn any_added_lately(passkeys: &[crate::store::passkeys::StoredPasskey], now: u64) -> bool {
    passkeys.iter().any(|p| now.saturating_sub(p.created_at) <= LATELY_MS)
}

/// After *sign out everywhere else* or a password change: marks the passkeys added in the last
/// 30 days *added lately* in the list, and says so, since a passkey signs in alone and outlives
/// both (review 187: one a thief added with a copied session went on signing in). The names
/// stay in the list, where each has its own line and its date: in the sentence a name could
/// pass for more of it (review 191 named one `Phone” (2025-03-01 08:12 UTC) — set up by you`).
/// `None` when there are none.
fn mark_added_lately(passkeys: &mut [crate::routes::passkeys::PasskeyView], now: u64) -> Option<String> {
    let mut lately = 0;
    for p in passkeys.iter_mut().filter(|p| now.saturating_sub(p.created_at) <= LATELY_MS) {
        p.lately = true;
        lately += 1;
    }
    match lately {
        0 => None,
        1 => Some(format!("1 passkey was added in the last 30 days: it is marked added lately under Passkeys below. A passkey signs in without your password: if it is not yours, remove it. {BY_DATES}")),
        n => Some(format!("{n} passkeys were added in the last 30 days: they are marked added lately under Passkeys below. A passkey signs in without your password: remove any that is not yours. {BY_DATES}")),
    }
}

/// The page for a change of factors that landed after its session was ended (a reset of its
/// factors, a password change, *sign out everywhere else*, the removal of the passkey it was
/// signed in with): taken back, and this session is over. 409, leading to the sign-in form;
/// `leftover` says what the user's device still holds.
pub(crate) fn not_changed(title: &str, leftover: &str) -> poem::Response {
    let message = format!(
        "Your account's second factors were reset, it was signed out everywhere, or the passkey this session was signed in with was removed, while you were making this change, so it was not made. {leftover} Please sign in again."
    );
    changed_meanwhile(title, &message)
}

/// 409 with `title` and `message`, leading to the sign-in form: a change this session asked
/// for was not made, because its account moved to a new credential generation meanwhile,
/// which also ended the session.
pub(crate) fn changed_meanwhile(title: &str, message: &str) -> poem::Response {
    crate::routes::error_page_leading(poem::http::StatusCode::CONFLICT, title, message, crate::routes::SIGN_IN_AGAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factors(totp: bool, passkeys: usize, recovery_codes: usize) -> FactorSummary {
        FactorSummary { totp, passkeys, recovery_codes }
    }

    #[test]
    fn a_removal_says_what_goes_with_the_last_second_factor_and_nothing_while_another_stays() {
        assert_eq!(removal_note(&factors(true, 1, 10), false), None);
        assert_eq!(removal_note(&factors(false, 2, 10), true), None);
        assert_eq!(
            removal_note(&factors(true, 0, 10), false).as_deref(),
            Some("It is your only second factor: signing in will ask for your password alone, and your 10 recovery codes will stop working.")
        );
        assert_eq!(
            removal_note(&factors(false, 1, 1), false).as_deref(),
            Some("It is your only second factor: signing in will ask for your password alone, and your 1 recovery code will stop working.")
        );
        assert_eq!(
            removal_note(&factors(true, 0, 0), true).as_deref(),
            Some("It is your only second factor: signing in will ask for your password alone. This server will then ask you to set up another.")
        );
    }
}
