//! The PostgreSQL engine: the storage traits of [`super`] over a deadpool of tokio-postgres
//! connections, on the schema of `src/postgres/migrations/` (issue 12 §2). Several instances
//! share one database, so every update is one statement that tests and changes a row under
//! its row lock (the SQL form of the sled engine's compare-and-swap), and no data is cached
//! in the process (prepared statements are, per connection: [`Conn`], which also bounds every
//! round trip). Each statement runs in its own transaction: a write is durable when its
//! commit returns, which is before the method does.

mod passkeys;

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    Appended, Capped, Credential, Cursor, FactorStore, FactorSummary, Factors, FailureQuery, FailureRecord,
    FailureStore, PendingSignIn, RecoveryCodeUse, Resolved, Result, SecretStore, Session, SessionCap, SessionStore,
    SessionTimes, StoreError, StoredSession, TokenHash, TotpFactor, User, UserFactors, UserStore,
};
use crate::audit::FailureReason;
use crate::postgres::connect::{connect, pool, MIGRATE_TIMEOUT, POOL_SIZE};
use crate::postgres::db::{Conn, Db, Statements};
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

/// The engine: a pool on one database whose schema is current.
pub struct PgStore {
    /// Every statement bounded (`postgres::db`): a hung database fails closed, as a down one.
    pool: Db,
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

/// The `SET` item of a new credential generation at `$2` (Unix ms): strictly increasing, so
/// two changes within one millisecond are still two generations to `record_login` and the
/// sessions; the row lock orders concurrent changes.
const NEW_GENERATION: &str = "password_changed_at_ms = GREATEST($2::bigint, password_changed_at_ms + 1)";

const USER_COLUMNS: &str =
    "key, display_name, admin, created_at_ms, password_changed_at_ms, last_login_at_ms, disabled, password_hash, groups";

/// A row's groups; a name that does not parse (written by hand, or by a later version with
/// other rules) is left out: it can only take access away, never give it.
fn groups_of(row: &Row) -> Vec<crate::domain::Group> {
    let names: Vec<String> = row.get(8);
    let mut groups: Vec<_> = names.iter().filter_map(|g| crate::domain::Group::parse(g).ok()).collect();
    groups.sort();
    groups.dedup();
    groups
}

fn group_names(groups: &[crate::domain::Group]) -> Vec<String> {
    groups.iter().map(|g| g.as_str().to_string()).collect()
}

fn user_of(row: &Row) -> User {
    User {
        groups: groups_of(row),
        key: row.get(0),
        display_name: row.get(1),
        admin: row.get(2),
        created_at: unms(row.get(3)),
        password_changed_at: unms(row.get(4)),
        last_login_at: row.get::<_, Option<i64>>(5).map(unms),
        disabled: row.get(6),
    }
}

const SESSION_COLUMNS: &str =
    "user_key, created_at_ms, last_seen_at_ms, ip, user_agent, token_hash, factors, password_changed_at_ms, passkey_id";

fn session_of(row: &Row) -> Session {
    session_at(row, 0)
}

/// The session whose [`SESSION_COLUMNS`] start at column `base` of `row`.
fn session_at(row: &Row, base: usize) -> Session {
    Session {
        user_key: row.get(base),
        created_at: unms(row.get(base + 1)),
        last_seen_at: unms(row.get(base + 2)),
        ip: row.get(base + 3),
        user_agent: row.get(base + 4),
        factors: Factors::from_count(row.get::<_, i16>(base + 6).into()),
        password_changed_at: unms(row.get(base + 7)),
        passkey_id: row.get(base + 8),
    }
}

/// [`SessionStore::resolve`]'s statement without the user's sessions: the user's columns
/// first (as [`user_of`] reads them, the password hash left out: a page view has no use for
/// it), then the session's ([`SESSION_COLUMNS`] from column [`RESOLVED_SESSION`]); NULL user columns when the
/// user is gone. One row, or none without such a session; both lookups by primary key.
const RESOLVE_SQL: &str = "SELECT u.key, u.display_name, u.admin, u.created_at_ms, u.password_changed_at_ms,
        u.last_login_at_ms, u.disabled, NULL::text, u.groups,
        s.user_key, s.created_at_ms, s.last_seen_at_ms, s.ip, s.user_agent, s.token_hash, s.factors,
        s.password_changed_at_ms, s.passkey_id
 FROM sessions s
 LEFT JOIN users u ON u.key = s.user_key
 WHERE s.token_hash = $1";

/// Where the resolved session's columns begin in [`RESOLVE_SQL`]'s and
/// [`RESOLVE_LISTING_SQL`]'s rows, and where the listed session's begin in the latter's.
const RESOLVED_SESSION: usize = 9;
const LISTED_SESSION: usize = 18;

/// [`RESOLVE_SQL`] with each session of the same user from column [`LISTED_SESSION`] (by `sessions_by_user`):
/// one row per such session, the session's own among them (so an inner join: never a row
/// without one, whose NULLs [`token_hash_of`] could not read). A text of its own rather than
/// one with a `$2` switch: a cached generic plan keeps such a switch as a join filter and
/// scans the user's sessions even when it is off.
const RESOLVE_LISTING_SQL: &str = "SELECT u.key, u.display_name, u.admin, u.created_at_ms, u.password_changed_at_ms,
        u.last_login_at_ms, u.disabled, NULL::text, u.groups,
        s.user_key, s.created_at_ms, s.last_seen_at_ms, s.ip, s.user_agent, s.token_hash, s.factors,
        s.password_changed_at_ms, s.passkey_id,
        o.user_key, o.created_at_ms, o.last_seen_at_ms, o.ip, o.user_agent, o.token_hash, o.factors,
        o.password_changed_at_ms, o.passkey_id
 FROM sessions s
 LEFT JOIN users u ON u.key = s.user_key
 JOIN sessions o ON o.user_key = s.user_key
 WHERE s.token_hash = $1";

fn token_hash_of(row: &Row, i: usize) -> Result<TokenHash> {
    let bytes: Vec<u8> = row.get(i);
    bytes.try_into().map_err(|_| StoreError::Corrupt("a session's token hash is not 32 bytes".into()))
}

const FAILURE_COLUMNS: &str =
    "id, time_ms, host(ip), username, reason, user_agent, typed, count, instance, known_browser";

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
        instance: row.get(8),
        known_browser: row.get(9),
    };
    Ok((Cursor::new(record.time, unms(id)), record))
}

