//! The HTTP surface: routes, the middleware every response passes through, and small
//! helpers the handlers share. Handlers call the domain (sessions, authentication, users);
//! none of them touches the store directly.

mod account;
mod admin;
/// Public for the metrics work: [`authz::verify`] returns what each verify was.
pub mod authz;
mod flash;
mod health;
mod home;
pub mod login;
/// Public for the fuzz targets (the logout form's shape).
pub mod logout;
pub mod passkeys;
mod static_files;

use std::sync::Arc;

use askama::Template;
use poem::http::{header, HeaderValue, StatusCode};
use poem::web::Data;
use poem::{get, post, Endpoint, EndpointExt, IntoResponse, Request, Response, Route, RouteMethod};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::fault_log::Severity;
use crate::session::{ActiveSession, SESSION_COOKIE};

/// Every cookie this server sets under `cookie_domain`'s `__Secure-` name (the device cookie
/// stays `__Host-`, which no other host can set): copies of them on paths of their own, which
/// only another host under the domain sets, are cleared ([`crate::cookies::scoped`]).
pub(crate) const SCOPED_COOKIES: [&str; 6] = [
    SESSION_COOKIE,
    crate::factors::MFA_COOKIE,
    crate::csrf::PRELOGIN_COOKIE,
    crate::passkeys::CEREMONY_COOKIE,
    flash::FLASH_COOKIE,
    account::confirm::CONFIRMED_COOKIE,
];

/// Largest form body accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The application's routes wrapped in its middleware.
pub fn router(state: Arc<AppState>) -> impl Endpoint {
    let metrics = state.metrics.clone();
    let scope = crate::cookies::Scope::new(state.settings.cookie_domain.as_ref().map(|d| d.as_str().to_string()));
    let policies = Policies::new(&state.settings);
    // Every GET route answers HEAD too (poem runs the GET handler without the body).
    Route::new()
        .at("/", allowing(GET, get(home::home)))
        .at(
            "/login",
            allowing(
                "GET, HEAD, POST",
                get(login::get::login_form).head(login::get::login_form_head).post(login::post::login),
            ),
        )
        .at(
            login::second_factor::PATH,
            allowing(
                "GET, HEAD, POST",
                get(login::second_factor::show)
                    .head(login::second_factor::show_head)
                    .post(login::second_factor::submit),
            ),
        )
        .at("/logout", allowing_else(POST, post(logout::logout), logout::typed_address))
        .at("/account", allowing(GET, get(account::show)))
        .at(
            "/account/password",
            allowing("GET, HEAD, POST", get(account::to_password_form).post(account::password::change)),
        )
        .at(
            account::confirm::PATH,
            allowing("GET, HEAD, POST", get(account::confirm::show).post(account::confirm::confirm)),
        )
        .at("/account/totp", allowing("GET, HEAD, POST", get(account::totp::enrol).post(account::totp::confirm)))
        .at("/account/totp/remove", allowing(POST, post(account::totp::remove)))
        .at(
            "/account/recovery-codes",
            allowing(
                "GET, HEAD, POST",
                get(account::to_recovery_codes).post(account::recovery_codes::new_recovery_codes),
            ),
        )
        .at("/sessions/end-others", allowing(POST, post(home::end_other_sessions)))
        .at("/sessions/end", allowing(POST, post(home::end_one_session)))
        .at("/login/passkey", allowing(POST, post(passkeys::login_finish)))
        .at("/login/passkey/begin", allowing(POST, post(passkeys::login_begin)))
        .at("/login/second-factor/passkey/begin", allowing(POST, post(passkeys::second_factor_begin)))
        .at("/account/passkeys", allowing("GET, HEAD, POST", get(passkeys::list).post(passkeys::register)))
        .at("/account/passkeys/begin", allowing(POST, post(passkeys::register_begin)))
        .at("/account/passkeys/rename", allowing(POST, post(passkeys::rename)))
        .at("/account/passkeys/remove", allowing(POST, post(passkeys::remove)))
        .at("/admin/failed-logins", allowing(GET, get(admin::failed_logins::failed_logins)))
        .at("/admin/unlock", allowing(POST, post(admin::unlock::unlock)))
        .at("/api/authz/forward-auth", allowing(GET, get(authz::forward_auth)))
        .at("/api/authz/auth-request", allowing(GET, get(authz::auth_request)))
        .at("/healthz", allowing(GET, get(health::healthz)))
        .at("/readyz", allowing(GET, get(health::readyz)))
        .at("/static/:file", allowing(GET, get(static_files::serve)))
        .around(|ep, req| async move { refuse_other_sites_requests(ep.as_ref(), req).await })
        .around(|ep, req| async move { refuse_unclear_hosts(ep.as_ref(), req).await })
        .around(|ep, req| async move { refuse_unknown_codings(ep.as_ref(), req).await })
        .around(move |ep, req| {
            let metrics = metrics.clone();
            async move { crate::metrics::count(&metrics, ep.as_ref(), req).await }
        })
        .data(state)
        .around(move |ep, req| {
            let scope = scope.clone();
            async move { crate::cookies::scoped(ep.as_ref(), req, scope).await }
        })
        .around(move |ep, req| {
            let policies = policies.clone();
            async move { Ok(security_headers(ep.as_ref(), req, &policies).await) }
        })
}

const GET: &str = "GET, HEAD";
const POST: &str = "POST";

