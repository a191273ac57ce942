//! `GET /login`: the form (with a captcha when this address, or the username the form is
//! asked for with, has failed too often), or straight on for someone already signed in.

use poem::http::StatusCode;
use poem::web::Query;
use poem::{handler, Request, Response};
use serde::Deserialize;

use super::Form;
use crate::routes::flash::Notice;
use crate::routes::{current_session, see_other, State};

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    /// Forward auth's return address (SPEC.md, "Gating other applications").
    rd: Option<String>,
    /// The username to fill in: the form's *Show a new picture* link carries the one typed, so
    /// a captcha demanded for that username is shown on the new form, not first asked for by
    /// a refusal (review 167).
    username: Option<String>,
    /// Why the form is shown, when a session or a second step ended
    /// ([`crate::routes::to_sign_in`]): `session`, `form` or `step`. Only fixed sentences come
    /// of it, so a link cannot put words on the page.
    ended: Option<String>,
}

/// The sentence for `ended` ([`LoginQuery::ended`]), if it is one of ours.
fn ended_message(ended: Option<&str>) -> Option<&'static str> {
    match ended? {
        "session" => Some("Your session has ended: you were signed out in another tab or elsewhere, or it was not used for too long. Please sign in again."),
        "form" => Some("Your session ended before that form was sent, so nothing was changed. Please sign in again, then send it again."),
        "step" => Some("Your sign-in was not finished within 5 minutes, or was ended meanwhile. Please start again with your password."),
        _ => None,
    }
}

#[handler]
pub async fn login_form(req: &Request, state: State<'_>, query: Option<Query<LoginQuery>>) -> Response {
    form(req, state, query).await
}

/// `HEAD /login`: the headers `GET` would send, with no picture drawn (each spends the
/// address's quota of them; review 168 spent it with 60 `HEAD`s).
#[handler]
pub async fn login_form_head(req: &Request, state: State<'_>, query: Option<Query<LoginQuery>>) -> Response {
    // Its method stays `HEAD` here (poem makes it `GET` only for a route without a `HEAD`
    // handler), so `picture_for` draws nothing and takes no name.
    let mut resp = form(req, state, query).await;
    resp.set_body(());
    resp
}

async fn form(req: &Request, state: State<'_>, query: Option<Query<LoginQuery>>) -> Response {
    let next = query.as_ref().and_then(|q| super::safe_next(q.next.as_deref()));
    let rd = super::checked_rd(&state, query.as_ref().and_then(|q| q.rd.as_deref()));
    let mut notice = None;
    let error = match current_session(req, &state).await {
        Ok(Some(session)) => {
            // The `second_factor` policy first: a user who must enrol goes nowhere else, the
            // application in `rd` included (SPEC.md, "can use nothing else until they enrol").
            match crate::routes::must_enrol(&state, &session.user).await {
                Ok(true) => return see_other("/account"),
                Ok(false) => {}
                Err(e) => return crate::routes::store_error(&e, "could not read the user's second factors"),
            }
            match &rd {
                // Sent on at once only when the session is enough for that address; otherwise
                // verify would send the browser straight back here, for ever.
                Some(url) if crate::routes::authz::session_suffices(req, &state, url, &session) => {
                    return clearing_tossed(&state, url, see_other(url))
                }
                // Signing in again helps only someone with a second factor to sign in with;
                // anyone else would come back here for ever, so they are sent to enrol one.
                Some(_) => match state.factors.summary(&session.user.key).await {
                    Ok(factors) if factors.has_second_factor() => {
                        Some("That page needs you to sign in with a second factor.".to_string())
                    }
                    Ok(_) => {
                        return Notice::SecondFactorNeeded.attach(
                            &state.csrf,
                            &session.token_hash,
                            see_other("/account"),
                        )
                    }
                    Err(e) => return crate::routes::store_error(&e, "could not read the user's second factors"),
                },
                None => return see_other(next.unwrap_or("/")),
            }
        }
        // Why the form is shown, only to a browser no session is signed in with.
        Ok(None) => {
            notice = ended_message(query.as_ref().and_then(|q| q.ended.as_deref()));
            None
        }
        Err(resp) => return resp,
    };
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    let key = client.key();
    let now = crate::store::now_ms();
    let picture = super::picture_for(req);
    // Only a name an account could have (anything else is dropped, not shown back), asked by
    // this site's own link or the user, and for a unit of the address's sign-in quota: which
    // names failed lately is not to be asked for free, nor by another site's page (review 168).
    let named = query.as_ref().and_then(|q| q.username.as_deref()).filter(|u| super::could_be_a_username(u));
    let username = match named.filter(|_| picture == super::Picture::Draw) {
        Some(name) => match state.sign_in.spend_address_quota(key, now).await {
            Ok(taken) => taken.is_ok().then_some(name),
            Err(e) => return crate::routes::unavailable("cannot count sign-in attempts", &e),
        },
        None => None,
    };
    // A browser the user signed in with before meets its address's threshold alone, as its
    // sign-in will.
    let digest = match username.map(crate::sign_in::typed_user_key) {
        Some(user_key) => {
            let device = crate::cookies::get(req, crate::csrf::DEVICE_COOKIE);
            match state.sign_in.counted_username(device.as_deref(), &user_key).await {
                Ok(digest) => digest,
                Err(e) => return crate::routes::store_error(&e, "could not read the user's credential generation"),
            }
        }
        None => None,
    };
    let demanded = match state.brute_force.needs_captcha(key, digest, now).await {
        Ok(demanded) => demanded,
        Err(e) => {
            return crate::routes::unavailable("cannot read the failure counts", &e);
        }
    };
    // Drawn only for a page a browser shows, asked for from this site: each picture spends
    // the address's quota of them, which 60 `<img>`s on another site spent, leaving the real
    // user behind that address none (review 168), and a script's navigations too (170).
    // Any other page offers the link that draws it ([`super::Picture::Offer`]).
    let form = Form {
        captcha: (demanded && picture == super::Picture::Draw).then_some(key),
        offer_picture: demanded && picture == super::Picture::Offer,
        rd: rd.as_deref(),
        error,
        // Not an error of the visitor's: said as information (review 196 read it as one in red).
        notice,
        username: username.unwrap_or(""),
        ..Form::new(StatusCode::OK, next)
    };
    super::render(req, &state, form).await
}

/// `resp`, sending a signed-in browser on to the application at `url`, with `Set-Cookie`s
/// removing session cookies another host under `cookie_domain` set for that application's
/// paths: the gate answers a browser that sends two live sessions as signed out, and sends it
/// here, which sees only ours (`Path=/`) and would send it back for ever
/// ([`crate::cookies::clear_under`]). Without `cookie_domain` the session cookie is `__Host-`,
/// which has no other path and no other host can set.
fn clearing_tossed(state: &crate::app::AppState, url: &str, mut resp: Response) -> Response {
    if state.settings.cookie_domain.is_none() {
        return resp;
    }
    let Ok(parsed) = url::Url::parse(url) else { return resp };
    for v in crate::cookies::clear_under(crate::session::SESSION_COOKIE, parsed.path()) {
        if let Ok(v) = v.parse() {
            resp.headers_mut().append(poem::http::header::SET_COOKIE, v);
        }
    }
    resp
}
