-- Schema v2: sessions no longer reference users. The storage traits keep users and sessions
-- apart (the sled engine never tied them): ending a deleted user's sessions is the user
-- service's explicit step, and the store conformance suite stores sessions for any key. A
-- foreign key would also make every session insert lock the user's row.
ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_user_key_fkey;

-- A reservation as the BruteForceState trait hands it back: by its keys, without row ids.
-- Any place in flight of a key is as good as another (all hold for the same time), so ending
-- one deletes the oldest of each key, under bf_reserve's locks: two ends at once never take
-- the same place, and a reservation being made waits.
CREATE FUNCTION bf_take_held(address bytea, username bytea)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM bf_attempts WHERE id = (SELECT id FROM bf_attempts
        WHERE scope = 'address' AND key = address AND pending ORDER BY expires_at_ms, id LIMIT 1);
    DELETE FROM bf_attempts WHERE id = (SELECT id FROM bf_attempts
        WHERE scope = 'username' AND key = username AND pending ORDER BY expires_at_ms, id LIMIT 1);
END
$$;

CREATE FUNCTION bf_release_held(address bytea, username bytea)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(address, 'hex'));
    u integer := hashtext('username' || encode(username, 'hex'));
BEGIN
    PERFORM pg_advisory_xact_lock(1, LEAST(a, u));
    PERFORM pg_advisory_xact_lock(1, GREATEST(a, u));
    PERFORM bf_take_held(address, username);
END
$$;

-- bf_fail for a held reservation: its places (found by key, as above) become failures.
CREATE FUNCTION bf_fail_held(address bytea, username bytea, now_ms bigint, window_ms bigint,
                             threshold integer)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(address, 'hex'));
    u integer := hashtext('username' || encode(username, 'hex'));
BEGIN
    PERFORM pg_advisory_xact_lock(1, LEAST(a, u));
    PERFORM pg_advisory_xact_lock(1, GREATEST(a, u));
    PERFORM bf_take_held(address, username);
    -- bf_fail takes the same locks again (advisory locks nest within a transaction).
    RETURN bf_fail(address, username, ARRAY[]::bigint[], now_ms, window_ms, threshold);
END
$$;
