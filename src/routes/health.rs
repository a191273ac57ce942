//! `GET /healthz`: liveness, with no session and no store access, so it answers even while
//! every core is hashing. `GET /readyz`: readiness for load balancers, 200 while the store
//! can take writes and 503 while it cannot (down, hung, or a read-only database: every
//! sign-in writes) or records another factor key than this server's, with the reason logged
//! (SPEC, "Several instances, one truth").

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
    // A load balancer asks every few seconds, each of them: the lines are bounded like the rest.
    let checked = match state.store.ready().await {
        Ok(()) => state.factors.has_another_key().await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(false) => "ready".into_response(),
        Ok(true) => {
            // Every second factor this server seals or checks would fail (a 500 each); the
            // servers with the recorded key serve them.
            let e = crate::factors::KeyError::OtherKey;
            crate::fault_log::report("not ready: the store records another factor key", Severity::Error, false, &e);
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
        Err(e) => {
            crate::fault_log::report("not ready: the store cannot take writes", Severity::Warn, true, &e);
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
    }
}
