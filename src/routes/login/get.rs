//! `GET /login`: the form (with a captcha when this address has failed too often), or
//! straight on for someone already signed in.

use poem::http::StatusCode;
use poem::web::Query;
use poem::{handler, Request, Response};
use serde::Deserialize;

use super::Form;
use crate::routes::{current_session, error_page, see_other, State};

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[handler]
pub async fn login_form(req: &Request, state: State<'_>, query: Option<Query<LoginQuery>>) -> Response {
    let next = query.as_ref().and_then(|q| super::safe_next(q.next.as_deref()));
    match current_session(req, &state).await {
        Ok(Some(_)) => return see_other(next.unwrap_or("/")),
        Ok(None) => {}
        Err(resp) => return resp,
    }
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    let key = client.key();
    let captcha = match state.brute_force.needs_captcha(key, None, crate::store::now_ms()).await {
        Ok(demanded) => demanded.then_some(key),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the failure counts");
            return error_page(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    super::render(req, &state, Form { captcha, ..Form::new(StatusCode::OK, next) }).await
}
