//! The schema, created and upgraded at start by versioned SQL files compiled into the binary.
//!
//! All pending migrations run in one transaction that first takes a transaction-scoped
//! advisory lock ([`LOCK_KEY`]): when several instances start at once, one applies them and
//! the others wait, then find nothing left to do. A failure rolls everything back, so a
//! database is always at one whole version. A database at a newer version than this build
//! knows is refused (an older binary must not write to a schema it does not understand).

use super::PgError;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. Never edit one that has
/// shipped; add the next.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_sessions_apart_held_reservations.sql"),
    include_str!("migrations/0003_session_factors.sql"),
    include_str!("migrations/0004_groups.sql"),
    include_str!("migrations/0005_second_factors.sql"),
    include_str!("migrations/0006_passkeys.sql"),
    include_str!("migrations/0007_pending_lifetime.sql"),
    include_str!("migrations/0008_sign_in_round_trips.sql"),
    include_str!("migrations/0009_session_password_generation.sql"),
    include_str!("migrations/0010_pending_captcha.sql"),
    include_str!("migrations/0011_one_ceremony_per_user.sql"),
    include_str!("migrations/0012_bounded_failure_counts.sql"),
    include_str!("migrations/0013_sessions_stamped_ahead.sql"),
    include_str!("migrations/0014_known_browser.sql"),
    include_str!("migrations/0015_pending_by_user.sql"),
    include_str!("migrations/0016_session_passkey.sql"),
    include_str!("migrations/0017_passkey_clones.sql"),
    include_str!("migrations/0018_session_continue.sql"),
    include_str!("migrations/0019_used_recovery_codes.sql"),
    include_str!("migrations/0020_success_keeps_failures.sql"),
    include_str!("migrations/0021_known_browser_threshold.sql"),
    include_str!("migrations/0022_wrong_codes_in_a_row.sql"),
];

/// The schema version this build writes.
pub const LATEST: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key of migrations ("portcull" in ASCII): the single-bigint lock space,
/// apart from the two-integer keys the brute-force functions use.
pub const LOCK_KEY: i64 = 0x706f_7274_6375_6c6c;

/// The schema version the database holds: 0 when it holds none.
///
/// # Errors
/// [`PgError::Db`] when the question cannot be asked.
pub async fn found_version(client: &tokio_postgres::Client) -> Result<i32, PgError> {
    if has_schema(client).await? {
        version(client).await
    } else {
        Ok(0)
    }
}

/// Whether the database holds a portcullis schema at all (any version).
///
/// # Errors
/// [`PgError::Db`] when the question cannot be asked.
pub async fn has_schema(client: &tokio_postgres::Client) -> Result<bool, PgError> {
    Ok(client.query_one("SELECT to_regclass('portcullis_schema') IS NOT NULL", &[]).await?.get(0))
}

/// How long one migration statement may wait for a table lock before the attempt is given up
/// and made again after [`LOCK_RETRY_PAUSE`]: a transaction holding a lock for long (a backup
/// with `pg_dump` reads every table) would otherwise queue the migration's exclusive lock and
/// every other instance's statements behind it, so that the old instances of a rolling
/// upgrade answered 503 while it waited (review 204).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The pause between two attempts that met a lock ([`LOCK_WAIT`]): the other instances'
/// statements go through meanwhile.
pub const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(4);

/// Brings the database's schema to [`LATEST`]; returns the version it found. An attempt that
/// waits longer than [`LOCK_WAIT`] for a table is undone and made again (with a warning) until
/// it goes through; the caller bounds the whole (`connect::MIGRATE_TIMEOUT`).
///
/// # Errors
/// [`PgError::Db`] when a statement fails (nothing is applied then), and
/// [`PgError::SchemaTooNew`] when the database is ahead of this build.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, PgError> {
    // Up to date (every start but an upgrade's, and every CLI command): read, and neither lock
    // nor create anything, so a database that takes no writes (a hot standby, a read-only
    // role or `default_transaction_read_only`) can still be read, by `audit` and `user list`.
    if has_schema(client).await? {
        let found = version(client).await?;
        if found > LATEST {
            return Err(PgError::SchemaTooNew { found, known: LATEST });
        }
        if found == LATEST {
            return Ok(found);
        }
    }
    loop {
        match migrate_once(client).await {
            Err(PgError::Db(e)) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::warn!(
                    retry_in_s = LOCK_RETRY_PAUSE.as_secs(),
                    "the schema upgrade waits for a table another transaction holds (a backup under way?): nothing was changed, trying again"
                );
                tokio::time::sleep(LOCK_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// One attempt of [`migrate`]: all pending migrations in one transaction, or none.
async fn migrate_once(client: &mut tokio_postgres::Client) -> Result<i32, PgError> {
    // READ COMMITTED whatever the database's default (see `connect::ISOLATION`): the checks
    // below must see what a migrator that held the lock before committed.
    let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::ReadCommitted).start().await?;
    // "relation already exists, skipping" and the like are expected at every start: keep
    // PostgreSQL's notices out of the log.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await?;
    // Waited for as long as another instance's migration takes.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_WAIT.as_millis())).await?;
    // Under the lock, so two first starts cannot race to create it.
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS portcullis_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found = version(&tx).await?;
    if found > LATEST {
        return Err(PgError::SchemaTooNew { found, known: LATEST });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO portcullis_schema (version) VALUES ($1)", &[&version]).await?;
    }
    tx.commit().await?;
    // Said once committed: a start killed before the commit has changed nothing (review 204
    // read "migrated version=15" in the log of a migration that was rolled back).
    if found < LATEST {
        tracing::info!(from = found, to = LATEST, "database schema migrated");
    }
    Ok(found)
}

/// The newest version recorded in `portcullis_schema` (0 when none is).
async fn version(client: &impl tokio_postgres::GenericClient) -> Result<i32, PgError> {
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM portcullis_schema", &[]).await?.get(0))
}
