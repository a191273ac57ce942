//! The one way portcullis talks to the database at run time: a pool ([`Db`]) whose
//! connections ([`Conn`], [`Tx`]) bound every round trip by [`TIMEOUT`].
//!
//! The pool's own timeouts only bound getting a connection. A stopped or partitioned server
//! keeps its sockets open, so a query on a connection already open would wait for an answer
//! until TCP gives up (about 15 minutes), and `/readyz` and sign-ins would hang instead of
//! failing closed with 503 (SPEC.md, "Several instances, one truth"). Here no statement can
//! be sent without a limit: [`Conn`] does not hand out the driver's client, and the only
//! way to a pooled connection is [`Db::get`].
//!
//! A connection whose call did not finish (it timed out, or the caller's future was dropped
//! mid-call) may still have a statement in flight: it never goes back to the pool. Dropping
//! it detaches it (`deadpool::managed::Object::take`) and closes its socket (deadpool aborts
//! the connection task), so a stopped server costs at most the pool's size in sockets and
//! the pool opens fresh connections once the server answers again. A write that timed out may
//! still commit when the server wakes: the caller has answered 503, never a success. Nor
//! does a connection whose server turned out read-only (a refused write, or
//! [`Conn::writable`] for `/readyz`): it would stay so, and a new one may not.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, SimpleQueryMessage};

pub use super::connect::TIMEOUT;
use super::PgError;

/// Statement parameters, as the driver takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs one round trip within [`TIMEOUT`]; `busy` is set while it runs and stays set when it
/// does not finish (timeout, or the caller dropped), so the connection is not reused.
async fn bounded<T>(
    busy: &AtomicBool,
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    busy.store(true, Ordering::Relaxed);
    let answer = tokio::time::timeout(TIMEOUT, call).await.map_err(|_| PgError::Timeout(TIMEOUT))?;
    // Finished, with rows or with the database's error: the connection is in a known state.
    // But one whose write was refused as read-only refuses every later write too (its server
    // is a standby, or its session began with `default_transaction_read_only` on, which a
    // later `ALTER DATABASE` does not change): it is not reused, so the pool's next
    // connection can reach the writable primary after a failover or read the changed default.
    busy.store(is_read_only_refusal(&answer), Ordering::Relaxed);
    Ok(answer?)
}

/// Whether the database refused a statement because the transaction is read-only (SQLSTATE
/// 25006, `read_only_sql_transaction`).
fn is_read_only_refusal<T>(answer: &Result<T, tokio_postgres::Error>) -> bool {
    matches!(answer, Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION))
}

/// The one statement that says whether a write transaction is possible on a connection's
/// server: whether it is in recovery (a hot standby, which refuses every write) and whether
/// a transaction begins read-only there (`default_transaction_read_only`, set for the server,
/// the database, the role or the session; PostgreSQL docs, "Client Connection Defaults").
const WRITABLE: &str = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), \
                        (extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A pool of connections to one database whose every statement is bounded by [`TIMEOUT`].
#[derive(Clone)]
pub struct Db(Pool);

impl Db {
    /// Wraps `pool` (built by [`super::connect::pool`]).
    pub(super) fn new(pool: Pool) -> Self {
        Db(pool)
    }

    /// A connection from the pool, within the pool's bounded waits ([`TIMEOUT`] each).
    ///
    /// # Errors
    /// [`PgError::Pool`] when none could be had in time (the database is down or slow).
    pub async fn get(&self) -> Result<Conn, PgError> {
        Ok(Conn { obj: Some(self.0.get().await?), busy: AtomicBool::new(false) })
    }
}

/// A pooled connection. Fixed SQL texts are prepared once per connection and reused
/// (deadpool's statement cache: one round trip per statement instead of two, no parse or
/// plan per call; BENCHMARKS.md, "sled and PostgreSQL side by side"); SQL built from values
/// goes through [`Conn::query_uncached`] so the cache stays bounded. Each call, with its
/// prepare, is one bounded wait (see the module's text).
pub struct Conn {
    /// `Some` until `Drop`, which alone takes it.
    obj: Option<Object>,
    /// A call is under way or did not finish.
    busy: AtomicBool,
}

impl Conn {
    // Only `Drop` empties `obj`, and nothing can call a method after it.
    #[allow(clippy::expect_used)]
    fn client(&self) -> &deadpool_postgres::ClientWrapper {
        self.obj.as_deref().expect("a connection is held until dropped")
    }

    /// The rows of `sql`.
    ///
    /// # Errors
    /// [`PgError::Timeout`] past [`TIMEOUT`]; [`PgError::Db`] when the database refuses.
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
        let c = self.client();
        bounded(&self.busy, async { c.query(&c.prepare_cached(sql).await?, params).await }).await
    }

    /// At most one row of `sql`. Errors as [`Conn::query`], and when there are more rows.
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, PgError> {
        let c = self.client();
        bounded(&self.busy, async { c.query_opt(&c.prepare_cached(sql).await?, params).await }).await
    }

    /// Exactly one row of `sql`. Errors as [`Conn::query`], and when there is not one row.
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, PgError> {
        let c = self.client();
        bounded(&self.busy, async { c.query_one(&c.prepare_cached(sql).await?, params).await }).await
    }

    /// How many rows `sql` changed. Errors as [`Conn::query`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        let c = self.client();
        bounded(&self.busy, async { c.execute(&c.prepare_cached(sql).await?, params).await }).await
    }

    /// The rows of `sql` prepared afresh (not cached): for SQL text built from values.
    /// Errors as [`Conn::query`].
    pub async fn query_uncached(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
        let c = self.client();
        bounded(&self.busy, c.query(sql, params)).await
    }

    /// `sql` by the simple query protocol (no parameters). Errors as [`Conn::query`].
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, PgError> {
        let c = self.client();
        bounded(&self.busy, c.simple_query(sql)).await
    }

    /// Whether this connection's server takes writes now, in one round trip (`WRITABLE`):
    /// for `GET /readyz`, which must not call ready a database that answers reads but refuses
    /// every write (a standby after a failover, `default_transaction_read_only` on). The
    /// answer is how far the database's clock is ahead of this process's (milliseconds,
    /// negative when behind), taken against the middle of the round trip.
    ///
    /// # Errors
    /// [`PgError::ReadOnly`] with the reason when it does not (the connection is then not
    /// reused: see `bounded`); otherwise as [`Conn::query`].
    pub async fn writable(&self) -> Result<i64, PgError> {
        let sent = crate::store::now_ms();
        let messages = self.simple_query(WRITABLE).await?;
        let middle = (sent + crate::store::now_ms()) / 2;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        // The simple protocol answers in text: `t`/`f` for a boolean, `on`/`off` for the setting.
        let refusal = match row.map(|r| (r.get(0), r.get(1))) {
            Some((Some("f"), Some("off"))) => {
                let clock = row.and_then(|r| r.get(2)).and_then(|t| t.parse::<i64>().ok());
                let middle = i64::try_from(middle).unwrap_or(i64::MAX);
                return Ok(clock.map_or(0, |c| c.saturating_sub(middle)));
            }
            Some((Some("t"), _)) => PgError::ReadOnly("it is in recovery (a hot standby)"),
            Some((_, Some("on"))) => PgError::ReadOnly("transactions begin read-only (default_transaction_read_only)"),
            _ => PgError::ReadOnly("it did not say whether it takes writes"),
        };
        // As for a refused write: this connection would stay read-only, a new one may not.
        self.busy.store(true, Ordering::Relaxed);
        Err(refusal)
    }

    /// The database's clock (`clock_timestamp()`), Unix milliseconds.
    ///
    /// # Errors
    /// As [`Conn::query`].
    pub async fn database_clock_ms(&self) -> Result<i64, PgError> {
        let row = self.query_one("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint", &[]).await?;
        Ok(row.get(0))
    }

    /// Begins a transaction; it rolls back unless [`Tx::commit`] is called.
    /// Errors as [`Conn::query`].
    // As in `client`: only `Drop` empties `obj`.
    #[allow(clippy::expect_used)]
    pub async fn transaction(&mut self) -> Result<Tx<'_>, PgError> {
        let Conn { obj, busy } = self;
        let client = obj.as_deref_mut().expect("a connection is held until dropped");
        let busy = &*busy;
        let tx = bounded(busy, client.transaction()).await?;
        Ok(Tx { tx, busy })
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("busy", &self.busy).finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            if *self.busy.get_mut() {
                // Out of the pool, and the socket closed with it (see the module's text).
                drop(Object::take(obj));
                tracing::debug!("database connection dropped after an unfinished call");
            }
        }
    }
}

