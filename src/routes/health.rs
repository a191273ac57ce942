//! `GET /healthz`: liveness, with no session and no store access, so it answers even while
//! every core is hashing. `GET /readyz`: readiness for load balancers, 200 while the store
//! can take writes and 503 while it cannot (down, hung, a read-only database, a sled store
//! after a failed write, or an auth log that cannot be written: every sign-in writes both),
//! records another factor key than this server's, or keeps a time more than
//! 30 s off this host's clock, with the reason logged (SPEC, "Several instances, one
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
    match not_ready(state).await {
        Ok(None) => true,
        Ok(Some(why)) => {
            crate::fault_log::report(why.what(), Severity::Error, false, &why);
            false
        }
        Err(e) => {
            crate::fault_log::report("not ready: the store cannot take writes", Severity::Warn, true, &e);
            false
        }
    }
}

/// Why this instance is not ready though its store answers; `None` when it is ready.
///
/// # Errors
/// [`crate::store::StoreError`] when the store cannot take writes or be read.
async fn not_ready(state: &crate::app::AppState) -> Result<Option<NotReady>, crate::store::StoreError> {
    // Instances stamp sessions with their own clocks, and end those stamped further ahead
    // than the skew allows: two that far apart would sign users out, or stretch their
    // timeouts. Each within half of it of the database is within all of it of the others.
    if let Some(ms) = state.store.ready().await?.filter(|ms| ms.unsigned_abs() > CLOCK_LIMIT_MS) {
        return Ok(Some(NotReady::ClockOff { database_ahead_ms: ms }));
    }
    // Every sign-in needs its line in the auth log: one that cannot be written is a 503.
    if state.audit.log_unwritable() {
        return Ok(Some(NotReady::AuthLogUnwritable { last_error: state.audit.last_log_error() }));
    }
    // Every second factor this server sealed or checked would fail (a 500 each); the servers
    // with the recorded key serve them.
    Ok(state.factors.has_another_key().await?.then_some(NotReady::OtherFactorKey))
}

/// How far this host's clock may be off the database's and the host still be ready
/// (milliseconds): half of [`crate::store::CLOCK_SKEW_MS`], so that any two ready instances
/// are within the skew of each other. The offset is measured against the middle of one round
/// trip, off by at most half of it (milliseconds on a network a database is used over).
pub const CLOCK_LIMIT_MS: u64 = crate::store::CLOCK_SKEW_MS / 2;

/// Why a store that answers is still not ready, for the log.
enum NotReady {
    /// This host's clock is more than [`CLOCK_LIMIT_MS`] off the database's. Either may be
    /// the wrong one: with every instance off by the same amount, it is the database's.
    ClockOff { database_ahead_ms: i64 },
    /// The store records another factor key than this server's.
    OtherFactorKey,
    /// The auth log's last write failed, or its disk is full
    /// ([`crate::audit::Audit::log_unwritable`]); `last_error` the last failed write's error,
    /// empty when none failed yet.
    AuthLogUnwritable { last_error: String },
}

impl NotReady {
    /// The kind of fault, as `fault_log` bounds its lines.
    fn what(&self) -> &'static str {
        match self {
            NotReady::ClockOff { .. } => "not ready: this host's clock is off the database's",
            NotReady::OtherFactorKey => "not ready: the store records another factor key",
            NotReady::AuthLogUnwritable { .. } => "not ready: the auth log cannot be written",
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::ClockOff { database_ahead_ms } => {
                let secs = database_ahead_ms.unsigned_abs() as f64 / 1000.0;
                let way = if *database_ahead_ms > 0 { "behind" } else { "ahead of" };
                write!(
                    f,
                    "this host's clock is {secs:.1} s {way} the database's (more than {} s): check NTP on both",
                    CLOCK_LIMIT_MS / 1000
                )
            }
            NotReady::OtherFactorKey => crate::factors::KeyError::OtherKey.fmt(f),
            NotReady::AuthLogUnwritable { last_error } if last_error.is_empty() => write!(
                f,
                "the disk of the auth log in log_dir has less than 64 KiB free: sign-ins are answered 503 as soon as their \
                 line cannot be written, until there is room"
            ),
            NotReady::AuthLogUnwritable { last_error } => write!(
                f,
                "the last line could not be written to the auth log in log_dir ({last_error}): every sign-in is answered \
                 503 until it can"
            ),
        }
    }
}