impl PgStore {
    /// Connects to `url`, brings its schema to the current version (safe when several
    /// instances start at once: see `postgres::migrate`), and returns the engine with a pool
    /// of [`POOL_SIZE`] connections; `instance` goes into the failure records it appends.
    /// `make`: a database without a schema gets one; otherwise it is refused (a read makes
    /// nothing). `upgrade`: a schema older than this build's is upgraded (a server's start);
    /// otherwise it is refused (a command's, README "Upgrades").
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached, refuses, holds a
    /// newer schema than this build knows, (not `make`) none at all, or (not `upgrade`) an
    /// older one.
    pub async fn open(url: &DatabaseUrl, instance: &str, make: bool, upgrade: bool) -> Result<Self> {
        let mut client = connect(url).await?;
        match crate::postgres::migrate::found_version(&client).await? {
            0 if !make => return Err(PgError::NoStore.into()),
            found if found > 0 && found < crate::postgres::migrate::LATEST && !upgrade => {
                return Err(PgError::SchemaTooOld { found, known: crate::postgres::migrate::LATEST }.into())
            }
            _ => {}
        }
        tokio::time::timeout(MIGRATE_TIMEOUT, migrate(&mut client))
            .await
            .map_err(|_| PgError::Timeout(MIGRATE_TIMEOUT))??;
        Ok(PgStore { pool: pool(url, POOL_SIZE)?, instance: instance.to_string() })
    }

    /// The pool, for the brute-force state that shares it (`Store::shared_brute_force`).
    pub(super) fn pool(&self) -> &Db {
        &self.pool
    }

    /// A connection whose statements are prepared once per connection and bounded by
    /// `postgres::db::TIMEOUT` ([`Conn`]): the only way the engine reaches the database.
    async fn client(&self) -> Result<Conn> {
        Ok(self.pool.get().await?)
    }

    /// A new credential generation for the user `key` at `now`, with `password_hash` when
    /// given, in one statement: only from `from` when given ([`UserStore::set_password_hash`],
    /// [`UserStore::renew_generation`]). `None` if no such user, or the generation moved on.
    async fn next_generation(
        &self,
        key: &str,
        now: u64,
        from: Option<super::Holding<'_>>,
        password_hash: Option<&str>,
    ) -> Result<Option<User>> {
        // The passkey's row is locked (FOR SHARE) by the statement that moves the generation
        // on: a removal (`DELETE FROM passkeys`) waits for it, or, committed first, leaves no
        // row for it to find.
        let sql = format!(
            "UPDATE users SET {NEW_GENERATION}, password_hash = COALESCE($4, password_hash)
             WHERE key = $1 AND ($3::bigint IS NULL OR password_changed_at_ms = $3)
               AND ($5::bytea IS NULL OR EXISTS (SELECT 1 FROM passkeys WHERE id = $5 AND user_key = $1 FOR SHARE))
             RETURNING {USER_COLUMNS}"
        );
        let generation = from.map(|f| ms(f.generation));
        let passkey = from.and_then(|f| f.passkey_id);
        let row =
            self.client().await?.query_opt(&sql, &[&key, &ms(now), &generation, &password_hash, &passkey]).await?;
        Ok(row.as_ref().map(user_of))
    }

    /// Runs `call` (`SELECT session_start` or `SELECT session_continue`) with its fourteen
    /// arguments: `previous`, the new session's row, the cap and `now`; the one row it answers.
    async fn session_call(
        &self,
        call: &str,
        previous: Option<&TokenHash>,
        token_hash: &TokenHash,
        session: &Session,
        cap: super::SessionCap,
        now: u64,
    ) -> Result<tokio_postgres::Row> {
        let row = SessionRow::new(token_hash, session);
        let [hash, user_key, created, last_seen, ip, user_agent, factors, generation, passkey] = row.params();
        let sql = format!("{call}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)");
        let row = self
            .client()
            .await?
            .query_one(
                &sql,
                &[
                    &previous.map(|p| &p[..]),
                    hash,
                    user_key,
                    created,
                    last_seen,
                    ip,
                    user_agent,
                    factors,
                    generation,
                    passkey,
                    &i32::try_from(cap.max_per_user).unwrap_or(i32::MAX),
                    &ms(cap.idle_ms),
                    &ms(cap.absolute_ms),
                    &ms(now),
                ],
            )
            .await?;
        Ok(row)
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

    async fn list_with_sessions(&self, cap: SessionCap, now: u64) -> Result<Vec<(User, usize)>> {
        // One statement: the users and one grouped count of their valid sessions, by the
        // rule of `SessionCap::has_expired` negated (neither idle nor old for the limit; a
        // time ahead of `now` counts as no age, as its saturating subtraction does, unless it
        // is further ahead than the clock skew allowed, $4).
        let sql = format!(
            "SELECT {USER_COLUMNS}, coalesce(valid.n, 0) FROM users
             LEFT JOIN (SELECT user_key, count(*) AS n FROM sessions
                        WHERE greatest($3::bigint - last_seen_at_ms, 0) < $1::bigint
                          AND greatest($3::bigint - created_at_ms, 0) < $2::bigint
                          AND greatest(last_seen_at_ms, created_at_ms) <= $4::bigint
                        GROUP BY user_key) valid ON valid.user_key = users.key"
        );
        let newest = ms(now.saturating_add(super::CLOCK_SKEW_MS));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&ms(cap.idle_ms), &ms(cap.absolute_ms), &ms(now), &newest];
        let rows = self.client().await?.query(&sql, &params).await?;
        Ok(rows.iter().map(|r| (user_of(r), unms(r.get(9)) as usize)).collect())
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM users", &[]).await?.get(0);
        Ok(unms(n))
    }

