//! The login page: `GET /login` shows the form, `POST /login` checks it (post/redirect/get:
//! success is always a 303, the home page is never rendered at /login).

pub mod get;
pub mod post;
pub mod second_factor;

use askama::Template;
use poem::http::{header, HeaderValue, StatusCode};
use poem::{Request, Response};

use crate::app::AppState;
use crate::brute_force::{QuotaKey, StateError};
use crate::cookies;
use crate::csrf::{PreLogin, DEVICE_COOKIE, DEVICE_COOKIE_LIFETIME, PRELOGIN_COOKIE, PRELOGIN_LIFETIME};
use crate::fault_log::Severity;
use crate::metrics::LoginResult;
use crate::rate_limit::CAPTCHA_DRAWS;
use crate::sign_in::{Outcome, SignInError};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    next: &'a str,
    rd: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    notice: Option<&'a str>,
    captcha: Option<&'a str>,
    /// A link that draws the picture, in its place ([`Form::offer_picture`]).
    offer_picture: bool,
    new_challenge_href: &'a str,
    /// Show *Sign in with a passkey* (and load `static/passkey.js`).
    passkey: bool,
}

/// Whether `typed` parses as a username an account could have ([`crate::domain::Username::parse`]):
/// what `GET /login` takes in `username` and its *Show a new picture* link carries.
fn could_be_a_username(typed: &str) -> bool {
    crate::domain::Username::parse(typed).is_ok()
}

/// Whether `req` came from this site's own pages or from the user (typed, a bookmark):
/// `Sec-Fetch-Site` `same-origin` or `none`, or none sent (W3C Fetch Metadata).
fn from_this_site(req: &Request) -> bool {
    req.headers().get("sec-fetch-site").is_none_or(|site| site == "same-origin" || site == "none")
}

/// What a page past the captcha threshold, asked for by `req`, does about its picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Picture {
    /// Draw it: a page a browser shows now, asked for by this site's pages or the user.
    Draw,
    /// Offer a link that draws it, a navigation from this site. For a page another site's
    /// page led to: a script there can navigate again and again without a gesture, and each
    /// navigation drew a picture on the address's quota of them (review 170: 60 in a few
    /// seconds, after which the user's own form got 429). And for what is not a page shown now
    /// (`HEAD`, an `<img>`, `<iframe>` or `fetch()`, a prefetch or prerender:
    /// [`is_navigation`]): a prerendered page may be shown later, and without the link its
    /// right password was refused `captcha_required` (review 172).
    Offer,
}

/// [`Picture`] for `req`.
pub(crate) fn picture_for(req: &Request) -> Picture {
    match req.method() == poem::http::Method::GET && is_navigation(req) && from_this_site(req) {
        true => Picture::Draw,
        false => Picture::Offer,
    }
}

/// Whether `req` is a page a browser navigates to, not what another page embeds or fetches
/// (`<img>`, `<iframe>`, `fetch()`: `Sec-Fetch-Dest` other than `document`, W3C Fetch
/// Metadata), nor a prefetch or prerender it may never show (`Sec-Purpose`, or the older
/// `Purpose: prefetch`): Chromium's speculation rules on another site's page prefetch with
/// `Sec-Fetch-Site: none` and `Sec-Fetch-Dest: document`, ten a second without a gesture
/// (review 169). A client that sends no fetch metadata (curl, older browsers) counts as
/// navigating.
fn is_navigation(req: &Request) -> bool {
    let headers = req.headers();
    headers.get("sec-fetch-dest").is_none_or(|dest| dest == "document")
        && !headers.contains_key("sec-purpose")
        && !headers.get("purpose").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"prefetch"))
}

/// The one message for every wrong username or password.
pub const GENERIC_FAILURE: &str = "Incorrect username or password.";

/// [`GENERIC_FAILURE`] for a form sent with the picture's characters: the one message for
/// every wrong username, password or picture answer, which names the picture too (review 209:
/// a wrong answer, which checks no password, told the user their right password was wrong).
pub const GENERIC_FAILURE_WITH_PICTURE: &str =
    "Incorrect username, password or picture characters. Please check them and try again with the new picture.";

