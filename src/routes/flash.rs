//! One-time notices ("alice is unlocked", "signed out of 2 other sessions") carried from an
//! action to the page it redirects to. The action sets them in a short-lived `__Host-` cookie
//! and the page clears it when it shows them, so a notice only ever reports what the server
//! did: it never comes from a query parameter anyone can put in a link. Only this origin, over
//! HTTPS, can set a `__Host-` cookie (RFC 6265bis §4.1.3.2), so no other site can forge one;
//! the client itself could, so the value carries an HMAC under the server's CSRF key bound to
//! the session ([`Csrf::notice_tag`]), and a notice without a valid one is dropped.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use poem::http::header::SET_COOKIE;
use poem::{Request, Response};
use serde::{Deserialize, Serialize};

use crate::cookies;
use crate::csrf::Csrf;
use crate::text::counted;

/// The cookie's name.
pub const FLASH_COOKIE: &str = "__Host-portcullis-flash";

/// Recovery codes left at or below which a sign-in with one asks for new ones.
const LOW_RECOVERY_CODES: usize = 3;

/// How long a notice waits for its page, in seconds (the redirect follows at once).
const MAX_AGE_SECS: u64 = 60;

/// What an action did, to tell the person who did it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// `POST /admin/unlock` cleared this user's counts (the stored spelling).
    Unlocked { name: String },
    /// `POST /admin/unlock` named no existing user.
    NoSuchUser,
    /// *Sign out everywhere else* ended this many sessions.
    SessionsEnded {
        count: usize,
        /// Pending second-step sign-ins ended with them (none in a notice from before).
        #[serde(default)]
        pending: usize,
    },
    /// One session chosen from the list was ended (`POST /sessions/end`), the one of browser
    /// `browser` at address `ip` (as the list showed them: review 212 could not tell which
    /// had ended); `already`: it had ended before the request reached it (its own sign-out, a
    /// timeout, the click sent twice), and then neither is known.
    SessionEnded {
        already: bool,
        #[serde(default)]
        ip: String,
        #[serde(default)]
        browser: String,
    },
    /// `POST /account/password` changed the password, ending this many other sessions and
    /// `pending` sign-ins waiting for their second step (none in a notice from before).
    PasswordChanged {
        ended: usize,
        #[serde(default)]
        pending: usize,
    },
    /// An authenticator app was turned on.
    TotpEnabled,
    /// The authenticator app was set up again on a new phone, ending this many other sessions
    /// the old one's codes (or a recovery code) signed in.
    TotpReplaced { ended: usize },
    /// The authenticator app was removed, ending this many other sessions its codes (or a
    /// recovery code) signed in (none in a notice from before).
    TotpRemoved {
        #[serde(default)]
        ended: usize,
    },
    /// A passkey was added (its name as shown), when it was not the first factor (whose
    /// recovery codes page says so).
    PasskeyAdded { name: String },
    /// A passkey was renamed (its new name as shown).
    PasskeyRenamed { name: String },
    /// A passkey was removed (its name as shown), ending `ended` other sessions it had signed in.
    PasskeyRemoved {
        name: String,
        /// None in a notice from before sessions kept their passkey.
        #[serde(default)]
        ended: usize,
    },
    /// A recovery code signed this session in, leaving `left` unused (review 197: the count
    /// was shown only on the account page, so the last one went without a word).
    RecoveryCodeUsed { left: usize },
    /// A second step signed this session in after `count` wrong codes were typed for the user
    /// in other sign-ins since their last one (counted up to `sign_in::WRONG_CODES_IN_A_ROW`):
    /// whoever typed them had the password (review 207: the owner was shown nothing).
    WrongCodesBefore { count: u64 },
    /// `GET /login?rd=` for an application whose rule asks two factors, from a user who has no
    /// second factor to sign in with: signing in again could only give one factor again.
    SecondFactorNeeded,
}

