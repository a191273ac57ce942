//! The login page: `GET /login` shows the form, `POST /login` checks it (post/redirect/get:
//! success is always a 303, the home page is never rendered at /login).

pub mod get;
pub mod post;

use askama::Template;
use poem::http::{header, StatusCode};
use poem::{Request, Response};

use crate::app::AppState;
use crate::cookies;
use crate::csrf::{Csrf, LOGIN_TOKEN_LIFETIME, PRELOGIN_COOKIE};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    next: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

/// The one message for every wrong username, password or captcha.
pub const GENERIC_FAILURE: &str = "Incorrect username or password.";

/// Renders the login form with a fresh CSRF token bound to the visitor's pre-login cookie
/// (set here if the visitor has none yet).
pub fn render(
    req: &Request,
    state: &AppState,
    status: StatusCode,
    error: Option<&str>,
    username: &str,
    next: Option<&str>,
) -> Response {
    let (prelogin, is_new) = match cookies::get(req, PRELOGIN_COOKIE).filter(|v| v.len() == 43) {
        Some(v) => (v, false),
        None => (Csrf::new_prelogin(), true),
    };
    let token = state.csrf.login_token(&prelogin, crate::store::now_ms() / 1000);
    let page = LoginPage { csrf: &token, next: next.unwrap_or(""), username, error };
    let mut resp = super::html(status, &page);
    if is_new {
        if let Ok(v) = cookies::set(PRELOGIN_COOKIE, &prelogin, Some(LOGIN_TOKEN_LIFETIME.as_secs())).parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
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
        && !n.starts_with("/%2f")
        && !n.starts_with("/%2F");
    ok.then_some(n)
}

#[cfg(test)]
mod tests {
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
