-- Schema v3: how many authentication factors a session was signed in with (store::Factors):
-- 1 for a password alone, 2 with a second factor. Sessions made before v3 had one.
ALTER TABLE sessions ADD COLUMN factors smallint NOT NULL DEFAULT 1 CHECK (factors IN (1, 2));
