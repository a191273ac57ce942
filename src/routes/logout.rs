//! `POST /logout`: ends the session, and a sign-in waiting for its second step, on the server
//! (durably), clears their cookies, 303 to /login.

use poem::http::{header, StatusCode};
use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use crate::audit::AuthEvent;
use crate::factors::MFA_COOKIE;
use crate::routes::{read_form, see_other, State};
use crate::session::SESSION_COOKIE;
use crate::{client, cookies};

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
    /// Where to go afterwards (forward auth's return address, checked before use); only
    /// `POST /logout` reads it.
    #[serde(default)]
    pub rd: Option<String>,
}

/// Ends the session and answers with a redirect to the login page and a cleared cookie.
#[handler]
pub async fn logout(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: CsrfForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let rd = crate::routes::login::checked_rd(&state, form.rd.as_deref());
    let mut resp = see_other(rd.as_deref().unwrap_or("/login"));
    // Every live session the request carries, not only the one a page would pick: another
    // host under `cookie_domain` can set a session of its own for `Path=/logout`, with which a
    // sign-out answered as signed out ended nothing while the browser forgot its cookie (found
    // by a review). The browser holds each token, so once the form's token is one of theirs,
    // each ends.
    let sessions = match crate::routes::live_sessions(req, &state).await {
        Ok(s) => s,
        // The sessions could not even be read: not ended either, and said so.
        Err(resp) => return not_signed_out(resp.status()),
    };
    // A sign-in waiting for its second step ends too ("Cancel and start again" posts here): on
    // a shared computer whoever held the second factor (a phone, a sheet of recovery codes)
    // could otherwise still finish it for 5 minutes without the password (found by a review).
    let mut pending = Vec::new();
    let waiting = cookies::get_all(req, MFA_COOKIE);
    for cookie in waiting.iter().take(crate::routes::MAX_SESSION_COOKIES) {
        match state.factors.pending(cookie).await {
            Ok(Some((hash, ..))) => pending.push(hash),
            Ok(None) => {}
            Err(e) => return not_signed_out(crate::routes::store_fault(&e, "could not read a pending sign-in")),
        }
    }
    let held = !sessions.is_empty() || !pending.is_empty();
    let mut theirs = sessions.iter().any(|s| state.csrf.check_session(&s.token_hash, &form.csrf))
        || pending.iter().any(|h| state.csrf.check_session(h, &form.csrf));
    // A tab's page from before this session's last change of token (one cookie jar: the tab
    // sends the new cookie with the old page's form token), for a minute (review 179: the
    // sign-out of a stale tab on a shared computer did nothing).
    for session in &sessions {
        if theirs {
            break;
        }
        match state.sessions.went_on_from(&session.token_hash, |old| state.csrf.check_session(old, &form.csrf)).await {
            Ok(found) => theirs = found,
            Err(e) => return not_signed_out(crate::routes::store_fault(&e, "could not read a session's former token")),
        }
    }
    if held && !theirs {
        // Most often a page shown before this browser's session got a new token (a password
        // change in another tab): said so, since a bare "not allowed" left the user signed in
        // with no idea why (review 131).
        return crate::routes::error_page_saying(
            StatusCode::FORBIDDEN,
            "Not signed out",
            "This page was out of date (your session changed since it was shown, perhaps in another tab), so this browser is still signed in. Go to the home page and press Sign out there (reloading this page sends the same out-of-date form again).",
        );
    }
    for hash in &pending {
        if let Err(e) = state.factors.finish(hash).await {
            return not_signed_out(crate::routes::store_fault(&e, "could not end a pending sign-in"));
        }
    }
    if !waiting.is_empty() {
        if let Ok(v) = cookies::clear(MFA_COOKIE).parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    // The records of this browser's tokens that are no longer sessions (of an older
    // credential generation) go too: one may be a session going on under a new token at this
    // moment (a password change, *sign out everywhere else* in another tab), which goes on only
    // while the record is there, so the sign-out wins (found by review 129). And when it has
    // gone on already, the token it went on as, in the last minute, ends too (review 131: the
    // other tab's answer carried it). The browser held each token, so ending them needs no
    // form token; nothing live is among them.
    for cookie in cookies::get_all(req, SESSION_COOKIE).iter().take(crate::routes::MAX_SESSION_COOKIES) {
        let Some(token) = crate::session::SessionToken::parse(cookie) else { continue };
        let hash = token.hash();
        if sessions.iter().any(|s| s.token_hash == hash) {
            continue;
        }
        // The link is followed only with the form's token of the old session (the other tab's
        // page was shown under it): a cookie alone, as a thief may hold, ends no live session
        // (review 132).
        let follow = state.csrf.check_session(&hash, &form.csrf);
        match state.sessions.end_with_successors(&hash, follow).await {
            Ok(ended) => {
                // Each line names the session it ended (review 218: this one, a thief's path
                // README names, went without).
                let client = client::client(req, &state.settings.trusted_proxies);
                for (username, session) in &ended {
                    state.audit.record(&AuthEvent::LoggedOut { username, client: &client.in_session(session) });
                }
            }
            Err(e) => return not_signed_out(crate::routes::store_fault(&e, "could not end a session")),
        }
    }
    for session in &sessions {
        if let Err(e) = state.sessions.end(&session.token_hash).await {
            // Said plainly, and the cookie kept so that the next try can end the session: on a
            // shared computer "busy" read as done, with the session still open behind it.
            return not_signed_out(crate::routes::store_fault(&e, "could not end a session"));
        }
        let client = client::client(req, &state.settings.trusted_proxies).in_session(&session.token_hash);
        state.audit.record(&AuthEvent::LoggedOut { username: &session.user.display_name, client: &client });
    }
    if let Ok(v) = cookies::clear(SESSION_COOKIE).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    // The session's other cookies go with it: bound to it, they are worth nothing now, but
    // with `cookie_domain` every gated host would go on receiving them (review 183).
    for name in [crate::routes::account::confirm::CONFIRMED_COOKIE, crate::routes::flash::FLASH_COOKIE] {
        if cookies::get(req, name).is_some() {
            if let Ok(v) = cookies::clear(name).parse() {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }
    resp
}

/// The answer to a sign-out the store could not make (`status`: 503, or 500 for a fault of the
/// server's own): the browser is told it is still signed in, and keeps its cookie so that the
/// next try can end the session (on a shared computer a generic "busy" read as done).
fn not_signed_out(status: StatusCode) -> Response {
    crate::routes::error_page_saying(
        status,
        "Not signed out",
        "The server could not sign you out just now, so this browser is still signed in. Please try again in a moment.",
    )
}

/// The 405 for `/logout` asked for otherwise than by the form (typed in the address bar, a
/// link): it says how to sign out, where a bare "cannot be used that way" left the user
/// unsure whether they were signed out (review 196). Nothing is ended: a link from anywhere
/// could end sessions otherwise.
pub fn typed_address() -> Response {
    crate::routes::error_page_saying(
        StatusCode::METHOD_NOT_ALLOWED,
        "Not signed out",
        "This address signs out only with the Sign out button of this site's pages, so that no link can sign you out. If you are signed in, you still are: go to the home page and press Sign out there.",
    )
}
