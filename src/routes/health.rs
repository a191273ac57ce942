//! `GET /healthz`: liveness, with no session and no store access, so it answers even while
//! every core is hashing. `GET /readyz`: readiness for load balancers, 200 while the store
//! can take writes and 503 while it cannot (down, hung, or a read-only database: every
//! sign-in writes), records another factor key than this server's, or keeps a time more than
//! a minute off this host's clock, with the reason logged (SPEC, "Several instances, one
//! truth").

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
    if is_ready(&state).await {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Whether this instance may be sent requests now; when not, the reason is logged (a load
/// balancer asks every few seconds, each of them: the lines are bounded like the rest).
async fn is_ready(state: &crate::app::AppState) -> bool {
    let offset = match state.store.ready().await {
        Ok(offset) => offset,
        Err(e) => {
            crate::fault_log::report("not ready: the store cannot take writes", Severity::Warn, true, &e);
            return false;
        }
    };
    // Instances stamp sessions with their own clocks, and end those stamped further ahead
    // than the skew allows: one whose clock is that far off the database's (and so, with NTP
    // on the others, off theirs) would sign users out, or stretch their timeouts.
    if let Some(ms) = offset.filter(|ms| ms.unsigned_abs() > crate::store::CLOCK_SKEW_MS) {
        let e = ClockOff { database_ahead_ms: ms };
        crate::fault_log::report("not ready: this host's clock is off the database's", Severity::Error, false, &e);
        return false;
    }
    match state.factors.has_another_key().await {
        Ok(false) => true,
        Ok(true) => {
            // Every second factor this server seals or checks would fail (a 500 each); the
            // servers with the recorded key serve them.
            let e = crate::factors::KeyError::OtherKey;
            crate::fault_log::report("not ready: the store records another factor key", Severity::Error, false, &e);
            false
        }
        Err(e) => {
            crate::fault_log::report("not ready: the store cannot take writes", Severity::Warn, true, &e);
            false
        }
    }
}

/// How far this host's clock is off the database's, for the log.
struct ClockOff {
    database_ahead_ms: i64,
}

impl std::fmt::Display for ClockOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, way) = (
            (self.database_ahead_ms.unsigned_abs() + 500) / 1000,
            if self.database_ahead_ms > 0 { "behind" } else { "ahead of" },
        );
        write!(
            f,
            "this host's clock is {secs} s {way} the database's (more than {} s): check NTP",
            crate::store::CLOCK_SKEW_MS / 1000
        )
    }
}