impl Notice {
    /// The sentence shown, with invisible characters in names escaped.
    pub fn text(&self) -> String {
        match self {
            Notice::Unlocked { name } => {
                format!("{} is unlocked: failure count and captcha demand cleared.", crate::text::printable(name))
            }
            Notice::NoSuchUser => "No such user to unlock.".to_string(),
            Notice::SessionsEnded { count: 0, pending: 0 } => "No other session was signed in.".to_string(),
            Notice::SessionsEnded { count, pending: 0 } => {
                format!("Signed out of {}.", counted(*count as u64, "other session", "other sessions"))
            }
            Notice::SessionsEnded { count, pending } => format!(
                "{} {} that had your password and {} waiting for the second step. If you did not start {}, \
                 change your password.",
                if *count == 0 {
                    "No other session was signed in, but this ended".to_string()
                } else {
                    format!("Signed out of {}, and ended", counted(*count as u64, "other session", "other sessions"))
                },
                counted(*pending as u64, "sign-in", "sign-ins"),
                if *pending == 1 { "was" } else { "were" },
                if *pending == 1 { "it" } else { "them" }
            ),
            Notice::SessionEnded { already: true, .. } => "That session had already ended.".to_string(),
            Notice::SessionEnded { ip, browser, .. } => format!(
                "The session of \u{201c}{}\u{201d} at {} is signed out. If it was not yours, change your password \
                 too: whoever signed it in could sign in again.",
                crate::text::printable(browser),
                crate::text::printable(ip)
            ),
            Notice::PasswordChanged { ended: 0, pending: 0 } => {
                "Your password is changed. No other session was signed in.".into()
            }
            Notice::PasswordChanged { ended: 1, pending: 0 } => {
                "Your password is changed. 1 other session was signed out.".into()
            }
            Notice::PasswordChanged { ended, pending: 0 } => {
                format!("Your password is changed. {ended} other sessions were signed out.")
            }
            // As *sign out everywhere else* says it (review 207: a thief's second step ended
            // without a word).
            Notice::PasswordChanged { ended, pending } => format!(
                "Your password is changed. {}, and {} that had your old password and {} waiting for the second \
                 step {} ended. If you did not start {}, someone knew your old password.",
                if *ended == 0 {
                    "No other session was signed in".to_string()
                } else {
                    format!("{} signed out", counted(*ended as u64, "other session was", "other sessions were"))
                },
                counted(*pending as u64, "sign-in", "sign-ins"),
                if *pending == 1 { "was" } else { "were" },
                if *pending == 1 { "was" } else { "were" },
                if *pending == 1 { "it" } else { "them" }
            ),
            Notice::TotpEnabled => "Your authenticator app is set up.".to_string(),
            Notice::TotpReplaced { ended: 0 } => {
                "Your new authenticator app is set up; the old one's codes no longer work.".to_string()
            }
            Notice::TotpReplaced { ended: 1 } => {
                "Your new authenticator app is set up; the old one's codes no longer work, \
                 and the other session signed in with them or a recovery code is signed out."
                    .to_string()
            }
            Notice::TotpReplaced { ended } => format!(
                "Your new authenticator app is set up; the old one's codes no longer work, and the {ended} other \
                 sessions signed in with them or recovery codes are signed out."
            ),
            Notice::TotpRemoved { ended: 0 } => "Your authenticator app is removed.".to_string(),
            Notice::TotpRemoved { ended: 1 } => "Your authenticator app is removed, and the other session signed in \
                 with its code or a recovery code is signed out."
                .to_string(),
            Notice::TotpRemoved { ended } => format!(
                "Your authenticator app is removed, and the {ended} other sessions signed in with its codes or \
                 recovery codes are signed out."
            ),
            Notice::PasskeyAdded { name } => format!("Your passkey \u{201c}{name}\u{201d} is added."),
            Notice::PasskeyRenamed { name } => format!("Your passkey is renamed \u{201c}{name}\u{201d}."),
            // This session stays signed in even when the passkey signed it in: its user has
            // just proved who they are.
            Notice::PasskeyRemoved { name, ended: 0 } => {
                format!("Your passkey \u{201c}{name}\u{201d} is removed. No other session was signed in with it.")
            }
            Notice::PasskeyRemoved { name, ended: 1 } => format!(
                "Your passkey \u{201c}{name}\u{201d} is removed, and the other session signed in with it is signed out."
            ),
            Notice::PasskeyRemoved { name, ended } => format!(
                "Your passkey \u{201c}{name}\u{201d} is removed, and the {ended} other sessions signed in with it \
                 are signed out."
            ),
            Notice::RecoveryCodeUsed { left: 0 } => "You signed in with your last recovery code. Make new ones on \
                 your account page now: without them, losing your other factors would lock you out."
                .to_string(),
            Notice::RecoveryCodeUsed { left: 1 } => "You signed in with a recovery code: only 1 is left. Make new \
                 ones on your account page before it is used too."
                .to_string(),
            Notice::RecoveryCodeUsed { left } if *left <= LOW_RECOVERY_CODES => format!(
                "You signed in with a recovery code: only {left} are left. Make new ones on your account page before \
                 they run out."
            ),
            Notice::RecoveryCodeUsed { left } => format!("You signed in with a recovery code: {left} are left."),
            Notice::WrongCodesBefore { count } => format!(
                "Since your last sign-in, {} typed for your account in other sign-ins, after the right password. \
                 If {} not all yours, someone knows your password: change it now.",
                counted(*count, "wrong code was", "wrong codes were"),
                if *count == 1 { "it was" } else { "they were" },
            ),
            Notice::SecondFactorNeeded => "The page you opened needs a second factor, and your account has none yet. \
                 Set one up below, then open the page again and sign in with it."
                .to_string(),
        }
    }

    /// Whether this is the owner's answer to a thief (*sign out everywhere else*, a password
    /// change): the page then names the passkeys added lately, which sign in alone and outlive
    /// both (review 187).
    pub fn ends_others(&self) -> bool {
        matches!(self, Notice::SessionsEnded { .. } | Notice::PasswordChanged { .. })
    }

