//! The PostgreSQL engine's building blocks (issue 12): the `database_url` setting
//! ([`url::DatabaseUrl`]), the connection pool with TLS ([`connect`]) whose every round trip
//! is bounded ([`db`]), the schema and its
//! migrations ([`migrate`]), the shared server secrets ([`secrets`]) and the shared
//! brute-force state as SQL ([`brute_force`]) and behind the `BruteForceState` trait ([`state`]).
//!
//! The storage traits' engine over these pieces is `src/store/postgres.rs`. Every function takes a client or pool, so one instance or
//! many on one database behave the same: the database serialises what must be serialised.

pub mod brute_force;
pub mod connect;
pub mod db;
pub mod migrate;
pub mod secrets;
pub mod state;
pub mod url;

/// Errors of the PostgreSQL engine, at its boundary.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database answered with an error, or the connection failed. The message comes from
    /// the driver and never holds the password (tokio-postgres redacts it).
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool in time (the database is down or slow).
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The database did not answer within the limit (it is stopped, hung or cut off): the
    /// connection is not reused (`db`).
    #[error("the database did not answer within {} s", .0.as_secs())]
    Timeout(std::time::Duration),
    /// The database answers but takes no writes (why: a standby in recovery, or transactions
    /// that begin read-only), so nothing that records anything can work there.
    #[error("the database takes no writes: {0}")]
    ReadOnly(&'static str),
    /// The pool or the TLS configuration could not be built.
    #[error("database setup: {0}")]
    Setup(String),
    /// The system's random source failed (a new secret could not be made).
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
    /// The database holds a schema newer than this build knows: refuse rather than guess.
    #[error("the database schema is version {found}, newer than this portcullis knows ({known}); upgrade portcullis")]
    SchemaTooNew { found: i32, known: i32 },
}

impl PgError {
    /// Whether the database could not be reached or could not do the work (as opposed to a
    /// bug in a statement): the caller answers 503 and fails closed (SPEC.md, "Several
    /// instances, one truth").
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Pool(_) | PgError::Timeout(_) | PgError::ReadOnly(_) => true,
            // A write refused as read-only (a standby, `default_transaction_read_only`) is the
            // database unable to do the work, not a wrong statement.
            PgError::Db(e) => {
                e.is_closed()
                    || e.as_db_error().is_none()
                    || e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
            }
            PgError::Setup(_) | PgError::Random(_) | PgError::SchemaTooNew { .. } => false,
        }
    }
}
