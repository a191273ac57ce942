//! Admin pages: `GET /admin/failed-logins` (filters, summary, chart, keyset pages) and
//! `POST /admin/unlock`. Admins only: others get 403, anonymous visitors a 303 to /login.

pub mod failed_logins;
pub mod unlock;

use poem::http::StatusCode;
use poem::{Request, Response};

use crate::app::AppState;
use crate::routes::{enrolled_session, error_page};
use crate::session::ActiveSession;

/// The signed-in administrator, or the response to send instead.
// The error is the very response the handler returns at once; boxing it gains nothing.
#[allow(clippy::result_large_err)]
async fn require_admin(req: &Request, state: &AppState) -> Result<ActiveSession, Response> {
    let Some(session) = enrolled_session(req, state).await? else {
        // Back where the visitor was after signing in; a form's POST cannot be followed there
        // (405), so after one the page that holds the admin forms.
        let here = match *req.method() {
            poem::http::Method::GET | poem::http::Method::HEAD => {
                req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/")
            }
            _ => "/admin/failed-logins",
        };
        let next = serde_urlencoded::to_string([("next", here)]).unwrap_or_default();
        return Err(crate::routes::to_sign_in(req, &format!("/login?{next}")));
    };
    if !session.user.admin {
        return Err(error_page(StatusCode::FORBIDDEN));
    }
    Ok(session)
}
