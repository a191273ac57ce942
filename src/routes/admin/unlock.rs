//! `POST /admin/unlock`: clear a user's failure count and captcha demand (recorded).

use poem::{handler, Body, Request, Response};
use serde::Deserialize;

use crate::routes::flash::Notice;
use crate::routes::{read_form, see_other, State};

#[derive(Deserialize)]
struct UnlockForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
}

#[handler]
pub async fn unlock(req: &Request, body: Body, state: State<'_>) -> Response {
    let form: UnlockForm = match read_form(req, body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let admin = match super::require_admin(req, &state).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if !state.csrf.check_session(&admin.token_hash, &form.csrf) {
        return crate::routes::stale_form();
    }
    // What happened travels in a one-time cookie, not the URL: a link anyone can make must not
    // be able to show "… is unlocked".
    // The box may hold a name as pages show it (`adm\u{2060}in`), pre-filled or copied.
    let username = crate::text::unprintable(&form.username);
    let notice = match state.users.unlock(&username, &admin.user.display_name).await {
        Ok(name) => Notice::Unlocked { name },
        Err(crate::users::UserError::Store(e)) => return crate::routes::store_error(&e, "could not unlock a user"),
        Err(crate::users::UserError::State(e)) => {
            return crate::routes::unavailable("could not unlock a user", &e);
        }
        Err(_) => Notice::NoSuchUser,
    };
    notice.attach(&state.csrf, &admin.token_hash, see_other("/admin/failed-logins"))
}
