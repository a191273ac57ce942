-- Schema v2: sessions no longer reference users. The storage traits keep users and sessions
-- apart (the sled engine never tied them): ending a deleted user's sessions is the user
-- service's explicit step, and the store conformance suite stores sessions for any key. A
-- foreign key would also make every session insert lock the user's row.
ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_user_key_fkey;