/// The message of a sign-in sent without the captcha the form demands (`captcha_required`:
/// nothing was checked). `portcullis loadtest` tells this refusal from a wrong password by it.
pub const CAPTCHA_REQUIRED: &str = "Please also type the characters shown in the picture.";

/// What the form page should say and show.
pub struct Form<'a> {
    pub status: StatusCode,
    pub error: Option<String>,
    /// Why the form is shown, said as information, not as an error (`ended=`).
    pub notice: Option<&'static str>,
    pub username: &'a str,
    pub next: Option<&'a str>,
    /// Where to go after signing in, on another gated host: already checked
    /// ([`crate::forward_auth::Gate::safe_rd`]).
    pub rd: Option<&'a str>,
    /// Draw a captcha challenge for this visitor, who is at this address.
    pub captcha: Option<crate::client::AddressKey>,
    /// Past the threshold, on a page that draws no picture (another site's page led to it, or
    /// it is not shown now: `picture_for`): a link that draws the picture in its place.
    pub offer_picture: bool,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl<'a> Form<'a> {
    pub fn new(status: StatusCode, next: Option<&'a str>) -> Self {
        Form {
            status,
            error: None,
            notice: None,
            username: "",
            next,
            rd: None,
            captcha: None,
            offer_picture: false,
            retry_after: None,
        }
    }
}

/// Counts a judged password or passkey sign-in in `portcullis_login_attempts_total`: a
/// session or a refusal. A right password that leads on to a second step is counted when that
/// step ends (`second_factor`), and an attempt that could not be judged not at all.
pub fn count_judged(metrics: &crate::metrics::Metrics, judged: &Result<Outcome, SignInError>) {
    match judged {
        Ok(Outcome::SignedIn { .. }) => metrics.login_attempt(LoginResult::Success),
        Ok(Outcome::Refused(refusal)) => metrics.login_attempt(LoginResult::Refused(refusal.reason)),
        Ok(Outcome::SecondFactorNeeded { .. } | Outcome::Interrupted) | Err(_) => {}
    }
}

/// [`count_judged`] for a passkey sign-in, whose refusals the client sees alike ("That passkey
/// was not accepted"): one whose record says `disabled` or `unknown_user` (a genuine passkey
/// of a disabled or deleted account) counts as `bad_passkey`, as a forged answer does, so the
/// metrics do not tell them apart either (review 139: `bad_credentials` said the passkey was
/// genuine and its account disabled).
pub fn count_judged_passkey(metrics: &crate::metrics::Metrics, judged: &Result<Outcome, SignInError>) {
    use crate::audit::FailureReason;
    match judged {
        Ok(Outcome::Refused(refusal))
            if matches!(refusal.reason, FailureReason::Disabled | FailureReason::UnknownUser) =>
        {
            metrics.login_attempt(LoginResult::Refused(FailureReason::BadPasskey))
        }
        other => count_judged(metrics, other),
    }
}

/// Where a sign-in with a second factor lands (`rd`, else `next`, else home), and the notice
/// it leaves there: after wrong codes typed for the user in other sign-ins (`wrong_codes`),
/// the alert saying so, and in place of an application's address, which shows no notice of
/// ours, this site's home page with the alert and a link on to it (review 208: a sign-in
/// through forward auth never showed it). `None` for the notice when there is nothing to say.
pub fn landing(
    rd: Option<&str>,
    next: Option<&str>,
    wrong_codes: u64,
) -> (String, Option<crate::routes::flash::Notice>) {
    if wrong_codes == 0 {
        return (rd.or(next).unwrap_or("/").to_string(), None);
    }
    let notice = Some(crate::routes::flash::Notice::WrongCodesBefore { count: wrong_codes });
    match rd {
        Some(rd) => {
            (format!("/?rd={}", url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()), notice)
        }
        None => (next.unwrap_or("/").to_string(), notice),
    }
}