/// Whether the browser says another site's page sent `req` (`Sec-Fetch-Site` `cross-site` or
/// `same-site`, W3C Fetch Metadata §2.1): a page of ours sends `same-origin`, the user
/// `none`; curl and older browsers send nothing. Without fetch metadata (a browser older
/// than it, such as Safari before 16.4), the `Origin` a browser sends with every request but
/// `GET` and `HEAD` (Fetch §3.1) tells: one other than the request's own, `https` and its
/// host, or `public_url`'s, is another site's (OWASP CSRF Prevention Cheat Sheet, "Verifying
/// Origin With Standard Headers"; review 206). `null` too: a sandboxed frame or a `data:` page
/// sends it, and our own pages, whose `Referrer-Policy` is `same-origin`, never do (review 208:
/// such forms spent the visitor's address quota).
pub(crate) fn sent_by_another_site(req: &Request) -> bool {
    match req.headers().get("sec-fetch-site") {
        Some(site) => site == "cross-site" || site == "same-site",
        None => req.headers().get(header::ORIGIN).is_some_and(|origin| !own_origin(origin, req)),
    }
}

/// Whether `origin` (an `Origin` header) is `req`'s own origin (`https` and its `Host`, or its
/// `:authority`), or that of `public_url`, compared as RFC 6454 §5 compares origins: scheme,
/// host and port, the default port written or not.
fn own_origin(origin: &HeaderValue, req: &Request) -> bool {
    let Some(origin) = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()) else { return false };
    let of = |url: &str| url::Url::parse(url).ok().map(|u| u.origin());
    let host =
        req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().authority().map(|a| a.as_str()));
    let own = host.and_then(|h| of(&format!("https://{h}")));
    let public = req.data::<Arc<crate::app::AppState>>().and_then(|s| s.settings.public_url.as_deref().and_then(of));
    let origin = origin.origin();
    own.is_some_and(|o| o == origin) || public.is_some_and(|p| p == origin)
}

/// Refuses, before any route, a request other than `GET` or `HEAD` that another site's page
/// sent ([`sent_by_another_site`]; the resource isolation policy of W3C Fetch Metadata): every
/// form and ceremony of ours is posted from our own pages, and such a request never carries a
/// token of ours. A 403 and nothing else: no quota spent (another site's `fetch()`es held the
/// address's sign-ins and passkey button at 429), no record, and no cookie set or cleared (an
/// empty form on another site signed the browser out, dropped its pending second step and
/// voided its open sign-in form: review 170). `POST /login` alone goes on to its handler,
/// which records the attempt as `csrf` (folded per minute, not matched by the fail2ban
/// filter, so another site cannot have its visitors banned) and answers the same page. A
/// browser that sends no fetch metadata is left to the CSRF tokens.
async fn refuse_other_sites_requests<E: Endpoint>(ep: &E, mut req: Request) -> poem::Result<Response> {
    let reads_only = req.method() == poem::http::Method::GET || req.method() == poem::http::Method::HEAD;
    // The password form's own: a refused login attempt is recorded (SPEC.md, "Authentication
    // records"), and the sign-in refuses it before any quota ([`crate::sign_in::Attempt`]).
    let password_form = req.method() == poem::http::Method::POST && req.uri().path() == "/login";
    if reads_only || password_form || !sent_by_another_site(&req) {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    // Read first, as for a 405 (`drain`): an answer before the body's end resets the stream.
    drain(req.take_body().into_async_read()).await;
    Ok(sent_from_another_site())
}

/// Refuses with 400 a request whose host is not one (review 175): an HTTP/1.1 request without
/// a `Host` or with several (RFC 9112 §3.2: "MUST respond with a 400"), one whose `Host` or
/// `:authority` is not a host (a list, userinfo, a path, empty), and an HTTP/2 one whose
/// `Host` names another host than its `:authority` (RFC 9113 §8.3.1 calls it malformed), or
/// an HTTP/1 one whose absolute-form target names another host than its `Host`.
/// Nothing here reads the host (redirects are relative or to `public_url`), but a proxy or
/// cache in front might read the other one.
async fn refuse_unclear_hosts<E: Endpoint>(ep: &E, mut req: Request) -> poem::Result<Response> {
    let hosts: Vec<&[u8]> = req.headers().get_all(header::HOST).iter().map(HeaderValue::as_bytes).collect();
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    // One host, and a host only: a list in one line (how some intermediaries merge two),
    // userinfo, a path or anything else outside a name, an address and a port is not one
    // (reviews 179, 180; RFC 9112 §3.2 "an invalid field value").
    let a_host = |h: &[u8]| !h.is_empty() && h.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~%[]:".contains(b));
    // Compared as RFC 3986 §6.2.3 normalises them: `:443` is the `https` default.
    let plain = |s: &[u8]| -> Vec<u8> { s.strip_suffix(b":443").unwrap_or(s).to_ascii_lowercase() };
    let unclear = !hosts.iter().all(|h| a_host(h))
        || !authority.is_none_or(a_host)
        || hosts.len() > 1
        || (req.version() == poem::http::Version::HTTP_11 && hosts.is_empty())
        // An absolute-form target's authority overrides `Host` (RFC 9112 §3.2.2), so the two
        // must agree, as HTTP/2's do.
        || hosts.first().zip(authority).is_some_and(|(host, a)| plain(host) != plain(a));
    if !unclear {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    drain(req.take_body().into_async_read()).await;
    Ok(error_page(StatusCode::BAD_REQUEST))
}

/// Refuses a request body in a transfer coding other than one `chunked` (review 175): a
/// coding we do not know gets 501 (RFC 9112 §6.1: "SHOULD respond with 501"), and `chunked`
/// applied twice ("MUST NOT apply chunked more than once") 400. The HTTP library decodes the
/// last `chunked` and would hand the handlers what lies under it as if it were the body; nginx
/// and Go refuse such requests the same way, so what a proxy in front would refuse is not read
/// differently here.
async fn refuse_unknown_codings<E: Endpoint>(ep: &E, mut req: Request) -> poem::Result<Response> {
    let mut chunked = 0;
    let mut other = false;
    for value in req.headers().get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                other = true;
            }
        }
    }
    if !other && chunked <= 1 {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    drain(req.take_body().into_async_read()).await;
    Ok(error_page(if other { StatusCode::NOT_IMPLEMENTED } else { StatusCode::BAD_REQUEST }))
}

