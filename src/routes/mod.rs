//! The HTTP surface: routes, the middleware every response passes through, and small
//! helpers the handlers share. Handlers call the domain (sessions, authentication, users);
//! none of them touches the store directly.

mod admin;
mod health;
mod home;
pub mod login;
/// Public for the fuzz targets (the logout form's shape).
pub mod logout;
mod static_files;

use std::sync::Arc;

use askama::Template;
use poem::http::{header, HeaderValue, StatusCode};
use poem::web::Data;
use poem::{get, post, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::session::{ActiveSession, SESSION_COOKIE};

/// Largest form body accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The application's routes wrapped in its middleware.
pub fn router(state: Arc<AppState>) -> impl Endpoint {
    Route::new()
        .at("/", get(home::home))
        .at("/login", get(login::get::login_form).post(login::post::login))
        .at("/logout", post(logout::logout))
        .at("/sessions/end-others", post(home::end_other_sessions))
        .at("/admin/failed-logins", get(admin::failed_logins::failed_logins))
        .at("/admin/unlock", post(admin::unlock::unlock))
        .at("/healthz", get(health::healthz))
        .at("/static/:file", get(static_files::serve))
        .data(state)
        .around(|ep, req| async move { Ok(security_headers(ep.as_ref(), req).await) })
}

/// The Content-Security-Policy: nothing but our own stylesheet and images, no scripts at all.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// Adds the security headers to every response, errors included (poem returns routing and
/// body errors as `Err`, which would otherwise skip response middleware), and gives error
/// statuses a page.
pub async fn security_headers<E: Endpoint>(ep: &E, req: Request) -> Response {
    let cacheable = req.uri().path().starts_with("/static/");
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
    let h = resp.headers_mut();
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=63072000; includeSubDomains"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"));
    if !cacheable {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
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
        StatusCode::FORBIDDEN => ("Not allowed", "You do not have access to this page."),
        StatusCode::SERVICE_UNAVAILABLE => ("Busy", "The server is busy. Please try again in a moment."),
        s if s.is_client_error() => ("Bad request", "The server could not understand this request."),
        _ => ("Something went wrong", "The server could not complete this request. Please try again."),
    };
    let mut resp = html(status, &ErrorPage { title, message });
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Renders a template as an HTML response.
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

/// Reads a form body of at most [`MAX_FORM_BYTES`]; answers 413 for more, 408 for a body that
/// did not arrive within `body_read_timeout`, and 400 for a body that is not a form. The raw bytes (which may hold a password) are wiped after parsing.
pub async fn read_form<T: DeserializeOwned>(req: &Request, body: poem::Body) -> Result<T, Response> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let bytes = match body.into_bytes_limit(MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE)),
        // The body stopped short of `body_read_timeout` (see `serve`).
        Err(poem::error::ReadBodyError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(error_page(StatusCode::REQUEST_TIMEOUT))
        }
        Err(_) => return Err(error_page(StatusCode::BAD_REQUEST)),
    };
    let mut raw = Vec::from(bytes);
    let parsed = serde_urlencoded::from_bytes::<T>(&raw);
    zeroize::Zeroize::zeroize(&mut raw);
    parsed.map_err(|_| error_page(StatusCode::BAD_REQUEST))
}

/// The signed-in session for this request, if any.
pub fn current_session(req: &Request, state: &AppState) -> Option<ActiveSession> {
    let cookie = crate::cookies::get(req, SESSION_COOKIE)?;
    match state.sessions.resolve(&cookie) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "session lookup failed");
            None
        }
    }
}

/// State extractor shorthand.
pub type State<'a> = Data<&'a Arc<AppState>>;
