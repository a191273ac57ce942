//! The PostgreSQL engine: the storage traits of [`super`] over a deadpool of tokio-postgres
//! connections, on the schema of `src/postgres/migrations/` (issue 12 §2). Several instances
//! share one database, so every update is one statement that tests and changes a row under
//! its row lock (the SQL form of the sled engine's compare-and-swap), and no data is cached
//! in the process (prepared statements are, per connection: [`Conn`]). Each statement runs in its own transaction: a write is durable when its
//! commit returns, which is before the method does.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    Credential, Cursor, Factors, FailureQuery, FailureRecord, FailureStore, Result, SecretStore, Session, SessionStore,
    SessionTimes, StoreError, StoredSession, TokenHash, User, UserStore,
};
use crate::audit::FailureReason;
use crate::postgres::connect::{connect, pool, POOL_SIZE};
use crate::postgres::migrate::migrate;
use crate::postgres::url::DatabaseUrl;
use crate::postgres::PgError;

impl From<PgError> for StoreError {
    /// Every database failure fails closed as [`StoreError::Unavailable`] (503): a lost
    /// connection, a timeout, and a statement the server refused alike.
    fn from(e: PgError) -> Self {
        match e {
            PgError::Random(r) => StoreError::Random(r),
            other => StoreError::Unavailable(Box::new(other)),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::from(e).into()
    }
}

/// The engine: a pool on one database whose schema is current.
pub struct PgStore {
    pool: Pool,
    /// `instance_name`, for the failure records' `instance` column.
    instance: String,
}

/// Unix ms as PostgreSQL's bigint (times past year 292 million saturate).
fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A bigint column back to Unix ms (a negative value, which no writer makes, reads as 0).
fn unms(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

const USER_COLUMNS: &str =
    "key, display_name, admin, created_at_ms, password_changed_at_ms, last_login_at_ms, disabled, password_hash";

fn user_of(row: &Row) -> User {
    User {
        key: row.get(0),
        display_name: row.get(1),
        admin: row.get(2),
        created_at: unms(row.get(3)),
        password_changed_at: unms(row.get(4)),
        last_login_at: row.get::<_, Option<i64>>(5).map(unms),
        disabled: row.get(6),
    }
}

const SESSION_COLUMNS: &str = "user_key, created_at_ms, last_seen_at_ms, ip, user_agent, token_hash, factors";

fn session_of(row: &Row) -> Session {
    Session {
        user_key: row.get(0),
        created_at: unms(row.get(1)),
        last_seen_at: unms(row.get(2)),
        ip: row.get(3),
        user_agent: row.get(4),
        factors: Factors::from_count(row.get::<_, i16>(6).into()),
    }
}

fn token_hash_of(row: &Row, i: usize) -> Result<TokenHash> {
    let bytes: Vec<u8> = row.get(i);
    bytes.try_into().map_err(|_| StoreError::Corrupt("a session's token hash is not 32 bytes".into()))
}

const FAILURE_COLUMNS: &str = "id, time_ms, host(ip), username, reason, user_agent, typed, count";

fn failure_of(row: &Row) -> Result<(Cursor, FailureRecord)> {
    let reason: String = row.get(4);
    let reason = FailureReason::parse(&reason)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown failure reason {reason:?}")))?;
    let id: i64 = row.get(0);
    let record = FailureRecord {
        time: unms(row.get(1)),
        ip: row.get(2),
        username: row.get(3),
        reason,
        user_agent: row.get(5),
        typed: row.get(6),
        count: unms(row.get(7)).max(1),
    };
    Ok((Cursor::new(record.time, unms(id)), record))
}

impl PgStore {
    /// Connects to `url`, brings its schema to the current version (safe when several
    /// instances start at once: see `postgres::migrate`), and returns the engine with a pool
    /// of [`POOL_SIZE`] connections; `instance` goes into the failure records it appends.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached, refuses, or holds a
    /// newer schema than this build knows.
    pub async fn open(url: &DatabaseUrl, instance: &str) -> Result<Self> {
        let mut client = connect(url).await?;
        migrate(&mut client).await?;
        Ok(PgStore { pool: pool(url, POOL_SIZE)?, instance: instance.to_string() })
    }

    /// The pool, for the brute-force state that shares it (`Store::shared_brute_force`).
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<Conn> {
        Ok(Conn(self.pool.get().await?))
    }
}

/// A pooled connection whose statements are prepared once per connection and then reused
/// (deadpool's statement cache): one round trip per statement instead of two (Parse and
/// Describe, then Bind and Execute) and no parsing or planning per call. Measured in
/// BENCHMARKS.md ("sled and PostgreSQL side by side"): every signed-in page view and half of
/// a sign-in's statements go through here. Only fixed SQL texts may use it (the cache is
/// unbounded); [`Conn::uncached`] is for text built from values.
struct Conn(deadpool_postgres::Object);

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn {
    async fn query(&self, sql: &str, params: Params<'_>) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.0.query(&self.0.prepare_cached(sql).await?, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
        self.0.query_opt(&self.0.prepare_cached(sql).await?, params).await
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> std::result::Result<Row, tokio_postgres::Error> {
        self.0.query_one(&self.0.prepare_cached(sql).await?, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> std::result::Result<u64, tokio_postgres::Error> {
        self.0.execute(&self.0.prepare_cached(sql).await?, params).await
    }

    /// The connection itself, for SQL built from values (prepared afresh, not cached).
    fn uncached(&self) -> &tokio_postgres::Client {
        &self.0
    }
}

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn get(&self, key: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE key = $1");
        Ok(self.client().await?.query_opt(&sql, &[&key]).await?.as_ref().map(user_of))
    }

    async fn credential(&self, key: &str) -> Result<Option<Credential>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE key = $1");
        let row = self.client().await?.query_opt(&sql, &[&key]).await?;
        Ok(row.map(|r| Credential { user: user_of(&r), password_hash: r.get(7) }))
    }

    async fn list(&self) -> Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users");
        Ok(self.client().await?.query(&sql, &[]).await?.iter().map(user_of).collect())
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM users", &[]).await?.get(0);
        Ok(unms(n))
    }

    async fn insert(&self, user: &User, password_hash: &str) -> Result<()> {
        let inserted = self
            .client()
            .await?
            .execute(
                "INSERT INTO users (key, display_name, password_hash, admin, disabled, created_at_ms,
                                    password_changed_at_ms, last_login_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key) DO NOTHING",
                &[
                    &user.key,
                    &user.display_name,
                    &password_hash,
                    &user.admin,
                    &user.disabled,
                    &ms(user.created_at),
                    &ms(user.password_changed_at),
                    &user.last_login_at.map(ms),
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.client().await?.execute("DELETE FROM users WHERE key = $1", &[&key]).await? > 0)
    }

    async fn set_password_hash(&self, key: &str, password_hash: &str, now: u64) -> Result<Option<User>> {
        // Strictly increasing, so two changes within one millisecond are still two passwords
        // to `record_login`; the row lock orders concurrent changes.
        let sql = format!(
            "UPDATE users SET password_hash = $2,
                              password_changed_at_ms = GREATEST($3::bigint, password_changed_at_ms + 1)
             WHERE key = $1 RETURNING {USER_COLUMNS}"
        );
        let row = self.client().await?.query_opt(&sql, &[&key, &password_hash, &ms(now)]).await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn set_disabled(&self, key: &str, disabled: bool) -> Result<Option<User>> {
        let sql = format!("UPDATE users SET disabled = $2 WHERE key = $1 RETURNING {USER_COLUMNS}");
        Ok(self.client().await?.query_opt(&sql, &[&key, &disabled]).await?.as_ref().map(user_of))
    }

    async fn record_login(&self, verified: &Credential, upgraded_hash: Option<&str>, now: u64) -> Result<Option<User>> {
        // The update's WHERE is the compare: the same password generation, not disabled. It is
        // re-checked on the row's latest version after any concurrent update commits, so a
        // password change or a disable in between wins. The second branch answers a disabled
        // user (unchanged); no row at all means gone or another password.
        let sql = format!(
            "WITH up AS (
                 UPDATE users SET last_login_at_ms = $3,
                     password_hash = CASE WHEN $4::text IS NOT NULL AND password_hash = $5 THEN $4 ELSE password_hash END
                 WHERE key = $1 AND password_changed_at_ms = $2 AND NOT disabled
                 RETURNING {USER_COLUMNS})
             SELECT {USER_COLUMNS} FROM up
             UNION ALL
             SELECT {USER_COLUMNS} FROM users
             WHERE key = $1 AND password_changed_at_ms = $2 AND disabled AND NOT EXISTS (SELECT 1 FROM up)"
        );
        let row = self
            .client()
            .await?
            .query_opt(
                &sql,
                &[
                    &verified.user.key,
                    &ms(verified.user.password_changed_at),
                    &ms(now),
                    &upgraded_hash,
                    &verified.password_hash,
                ],
            )
            .await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn most_common_hash(&self) -> Result<Option<String>> {
        // Grouped in SQL by everything before the salt (algorithm, version, parameters) and the
        // string's length (which follows the salt and output lengths); the Rust shape then
        // picks among the few kinds, exactly as the sled engine does.
        let rows = self
            .client()
            .await?
            .query(
                "SELECT count(*), min(password_hash) FROM users
                 GROUP BY regexp_replace(password_hash, '\\$[^$]*\\$[^$]*$', ''), length(password_hash)",
                &[],
            )
            .await?;
        let mut kinds: std::collections::HashMap<(String, usize), (i64, String)> = Default::default();
        for row in rows {
            let (n, example): (i64, String) = (row.get(0), row.get(1));
            if let Some(shape) = crate::password::pool::shape_of(&example) {
                kinds.entry(shape).or_insert((0, example)).0 += n;
            }
        }
        // The most common kind; ties go to the larger shape string, so the choice is stable.
        Ok(kinds.into_iter().max_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0))).map(|(_, (_, example))| example))
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn insert(&self, token_hash: &TokenHash, session: &Session) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO sessions (token_hash, user_key, created_at_ms, last_seen_at_ms, ip, user_agent, factors)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (token_hash) DO UPDATE SET user_key = $2, created_at_ms = $3,
                     last_seen_at_ms = $4, ip = $5, user_agent = $6, factors = $7",
                &[
                    &&token_hash[..],
                    &session.user_key,
                    &ms(session.created_at),
                    &ms(session.last_seen_at),
                    &session.ip,
                    &session.user_agent,
                    &i16::from(session.factors.count()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn get(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1");
        Ok(self.client().await?.query_opt(&sql, &[&&token_hash[..]]).await?.as_ref().map(session_of))
    }

    async fn touch(&self, token_hash: &TokenHash, now: u64) -> Result<()> {
        // An UPDATE of nothing for an ended session: a touch never revives one.
        self.client()
            .await?
            .execute(
                "UPDATE sessions SET last_seen_at_ms = $2 WHERE token_hash = $1 AND last_seen_at_ms < $2",
                &[&&token_hash[..], &ms(now)],
            )
            .await?;
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> Result<bool> {
        Ok(self.client().await?.execute("DELETE FROM sessions WHERE token_hash = $1", &[&&token_hash[..]]).await? > 0)
    }

    async fn list_for_user(&self, user_key: &str) -> Result<Vec<StoredSession>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_key = $1");
        let rows = self.client().await?.query(&sql, &[&user_key]).await?;
        rows.iter().map(|r| Ok(StoredSession { token_hash: token_hash_of(r, 5)?, record: session_of(r) })).collect()
    }

    async fn times_for_user(&self, user_key: &str) -> Result<Vec<SessionTimes>> {
        let rows = self
            .client()
            .await?
            .query("SELECT token_hash, created_at_ms, last_seen_at_ms FROM sessions WHERE user_key = $1", &[&user_key])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionTimes {
                    token_hash: token_hash_of(r, 0)?,
                    created_at: unms(r.get(1)),
                    last_seen_at: unms(r.get(2)),
                })
            })
            .collect()
    }