/// The answer to a form another site's page sent: a 403 page, and nothing else (no cookie).
pub(crate) fn sent_from_another_site() -> Response {
    error_page_saying(
        StatusCode::FORBIDDEN,
        "Sent from another site",
        "Another site's page sent this form, so nothing was done. Please use this site's own pages.",
    )
}

/// A route's methods, whose 405 answer carries `Allow: {allow}` (RFC 9110 §15.5.6: a 405
/// must list the methods the resource supports). `allow` must name the methods `route` has.
fn allowing(allow: &'static str, route: RouteMethod) -> impl Endpoint<Output = Response> {
    allowing_else(allow, route, || error_page(StatusCode::METHOD_NOT_ALLOWED))
}

/// [`allowing`], with `refusal` as the 405's page.
fn allowing_else(
    allow: &'static str,
    route: RouteMethod,
    refusal: fn() -> Response,
) -> impl Endpoint<Output = Response> {
    route.around(move |ep, mut req| async move {
        if !allow.split(", ").any(|m| m == req.method().as_str()) {
            // Answered here rather than by the route, so a small body is read first: over
            // HTTP/2 an answer before the body's end is followed by a stream reset, which
            // curl 7.88 shows instead of the 405 (see `drain`; a review saw it).
            drain(req.take_body().into_async_read()).await;
            let mut resp = refusal();
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return Ok(resp);
        }
        // Every method left is one `route` has (`allow` names exactly those).
        ep.call(req).await.map(IntoResponse::into_response)
    })
}

/// The Content-Security-Policy: nothing but our own stylesheet and images (the captcha and
/// the TOTP QR code are `data:` images), no scripts at all, forms posted to this origin only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The Content-Security-Policy of a page with a passkey button (SPEC.md: only those pages
/// may run a script, and only `static/passkey.js` from this origin; no inline script). The
/// script fetches the ceremony's options from this origin, hence `connect-src 'self'`.
pub const PASSKEY_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The two Content-Security-Policy values this server sends ([`CSP`], [`PASSKEY_CSP`]), with
/// `form-action` also admitting the origins `rd` may name ([`Gate::form_action_sources`]):
/// forms are still posted here, but their answer may redirect to a gated application.
///
/// [`Gate::form_action_sources`]: crate::forward_auth::Gate::form_action_sources
#[derive(Clone)]
pub struct Policies {
    plain: HeaderValue,
    passkey: HeaderValue,
}

impl Default for Policies {
    /// Forms go to this origin only: for listeners that serve no page with a form.
    fn default() -> Self {
        Policies { plain: HeaderValue::from_static(CSP), passkey: HeaderValue::from_static(PASSKEY_CSP) }
    }
}

impl Policies {
    /// The policies for `settings` (their `cookie_domain` and `public_url`).
    pub fn new(settings: &crate::config::Settings) -> Self {
        let Some(sources) = crate::forward_auth::Gate::new(settings).form_action_sources() else {
            return Policies::default();
        };
        let widen = |csp: &str| {
            let csp = csp.replace("form-action 'self'", &format!("form-action 'self' {sources}"));
            // Host names, `*`, `:` and `/` only (checked in `config` and by the Gate).
            HeaderValue::from_str(&csp).ok()
        };
        match (widen(CSP), widen(PASSKEY_CSP)) {
            (Some(plain), Some(passkey)) => Policies { plain, passkey },
            _ => Policies::default(),
        }
    }
}

/// A response extension set by handlers of pages with a passkey button (see
/// [`passkeys::with_passkey_script`]); never sent to the client.
#[derive(Clone, Copy, Debug)]
pub struct PasskeyScript;

/// Adds the security headers to every response, errors included (poem returns routing and
/// body errors as `Err`, which would otherwise skip response middleware), and gives error
/// statuses a page. Only a static file that was found may be cached; everything else,
/// `/static/` errors included, is `no-store`.
pub async fn security_headers<E: Endpoint>(ep: &E, req: Request, policies: &Policies) -> Response {
    let static_path = req.uri().path().starts_with("/static/");
    let head = req.method() == poem::http::Method::HEAD;
    let mut resp = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::error!(error = %e, "request failed");
            }
            let resp = e.into_response();
            if resp.status().is_client_error() || resp.status().is_server_error() {
                error_page(status)
            } else {
                resp
            }
        }
    };
    let status_ok = resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED;
    let scripts = resp.extensions().get::<PasskeyScript>().is_some();
    let h = resp.headers_mut();
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=63072000; includeSubDomains"));
    h.insert(header::CONTENT_SECURITY_POLICY, if scripts { policies.passkey.clone() } else { policies.plain.clone() });
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"));
    if !(static_path && status_ok) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // A HEAD answer has no body (RFC 9110 §9.3.2). poem drops it for GET routes, but not from
    // the error pages made here for a HEAD with no route or no GET, and HTTP/2 ends a stream
    // that sends one with PROTOCOL_ERROR.
    if head {
        resp.set_body(());
    }
    resp
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    /// Where the page's one button goes, and what it says.
    next: (&'a str, &'a str),
}