/// A transaction on a [`Conn`], every round trip bounded as the connection's.
pub struct Tx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    busy: &'a AtomicBool,
}

impl Tx<'_> {
    /// How many rows `sql` changed (prepared once per connection, as [`Conn::execute`]).
    /// Errors as [`Conn::query`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        let t = &self.tx;
        bounded(self.busy, async { t.execute(&t.prepare_cached(sql).await?, params).await }).await
    }

    /// Commits. Errors as [`Conn::query`]; after an error nothing of it is applied, except
    /// after a timeout, where the outcome is unknown.
    pub async fn commit(self) -> Result<(), PgError> {
        bounded(self.busy, self.tx.commit()).await
    }
}

/// What the SQL helpers shared by the engine and the tools ask of a connection: a pooled
/// [`Conn`] or [`Tx`], or a plain driver connection (migrations' `connect`, tools, tests).
/// Every implementation bounds each call by [`TIMEOUT`].
#[async_trait::async_trait]
pub trait Statements: Sync {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError>;
    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, PgError>;
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, PgError>;
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError>;
}

#[async_trait::async_trait]
impl Statements for Conn {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
        Conn::query(self, sql, params).await
    }
    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, PgError> {
        Conn::query_one(self, sql, params).await
    }
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, PgError> {
        Conn::query_opt(self, sql, params).await
    }
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        Conn::execute(self, sql, params).await
    }
}

#[async_trait::async_trait]
impl Statements for Tx<'_> {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
        let t = &self.tx;
        bounded(self.busy, async { t.query(&t.prepare_cached(sql).await?, params).await }).await
    }
    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, PgError> {
        let t = &self.tx;
        bounded(self.busy, async { t.query_one(&t.prepare_cached(sql).await?, params).await }).await
    }
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, PgError> {
        let t = &self.tx;
        bounded(self.busy, async { t.query_opt(&t.prepare_cached(sql).await?, params).await }).await
    }
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        Tx::execute(self, sql, params).await
    }
}

/// A plain connection has no pool to leave: after a timeout its owner drops it.
#[async_trait::async_trait]
impl Statements for tokio_postgres::Client {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
        plain(tokio_postgres::Client::query(self, sql, params)).await
    }
    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, PgError> {
        plain(tokio_postgres::Client::query_one(self, sql, params)).await
    }
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, PgError> {
        plain(tokio_postgres::Client::query_opt(self, sql, params)).await
    }
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        plain(tokio_postgres::Client::execute(self, sql, params)).await
    }
}

async fn plain<T>(call: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, PgError> {
    tokio::time::timeout(TIMEOUT, call).await.map_err(|_| PgError::Timeout(TIMEOUT))?.map_err(PgError::from)
}