    /// Whether the notice asks the person to do something (shown as an alert) rather than
    /// reporting what was done.
    pub fn asks_action(&self) -> bool {
        // Ended sign-ins that had the password: the user should ask whether they were theirs.
        // No such user to unlock: nothing was done (a review saw it styled as a success).
        // Few recovery codes left: new ones are due.
        matches!(
            self,
            Notice::SecondFactorNeeded
                | Notice::SessionsEnded { pending: 1.., .. }
                | Notice::NoSuchUser
                | Notice::WrongCodesBefore { .. }
                | Notice::PasswordChanged { pending: 1.., .. }
        ) || matches!(self, Notice::RecoveryCodeUsed { left } if *left <= LOW_RECOVERY_CODES)
    }

    /// Whether the notice is about passkeys: the account page shows it in their section, where
    /// a passkey's removal lands (`/account#passkeys-heading`), not at the top out of view.
    pub fn about_passkeys(&self) -> bool {
        matches!(self, Notice::PasskeyAdded { .. } | Notice::PasskeyRenamed { .. } | Notice::PasskeyRemoved { .. })
    }

    /// Whether the notice is about one session of the list: the account page shows it under
    /// the list, where ending one lands (`/account#sessions`).
    pub fn about_a_session(&self) -> bool {
        matches!(self, Notice::SessionEnded { .. })
    }

    /// Adds the cookie that carries this notice, signed for the session whose token hash is
    /// `session_hash`, to `resp` (a redirect to the page).
    pub fn attach(&self, csrf: &Csrf, session_hash: &[u8; 32], mut resp: Response) -> Response {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let value = format!("{}.{}", URL_SAFE_NO_PAD.encode(&json), csrf.notice_tag(session_hash, &json));
        if let Ok(v) = cookies::set(FLASH_COOKIE, &value, Some(MAX_AGE_SECS)).parse() {
            resp.headers_mut().append(SET_COOKIE, v);
        }
        resp
    }
}

/// [`take`], with what the notice counts read again where it may have changed since it was
/// set: a recovery code's notice says the codes left now, so codes someone else spent before
/// this page are in it (review 199: it said 9 when 7 were left). A count that cannot be read
/// stays as it was set.
pub async fn take_now(
    req: &Request,
    state: &crate::app::AppState,
    session: &crate::session::ActiveSession,
) -> Option<Notice> {
    match take(req, &state.csrf, &session.token_hash)? {
        Notice::RecoveryCodeUsed { left } => {
            let now = state.factors.summary(&session.user.key).await.map_or(left, |f| f.recovery_codes);
            Some(Notice::RecoveryCodeUsed { left: now })
        }
        other => Some(other),
    }
}

/// The notice this request carries, if any and if signed for this session; pass the page to
/// [`cleared`] so it shows once (a forged one is cleared too, unshown).
pub fn take(req: &Request, csrf: &Csrf, session_hash: &[u8; 32]) -> Option<Notice> {
    let value = cookies::get(req, FLASH_COOKIE)?;
    let (body, tag) = value.split_once('.')?;
    let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
    if !csrf.check_notice(session_hash, &bytes, tag) {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// `resp` with the notice cookie removed, when the request had one.
pub fn cleared(req: &Request, mut resp: Response) -> Response {
    if cookies::get(req, FLASH_COOKIE).is_some() {
        if let Ok(v) = cookies::clear(FLASH_COOKIE).parse() {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::Notice;

    #[test]
    fn nothing_ended_is_said_in_words_not_as_a_zero() {
        assert_eq!(Notice::SessionsEnded { count: 0, pending: 0 }.text(), "No other session was signed in.");
        assert!(Notice::SessionsEnded { count: 0, pending: 2 }
            .text()
            .starts_with("No other session was signed in, but this ended 2 sign-ins that had your password and were"));
        assert_eq!(
            Notice::PasswordChanged { ended: 0, pending: 0 }.text(),
            "Your password is changed. No other session was signed in."
        );
        let thief = Notice::PasswordChanged { ended: 2, pending: 1 };
        assert_eq!(
            thief.text(),
            "Your password is changed. 2 other sessions were signed out, and 1 sign-in that had your old password \
             and was waiting for the second step was ended. If you did not start it, someone knew your old password."
        );
        assert!(thief.asks_action() && !Notice::PasswordChanged { ended: 2, pending: 0 }.asks_action());
        let old: Notice = serde_json::from_str(r#"{"kind":"password_changed","ended":1}"#).unwrap();
        assert_eq!(old.text(), "Your password is changed. 1 other session was signed out.", "a notice from before");
        assert_eq!(Notice::SessionsEnded { count: 2, pending: 0 }.text(), "Signed out of 2 other sessions.");
    }

    /// Few recovery codes left: said, and as something to do (review 197).
    #[test]
    fn a_recovery_code_sign_in_says_how_many_are_left_and_asks_for_new_ones_when_few() {
        let used = |left| Notice::RecoveryCodeUsed { left };
        assert_eq!(used(9).text(), "You signed in with a recovery code: 9 are left.");
        assert!(!used(9).asks_action());
        assert!(used(3).text().contains("only 3 are left. Make new ones") && used(3).asks_action());
        assert!(used(1).text().contains("only 1 is left") && used(1).asks_action());
        assert!(used(0).text().contains("your last recovery code") && used(0).asks_action());
    }
}
