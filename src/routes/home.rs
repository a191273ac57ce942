//! `GET /`: the signed-in home page (greeting, the user's sessions, sign-out buttons), and
//! `POST /sessions/end-others`: "sign out everywhere else".

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Body, Request, Response};

use crate::audit::{rfc3339, AuthEvent};
use crate::routes::flash::{self, Notice};
use crate::routes::{current_session, enrolled_session_listing, error_page, html, read_form, see_other, State};
use crate::text::printable;

pub(super) struct SessionView {
    /// RFC 3339 with milliseconds, for the `datetime` attribute.
    pub created: String,
    pub last_seen: String,
    /// The same to the minute, for people: `2026-11-30 15:42 UTC`.
    pub created_shown: String,
    pub last_seen_shown: String,
    pub ip: String,
    pub user_agent: String,
    pub current: bool,
}

/// The user's sessions as the pages show them, newest first.
pub(super) fn session_views(sessions: Vec<crate::store::StoredSession>, current: &[u8; 32]) -> Vec<SessionView> {
    sessions
        .into_iter()
        .map(|s| SessionView {
            created: rfc3339(s.record.created_at),
            last_seen: rfc3339(s.record.last_seen_at),
            created_shown: to_the_minute(s.record.created_at),
            last_seen_shown: to_the_minute(s.record.last_seen_at),
            ip: s.record.ip,
            // Invisible and control characters shown as escapes, as on every other page.
            user_agent: printable(&s.record.user_agent).into_owned(),
            current: &s.token_hash == current,
        })
        .collect()
}

/// `2026-11-30 15:42 UTC` for Unix milliseconds `ms`.
fn to_the_minute(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ms / 1000);
    let full = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-30T15:42:19Z
    format!("{} UTC", full.get(..16).unwrap_or(&full).replace('T', " "))
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage<'a> {
    username: &'a str,
    admin: bool,
    csrf: &'a str,
    sessions: Vec<SessionView>,
    notice: Option<String>,
    /// Carried into the sign-out form: an application's "sign out" link can name where to
    /// land afterwards (checked like every `rd`).
    rd: Option<String>,
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
        Ok(None) => return see_other("/login"),
        Err(resp) => return resp,
    };
    let views = session_views(sessions, &session.token_hash);
    // From what the server did (a cookie set by "sign out everywhere else"), never the URL.
    let notice = flash::take(req, &state.csrf, &session.token_hash).map(|n| n.text());
    let csrf = state.csrf.session_token(&session.token_hash);
    let page = html(
        StatusCode::OK,
        &HomePage {
            // A name stored before invisible characters were refused shows them escaped.
            username: &printable(&session.user.display_name),
            admin: session.user.admin,
            csrf: &csrf,
            sessions: views,
            notice,
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
        Ok(None) => return see_other("/login"),
        Err(resp) => return resp,
    };
    if !state.csrf.check_session(&session.token_hash, &form.csrf) {
        return error_page(StatusCode::FORBIDDEN);
    }
    match state.sessions.end_all(&session.user.key, Some(&session.token_hash)).await {
        Ok(count) => {
            state.audit.record(&AuthEvent::SessionsEnded {
                username: &session.user.display_name,
                count,
                by: &session.user.display_name,
            });
            let back = if form.from == "account" { "/account" } else { "/" };
            Notice::SessionsEnded { count }.attach(&state.csrf, &session.token_hash, see_other(back))
        }
        Err(e) => crate::routes::store_error(&e, "could not end sessions"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_times_are_shown_to_the_minute_in_utc() {
        assert_eq!(super::to_the_minute(1_796_053_339_123), "2026-11-30 15:42 UTC");
        assert_eq!(super::to_the_minute(0), "1970-01-01 00:00 UTC");
    }
}
