-- Schema v17: when a passkey's verified answer last carried a signature counter that did not
-- move forward (store::StoredPasskey::clone_suspected_at; NULL: never), a sign of a cloned
-- authenticator (W3C WebAuthn §6.1.1) that the owner sees on the account page; and the SHA-256
-- of the client data of its last noted use, so the same answer sent twice is not taken for a
-- copy's. Nullable, so binaries of v16 that insert and read passkeys by their column names
-- work on during a rolling upgrade.
ALTER TABLE passkeys ADD COLUMN clone_suspected_at_ms bigint,
                     ADD COLUMN last_client_data_hash bytea;

-- Whose removed passkeys were (PasskeyStore::former_owner): a failed sign-in with a removed
-- passkey is recorded under its former owner. Deleting the user deletes the notes; they are
-- purged after `audit_retention` with the failed-login records they explain.
CREATE TABLE removed_passkeys (
    id bytea PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 1023),
    user_key text NOT NULL REFERENCES users (key) ON DELETE CASCADE ON UPDATE CASCADE,
    removed_at_ms bigint NOT NULL
);
CREATE INDEX removed_passkeys_by_time ON removed_passkeys (removed_at_ms);
CREATE INDEX removed_passkeys_by_user ON removed_passkeys (user_key);
