//! [`PasskeyStore`] on sled. Trees:
//! - `passkeys`: credential id → JSON [`PasskeyRecord`]
//! - `user_passkeys`: username key, 0x00, credential id → () (each user's list)
//! - `ceremonies`: SHA-256 of the ceremony cookie → JSON [`CeremonyRecord`]
//! - `removed_passkeys`: credential id → JSON [`RemovedRecord`] (whose it was, when removed)

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{decode, encode, index_prefix, SledStore, SCHEMA_VERSION};
use crate::store::passkeys::{Ceremony, CeremonyKind, PasskeyStore, PasskeyUse, RemovedPasskey, StoredPasskey};
use crate::store::{Result, StoreError, TokenHash};

/// Orders ceremony puts in this process (one process holds a sled store): see `put_ceremony`.
static CEREMONY_PUTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PasskeyRecord {
    schema: u32,
    user_key: String,
    user_handle: [u8; 16],
    name: String,
    passkey: String,
    created_at: u64,
    last_used_at: Option<u64>,
    sign_count: u32,
    /// Absent in records written before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clone_suspected_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_client_data_hash: Option<[u8; 32]>,
}

impl PasskeyRecord {
    fn new(p: &StoredPasskey) -> Self {
        PasskeyRecord {
            schema: SCHEMA_VERSION,
            user_key: p.user_key.clone(),
            user_handle: p.user_handle,
            name: p.name.clone(),
            passkey: p.passkey.clone(),
            created_at: p.created_at,
            last_used_at: p.last_used_at,
            sign_count: p.sign_count,
            clone_suspected_at: p.clone_suspected_at,
            last_client_data_hash: p.last_client_data_hash,
        }
    }

    fn stored(self, id: &[u8]) -> StoredPasskey {
        StoredPasskey {
            id: id.to_vec(),
            user_key: self.user_key,
            user_handle: self.user_handle,
            name: self.name,
            passkey: self.passkey,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            sign_count: self.sign_count,
            clone_suspected_at: self.clone_suspected_at,
            last_client_data_hash: self.last_client_data_hash,
        }
    }
}

/// Whose a removed passkey was ([`PasskeyStore::former_owner`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RemovedRecord {
    user_key: String,
    removed_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CeremonyRecord {
    kind: CeremonyKind,
    user_key: Option<String>,
    state: String,
    expires_at: u64,
}

impl CeremonyRecord {
    /// The ceremony, unless it expired at `now`.
    fn unless_expired(self, now: u64) -> Option<Ceremony> {
        (self.expires_at > now).then_some(Ceremony {
            kind: self.kind,
            owner: self.user_key,
            state: self.state,
            expires_at: self.expires_at,
        })
    }
}

fn owner_key(user_key: &str, id: &[u8]) -> Vec<u8> {
    let mut k = index_prefix(user_key);
    k.extend_from_slice(id);
    k
}

impl SledStore {
    fn passkeys(&self) -> Result<::sled::Tree> {
        Ok(self.db.open_tree("passkeys")?)
    }

    fn user_passkeys(&self) -> Result<::sled::Tree> {
        Ok(self.db.open_tree("user_passkeys")?)
    }

    fn removed_passkeys(&self) -> Result<::sled::Tree> {
        Ok(self.db.open_tree("removed_passkeys")?)
    }

