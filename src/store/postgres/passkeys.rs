//! [`PasskeyStore`] on PostgreSQL: the `passkeys`, `webauthn_ceremonies` and
//! `removed_passkeys` tables of migrations `0006_passkeys.sql` and `0017_passkey_clones.sql`.
//! Each method is one statement, so instances sharing the database agree: a ceremony is taken
//! by exactly one `DELETE … RETURNING`, and a counter only moves forward under the row lock.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{ms, unms, PgStore};
use crate::store::passkeys::{Ceremony, CeremonyKind, PasskeyStore, PasskeyUse, RemovedPasskey, StoredPasskey};
use crate::store::{Result, StoreError, TokenHash};

macro_rules! columns {
    () => {
        "id, user_key, user_handle, name, passkey, created_at_ms, last_used_at_ms, sign_count, clone_suspected_at_ms, \
         last_client_data_hash"
    };
}
const COLUMNS: &str = columns!();

/// Inserts a passkey whole ([`Params`]); a credential id registered already inserts nothing.
const INSERT: &str = concat!(
    "INSERT INTO passkeys (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING"
);

/// [`INSERT`]'s parameters: `p` and its times in the columns' types.
struct Params<'a> {
    p: &'a StoredPasskey,
    handle: &'a [u8],
    client_data_hash: Option<&'a [u8]>,
    times: [Option<i64>; 3],
    sign_count: i64,
}

impl<'a> Params<'a> {
    fn of(p: &'a StoredPasskey) -> Self {
        Params {
            p,
            handle: &p.user_handle,
            client_data_hash: p.last_client_data_hash.as_ref().map(|h| &h[..]),
            times: [Some(ms(p.created_at)), p.last_used_at.map(ms), p.clone_suspected_at.map(ms)],
            sign_count: i64::from(p.sign_count),
        }
    }

    fn list(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 10] {
        let p = self.p;
        [
            &p.id,
            &p.user_key,
            &self.handle,
            &p.name,
            &p.passkey,
            &self.times[0],
            &self.times[1],
            &self.sign_count,
            &self.times[2],
            &self.client_data_hash,
        ]
    }
}

fn passkey_of(row: &Row) -> Result<StoredPasskey> {
    let handle: Vec<u8> = row.get(2);
    Ok(StoredPasskey {
        id: row.get(0),
        user_key: row.get(1),
        user_handle: handle.try_into().map_err(|_| StoreError::Corrupt("a passkey's user handle".into()))?,
        name: row.get(3),
        passkey: row.get(4),
        created_at: unms(row.get(5)),
        last_used_at: row.get::<_, Option<i64>>(6).map(unms),
        sign_count: u32::try_from(row.get::<_, i64>(7)).unwrap_or(u32::MAX),
        clone_suspected_at: row.get::<_, Option<i64>>(8).map(unms),
        last_client_data_hash: match row.get::<_, Option<Vec<u8>>>(9) {
            Some(h) => Some(h.try_into().map_err(|_| StoreError::Corrupt("a passkey's client data hash".into()))?),
            None => None,
        },
    })
}

/// A ceremony from its row (kind, user_key, state, expires_at_ms), unless expired at `now`.
fn ceremony_of(row: &Row, now: u64) -> Result<Option<Ceremony>> {
    let kind: String = row.get(0);
    let kind = CeremonyKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("ceremony kind {kind:?}")))?;
    let expires_at = unms(row.get(3));
    Ok((expires_at > now).then(|| Ceremony { kind, owner: row.get(1), state: row.get(2), expires_at }))
}