/// The error pages' button: home, which sends a signed-out visitor on to `/login`.
const HOME: (&str, &str) = ("/", "Go to the home page");

/// The button of a page telling a browser its session is over.
pub const SIGN_IN_AGAIN: (&str, &str) = ("/login", "Sign in");

/// The 403 of a signed-in form whose CSRF token is not its session's: most often a page shown
/// before this browser's session got a new token (a password change or *sign out everywhere
/// else* in another tab). Said so, and that nothing changed: the generic "You do not have
/// access to this page" left a user believing a password change had gone through (review 176).
pub fn stale_form() -> Response {
    error_page_saying(
        StatusCode::FORBIDDEN,
        "Nothing was changed",
        "This page was out of date (your session changed since it was shown, perhaps in another tab), or the form was not sent from this site, so nothing was changed. Reload the page and try again.",
    )
}

/// A page for an error status.
pub fn error_page(status: StatusCode) -> Response {
    let (title, message) = match status {
        StatusCode::NOT_FOUND => {
            ("Page not found", "There is nothing at this address. It may have moved, or the link may be mistyped.")
        }
        StatusCode::METHOD_NOT_ALLOWED => ("Not allowed", "This page cannot be used that way."),
        StatusCode::PAYLOAD_TOO_LARGE => ("Too large", "The form sent was larger than this server accepts."),
        StatusCode::REQUEST_TIMEOUT => ("Too slow", "The form did not arrive in time. Please try again."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("Not a form", "This address accepts only forms sent from this site's pages. Please use the page's form.")
        }
        StatusCode::FORBIDDEN => ("Not allowed", "You do not have access to this page."),
        StatusCode::SERVICE_UNAVAILABLE => ("Busy", "The server is busy. Please try again in a moment."),
        s if s.is_client_error() => ("Bad request", "The server could not understand this request."),
        _ => ("Something went wrong", "The server could not complete this request. Please try again."),
    };
    error_page_saying(status, title, message)
}

/// A page for an error status with its own title and message, for a case the generic words
/// would mislead about (a sign-out that did not happen is not just "busy"); a 503 carries
/// `Retry-After: 1`.
pub fn error_page_saying(status: StatusCode, title: &str, message: &str) -> Response {
    error_page_leading(status, title, message, HOME)
}

/// [`error_page_saying`] whose button goes to `next` (`(path, label)`) instead of home.
pub fn error_page_leading(status: StatusCode, title: &str, message: &str, next: (&str, &str)) -> Response {
    let resp = html(status, &ErrorPage { title, message, next });
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return with_retry_after(resp, 1);
    }
    resp
}

/// `resp` with `Retry-After: {secs}` (RFC 9110 §10.2.3): every 429 and 503 says when to try
/// again (a 503 after 1 s).
pub fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// The answer when the store failed: 503 with `Retry-After` when it cannot be used (an I/O
/// error such as a full disk, after which sled refuses writes), as SPEC.md and SECURITY.md
/// promise (fail closed, never a 500 for a full disk); 500 for anything else. Logs the error
/// with `what` happened through [`crate::fault_log`] (bounded while the store is down).
pub fn store_error(e: &crate::store::StoreError, what: &'static str) -> Response {
    error_page(store_fault(e, what))
}

/// The status [`store_error`] answers for `e`, which it logs under `what`: for a page that
/// must say more than the generic words (a sign-out that did not happen is not just "busy").
pub fn store_fault(e: &crate::store::StoreError, what: &'static str) -> StatusCode {
    let unavailable = e.is_unavailable();
    crate::fault_log::report_error(what, Severity::Error, unavailable, e);
    fault_status(unavailable)
}

/// The 503 page for a part that did not answer (the brute-force state, the random source),
/// with the error logged through [`crate::fault_log`] under `what`.
pub fn unavailable(what: &'static str, error: &(dyn std::error::Error + 'static)) -> Response {
    crate::fault_log::report_error(what, Severity::Error, true, error);
    error_page(StatusCode::SERVICE_UNAVAILABLE)
}

/// A time as the pages show it: RFC 3339 with milliseconds for a `<time datetime>`, and to the
/// minute in UTC for people (`2026-11-30 15:42 UTC`).
pub struct Moment {
    pub rfc3339: String,
    pub minute: String,
}

impl Moment {
    /// The time `ms` (Unix milliseconds).
    pub fn at(ms: u64) -> Self {
        let rfc3339 = crate::audit::rfc3339(ms);
        let minute = format!("{} UTC", rfc3339.get(..16).unwrap_or(&rfc3339).replace('T', " "));
        Moment { rfc3339, minute }
    }
}