    /// Up to `limit` records of the tree `tree` opens, in key order, those after the key
    /// `after`, each made by `record` from its key and value: a page of an export.
    async fn export_page<T: Send + 'static>(
        &self,
        tree: fn(&SledStore) -> Result<::sled::Tree>,
        after: Option<&[u8]>,
        limit: usize,
        record: fn(&[u8], &[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let after = after.map(<[u8]>::to_vec);
        self.blocking(move |s| {
            let tree = tree(s)?;
            let range = match after {
                Some(a) => tree.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => tree.iter(),
            };
            range
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv?;
                    record(&k, &v)
                })
                .collect()
        })
        .await
    }

    /// Notes that `user_key`'s passkey `id` was removed at `now`.
    fn note_removed(&self, user_key: &str, id: &[u8], now: u64) -> Result<()> {
        let record = RemovedRecord { user_key: user_key.to_string(), removed_at: now };
        self.removed_passkeys()?.insert(id, encode(&record)?)?;
        Ok(())
    }

    /// Forgets every removed passkey of `user_key` (the user is deleted). A scan: deletions
    /// are rare, and the notes few (purged after `audit_retention`).
    pub(super) fn forget_removed_passkeys(&self, user_key: &str) -> Result<()> {
        let tree = self.removed_passkeys()?;
        for kv in tree.iter() {
            let (id, v) = kv?;
            if decode::<RemovedRecord>(&v)?.user_key == user_key {
                tree.remove(id)?;
            }
        }
        Ok(())
    }

    fn ceremonies(&self) -> Result<::sled::Tree> {
        Ok(self.db.open_tree("ceremonies")?)
    }

    /// For the kinds a user has one open ceremony of: `kind NUL user_key` → the key of the one
    /// put last (it may have been taken or purged since).
    fn ceremony_owners(&self) -> Result<::sled::Tree> {
        Ok(self.db.open_tree("ceremony_owners")?)
    }

    /// Whether `user_key` holds the passkey `id`.
    pub(super) fn holds_passkey(&self, user_key: &str, id: &[u8]) -> Result<bool> {
        Ok(self.owned(user_key, id)?.is_some())
    }

    /// The passkey `id` if `user_key` owns it.
    fn owned(&self, user_key: &str, id: &[u8]) -> Result<Option<PasskeyRecord>> {
        let Some(v) = self.passkeys()?.get(id)? else { return Ok(None) };
        let record: PasskeyRecord = decode(&v)?;
        Ok((record.user_key == user_key).then_some(record))
    }

    /// How many passkeys `user_key` has (those [`PasskeyStore::passkeys_of`] lists), without
    /// reading them: for the factor summary.
    pub(super) fn passkey_count(&self, user_key: &str) -> Result<usize> {
        let (passkeys, index) = (self.passkeys()?, self.user_passkeys()?);
        let prefix = index_prefix(user_key);
        let mut n = 0;
        for kv in index.scan_prefix(&prefix) {
            let (k, _) = kv?;
            n += usize::from(passkeys.contains_key(&k[prefix.len()..])?);
        }
        Ok(n)
    }

    /// Removes every passkey of `user_key`; returns how many. `removed_at`: when, to note
    /// whose they were (a reset of factors); `None` when the user is deleted.
    pub(super) fn delete_user_passkeys(&self, user_key: &str, removed_at: Option<u64>) -> Result<usize> {
        let (passkeys, index) = (self.passkeys()?, self.user_passkeys()?);
        let prefix = index_prefix(user_key);
        let mut removed = 0;
        for kv in index.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = &k[prefix.len()..];
            if passkeys.remove(id)?.is_some() {
                removed += 1;
                if let Some(now) = removed_at {
                    self.note_removed(user_key, id, now)?;
                }
            }
            index.remove(&k)?;
        }
        Ok(removed)
    }
}

#[async_trait]
impl PasskeyStore for SledStore {
    async fn add_passkey(&self, p: &StoredPasskey) -> Result<()> {
        self.usable()?;
        let bytes = encode(&PasskeyRecord::new(p))?;
        if self.passkeys()?.compare_and_swap(&p.id, None as Option<&[u8]>, Some(bytes))?.is_err() {
            return Err(StoreError::AlreadyExists);
        }
        self.user_passkeys()?.insert(owner_key(&p.user_key, &p.id), &[])?;
        self.durable(()).await
    }

    async fn passkey(&self, id: &[u8]) -> Result<Option<StoredPasskey>> {
        self.usable()?;
        let Some(v) = self.passkeys()?.get(id)? else { return Ok(None) };
        Ok(Some(decode::<PasskeyRecord>(&v)?.stored(id)))
    }