#[async_trait]
impl PasskeyStore for PgStore {
    async fn add_passkey(&self, p: &StoredPasskey) -> Result<()> {
        let added = self.client().await?.execute(INSERT, &Params::of(p).list()).await?;
        if added == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    async fn passkey(&self, id: &[u8]) -> Result<Option<StoredPasskey>> {
        let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE id = $1");
        self.client().await?.query_opt(&sql, &[&id]).await?.as_ref().map(passkey_of).transpose()
    }

    async fn passkeys_of(&self, user_key: &str) -> Result<Vec<StoredPasskey>> {
        let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE user_key = $1 ORDER BY created_at_ms, id");
        self.client().await?.query(&sql, &[&user_key]).await?.iter().map(passkey_of).collect()
    }

    async fn rename_passkey(
        &self,
        user_key: &str,
        id: &[u8],
        name: &str,
        from: Option<&str>,
    ) -> Result<Option<String>> {
        // The row locked first, so the name returned is the one this update replaced.
        let sql = "WITH old AS (SELECT id, name FROM passkeys WHERE user_key = $1 AND id = $2 FOR UPDATE)
                   UPDATE passkeys p SET name = $3 FROM old
                   WHERE p.id = old.id AND ($4::text IS NULL OR old.name = $4) RETURNING old.name";
        Ok(self.client().await?.query_opt(sql, &[&user_key, &id, &name, &from]).await?.map(|row| row.get(0)))
    }

    async fn remove_passkey(&self, user_key: &str, id: &[u8], now: u64) -> Result<bool> {
        let sql = "WITH gone AS (DELETE FROM passkeys WHERE user_key = $1 AND id = $2 RETURNING id, user_key)
                   INSERT INTO removed_passkeys (id, user_key, removed_at_ms) SELECT id, user_key, $3 FROM gone
                   ON CONFLICT (id) DO UPDATE SET user_key = EXCLUDED.user_key, removed_at_ms = EXCLUDED.removed_at_ms";
        Ok(self.client().await?.execute(sql, &[&user_key, &id, &ms(now)]).await? > 0)
    }

    async fn remove_passkeys_of(&self, user_key: &str, now: u64) -> Result<usize> {
        let sql = "WITH gone AS (DELETE FROM passkeys WHERE user_key = $1 RETURNING id, user_key)
                   INSERT INTO removed_passkeys (id, user_key, removed_at_ms) SELECT id, user_key, $2 FROM gone
                   ON CONFLICT (id) DO UPDATE SET user_key = EXCLUDED.user_key, removed_at_ms = EXCLUDED.removed_at_ms";
        Ok(self.client().await?.execute(sql, &[&user_key, &ms(now)]).await? as usize)
    }

    async fn former_owner(&self, id: &[u8]) -> Result<Option<String>> {
        let sql = "SELECT user_key FROM removed_passkeys WHERE id = $1";
        Ok(self.client().await?.query_opt(sql, &[&id]).await?.map(|row| row.get(0)))
    }

    async fn purge_removed_passkeys(&self, before: u64) -> Result<usize> {
        let sql = "DELETE FROM removed_passkeys WHERE removed_at_ms < $1";
        Ok(self.client().await?.execute(sql, &[&ms(before)]).await? as usize)
    }

    async fn record_passkey_use(&self, id: &[u8], used: &PasskeyUse<'_>) -> Result<bool> {
        // The WHERE is the compare, re-checked on the latest row after a concurrent update.
        let sql = "UPDATE passkeys SET passkey = $2, sign_count = $3, last_used_at_ms = coalesce($4, last_used_at_ms),
                   last_client_data_hash = $5
                   WHERE id = $1 AND (sign_count < $3 OR (sign_count = 0 AND $3 = 0))";
        let (count, hash) = (i64::from(used.sign_count), &used.client_data_hash[..]);
        let n = self.client().await?.execute(sql, &[&id, &used.passkey, &count, &used.at.map(ms), &hash]).await?;
        Ok(n > 0)
    }

    async fn flag_possible_clone(&self, id: &[u8], now: u64) -> Result<bool> {
        let sql = "UPDATE passkeys SET clone_suspected_at_ms = $2 WHERE id = $1";
        Ok(self.client().await?.execute(sql, &[&id, &ms(now)]).await? > 0)
    }

    async fn put_ceremony(&self, key: &TokenHash, c: &Ceremony) -> Result<()> {
        // One per user where the kind says so: the user's puts of that kind take turns in the
        // function (schema v11), so however many begin at once, one stays open.
        let sql = if c.kind.one_per_user() {
            "SELECT ceremony_put_one_per_user($1, $2, $3, $4, $5)"
        } else {
            "INSERT INTO webauthn_ceremonies (key, kind, user_key, state, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key) DO UPDATE SET kind = $2, user_key = $3, state = $4, expires_at_ms = $5"
        };
        self.client()
            .await?
            .execute(sql, &[&&key[..], &c.kind.as_str(), &c.owner, &c.state, &ms(c.expires_at)])
            .await?;
        Ok(())
    }

    async fn ceremony(&self, key: &TokenHash, now: u64) -> Result<Option<Ceremony>> {
        let sql = "SELECT kind, user_key, state, expires_at_ms FROM webauthn_ceremonies WHERE key = $1";
        let Some(row) = self.client().await?.query_opt(sql, &[&&key[..]]).await? else { return Ok(None) };
        ceremony_of(&row, now)
    }

    async fn take_ceremony(&self, key: &TokenHash, now: u64) -> Result<Option<Ceremony>> {
        let sql = "DELETE FROM webauthn_ceremonies WHERE key = $1 RETURNING kind, user_key, state, expires_at_ms";
        let Some(row) = self.client().await?.query_opt(sql, &[&&key[..]]).await? else { return Ok(None) };
        ceremony_of(&row, now)
    }

    async fn purge_ceremonies(&self, now: u64) -> Result<usize> {
        let sql = "DELETE FROM webauthn_ceremonies WHERE expires_at_ms <= $1";
        Ok(self.client().await?.execute(sql, &[&ms(now)]).await? as usize)
    }

    async fn count_passkeys(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM passkeys", &[]).await?.get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn export_passkeys(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoredPasskey>> {
        // bytea compares bytewise, as sled orders its keys: both engines page alike.
        let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE $1::bytea IS NULL OR id > $1 ORDER BY id LIMIT $2");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.client().await?.query(&sql, &[&after, &limit]).await?.iter().map(passkey_of).collect()
    }

    async fn import_passkeys(&self, passkeys: &[StoredPasskey]) -> Result<()> {
        // One transaction: a page is there whole or not at all.
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for p in passkeys {
            if tx.execute(INSERT, &Params::of(p).list()).await? == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn count_removed_passkeys(&self) -> Result<u64> {
        let n: i64 = self.client().await?.query_one("SELECT count(*) FROM removed_passkeys", &[]).await?.get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn export_removed_passkeys(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<RemovedPasskey>> {
        let sql = "SELECT id, user_key, removed_at_ms FROM removed_passkeys
                   WHERE $1::bytea IS NULL OR id > $1 ORDER BY id LIMIT $2";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.client().await?.query(sql, &[&after, &limit]).await?;
        Ok(rows
            .iter()
            .map(|row| RemovedPasskey { id: row.get(0), user_key: row.get(1), removed_at: unms(row.get(2)) })
            .collect())
    }

    async fn import_removed_passkeys(&self, removed: &[RemovedPasskey]) -> Result<()> {
        let sql = "INSERT INTO removed_passkeys (id, user_key, removed_at_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for r in removed {
            if tx.execute(sql, &[&r.id, &r.user_key, &ms(r.removed_at)]).await? == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
