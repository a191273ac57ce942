//! `GET /login`: the form, or straight on for someone already signed in.

use poem::http::StatusCode;
use poem::web::Query;
use poem::{handler, Request, Response};
use serde::Deserialize;

use crate::routes::{current_session, see_other, State};

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[handler]
pub async fn login_form(req: &Request, state: State<'_>, query: Option<Query<LoginQuery>>) -> Response {
    let next = query.as_ref().and_then(|q| super::safe_next(q.next.as_deref()));
    if current_session(req, &state).is_some() {
        return see_other(next.unwrap_or("/"));
    }
    super::render(req, &state, StatusCode::OK, None, "", next)
}