    async fn passkeys_of(&self, user_key: &str) -> Result<Vec<StoredPasskey>> {
        self.usable()?;
        let (passkeys, index) = (self.passkeys()?, self.user_passkeys()?);
        let prefix = index_prefix(user_key);
        let mut out = Vec::new();
        for kv in index.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = &k[prefix.len()..];
            if let Some(v) = passkeys.get(id)? {
                out.push(decode::<PasskeyRecord>(&v)?.stored(id));
            }
        }
        out.sort_by_key(|p| p.created_at);
        Ok(out)
    }

    async fn rename_passkey(
        &self,
        user_key: &str,
        id: &[u8],
        name: &str,
        from: Option<&str>,
    ) -> Result<Option<String>> {
        self.usable()?;
        let mut renamed = None;
        self.passkeys()?.fetch_and_update(id, |old| {
            // sled calls this again when another writer got in first: only the last call counts.
            renamed = None;
            let bytes = old?;
            let mut record: PasskeyRecord = match serde_json::from_slice(bytes) {
                Ok(r) => r,
                Err(_) => return Some(bytes.to_vec()),
            };
            if record.user_key != user_key || from.is_some_and(|f| f != record.name) {
                return Some(bytes.to_vec());
            }
            renamed = Some(std::mem::replace(&mut record.name, name.to_string()));
            serde_json::to_vec(&record).ok().or_else(|| Some(bytes.to_vec()))
        })?;
        self.durable(renamed).await
    }

    async fn remove_passkey(&self, user_key: &str, id: &[u8], now: u64) -> Result<bool> {
        self.usable()?;
        let removed = {
            // Ordered with a change of generation that needs this passkey (`next_generation`).
            // The lock guards no data: one a panic poisoned still orders.
            let _held = self.passkey_removals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.owned(user_key, id)?.is_none() {
                return Ok(false);
            }
            let removed = self.passkeys()?.remove(id)?.is_some();
            self.user_passkeys()?.remove(owner_key(user_key, id))?;
            if removed {
                self.note_removed(user_key, id, now)?;
            }
            removed
        };
        self.durable(removed).await
    }

    async fn remove_passkeys_of(&self, user_key: &str, now: u64) -> Result<usize> {
        self.usable()?;
        let removed = self.delete_user_passkeys(user_key, Some(now))?;
        self.durable(removed).await
    }

    async fn former_owner(&self, id: &[u8]) -> Result<Option<String>> {
        self.usable()?;
        let Some(v) = self.removed_passkeys()?.get(id)? else { return Ok(None) };
        Ok(Some(decode::<RemovedRecord>(&v)?.user_key))
    }

    async fn purge_removed_passkeys(&self, before: u64) -> Result<usize> {
        self.usable()?;
        let tree = self.removed_passkeys()?;
        let mut purged = 0;
        for kv in tree.iter() {
            let (id, v) = kv?;
            if decode::<RemovedRecord>(&v)?.removed_at < before {
                tree.remove(id)?;
                purged += 1;
            }
        }
        self.durable(purged).await
    }

    async fn record_passkey_use(&self, id: &[u8], used: &PasskeyUse<'_>) -> Result<bool> {
        self.usable()?;
        let sign_count = used.sign_count;
        let mut noted = false;
        self.passkeys()?.fetch_and_update(id, |old| {
            // sled calls this again when another writer got in first: only the last call
            // counts, or a replayed counter that lost the race would be reported as noted.
            noted = false;
            let bytes = old?;
            let Ok(mut record) = serde_json::from_slice::<PasskeyRecord>(bytes) else { return Some(bytes.to_vec()) };
            let forward = sign_count > record.sign_count || (sign_count == 0 && record.sign_count == 0);
            if !forward {
                return Some(bytes.to_vec());
            }
            record.sign_count = sign_count;
            record.passkey = used.passkey.to_string();
            record.last_used_at = used.at.or(record.last_used_at);
            record.last_client_data_hash = Some(used.client_data_hash);
            noted = true;
            serde_json::to_vec(&record).ok().or_else(|| Some(bytes.to_vec()))
        })?;
        self.durable(noted).await
    }

    async fn flag_possible_clone(&self, id: &[u8], now: u64) -> Result<bool> {
        self.usable()?;
        let mut flagged = false;
        self.passkeys()?.fetch_and_update(id, |old| {
            flagged = false;
            let bytes = old?;
            let Ok(mut record) = serde_json::from_slice::<PasskeyRecord>(bytes) else { return Some(bytes.to_vec()) };
            record.clone_suspected_at = Some(now);
            flagged = true;
            serde_json::to_vec(&record).ok().or_else(|| Some(bytes.to_vec()))
        })?;
        self.durable(flagged).await
    }

    async fn put_ceremony(&self, key: &TokenHash, c: &Ceremony) -> Result<()> {
        self.usable()?;
        let record = CeremonyRecord {
            kind: c.kind,
            user_key: c.owner.clone(),
            state: c.state.clone(),
            expires_at: c.expires_at,
        };
        let value = encode(&record)?;
        let (key, kind, user) = (*key, c.kind, c.owner.clone());
        self.blocking(move |s| {
            let tree = s.ceremonies()?;
            // The others' removal and the insert are one step: two begins at once would each
            // remove the other's before inserting, and both stay open. The lock guards no
            // data, only the order, so a poisoned one is as good.
            let _one_at_a_time =
                kind.one_per_user().then(|| CEREMONY_PUTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if kind.one_per_user() {
                // The user's previous one, found by its owner entry: no reading of every open
                // ceremony (anyone may open sign-in ones) at each begin.
                let owner = [kind.as_str().as_bytes(), b"\0", user.as_deref().unwrap_or_default().as_bytes()].concat();
                if let Some(previous) = s.ceremony_owners()?.insert(owner, key.as_slice())? {
                    if previous.as_ref() != key.as_slice() {
                        tree.remove(previous)?;
                    }
                }
            }
            tree.insert(key, value)?;
            Ok(())
        })
        .await?;
        self.durable(()).await
    }

    async fn ceremony(&self, key: &TokenHash, now: u64) -> Result<Option<Ceremony>> {
        self.usable()?;
        let Some(v) = self.ceremonies()?.get(key)? else { return Ok(None) };
        Ok(decode::<CeremonyRecord>(&v)?.unless_expired(now))
    }

    async fn take_ceremony(&self, key: &TokenHash, now: u64) -> Result<Option<Ceremony>> {
        self.usable()?;
        // `remove` returns the value it removed: of two callers only one gets it.
        let Some(v) = self.ceremonies()?.remove(key)? else { return Ok(None) };
        self.flush().await?;
        Ok(decode::<CeremonyRecord>(&v)?.unless_expired(now))
    }

    async fn purge_ceremonies(&self, now: u64) -> Result<usize> {
        self.usable()?;
        let n = self
            .blocking(move |s| {
                let tree = s.ceremonies()?;
                let mut removed = 0;
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    let expired = decode::<CeremonyRecord>(&v).map_or(true, |r| r.expires_at <= now);
                    if expired && tree.remove(k)?.is_some() {
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .await?;
        self.durable(n).await
    }

    async fn count_passkeys(&self) -> Result<u64> {
        self.usable()?;
        Ok(self.passkeys()?.len() as u64)
    }

    async fn export_passkeys(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoredPasskey>> {
        self.usable()?;
        self.export_page(SledStore::passkeys, after, limit, |k, v| Ok(decode::<PasskeyRecord>(v)?.stored(k))).await
    }

    async fn import_passkeys(&self, passkeys: &[StoredPasskey]) -> Result<()> {
        self.usable()?;
        let (tree, index) = (self.passkeys()?, self.user_passkeys()?);
        for p in passkeys {
            // The one mapping of a passkey to its record, shared with `add_passkey`.
            let bytes = encode(&PasskeyRecord::new(p))?;
            if tree.compare_and_swap(&p.id, None as Option<&[u8]>, Some(bytes))?.is_err() {
                return Err(StoreError::AlreadyExists);
            }
            index.insert(owner_key(&p.user_key, &p.id), &[])?;
        }
        self.durable(()).await
    }

    async fn count_removed_passkeys(&self) -> Result<u64> {
        self.usable()?;
        Ok(self.removed_passkeys()?.len() as u64)
    }

    async fn export_removed_passkeys(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<RemovedPasskey>> {
        self.usable()?;
        self.export_page(SledStore::removed_passkeys, after, limit, |k, v| {
            let RemovedRecord { user_key, removed_at } = decode(v)?;
            Ok(RemovedPasskey { id: k.to_vec(), user_key, removed_at })
        })
        .await
    }

    async fn import_removed_passkeys(&self, removed: &[RemovedPasskey]) -> Result<()> {
        self.usable()?;
        let tree = self.removed_passkeys()?;
        for r in removed {
            let bytes = encode(&RemovedRecord { user_key: r.user_key.clone(), removed_at: r.removed_at })?;
            if tree.compare_and_swap(&r.id, None as Option<&[u8]>, Some(bytes))?.is_err() {
                return Err(StoreError::AlreadyExists);
            }
        }
        self.durable(()).await
    }
}
