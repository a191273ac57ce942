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
    // than the skew allows: two that far apart would sign users out, or stretch their
    // timeouts. Each within half of it of the database is within all of it of the others.
    if let Some(ms) = offset.filter(|ms| ms.unsigned_abs() > CLOCK_LIMIT_MS) {
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

/// How far this host's clock may be off the database's and the host still be ready
/// (milliseconds): half of [`crate::store::CLOCK_SKEW_MS`], so that any two ready instances
/// are within the skew of each other. The offset is measured against the middle of one round
/// trip, off by at most half of it (milliseconds on a network a database is used over).
pub const CLOCK_LIMIT_MS: u64 = crate::store::CLOCK_SKEW_MS / 2;

/// How far this host's clock is off the database's, for the log. Either may be the wrong one:
/// with every instance off by the same amount, it is the database's.
struct ClockOff {
    database_ahead_ms: i64,
}

impl std::fmt::Display for ClockOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.database_ahead_ms.unsigned_abs() as f64 / 1000.0;
        let way = if self.database_ahead_ms > 0 { "behind" } else { "ahead of" };
        write!(
            f,
            "this host's clock is {secs:.1} s {way} the database's (more than {} s): check NTP on both",
            CLOCK_LIMIT_MS / 1000
        )
    }
}
