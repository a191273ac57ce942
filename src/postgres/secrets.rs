//! Server secrets (the CSRF and captcha keys) in the database, so every instance signs and
//! checks with the same keys: a token or challenge issued by one is accepted by the others
//! (SPEC.md, "Several instances, one truth").

use super::db::Statements;
use super::PgError;

/// The advisory lock (`pg_advisory_lock`) `store forget-factor-key` holds alone while it
/// runs, and each [`claim`] of a secret takes shared for its transaction, so that no server
/// reads or records its factor key in the middle of the forgetting.
pub const FORGETTING_LOCK: i64 = 0x706f_7274_6b65_7931;

/// The value called `name`, set to `value` unless it has one: when several instances claim a
/// new name at once, one value wins and all of them get it.
///
/// # Errors
/// [`PgError::Db`] or [`PgError::Timeout`] when the database cannot answer; [`PgError::Setup`]
/// when the stored value is not 32 bytes (the schema's check makes that impossible short of
/// tampering).
pub async fn claim(client: &dyn Statements, name: &str, value: &[u8; 32]) -> Result<[u8; 32], PgError> {
    let now = i64::try_from(crate::store::now_ms()).unwrap_or(i64::MAX);
    let row = client
        .query_opt(
            "WITH ins AS (INSERT INTO secrets (name, value, created_at_ms) VALUES ($1, $2, $3)
                          ON CONFLICT (name) DO NOTHING RETURNING value)
             SELECT value FROM ins UNION ALL SELECT value FROM secrets WHERE name = $1",
            &[&name, &&value[..], &now],
        )
        .await?;
    let stored: Vec<u8> = match row {
        Some(row) => row.get(0),
        // Another instance's insert committed after this statement's snapshot was taken: the
        // conflict saw it, the read did not. A new statement sees it.
        None => client.query_one("SELECT value FROM secrets WHERE name = $1", &[&name]).await?.get(0),
    };
    stored.try_into().map_err(|_| PgError::Setup(format!("stored secret {name} is not 32 bytes")))
}