/// The status of a request the server could not judge: 503 when a part it needs cannot be
/// reached (fail closed; the client may retry), 500 for a fault of its own.
pub fn fault_status(unavailable: bool) -> StatusCode {
    if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// The answer when a sign-in, a second step or an account form's password check could not be
/// judged: 503, or 500 for a fault, logged under `what` unless it is the normal answer to a
/// flood ([`crate::sign_in::SignInError::is_worth_logging`]).
pub(crate) fn not_judged(what: &'static str, e: &crate::sign_in::SignInError) -> Response {
    if e.is_worth_logging() {
        crate::fault_log::report_error(what, crate::fault_log::Severity::Error, e.is_unavailable(), e);
    }
    error_page(fault_status(e.is_unavailable()))
}

/// [`html`] for a page that shows a secret (a TOTP secret, recovery codes): rendered into a
/// buffer that wipes what it outgrows (`WipingBuffer`), whose bytes are wiped when the server
/// lets go of them after sending (what TLS copied to encrypt is rustls's to clear).
pub fn html_with_secret<T: Template>(status: StatusCode, page: &T) -> Response {
    let mut rendered = WipingBuffer(zeroize::Zeroizing::new(Vec::with_capacity(T::SIZE_HINT.max(16 * 1024))));
    match page.render_into(&mut rendered) {
        Ok(()) => Response::builder()
            .status(status)
            .content_type("text/html; charset=utf-8")
            .body(poem::Body::from_bytes(bytes::Bytes::from_owner(rendered.0))),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            error_page(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// A text buffer that, when it must grow, copies into a new one and wipes the old: a `String`
/// growing by reallocation leaves each outgrown copy in freed memory.
struct WipingBuffer(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Write for WipingBuffer {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > self.0.capacity() {
            let mut grown = Vec::with_capacity((self.0.len() + s.len()).max(self.0.capacity() * 2));
            grown.extend_from_slice(&self.0);
            // The old buffer is wiped as it is dropped.
            self.0 = zeroize::Zeroizing::new(grown);
        }
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Renders a template as an HTML response with `status` (a 500 page if it cannot).
pub fn html<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(body) => Response::builder().status(status).content_type("text/html; charset=utf-8").body(body),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .content_type("text/plain")
                .body("internal error")
        }
    }
}

/// A 303 See Other to a same-origin path.
pub fn see_other(location: &str) -> Response {
    Response::builder().status(StatusCode::SEE_OTHER).header(header::LOCATION, location).finish()
}

/// Reads a form body of at most [`MAX_FORM_BYTES`]; answers 415 for a body not declared as a
/// form (see [`is_form`]), 413 for more, 408 for a body that did not arrive within
/// `body_read_timeout` (see `serve`), and 400 for a body that is not a form. Every POST
/// handler calls this first, so a refused body costs nothing else (no quota, no record).
/// The raw bytes (which may hold a password) are wiped after parsing.
pub async fn read_form<T: DeserializeOwned>(req: &Request, body: poem::Body) -> Result<T, Response> {
    if !is_form(req) {
        drain(body.into_async_read()).await;
        let mut resp = error_page(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // RFC 9110 §15.5.16: say which content codings would have been accepted.
        resp.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        return Err(resp);
    }
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&n| n > MAX_FORM_BYTES as u64) {
        // Larger than that is not worth reading: it gets its answer and the reset.
        if declared <= DRAIN_BYTES {
            drain(body.into_async_read()).await;
        }
        return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE));
    }
    // One buffer, a byte longer than the limit, never grown (so never copied, and wiped as
    // it is dropped): the body's bytes may be a password.
    let mut raw = zeroize::Zeroizing::new(vec![0u8; MAX_FORM_BYTES + 1]);
    let mut filled = 0;
    let mut reader = body.into_async_read();
    while filled < raw.len() {
        match tokio::io::AsyncReadExt::read(&mut reader, &mut raw[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            // The body stopped short of `body_read_timeout` (see `serve`).
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(error_page(StatusCode::REQUEST_TIMEOUT)),
            Err(_) => return Err(error_page(StatusCode::BAD_REQUEST)),
        }
    }
    if filled > MAX_FORM_BYTES {
        // Undeclared (no Content-Length) and too long: read on, as for a declared one.
        drain(reader).await;
        return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE));
    }
    serde_urlencoded::from_bytes::<T>(&raw[..filled]).map_err(|_| error_page(StatusCode::BAD_REQUEST))
}

/// At most this much of a refused body is read, and thrown away, before the refusal (beyond
/// [`MAX_FORM_BYTES`] for a body too long).
pub const DRAIN_BYTES: u64 = 64 * 1024;

/// Reads and discards at most [`DRAIN_BYTES`] more of a refused body, within
/// `body_read_timeout` like any body.
///
/// Over HTTP/2 an answer sent before the request's body ends is followed by RST_STREAM(NO_ERROR)
/// (RFC 9113 §8.1), which curl 7.88 (Debian 12's, the one the README's commands use) reports
/// as "Stream error in the HTTP/2 framing layer" instead of showing the 415 or 413; a small
/// body read first leaves nothing to reset.
async fn drain(reader: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncReadExt;
    let _ = tokio::io::copy(&mut reader.take(DRAIN_BYTES), &mut tokio::io::sink()).await;
}

/// Whether the body is declared as what our forms send (HTML §4.10.21.7): exactly one
/// `Content-Type` of `application/x-www-form-urlencoded` (case-insensitive, RFC 9110 §8.3.1)
/// with no parameter but an optional `charset=utf-8` (the only charset the parser decodes),
/// and no content coding. Anything else, a missing type included, is refused: a form posted
/// as `text/plain` is how cross-site requests avoid a CORS preflight.
pub fn is_form(req: &Request) -> bool {
    let mut types = req.headers().get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else { return false };
    let Some(mime) = value.to_str().ok().and_then(|v| parameters_tidied(v).parse::<mime::Mime>().ok()) else {
        return false;
    };
    let form = mime.essence_str() == mime::APPLICATION_WWW_FORM_URLENCODED.essence_str();
    let params_ok =
        mime.params().all(|(name, value)| name == mime::CHARSET && value.as_str().eq_ignore_ascii_case("utf-8"));
    let coded = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| v.to_str().map_or(true, |v| v.split(',').any(|c| !c.trim().eq_ignore_ascii_case("identity"))));
    form && params_ok && !coded
}

