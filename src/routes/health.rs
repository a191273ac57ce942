//! `GET /healthz`: liveness, with no session and no store access, so it answers even while
//! every core is hashing. `GET /readyz`: readiness for load balancers, 200 while the store
//! can take writes and 503 while it cannot (down, hung, or a read-only database: every
//! sign-in writes), with the reason logged (SPEC, "Several instances, one truth").

use poem::http::StatusCode;
use poem::{handler, IntoResponse, Response};

use crate::fault_log::Severity;
use crate::routes::State;

#[handler]
pub async fn healthz() -> &'static str {
    "ok"
}

#[handler]
pub async fn readyz(state: State<'_>) -> Response {
    match state.store.ready().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            // A load balancer asks every few seconds, each of them: bounded like the rest.
            crate::fault_log::report("not ready: the store cannot take writes", Severity::Warn, true, &e);
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
    }
}
