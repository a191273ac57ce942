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
    /// the driver and never holds the password (tokio-postgres redacts it); see [`describe`]
    /// for what it says.
    #[error("database error: {}", describe(.0))]
    Db(tokio_postgres::Error),
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
    /// A command that only reads found no portcullis schema in the database (a mistyped
    /// database name, say): it makes none ([`crate::store::Store::connect_existing`]).
    #[error("no portcullis store in the database yet (is database_url right?)")]
    NoStore,
    /// The database holds a schema newer than this build knows: refuse rather than guess.
    #[error("the database schema is version {found}, newer than this portcullis knows ({known}); upgrade portcullis")]
    SchemaTooNew { found: i32, known: i32 },
    /// A command found a schema older than this build's: only a server's start upgrades it
    /// (README, "Upgrades"), so that trying a new binary's commands is no one-way step
    /// (review 204: `user list` upgraded a production database).
    #[error(
        "the database schema is version {found}, older than this portcullis's ({known}): a server of this build upgrades it at its start (take a backup first, README \"Upgrades\"); until then use the portcullis the servers run"
    )]
    SchemaTooOld { found: i32, known: i32 },
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

/// The driver's error in one line, with its causes: the database's own words for an error it
/// answered (`ERROR: cannot execute UPDATE in a read-only transaction (SQLSTATE 25006)`, where
/// the driver alone says "db error"), else the driver's words and their causes (`error
/// connecting to server: Connection refused (os error 111)`). So [`PgError::Db`] has no
/// `source`: its text is the whole chain, which error chains would otherwise print twice.
///
/// The database's DETAIL is left out: for a constraint it quotes the failing row ("Failing row
/// contains (…)"), which may hold a password hash or a token's hash, and no log gets those.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                text.push_str("; hint: ");
                text.push_str(hint);
            }
            text
        }
        None => {
            let mut text = crate::text::error_chain(e);
            if let Some(hint) = hint(e, &text) {
                text.push_str("; ");
                text.push_str(hint);
            }
            text
        }
    }
}

/// What to do about a connection refused on this side, where the driver's words leave an
/// operator guessing (found by a review): a certificate rustls would not accept (its errors
/// are Rust names, `Other(OtherError(CaUsedAsEndEntity))`), or a password the URL lacks
/// (`text`: the whole chain, where the driver says so).
fn hint(e: &(dyn std::error::Error + 'static), text: &str) -> Option<&'static str> {
    use rustls::CertificateError;
    // An `io::Error`'s `source` skips the error it wraps: each link is also asked for that.
    let links = std::iter::successors(Some(e), |s| s.source())
        .flat_map(|s| [Some(s), s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|i| i as _)])
        .flatten();
    for link in links {
        if let Some(rustls::Error::InvalidCertificate(why)) = link.downcast_ref::<rustls::Error>() {
            return Some(match why {
                // BadSignature: an issuer of the same name that did not sign it.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "the database's certificate is not issued by a certificate in sslrootcert (or, without it, the system's roots)"
                }
                CertificateError::Other(other)
                    if other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity) =>
                {
                    "the database presents a CA certificate (CA:TRUE, such as a plain self-signed one) as its own, which rustls refuses where libpq accepts it: give the database a certificate issued by a CA, and name that CA in sslrootcert"
                }
                _ => return None,
            });
        }
    }
    text.contains("password missing")
        .then_some("give the password in database_url (percent-encoded): PGPASSWORD and ~/.pgpass are not read")
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
                    // Cancelled: by the server's own limit (`connect::server_limits`) or an
                    // operator's `pg_cancel_backend`; either way the database did not do it.
                    || e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
            }
            PgError::Setup(_)
            | PgError::Random(_)
            | PgError::SchemaTooNew { .. }
            | PgError::SchemaTooOld { .. }
            | PgError::NoStore => false,
        }
    }

    /// Whether this is a database that is not there *yet*, as at boot when portcullis starts
    /// before PostgreSQL or during a failover: nothing listens (connection refused, no socket
    /// file), the connection broke or timed out, the server is starting up, shutting down or
    /// in recovery (SQLSTATE 57P03, class 08), has no free connection slot (53300), or takes
    /// no writes yet. Not a wrong password, a missing database, a certificate that does not
    /// verify, a host name that does not resolve or a schema too new: those stay wrong
    /// however long one waits, so `serve` stops at once with one line for them.
    pub fn is_not_there_yet(&self) -> bool {
        use std::io::ErrorKind;
        use tokio_postgres::error::SqlState;
        match self {
            PgError::Pool(_) | PgError::Timeout(_) | PgError::ReadOnly(_) => true,
            PgError::Db(e) => match e.as_db_error() {
                Some(db) => {
                    let code = db.code();
                    code == &SqlState::CANNOT_CONNECT_NOW
                        || code == &SqlState::TOO_MANY_CONNECTIONS
                        || code == &SqlState::ADMIN_SHUTDOWN
                        || code == &SqlState::READ_ONLY_SQL_TRANSACTION
                        || code.code().starts_with("08")
                }
                None if e.is_closed() => true,
                None => {
                    let io = std::iter::successors(std::error::Error::source(e), |s| s.source())
                        .find_map(|s| s.downcast_ref::<std::io::Error>());
                    io.is_some_and(|io| {
                        matches!(
                            io.kind(),
                            ErrorKind::ConnectionRefused
                                | ErrorKind::ConnectionReset
                                | ErrorKind::ConnectionAborted
                                | ErrorKind::NotConnected
                                | ErrorKind::NotFound
                                | ErrorKind::TimedOut
                                | ErrorKind::AddrNotAvailable
                                | ErrorKind::UnexpectedEof
                                | ErrorKind::BrokenPipe
                                | ErrorKind::HostUnreachable
                                | ErrorKind::NetworkUnreachable
                        )
                    })
                }
            },
            PgError::Setup(_)
            | PgError::Random(_)
            | PgError::SchemaTooNew { .. }
            | PgError::SchemaTooOld { .. }
            | PgError::NoStore => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_error_reads_in_one_line_with_its_cause_and_no_source_to_print_again() {
        // Port 1 on loopback: nothing listens there (it is privileged and unused).
        let e = tokio_postgres::connect("host=127.0.0.1 port=1 user=x connect_timeout=5", tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens on port 1");
        let e = PgError::from(e);
        let text = crate::text::error_chain(&e);
        assert!(text.starts_with("database error: error connecting to server: "), "{text}");
        assert!(text.contains("refused"), "the cause: {text}");
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(std::error::Error::source(&e).is_none(), "the text is the whole chain");
    }

    /// As tokio-postgres-rustls hands a refused certificate on: an `io::Error` around rustls's.
    fn refused(why: rustls::CertificateError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(why))
    }

    #[test]
    fn a_refused_certificate_or_a_missing_password_says_what_to_do() {
        let ca = rustls::OtherError(std::sync::Arc::new(webpki::Error::CaUsedAsEndEntity));
        let hint_of = |e: std::io::Error| hint(&e, &e.to_string()).unwrap_or_default();
        assert!(hint_of(refused(rustls::CertificateError::Other(ca))).contains("issued by a CA, and name that CA"));
        assert!(hint_of(refused(rustls::CertificateError::UnknownIssuer)).contains("not issued by a certificate"));
        assert!(hint_of(refused(rustls::CertificateError::BadSignature)).contains("not issued by a certificate"));
        let expired = refused(rustls::CertificateError::Expired);
        assert_eq!(hint(&expired, &expired.to_string()), None, "rustls says that well itself");
    }
}