/// A media type with the optional whitespace and empty parameters RFC 9110 §5.6.6 allows
/// (`parameters = *( OWS ";" OWS [ parameter ] )`) taken out, since the `mime` parser refuses
/// a space before `;`. A `;` inside a quoted value splits it, and the broken halves then fail
/// to parse: refused, which is right for a form type whose only allowed parameter is utf-8.
fn parameters_tidied(value: &str) -> String {
    let mut parts = value.split(';').map(str::trim);
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts.filter(|p| !p.is_empty()) {
        out.push_str("; ");
        out.push_str(p);
    }
    out
}

/// The signed-in session for this request, if any; or, when the store cannot say, the
/// response to send instead (503 when it is unavailable): a signed-in visitor is never shown
/// as signed out because the store did not answer (SPEC.md, "Several instances, one truth").
// The error is the very response the handler returns at once; boxing it gains nothing.
#[allow(clippy::result_large_err)]
pub async fn current_session(req: &Request, state: &AppState) -> Result<Option<ActiveSession>, Response> {
    let Some(cookie) = session_cookie(req, state).await? else { return Ok(None) };
    let found = state.sessions.resolve(&cookie).await.map_err(|e| store_error(&e, "session lookup failed"))?;
    if let Some(session) = &found {
        note_client(req, state, session);
    }
    Ok(found.map(|s| account::confirm::with_confirmation(req, state, s)))
}

/// Logs `session_client_changed` the first time `session` is used here from an address or
/// browser other than its sign-in's ([`crate::session::ClientChanges`]).
fn note_client(req: &Request, state: &AppState, session: &ActiveSession) {
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    if let Some((change, last_noted)) = state.client_changes.note(session, client.ip, &client.user_agent) {
        state.audit.record(&crate::audit::AuthEvent::SessionClientChanged {
            username: &session.user.display_name,
            session: &crate::session::SessionHandle::of(&session.token_hash).encode(),
            changed: change.as_str(),
            last_noted,
            signed_in_ip: &session.record.ip,
            signed_in_user_agent: &session.record.user_agent,
            client: &client,
        });
    }
}

/// [`current_session`] with the user's valid sessions, newest first, from the same store read
/// (`Sessions::resolve_listing`): for the pages that list them.
#[allow(clippy::result_large_err)]
pub async fn current_session_listing(
    req: &Request,
    state: &AppState,
) -> Result<Option<(ActiveSession, Vec<crate::store::StoredSession>)>, Response> {
    let Some(cookie) = session_cookie(req, state).await? else { return Ok(None) };
    let found = state.sessions.resolve_listing(&cookie).await.map_err(|e| store_error(&e, "session lookup failed"))?;
    if let Some((session, _)) = &found {
        note_client(req, state, session);
    }
    Ok(found.map(|(s, listed)| (account::confirm::with_confirmation(req, state, s), listed)))
}

/// The session cookie to resolve: the request's only one, or of several (a host under
/// `cookie_domain` can set its own for a path of its choosing, which browsers send before
/// ours) the only one whose session is live. Two live sessions are never picked between,
/// since the one sent first may be an attacker's, signed in as them (cookie tossing, found by
/// a review): the request is answered as signed out, and the tossed cookie is cleared
/// ([`crate::cookies::scoped`], and `GET /login` for an application's path).
#[allow(clippy::result_large_err)]
async fn session_cookie(req: &Request, state: &AppState) -> Result<Option<String>, Response> {
    let all = crate::cookies::get_all(req, SESSION_COOKIE);
    if all.len() <= 1 {
        return Ok(all.into_iter().next());
    }
    let live = live_cookies(all, |c| Box::pin(resolved(state, c)), |s| s.token_hash).await?;
    if live.len() > 1 {
        // At `debug`, as the verify's reasons: any client can send such requests, as many as
        // it likes, and the log is not to be flooded at its word.
        tracing::debug!(sessions = live.len(), "a request sent the cookies of more than one live session (cookie tossing by a host under cookie_domain?): answered as signed out");
    }
    Ok(only_one(live))
}

/// The cookie of the sign-in waiting for its second step, as [`session_cookie`] picks a
/// session's: the request's only one, or of several (tossed by another host under
/// `cookie_domain` for a path of its own, found by a review to show the attacker's pending
/// sign-in) the only one naming a pending sign-in; `None` when none or two do.
#[allow(clippy::result_large_err)]
pub(crate) async fn pending_cookie(req: &Request, state: &AppState) -> Result<Option<String>, Response> {
    let all = crate::cookies::get_all(req, crate::factors::MFA_COOKIE);
    if all.len() <= 1 {
        return Ok(all.into_iter().next());
    }
    Ok(only_one(live_cookies(all, |c| Box::pin(pending_of(state, c)), |hash| *hash).await?))
}

/// Every live session the request's session cookies name, each once (none past
/// [`MAX_SESSION_COOKIES`] values): for `POST /logout`, which ends them all, where a page
/// picks one or none ([`current_session`]).
#[allow(clippy::result_large_err)]
pub(crate) async fn live_sessions(req: &Request, state: &AppState) -> Result<Vec<ActiveSession>, Response> {
    let all = crate::cookies::get_all(req, SESSION_COOKIE);
    let live = live_cookies(all, |c| Box::pin(resolved(state, c)), |s| s.token_hash).await?;
    Ok(live.into_iter().map(|(_, session)| session).collect())
}