    async fn delete_for_user(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize> {
        let keep = keep.map(|k| &k[..]);
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM sessions WHERE user_key = $1 AND ($2::bytea IS NULL OR token_hash <> $2)",
                &[&user_key, &keep],
            )
            .await?;
        Ok(n as usize)
    }

    async fn purge_expired(&self, idle_ms: u64, absolute_ms: u64, now: u64) -> Result<usize> {
        // The sled engine's rule: idle or old for at least the limit.
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM sessions WHERE $3::bigint - last_seen_at_ms >= $1 OR $3::bigint - created_at_ms >= $2",
                &[&ms(idle_ms), &ms(absolute_ms), &ms(now)],
            )
            .await?;
        Ok(n as usize)
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM sessions", &[]).await?.get(0);
        Ok(unms(n))
    }
}

/// `Cursor`'s sequence as the `id` column.
fn cursor_id(c: &Cursor) -> i64 {
    ms(c.parts().1)
}

#[async_trait]
impl FailureStore for PgStore {
    async fn append(&self, record: &FailureRecord, user_key: &str, max_records: Option<u64>) -> Result<Cursor> {
        // The cap in the same statement, counted in ids rather than rows (a count(*) per
        // append would scan the table): ids are one sequence and records are dropped only
        // from the old end, so the newest `max` ids are at most `max` records. A sequence
        // value lost to a rolled-back insert makes it keep one fewer, never one more.
        let cap = max_records.map(|m| ms(m.max(1)));
        let row = self
            .client()
            .await?
            .query_one(
                "WITH ins AS (
                     INSERT INTO failures (time_ms, ip, username, user_key, typed, reason, user_agent, count, instance)
                     VALUES ($1, $2::text::inet, $3, $4, $5, $6, $7, $8, $10) RETURNING id),
                 capped AS (
                     DELETE FROM failures WHERE $9::bigint IS NOT NULL AND id <= (SELECT id FROM ins) - $9)
                 SELECT id FROM ins",
                &[
                    &ms(record.time),
                    &record.ip,
                    &record.username,
                    &user_key,
                    &record.typed,
                    &record.reason.as_str(),
                    &record.user_agent,
                    &ms(record.count.max(1)),
                    &cap,
                    &self.instance,
                ],
            )
            .await?;
        Ok(Cursor::new(record.time, unms(row.get(0))))
    }

    async fn set_count(&self, at: &Cursor, count: u64) -> Result<()> {
        self.client()
            .await?
            .execute("UPDATE failures SET count = $2 WHERE id = $1", &[&cursor_id(at), &ms(count.max(1))])
            .await?;
        Ok(())
    }

    async fn query(&self, q: &FailureQuery) -> Result<Vec<(Cursor, FailureRecord)>> {
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |clause: &str, value: Box<dyn ToSql + Sync + Send>, params: &mut Vec<_>| {
            params.push(value);
            clauses.push(clause.replace('?', &format!("${}", params.len())));
        };
        if let Some(since) = q.since {
            add("time_ms >= ?", Box::new(ms(since)), &mut params);
        }
        if let Some(until) = q.until {
            add("time_ms <= ?", Box::new(ms(until)), &mut params);
        }
        if let Some(user_key) = &q.user_key {
            add("user_key = ?", Box::new(user_key.clone()), &mut params);
        }
        if let Some(net) = q.ip {
            // inet's btree serves `<<=` (see the migration's indexes).
            add("ip <<= ?::text::inet", Box::new(net.trunc().to_string()), &mut params);
        }
        if let Some(reason) = q.reason {
            add("reason = ?", Box::new(reason.as_str().to_string()), &mut params);
        }
        if let Some(before) = q.before {
            let (time, _) = before.parts();
            params.push(Box::new(ms(time)));
            params.push(Box::new(cursor_id(&before)));
            clauses.push(format!("(time_ms, id) < (${}, ${})", params.len() - 1, params.len()));
        }
        let mut sql = format!("SELECT {FAILURE_COLUMNS} FROM failures");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY time_ms DESC, id DESC");
        if q.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", q.limit));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        // The text holds the limit: prepared afresh, so the statement cache stays bounded.
        let rows = self.client().await?.uncached().query(&sql, &refs).await?;
        rows.iter().map(failure_of).collect()
    }

    async fn purge_before(&self, cutoff: u64) -> Result<usize> {
        let n = self.client().await?.execute("DELETE FROM failures WHERE time_ms < $1", &[&ms(cutoff)]).await?;
        Ok(n as usize)
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM failures", &[]).await?.get(0);
        Ok(unms(n))
    }

    async fn enforce_cap(&self, max_records: Option<u64>) -> Result<u64> {
        let client = self.client().await?;
        if let Some(max) = max_records {
            client
                .execute(
                    "DELETE FROM failures WHERE id IN (
                         SELECT id FROM failures ORDER BY time_ms DESC, id DESC OFFSET $1)",
                    &[&ms(max)],
                )
                .await?;
        }
        let n: i64 = client.query_one("SELECT count(*) FROM failures", &[]).await?.get(0);
        Ok(unms(n))
    }
}

#[async_trait]
impl SecretStore for PgStore {
    async fn secret(&self, name: &str) -> Result<[u8; 32]> {
        let client = self.client().await?;
        Ok(crate::postgres::secrets::secret(&client, name).await?)
    }
}