/// The 303 that ends every sign-in (password, second factor, passkey): to `to`, with the new
/// session's cookie, a new device cookie for the user ([`crate::csrf::DEVICE_COOKIE`], kept
/// for [`crate::csrf::DEVICE_COOKIE_LIFETIME`] and through sign-outs: it names a browser, not
/// a session), and `finished`, the cookie of the step that ended, removed.
pub fn after_sign_in(to: &str, token: &crate::session::SessionToken, device_cookie: &str, finished: &str) -> Response {
    let mut resp = crate::routes::see_other(to);
    let h = resp.headers_mut();
    for cookie in [
        cookies::set(crate::session::SESSION_COOKIE, &token.encode(), None),
        self::device_cookie(device_cookie),
        cookies::clear(finished),
    ] {
        if let Ok(v) = cookie.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The `Set-Cookie` value of a device cookie holding `value`
/// ([`crate::csrf::Csrf::issue_device_cookie`]), kept for [`DEVICE_COOKIE_LIFETIME`].
pub fn device_cookie(value: &str) -> String {
    cookies::set(DEVICE_COOKIE, value, Some(DEVICE_COOKIE_LIFETIME.as_secs()))
}

/// The visitor's pre-login cookie, if this server issued it and it is neither expired nor
/// retired (see [`crate::csrf`]).
///
/// # Errors
/// [`StateError`] when the brute-force state cannot say whether it was retired.
pub async fn prelogin(req: &Request, state: &AppState, now_secs: u64) -> Result<Option<PreLogin>, StateError> {
    let Some(pre) = cookies::get(req, PRELOGIN_COOKIE).and_then(|v| state.csrf.prelogin(&v, now_secs)) else {
        return Ok(None);
    };
    Ok((!state.brute_force.is_retired(pre.id()).await?).then_some(pre))
}

/// Renders the login form with a fresh CSRF token bound to the visitor's pre-login cookie
/// (issued here if the visitor has none the server accepts, or one too old to last the
/// form's lifetime) and, when asked, a fresh captcha challenge.
pub async fn render(req: &Request, state: &AppState, mut form: Form<'_>) -> Response {
    let now = crate::store::now_ms();
    let now_secs = now / 1000;
    let current = match prelogin(req, state, now_secs).await {
        Ok(p) => p.filter(|p| p.lasts_a_form(now_secs)),
        Err(e) => {
            return crate::routes::unavailable("cannot check the pre-login cookie", &e);
        }
    };
    let (pre, is_new) = match current {
        Some(p) => (p, false),
        None => match state.csrf.issue_prelogin(now_secs) {
            Ok(p) => (p, true),
            Err(e) => {
                // The random source, not the store: no outage, but bounded all the same.
                crate::fault_log::report("cannot issue a pre-login cookie", Severity::Error, false, &e);
                return super::error_page(StatusCode::SERVICE_UNAVAILABLE);
            }
        },
    };
    let token = state.csrf.login_token(pre.value(), now_secs);
    if let Some(address) = form.captcha {
        let drawn = match state.brute_force.take(QuotaKey::CaptchaDraws(address), CAPTCHA_DRAWS, now).await {
            Ok(taken) => taken,
            Err(e) => {
                return crate::routes::unavailable("cannot count captcha pictures", &e);
            }
        };
        if let Err(wait) = drawn {
            let wait = wait.retry_after_secs();
            form.captcha = None;
            form.status = StatusCode::TOO_MANY_REQUESTS;
            form.retry_after = Some(wait);
            form.error = Some(format!("Too many new pictures were asked for from your address. Please wait {wait} s."));
        }
    }
    let captcha = if form.captcha.is_some() {
        match state.captchas.issue(pre.value(), now).await {
            Ok(uri) => Some(uri),
            Err(e) => {
                let unavailable = matches!(e, crate::captcha::CaptchaError::State(_));
                crate::fault_log::report("captcha failed", Severity::Error, unavailable, &e);
                return super::error_page(StatusCode::SERVICE_UNAVAILABLE);
            }
        }
    } else {
        None
    };
    let mut query: Vec<(&str, &str)> = Vec::new();
    // The name typed, so the new form asks the captcha that name's failures demand.
    if could_be_a_username(form.username) {
        query.push(("username", form.username));
    }
    if let Some(n) = form.next {
        query.push(("next", n));
    }
    if let Some(rd) = form.rd {
        query.push(("rd", rd));
    }
    let new_challenge_href = match serde_urlencoded::to_string(&query) {
        Ok(q) if !q.is_empty() => format!("/login?{q}"),
        _ => "/login".to_string(),
    };
    let page = LoginPage {
        csrf: &token,
        next: form.next.unwrap_or(""),
        rd: form.rd.unwrap_or(""),
        username: form.username,
        error: form.error.as_deref(),
        notice: form.notice,
        captcha: captcha.as_deref(),
        offer_picture: form.offer_picture && captcha.is_none(),
        new_challenge_href: &new_challenge_href,
        passkey: state.passkeys.enabled(),
    };
    let mut resp = super::html(form.status, &page);
    if page.passkey {
        resp = super::passkeys::with_passkey_script(resp);
    }
    let h = resp.headers_mut();
    if is_new {
        if let Ok(v) = cookies::set(PRELOGIN_COOKIE, pre.value(), Some(PRELOGIN_LIFETIME.as_secs())).parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    if let Some(secs) = form.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// `rd` when it passes forward auth's open-redirect check ([`crate::forward_auth::Gate::safe_rd`]).
pub fn checked_rd(state: &crate::app::AppState, rd: Option<&str>) -> Option<String> {
    rd.and_then(|rd| crate::forward_auth::Gate::new(&state.settings).safe_rd(rd))
}

/// `next` must be a same-origin relative path: one leading slash, no scheme, no host, no
/// backslashes or control characters (browsers treat `/\evil.com` as `//evil.com`).
pub fn safe_next(next: Option<&str>) -> Option<&str> {
    let n = next?;
    let ok = n.starts_with('/')
        && !n.starts_with("//")
        && n.len() <= 2048
        && n.chars().all(|c| c.is_ascii_graphic())
        && !n.contains('\\')
        && !n.to_ascii_lowercase().contains("%5c")
        && !n.to_ascii_lowercase().starts_with("/%2f");
    ok.then_some(n)
}

#[cfg(test)]
mod tests {
    /// After wrong codes, a sign-in bound for an application lands on this site's home page
    /// with the alert and the application's address to go on to (review 208); otherwise where
    /// it was going, without a notice.
    #[test]
    fn wrong_codes_turn_a_sign_in_bound_for_an_application_to_the_home_page_first() {
        use super::landing;
        use crate::routes::flash::Notice;
        let app = Some("https://app.example.test/a?b=c&d");
        assert_eq!(landing(app, Some("/x"), 0), ("https://app.example.test/a?b=c&d".to_string(), None));
        assert_eq!(landing(None, Some("/x"), 0), ("/x".to_string(), None));
        assert_eq!(landing(None, None, 0), ("/".to_string(), None));
        let told = Some(Notice::WrongCodesBefore { count: 2 });
        assert_eq!(
            landing(app, None, 2),
            ("/?rd=https%3A%2F%2Fapp.example.test%2Fa%3Fb%3Dc%26d".to_string(), told.clone())
        );
        assert_eq!(landing(None, Some("/x"), 2), ("/x".to_string(), told));
    }

    use super::safe_next;

    #[test]
    fn only_same_origin_paths_are_followed() {
        for good in ["/", "/account", "/a/b?c=d&e=%20#frag"] {
            assert_eq!(safe_next(Some(good)), Some(good), "{good}");
        }
        for bad in [
            "",
            "https://evil.com",
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/%5cevil.com",
            "/%2F/evil.com",
            "javascript:alert(1)",
            "/a b",
            "/\tx",
            "evil.com",
        ] {
            assert_eq!(safe_next(Some(bad)), None, "{bad}");
        }
    }
}