/// The session the cookie value `cookie` names, if live, or the answer to send (503 when the
/// store cannot say).
#[allow(clippy::result_large_err)]
async fn resolved(state: &AppState, cookie: String) -> Result<Option<ActiveSession>, Response> {
    state.sessions.resolve(&cookie).await.map_err(|e| store_error(&e, "session lookup failed"))
}

/// The hash of the pending sign-in the cookie value `cookie` names, if it is one, or the
/// answer to send (503 when the store cannot say).
#[allow(clippy::result_large_err)]
async fn pending_of(state: &AppState, cookie: String) -> Result<Option<crate::store::TokenHash>, Response> {
    let found =
        state.factors.pending(&cookie).await.map_err(|e| store_error(&e, "could not read a pending sign-in"))?;
    Ok(found.map(|(hash, ..)| hash))
}

/// Of the values `all` of one cookie name, those `lookup` finds live, each with what it found
/// and each once by `key` of it (two spellings of one token are one); none is looked up past
/// [`MAX_SESSION_COOKIES`] values, so a request cannot make this server do more lookups than
/// that at its word.
#[allow(clippy::result_large_err)]
async fn live_cookies<'s, T, K: PartialEq>(
    all: Vec<String>,
    lookup: impl Fn(String) -> BoxFuture<'s, Result<Option<T>, Response>>,
    key: impl Fn(&T) -> K,
) -> Result<Vec<(String, T)>, Response> {
    if all.len() > MAX_SESSION_COOKIES {
        tracing::debug!(cookies = all.len(), "a request sent more cookies of one name than are looked up: none is");
        return Ok(Vec::new());
    }
    let mut live: Vec<(String, T)> = Vec::new();
    for cookie in all {
        if let Some(found) = lookup(cookie.clone()).await? {
            if !live.iter().any(|(_, l)| key(l) == key(&found)) {
                live.push((cookie, found));
            }
        }
    }
    Ok(live)
}

/// The value of the one live cookie of `live`; `None` for none or several.
fn only_one<T>(mut live: Vec<(String, T)>) -> Option<String> {
    (live.len() == 1).then(|| live.pop().map(|(cookie, _)| cookie)).flatten()
}

/// A lookup's answer to come, sendable across the server's threads.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How many values of one cookie name a request may carry and have them looked up.
pub(crate) const MAX_SESSION_COOKIES: usize = 4;

/// The signed-in session, or the answer to send: 303 to `signed_out` (a sign-in page)
/// without one, 503 when the store cannot say.
pub(crate) async fn signed_in(req: &Request, state: &AppState, signed_out: &str) -> Result<ActiveSession, Response> {
    match current_session(req, state).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(to_sign_in(req, signed_out)),
        Err(resp) => Err(resp),
    }
}

/// The 303 for a request that needs a session and has none: to `signed_out` (a `/login`
/// address), marked `ended=` when the request carried a session cookie that names no session
/// any more (signed out in another tab or elsewhere, past a timeout, ended by an
/// administrator): `form` for a form sent, which was not acted on, `session` for a page. The
/// sign-in form then says why it is shown (reviews 196 and 197: it came bare, and a password
/// change sent from a stale tab was dropped without a word).
pub(crate) fn to_sign_in(req: &Request, signed_out: &str) -> Response {
    if crate::cookies::get_all(req, SESSION_COOKIE).is_empty() || !signed_out.starts_with("/login") {
        return see_other(signed_out);
    }
    let separator = if signed_out.contains('?') { '&' } else { '?' };
    let ended = if req.method() == poem::http::Method::POST { "form" } else { "session" };
    see_other(&format!("{signed_out}{separator}ended={ended}"))
}

/// [`signed_in`] for a form that changes something: the session's CSRF token must be `csrf`
/// (403 otherwise).
pub(crate) async fn signed_in_with(
    req: &Request,
    state: &AppState,
    signed_out: &str,
    csrf: &str,
) -> Result<ActiveSession, Response> {
    let session = signed_in(req, state, signed_out).await?;
    if !state.csrf.check_session(&session.token_hash, csrf) {
        return Err(stale_form());
    }
    Ok(session)
}

/// The signed-in session for a page other than `/account`, or the response to send instead:
/// like [`current_session`], and a 303 to `/account` while the `second_factor` policy wants a
/// second factor this user has not enrolled (SPEC.md: "can use nothing else until they
/// enrol one").
#[allow(clippy::result_large_err)]
pub async fn enrolled_session(req: &Request, state: &AppState) -> Result<Option<ActiveSession>, Response> {
    let Some(session) = current_session(req, state).await? else { return Ok(None) };
    enrolled(state, session).await.map(Some)
}

/// [`enrolled_session`] with the user's valid sessions, newest first, as
/// [`current_session_listing`] reads them.
#[allow(clippy::result_large_err)]
pub async fn enrolled_session_listing(
    req: &Request,
    state: &AppState,
) -> Result<Option<(ActiveSession, Vec<crate::store::StoredSession>)>, Response> {
    let Some((session, sessions)) = current_session_listing(req, state).await? else { return Ok(None) };
    Ok(Some((enrolled(state, session).await?, sessions)))
}

/// `session` if the `second_factor` policy lets it use pages other than `/account`, else
/// the 303 there (or a 503 when the store cannot say).
#[allow(clippy::result_large_err)]
async fn enrolled(state: &AppState, session: ActiveSession) -> Result<ActiveSession, Response> {
    match must_enrol(state, &session.user).await {
        Ok(false) => Ok(session),
        Ok(true) => Err(see_other("/account")),
        Err(e) => Err(store_error(&e, "could not read the user's second factors")),
    }
}