    async fn insert(&self, user: &User, password_hash: &str) -> Result<()> {
        let client = self.client().await?;
        insert_user(&client, user, password_hash).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.client().await?.execute("DELETE FROM users WHERE key = $1", &[&key]).await? > 0)
    }

    async fn set_password_hash(
        &self,
        key: &str,
        password_hash: &str,
        now: u64,
        from: Option<super::Holding<'_>>,
    ) -> Result<Option<User>> {
        self.next_generation(key, now, from, Some(password_hash)).await
    }

    async fn renew_generation(&self, key: &str, now: u64, from: Option<super::Holding<'_>>) -> Result<Option<User>> {
        self.next_generation(key, now, from, None).await
    }

    async fn set_disabled(&self, key: &str, disabled: bool) -> Result<Option<User>> {
        let sql = format!("UPDATE users SET disabled = $2 WHERE key = $1 RETURNING {USER_COLUMNS}");
        Ok(self.client().await?.query_opt(&sql, &[&key, &disabled]).await?.as_ref().map(user_of))
    }

    async fn change_groups(
        &self,
        key: &str,
        add: &[crate::domain::Group],
        remove: &[crate::domain::Group],
    ) -> Result<Option<User>> {
        // One statement: the row lock orders concurrent changes, each on the latest groups.
        let sql = format!(
            "UPDATE users SET groups = ARRAY(
                 SELECT DISTINCT g FROM unnest(groups || $2::text[]) AS g WHERE g <> ALL($3::text[]) ORDER BY g)
             WHERE key = $1 RETURNING {USER_COLUMNS}"
        );
        let row = self.client().await?.query_opt(&sql, &[&key, &group_names(add), &group_names(remove)]).await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn set_admin(&self, key: &str, admin: bool) -> Result<Option<User>> {
        let sql = format!("UPDATE users SET admin = $2 WHERE key = $1 RETURNING {USER_COLUMNS}");
        let row = self.client().await?.query_opt(&sql, &[&key, &admin]).await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn record_login(
        &self,
        verified: &Credential,
        upgraded_hash: Option<&str>,
        signed_in_at: Option<u64>,
    ) -> Result<Option<User>> {
        // The update's WHERE is the compare: the same credential generation, not disabled. It is
        // re-checked on the row's latest version after any concurrent update commits, so a
        // password change or a disable in between wins. The second branch answers a disabled
        // user (unchanged); no row at all means gone or another password. Its commit does not
        // wait for the WAL flush (the trait allows it): the sign-in's session, committed next
        // and waited for, flushes it with it; lost in a crash before that, it costs a stale
        // last-sign-in time or a hash upgraded again.
        let sql = format!(
            "WITH no_wait AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
             up AS (
                 UPDATE users SET last_login_at_ms = COALESCE($3, last_login_at_ms),
                     password_hash = CASE WHEN $4::text IS NOT NULL AND password_hash = $5 THEN $4 ELSE password_hash END
                 WHERE key = $1 AND password_changed_at_ms = $2 AND NOT disabled AND EXISTS (SELECT 1 FROM no_wait)
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
                    &signed_in_at.map(ms),
                    &upgraded_hash,
                    &verified.password_hash,
                ],
            )
            .await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn record_sign_in(&self, key: &str, at: u64) -> Result<()> {
        // Committed without waiting for the WAL flush, as `record_login`: the session's commit,
        // next and waited for, flushes it with it.
        self.client()
            .await?
            .execute(
                "WITH no_wait AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
                 UPDATE users SET last_login_at_ms = $2 WHERE key = $1 AND EXISTS (SELECT 1 FROM no_wait)",
                &[&key, &ms(at)],
            )
            .await?;
        Ok(())
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

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<Credential>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE $1::text IS NULL OR key > $1 ORDER BY key LIMIT $2");
        let rows = self.client().await?.query(&sql, &[&after, &page(limit)]).await?;
        Ok(rows.iter().map(|r| Credential { user: user_of(r), password_hash: r.get(7) }).collect())
    }

    async fn import(&self, users: &[Credential]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for c in users {
            insert_user(&tx, &c.user, &c.password_hash).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A page size as SQL's LIMIT.
fn page(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The one mapping of a user to its row (`insert` and `import`).
///
/// # Errors
/// [`StoreError::AlreadyExists`] when the key is taken.
async fn insert_user(client: &dyn Statements, user: &User, password_hash: &str) -> Result<()> {
    let inserted = client
        .execute(
            "INSERT INTO users (key, display_name, password_hash, admin, disabled, created_at_ms,
                                password_changed_at_ms, last_login_at_ms, groups)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (key) DO NOTHING",
            &[
                &user.key,
                &user.display_name,
                &password_hash,
                &user.admin,
                &user.disabled,
                &ms(user.created_at),
                &ms(user.password_changed_at),
                &user.last_login_at.map(ms),
                &group_names(&user.groups),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists);
    }
    Ok(())
}

/// The nine columns a session row is written with, `$1` to `$9` in [`INSERT_SESSION`] and
/// in `session_start` (migration 16).
const INSERT_SESSION: &str = "INSERT INTO sessions (token_hash, user_key, created_at_ms, last_seen_at_ms, ip, \
                              user_agent, factors, password_changed_at_ms, passkey_id) \
                              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A session as its row's column values, so the three statements that write one bind them
/// alike: times in milliseconds as `bigint`, the factor count as `smallint`.
struct SessionRow<'a> {
    token_hash: &'a [u8],
    session: &'a Session,
    created_at_ms: i64,
    last_seen_at_ms: i64,
    factors: i16,
    password_changed_at_ms: i64,
}

impl<'a> SessionRow<'a> {
    fn new(token_hash: &'a TokenHash, session: &'a Session) -> Self {
        SessionRow {
            token_hash: &token_hash[..],
            session,
            created_at_ms: ms(session.created_at),
            last_seen_at_ms: ms(session.last_seen_at),
            factors: i16::from(session.factors.count()),
            password_changed_at_ms: ms(session.password_changed_at),
        }
    }

    /// `$1` to `$9`: token hash, user key, created, last seen, address, user agent, factors,
    /// credential generation, passkey.
    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.token_hash,
            &self.session.user_key,
            &self.created_at_ms,
            &self.last_seen_at_ms,
            &self.session.ip,
            &self.session.user_agent,
            &self.factors,
            &self.password_changed_at_ms,
            &self.session.passkey_id,
        ]
    }
}

impl PgStore {
    /// The token `sql` finds linked to `hash` (`$1`) within [`super::SUCCESSOR_MS`] before
    /// `now` (`$2`): one way or the other along `session_successors`.
    async fn linked_token(&self, sql: &str, hash: &TokenHash, now: u64) -> Result<Option<TokenHash>> {
        let since = ms(now.saturating_sub(super::SUCCESSOR_MS));
        let row = self.client().await?.query_opt(sql, &[&&hash[..], &since]).await?;
        let Some(row) = row else { return Ok(None) };
        Ok(<[u8; 32]>::try_from(row.try_get::<_, &[u8]>(0)?).ok())
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn insert(&self, token_hash: &TokenHash, session: &Session) -> Result<()> {
        let sql = format!(
            "{INSERT_SESSION} ON CONFLICT (token_hash) DO UPDATE SET user_key = $2, created_at_ms = $3,
                 last_seen_at_ms = $4, ip = $5, user_agent = $6, factors = $7, password_changed_at_ms = $8,
                 passkey_id = $9"
        );
        let row = SessionRow::new(token_hash, session);
        self.client().await?.execute(&sql, &row.params()).await?;
        Ok(())
    }

    async fn get(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1");
        Ok(self.client().await?.query_opt(&sql, &[&&token_hash[..]]).await?.as_ref().map(session_of))
    }

    async fn resolve(&self, token_hash: &TokenHash, with_user_sessions: bool) -> Result<Option<Resolved>> {
        let sql = if with_user_sessions { RESOLVE_LISTING_SQL } else { RESOLVE_SQL };
        let rows = self.client().await?.query(sql, &[&&token_hash[..]]).await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let user = first.get::<_, Option<String>>(0).is_some().then(|| user_of(first));
        let mut user_sessions = Vec::new();
        if with_user_sessions {
            for row in &rows {
                user_sessions.push(StoredSession {
                    token_hash: token_hash_of(row, LISTED_SESSION + 5)?,
                    record: session_at(row, LISTED_SESSION),
                });
            }
        }
        Ok(Some(Resolved { session: session_at(first, RESOLVED_SESSION), user, user_sessions }))
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

    async fn delete_for_passkey(&self, user_key: &str, passkey_id: &[u8], keep: Option<&TokenHash>) -> Result<usize> {
        let keep = keep.map(|k| &k[..]);
        let n = self
            .client()
            .await?
            .execute(
                "WITH released AS (UPDATE sessions SET passkey_id = NULL
                                    WHERE token_hash = $3 AND user_key = $1 AND passkey_id = $2)
                 DELETE FROM sessions WHERE user_key = $1 AND passkey_id = $2
                 AND ($3::bytea IS NULL OR token_hash <> $3)",
                &[&user_key, &passkey_id, &keep],
            )
            .await?;
        Ok(n as usize)
    }

    async fn delete_for_app(&self, user_key: &str, keep: Option<&TokenHash>) -> Result<usize> {
        let keep = keep.map(|k| &k[..]);
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM sessions WHERE user_key = $1 AND factors = 2 AND passkey_id IS NULL
                 AND ($2::bytea IS NULL OR token_hash <> $2)",
                &[&user_key, &keep],
            )
            .await?;
        Ok(n as usize)
    }

    async fn purge_expired(&self, idle_ms: u64, absolute_ms: u64, now: u64) -> Result<usize> {
        // `SessionCap::has_expired`, as the sled engine: idle or old for at least the limit,
        // or stamped further ahead than the clock skew allows ($4). Every instance purges, the
        // one whose clock is wrong too (its `/readyz` 503 does not stop its background tasks):
        // ages are judged by the earlier of its clock and the database's, so a clock running
        // fast purges no live session, and "ahead" by the later, so one running behind purges
        // none its peers stamped. A session is still judged by the reader's clock when read.
        let n = self
            .client()
            .await?
            .execute(
                "WITH t AS (SELECT (extract(epoch from statement_timestamp()) * 1000)::bigint AS db)
                 DELETE FROM sessions USING t
                 WHERE least($3::bigint, t.db) - last_seen_at_ms >= $1
                    OR least($3::bigint, t.db) - created_at_ms >= $2
                    OR greatest(last_seen_at_ms, created_at_ms) > greatest($3::bigint, t.db) + $4::bigint",
                &[&ms(idle_ms), &ms(absolute_ms), &ms(now), &ms(super::CLOCK_SKEW_MS)],
            )
            .await?;
        // Links past their time lead nowhere any more.
        let stale = ms(now.saturating_sub(super::SUCCESSOR_MS));
        self.client().await?.execute("DELETE FROM session_successors WHERE at_ms < $1", &[&stale]).await?;
        Ok(n as usize)
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM sessions", &[]).await?.get(0);
        Ok(unms(n))
    }

    async fn export(&self, after: Option<&TokenHash>, limit: usize) -> Result<Vec<StoredSession>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE $1::bytea IS NULL OR token_hash > $1
             ORDER BY token_hash LIMIT $2"
        );
        let after = after.map(|a| &a[..]);
        let rows = self.client().await?.query(&sql, &[&after, &page(limit)]).await?;
        rows.iter().map(|r| Ok(StoredSession { token_hash: token_hash_of(r, 5)?, record: session_of(r) })).collect()
    }

    async fn start(
        &self,
        previous: Option<&TokenHash>,
        token_hash: &TokenHash,
        session: &Session,
        cap: super::SessionCap,
        now: u64,
    ) -> Result<()> {
        // One round trip and one commit (`session_start`, migration 16), under a per-user lock
        // so racing sign-ins of one user end exactly the sessions past the cap.
        self.session_call("SELECT session_start", previous, token_hash, session, cap, now).await?;
        Ok(())
    }

    async fn continue_session(
        &self,
        previous: &TokenHash,
        token_hash: &TokenHash,
        session: &Session,
        cap: super::SessionCap,
        now: u64,
    ) -> Result<bool> {
        // `session_continue` (migration 18): `session_start` only when its DELETE of `previous`
        // found the row, in one transaction; a sign-out's DELETE racing it waits on the row's
        // lock and then finds it gone, or found it first and this one stores nothing.
        let row = self.session_call("SELECT session_continue", Some(previous), token_hash, session, cap, now).await?;
        Ok(row.try_get::<_, bool>(0)?)
    }

    async fn successor(&self, previous: &TokenHash, now: u64) -> Result<Option<TokenHash>> {
        let sql = "SELECT to_token FROM session_successors WHERE from_token = $1 AND at_ms >= $2";
        self.linked_token(sql, previous, now).await
    }

    async fn predecessor(&self, next: &TokenHash, now: u64) -> Result<Option<TokenHash>> {
        // The links of the last minutes only (purged with the sessions): no index needed.
        let sql =
            "SELECT from_token FROM session_successors WHERE to_token = $1 AND at_ms >= $2 ORDER BY at_ms DESC LIMIT 1";
        self.linked_token(sql, next, now).await
    }

    async fn import(&self, sessions: &[StoredSession]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = format!("{INSERT_SESSION} ON CONFLICT (token_hash) DO NOTHING");
        for s in sessions {
            let row = SessionRow::new(&s.token_hash, &s.record);
            let inserted = tx.execute(&statement, &row.params()).await?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// `Cursor`'s sequence as the `id` column.
fn cursor_id(c: &Cursor) -> i64 {
    ms(c.parts().1)
}

/// `s` as PostgreSQL's `text` can hold it: U+0000 (which it refuses) as U+FFFD. Failure
/// records keep what an attacker typed, and a NUL in it must be recorded, not turned into a
/// database fault (a 503 and a false outage in the log) or a failed `store copy`.
fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

#[async_trait]
impl FailureStore for PgStore {
    async fn append(&self, record: &FailureRecord, user_key: &str, max_records: Option<u64>) -> Result<Appended> {
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
                     INSERT INTO failures (time_ms, ip, username, user_key, typed, reason, user_agent, count, instance,
                                           known_browser)
                     VALUES ($1, $2::text::inet, $3, $4, $5, $6, $7, $8, $10, $11) RETURNING id),
                 capped AS (
                     DELETE FROM failures WHERE $9::bigint IS NOT NULL AND id <= (SELECT id FROM ins) - $9
                     RETURNING 1)
                 SELECT id, (SELECT count(*) FROM capped) FROM ins",
                &[
                    &ms(record.time),
                    &pg_text(&record.ip),
                    &pg_text(&record.username),
                    &pg_text(user_key),
                    &record.typed.as_deref().map(pg_text),
                    &record.reason.as_str(),
                    &pg_text(&record.user_agent),
                    &ms(record.count.max(1)),
                    &cap,
                    // A record from a caller that names no instance is this handle's.
                    &pg_text(if record.instance.is_empty() { &self.instance } else { &record.instance }),
                    &record.known_browser,
                ],
            )
            .await?;
        Ok(Appended { at: Cursor::new(record.time, unms(row.get(0))), dropped: unms(row.get(1)) })
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
        let rows = self.client().await?.query_uncached(&sql, &refs).await?;
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

    async fn enforce_cap(&self, max_records: Option<u64>) -> Result<Capped> {
        let client = self.client().await?;
        let mut dropped = 0;
        if let Some(max) = max_records {
            dropped = client
                .execute(
                    "DELETE FROM failures WHERE id IN (
                         SELECT id FROM failures ORDER BY time_ms DESC, id DESC OFFSET $1)",
                    &[&ms(max)],
                )
                .await?;
        }
        let n: i64 = client.query_one("SELECT count(*) FROM failures", &[]).await?.get(0);
        Ok(Capped { kept: unms(n), dropped })
    }

    async fn export(&self, after: Option<Cursor>, limit: usize) -> Result<Vec<(Cursor, FailureRecord)>> {
        let client = self.client().await?;
        // Two statements rather than one with `$1 IS NULL OR ...`, so each pages by the
        // (time_ms, id) index instead of scanning.
        let rows = match after {
            Some(a) => {
                let sql = format!(
                    "SELECT {FAILURE_COLUMNS} FROM failures WHERE (time_ms, id) > ($1, $2)
                     ORDER BY time_ms, id LIMIT $3"
                );
                client.query(&sql, &[&ms(a.parts().0), &cursor_id(&a), &page(limit)]).await?
            }
            None => {
                let sql = format!("SELECT {FAILURE_COLUMNS} FROM failures ORDER BY time_ms, id LIMIT $1");
                client.query(&sql, &[&page(limit)]).await?
            }
        };
        rows.iter().map(failure_of).collect()
    }

    async fn import(&self, records: &[FailureRecord]) -> Result<()> {
        // One statement per page, rows in the order given: the ids (the cursors' sequence)
        // are drawn in that order, so records of one millisecond keep their order.
        type Text<'a> = std::borrow::Cow<'a, str>;
        let mut cols: (Vec<i64>, Vec<Text>, Vec<Text>, Vec<String>, Vec<Option<Text>>) = Default::default();
        let mut rest: (Vec<&str>, Vec<Text>, Vec<i64>, Vec<Text>, Vec<bool>) = Default::default();
        for r in records {
            cols.0.push(ms(r.time));
            cols.1.push(pg_text(&r.ip));
            cols.2.push(pg_text(&r.username));
            cols.3.push(crate::domain::normalise_key(&r.username));
            cols.4.push(r.typed.as_deref().map(pg_text));
            rest.0.push(r.reason.as_str());
            rest.1.push(pg_text(&r.user_agent));
            rest.2.push(ms(r.count.max(1)));
            rest.3.push(pg_text(&r.instance));
            rest.4.push(r.known_browser);
        }
        self.client()
            .await?
            .execute(
                "INSERT INTO failures (time_ms, ip, username, user_key, typed, reason, user_agent, count, instance,
                                       known_browser)
                 SELECT t, i::inet, u, k, ty, r, ua, c, ins, kb
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::text[], $8::bigint[], $9::text[], $10::boolean[]) WITH ORDINALITY
                      AS x(t, i, u, k, ty, r, ua, c, ins, kb, n)
                 ORDER BY n",
                &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &rest.0, &rest.1, &rest.2, &rest.3, &rest.4],
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl SecretStore for PgStore {
    async fn claim(&self, name: &str, value: &[u8; 32]) -> Result<[u8; 32]> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Waits while `store forget-factor-key` runs, which holds the lock alone: a server
        // starting then would read or record its key in the middle of the forgetting, and run
        // with none recorded (review 165: 7 of 24 starts in the same instant).
        tx.query("SELECT pg_advisory_xact_lock_shared($1)", &[&crate::postgres::secrets::FORGETTING_LOCK]).await?;
        let stored = crate::postgres::secrets::claim(&tx, name, value).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get(&self, name: &str) -> Result<Option<[u8; 32]>> {
        let row = self.client().await?.query_opt("SELECT value FROM secrets WHERE name = $1", &[&name]).await?;
        let Some(row) = row else { return Ok(None) };
        let value: Vec<u8> = row.get(0);
        Ok(Some(value.try_into().map_err(|_| StoreError::Corrupt(format!("secret {name}")))?))
    }

    async fn forget(&self, name: &str) -> Result<bool> {
        Ok(self.client().await?.execute("DELETE FROM secrets WHERE name = $1", &[&name]).await? > 0)
    }

    async fn export(&self) -> Result<Vec<(String, [u8; 32])>> {
        let rows = self.client().await?.query("SELECT name, value FROM secrets ORDER BY name", &[]).await?;
        rows.iter()
            .map(|r| {
                let (name, value): (String, Vec<u8>) = (r.get(0), r.get(1));
                let value = value.try_into().map_err(|_| StoreError::Corrupt(format!("secret {name}")))?;
                Ok((name, value))
            })
            .collect()
    }

    async fn import(&self, secrets: &[(String, [u8; 32])]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = ms(super::now_ms());
        for (name, value) in secrets {
            let inserted = tx
                .execute(
                    "INSERT INTO secrets (name, value, created_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                    &[name, &&value[..], &now],
                )
                .await?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

fn summary_of(row: Option<&Row>) -> FactorSummary {
    match row {
        Some(r) => FactorSummary {
            totp: r.get::<_, Option<Vec<u8>>>(0).is_some(),
            recovery_codes: usize::try_from(r.get::<_, i32>(1)).unwrap_or(0),
            passkeys: 0,
        },
        None => FactorSummary::default(),
    }
}

/// One statement for every kind of second factor (a sign-in asks before it decides).
const SUMMARY_SQL: &str = "SELECT (SELECT totp_sealed FROM second_factors WHERE user_key = $1),
        coalesce((SELECT cardinality(recovery_hashes) FROM second_factors WHERE user_key = $1), 0),
        (SELECT count(*) FROM passkeys WHERE user_key = $1)";

/// [`SUMMARY_SQL`] with the user's credential generation (NULL for no such user) as a fourth
/// column: one statement, all by primary key.
const SUMMARY_WITH_GENERATION_SQL: &str = "SELECT (SELECT totp_sealed FROM second_factors WHERE user_key = $1),
        coalesce((SELECT cardinality(recovery_hashes) FROM second_factors WHERE user_key = $1), 0),
        (SELECT count(*) FROM passkeys WHERE user_key = $1),
        (SELECT password_changed_at_ms FROM users WHERE key = $1)";

/// A TOTP step as PostgreSQL's bigint (steps are Unix seconds / 30: far below the limit).
fn step_of(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

#[async_trait]
impl FactorStore for PgStore {
    async fn summary(&self, user_key: &str) -> Result<FactorSummary> {
        let row = self.client().await?.query_one(SUMMARY_SQL, &[&user_key]).await?;
        let passkeys = usize::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        Ok(FactorSummary { passkeys, ..summary_of(Some(&row)) })
    }

    async fn summary_with_generation(&self, user_key: &str) -> Result<(FactorSummary, Option<u64>)> {
        let row = self.client().await?.query_one(SUMMARY_WITH_GENERATION_SQL, &[&user_key]).await?;
        let passkeys = usize::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        let generation = row.get::<_, Option<i64>>(3).map(unms);
        Ok((FactorSummary { passkeys, ..summary_of(Some(&row)) }, generation))
    }

    async fn totp(&self, user_key: &str) -> Result<Option<TotpFactor>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT totp_sealed, totp_created_at_ms FROM second_factors WHERE user_key = $1 AND totp_sealed IS NOT NULL",
                &[&user_key],
            )
            .await?;
        Ok(row
            .map(|r| TotpFactor { sealed_secret: r.get(0), created_at: unms(r.get::<_, Option<i64>>(1).unwrap_or(0)) }))
    }

    async fn any_totp(&self) -> Result<Option<(String, TotpFactor)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT user_key, totp_sealed, totp_created_at_ms FROM second_factors
                 WHERE totp_sealed IS NOT NULL LIMIT 1",
                &[],
            )
            .await?;
        Ok(row.map(|r| {
            let factor =
                TotpFactor { sealed_secret: r.get(1), created_at: unms(r.get::<_, Option<i64>>(2).unwrap_or(0)) };
            (r.get(0), factor)
        }))
    }

    async fn set_totp(&self, user_key: &str, totp: &TotpFactor, replacing: Option<u64>) -> Result<bool> {
        // Each statement's WHERE is judged on the row as an enrolment before it left it (a
        // concurrent one waits for its row lock, then the condition is checked again), so of
        // two begun from one state one is stored. `created_at` as `totp` reads it: 0 for an
        // authenticator stored without one.
        let client = self.client().await?;
        let (sealed, created) = (&totp.sealed_secret, ms(totp.created_at));
        let n = match replacing {
            None => {
                client
                    .execute(
                        "INSERT INTO second_factors (user_key, totp_sealed, totp_created_at_ms)
                         SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE key = $1)
                         ON CONFLICT (user_key) DO UPDATE
                         SET totp_sealed = excluded.totp_sealed, totp_created_at_ms = excluded.totp_created_at_ms
                         WHERE second_factors.totp_sealed IS NULL",
                        &[&user_key, sealed, &created],
                    )
                    .await?
            }
            Some(at) => {
                client
                    .execute(
                        "UPDATE second_factors SET totp_sealed = $2, totp_created_at_ms = $3
                         WHERE user_key = $1 AND totp_sealed IS NOT NULL AND coalesce(totp_created_at_ms, 0) = $4",
                        &[&user_key, sealed, &created, &ms(at)],
                    )
                    .await?
            }
        };
        Ok(n > 0)
    }

    async fn remove_totp(&self, user_key: &str, enrolled_at: Option<u64>) -> Result<bool> {
        // `created_at` as `totp` reads it (0 for one stored without), as `set_totp` compares.
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE second_factors SET totp_sealed = NULL, totp_created_at_ms = NULL
                 WHERE user_key = $1 AND totp_sealed IS NOT NULL
                 AND ($2::bigint IS NULL OR coalesce(totp_created_at_ms, 0) = $2)",
                &[&user_key, &enrolled_at.map(ms)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn use_totp_step(&self, user_key: &str, step: u64) -> Result<bool> {
        // One statement under the row lock: of two instances offered the same step, one wins.
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO second_factors (user_key, last_totp_step) VALUES ($1, $2)
                 ON CONFLICT (user_key) DO UPDATE SET last_totp_step = excluded.last_totp_step
                 WHERE second_factors.last_totp_step IS NULL OR second_factors.last_totp_step < excluded.last_totp_step",
                &[&user_key, &step_of(step)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn add_wrong_code(&self, user_key: &str, run_began: u64) -> Result<u32> {
        // One statement under the row lock: instances counting at once each add one.
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE second_factors
                 SET wrong_codes = CASE WHEN wrong_codes_run_ms = $2 THEN wrong_codes + 1 ELSE 1 END,
                     wrong_codes_run_ms = $2
                 WHERE user_key = $1 RETURNING wrong_codes",
                &[&user_key, &ms(run_began)],
            )
            .await?;
        Ok(row.map_or(0, |r| u32::try_from(r.get::<_, i32>(0)).unwrap_or(0)))
    }

    async fn wrong_codes(&self, user_key: &str, run_began: u64) -> Result<u32> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT CASE WHEN wrong_codes_run_ms = $2 THEN wrong_codes ELSE 0 END
                 FROM second_factors WHERE user_key = $1",
                &[&user_key, &ms(run_began)],
            )
            .await?;
        Ok(row.map_or(0, |r| u32::try_from(r.get::<_, i32>(0)).unwrap_or(0)))
    }

    async fn recovery_codes(&self, user_key: &str) -> Result<Vec<[u8; 32]>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT recovery_hashes FROM second_factors WHERE user_key = $1", &[&user_key])
            .await?;
        let hashes: Vec<Vec<u8>> = row.map(|r| r.get(0)).unwrap_or_default();
        hashes
            .into_iter()
            .map(|h| {
                <[u8; 32]>::try_from(h).map_err(|_| StoreError::Corrupt(format!("a recovery code hash of {user_key}")))
            })
            .collect()
    }

    async fn set_recovery_codes(
        &self,
        user_key: &str,
        hashes: &[[u8; 32]],
        replacing: Option<&[[u8; 32]]>,
    ) -> Result<bool> {
        let hashes: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        let before: Option<Vec<&[u8]>> = replacing.map(|b| b.iter().map(|h| &h[..]).collect());
        // No row is no codes: with codes expected, a row must be there to replace; two
        // inserts from no codes meet in ON CONFLICT, where the second finds the first's codes.
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO second_factors (user_key, recovery_hashes)
                 SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM users WHERE key = $1)
                   AND ($3::bytea[] IS NULL OR cardinality($3::bytea[]) = 0
                        OR EXISTS (SELECT 1 FROM second_factors WHERE user_key = $1))
                 ON CONFLICT (user_key) DO UPDATE SET recovery_hashes = excluded.recovery_hashes,
                                                      used_recovery_hashes = '{}'
                 WHERE $3::bytea[] IS NULL OR second_factors.recovery_hashes = $3::bytea[]",
                &[&user_key, &hashes, &before],
            )
            .await?;
        Ok(n > 0)
    }

    async fn use_recovery_code(&self, user_key: &str, hash: &[u8; 32]) -> Result<RecoveryCodeUse> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE second_factors SET recovery_hashes = array_remove(recovery_hashes, $2),
                                           used_recovery_hashes = used_recovery_hashes || $2
                 WHERE user_key = $1 AND $2 = ANY(recovery_hashes)",
                &[&user_key, &&hash[..]],
            )
            .await?;
        if n > 0 {
            return Ok(RecoveryCodeUse::Used);
        }
        // Read after the update, not in it: a use that committed while the update waited for
        // the row is seen here, so the second of two uses of one code is told it was used.
        let used_before = client
            .query_opt(
                "SELECT 1 FROM second_factors WHERE user_key = $1 AND $2 = ANY(used_recovery_hashes)",
                &[&user_key, &&hash[..]],
            )
            .await?
            .is_some();
        Ok(if used_before { RecoveryCodeUse::UsedBefore } else { RecoveryCodeUse::NotIssued })
    }

    async fn clear(&self, user_key: &str) -> Result<FactorSummary> {
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM second_factors WHERE user_key = $1
                 RETURNING totp_sealed, coalesce(cardinality(recovery_hashes), 0)",
                &[&user_key],
            )
            .await?;
        Ok(summary_of(row.as_ref()))
    }

    async fn insert_pending(&self, token_hash: &TokenHash, p: &PendingSignIn) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO pending_sign_ins
                 (token_hash, user_key, password_changed_at_ms, created_at_ms, expires_at_ms, next, captcha_solved,
                  codes_refused)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &&token_hash[..],
                    &p.user_key,
                    &ms(p.password_changed_at),
                    &ms(p.created_at),
                    &ms(p.expires_at),
                    &p.next,
                    &p.captcha_solved,
                    &i32::try_from(p.codes_refused).unwrap_or(i32::MAX),
                ],
            )
            .await?;
        Ok(())
    }

    async fn pending(&self, token_hash: &TokenHash) -> Result<Option<PendingSignIn>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT user_key, password_changed_at_ms, created_at_ms, expires_at_ms, next, captcha_solved,
                        codes_refused
                 FROM pending_sign_ins WHERE token_hash = $1",
                &[&&token_hash[..]],
            )
            .await?;
        Ok(row.map(|r| PendingSignIn {
            user_key: r.get(0),
            password_changed_at: unms(r.get(1)),
            created_at: unms(r.get(2)),
            expires_at: unms(r.get(3)),
            next: r.get(4),
            captcha_solved: r.get(5),
            codes_refused: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        }))
    }

    async fn take_pending(&self, token_hash: &TokenHash) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM pending_sign_ins WHERE token_hash = $1", &[&&token_hash[..]])
            .await?;
        Ok(n > 0)
    }

    async fn take_pending_of(&self, user_key: &str, now: u64) -> Result<usize> {
        let row = self
            .client()
            .await?
            .query_one(
                "WITH gone AS (DELETE FROM pending_sign_ins WHERE user_key = $1 RETURNING expires_at_ms)
                 SELECT count(*) FILTER (WHERE expires_at_ms >= $2) FROM gone",
                &[&user_key, &ms(now)],
            )
            .await?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn purge_pending(&self, now: u64) -> Result<usize> {
        let n =
            self.client().await?.execute("DELETE FROM pending_sign_ins WHERE expires_at_ms < $1", &[&ms(now)]).await?;
        Ok(n as usize)
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM second_factors", &[]).await?.get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserFactors>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT user_key, totp_sealed, totp_created_at_ms, last_totp_step, recovery_hashes,
                        used_recovery_hashes
                 FROM second_factors WHERE $1::text IS NULL OR user_key > $1 ORDER BY user_key LIMIT $2",
                &[&after, &page(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let user_key: String = r.get(0);
                let totp = r.get::<_, Option<Vec<u8>>>(1).map(|sealed_secret| TotpFactor {
                    sealed_secret,
                    created_at: unms(r.get::<_, Option<i64>>(2).unwrap_or(0)),
                });
                let hashes = |column: usize| {
                    r.get::<_, Vec<Vec<u8>>>(column)
                        .into_iter()
                        .map(|h| {
                            h.try_into().map_err(|_| StoreError::Corrupt(format!("a recovery code hash of {user_key}")))
                        })
                        .collect::<Result<Vec<[u8; 32]>>>()
                };
                let (recovery_hashes, used_recovery_hashes) = (hashes(4)?, hashes(5)?);
                let last_totp_step = r.get::<_, Option<i64>>(3).map(|s| u64::try_from(s).unwrap_or(0));
                Ok(UserFactors { user_key, totp, last_totp_step, recovery_hashes, used_recovery_hashes })
            })
            .collect()
    }

    async fn import(&self, factors: &[UserFactors]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement =
            "INSERT INTO second_factors (user_key, totp_sealed, totp_created_at_ms, last_totp_step, recovery_hashes,
                                         used_recovery_hashes)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_key) DO NOTHING";
        for f in factors {
            let hashes: Vec<&[u8]> = f.recovery_hashes.iter().map(|h| &h[..]).collect();
            let used: Vec<&[u8]> = f.used_recovery_hashes.iter().map(|h| &h[..]).collect();
            let inserted = tx
                .execute(
                    statement,
                    &[
                        &f.user_key,
                        &f.totp.as_ref().map(|t| &t.sealed_secret),
                        &f.totp.as_ref().map(|t| ms(t.created_at)),
                        &f.last_totp_step.map(step_of),
                        &hashes,
                        &used,
                    ],
                )
                .await?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