/// Whether the `second_factor` policy wants a second factor `user` does not have.
///
/// # Errors
/// [`crate::store::StoreError`] when the store cannot say.
pub async fn must_enrol(state: &AppState, user: &crate::store::User) -> Result<bool, crate::store::StoreError> {
    if !state.settings.second_factor.requires(user.admin) {
        return Ok(false);
    }
    Ok(!state.factors.summary(&user.key).await?.has_second_factor())
}

/// State extractor shorthand.
pub type State<'a> = Data<&'a Arc<AppState>>;

/// A new captcha challenge under `key` (replacing the one open under it), as a `data:` URI;
/// drawn on the same per-address quota as the login form's ([`crate::rate_limit::CAPTCHA_DRAWS`]),
/// since each costs a few ms of CPU. For the forms past the threshold that are not the login
/// form: a signed-in account form ([`crate::sign_in::account_captcha_key`]) and the second
/// step ([`crate::sign_in::pending_captcha_key`]).
///
/// # Errors
/// A 429 page with `Retry-After` past that quota; a 503 page when no picture can be drawn or
/// its answer kept.
// The error is the very response the handler returns at once.
#[allow(clippy::result_large_err)]
pub(crate) async fn draw_captcha(req: &Request, state: &crate::app::AppState, key: &str) -> Result<String, Response> {
    let now = crate::store::now_ms();
    let address = crate::client::client(req, &state.settings.trusted_proxies).key();
    let quota = crate::brute_force::QuotaKey::CaptchaDraws(address);
    match state.brute_force.take(quota, crate::rate_limit::CAPTCHA_DRAWS, now).await {
        Ok(Ok(())) => {}
        Ok(Err(wait)) => {
            let wait = wait.retry_after_secs();
            let message = format!("Too many new pictures were asked for from your address. Please wait {wait} s.");
            let page = error_page_saying(StatusCode::TOO_MANY_REQUESTS, "Too many pictures", &message);
            return Err(with_retry_after(page, wait));
        }
        Err(e) => return Err(unavailable("cannot count captcha pictures", &e)),
    }
    state.captchas.issue(key, now).await.map_err(|e| {
        let unavailable = matches!(e, crate::captcha::CaptchaError::State(_));
        crate::fault_log::report("captcha failed", crate::fault_log::Severity::Error, unavailable, &e);
        error_page(StatusCode::SERVICE_UNAVAILABLE)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wiping_buffer_grows_into_a_new_allocation_holding_everything_written() {
        use std::fmt::Write;
        let mut b = super::WipingBuffer(zeroize::Zeroizing::new(Vec::with_capacity(4)));
        let first = b.0.as_ptr();
        for piece in ["ab", "cd", "efghij", &"k".repeat(100)] {
            b.write_str(piece).unwrap();
        }
        assert_eq!(&b.0[..10], b"abcdefghij");
        assert_eq!(b.0.len(), 110);
        assert_ne!(b.0.as_ptr(), first, "grown by a copy (the outgrown one wiped as it dropped)");
    }

    #[test]
    fn times_are_shown_to_the_minute_in_utc_beside_their_rfc_3339_form() {
        let m = super::Moment::at(1_796_053_339_123);
        assert_eq!((m.rfc3339.as_str(), m.minute.as_str()), ("2026-11-30T15:42:19.123Z", "2026-11-30 15:42 UTC"));
        assert_eq!(super::Moment::at(0).minute, "1970-01-01 00:00 UTC");
    }

    use super::*;

    fn post(headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(poem::http::Method::POST).uri_str("/login");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.finish()
    }

    #[test]
    fn urlencoded_forms_are_recognised_in_any_case_with_or_without_a_utf8_charset() {
        for ct in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-URLEncoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=utf-8",
            "application/x-www-form-urlencoded; charset=\"utf-8\"",
            // RFC 9110 §8.3: optional whitespace around `;`, empty parameters.
            "application/x-www-form-urlencoded ; charset=\"utf-8\"",
            "application/x-www-form-urlencoded\t;charset=utf-8",
            "application/x-www-form-urlencoded;",
            "application/x-www-form-urlencoded ;; charset=UTF-8",
        ] {
            assert!(is_form(&post(&[("content-type", ct)])), "{ct}");
        }
        assert!(is_form(&post(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-encoding", "identity")
        ])));
    }

    #[test]
    fn anything_else_is_not_a_form() {
        assert!(!is_form(&post(&[])));
        for ct in [
            "text/plain",
            "text/plain; charset=utf-8",
            "multipart/form-data; boundary=x",
            "application/json",
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "application/x-www-form-urlencoded; boundary=x",
            "application/vnd.evil+x-www-form-urlencoded",
            "application/x-www-form-urlencoded-x",
            "",
            "application/x-www-form-urlencoded, text/plain",
            "application/x-www-form-urlencoded ; charset=\"utf-8;x\"",
            "application/x-www-form-urlencoded ; charset=latin1",
            " ; charset=utf-8",
        ] {
            assert!(!is_form(&post(&[("content-type", ct)])), "{ct:?}");
        }
        let twice = Request::builder()
            .method(poem::http::Method::POST)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-type", "text/plain")
            .finish();
        assert!(!is_form(&twice));
        assert!(!is_form(&post(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-encoding", "gzip")
        ])));
    }
}
