-- Schema v12: failure counts that stay small, and a failure that names no username.
--
-- bf_fail kept one row per failure for the whole failure_window. Nothing reads more than
-- `threshold` of a key's failures (the captcha is demanded from there on, and the in-memory
-- engine keeps at most that many: failures::Counts::add), but every failure counted all of its
-- key's rows under the key's lock, so a flood of failures on one key made each of them slower
-- and, queued on that lock, could use up every instance's connections. Each failure now keeps
-- only its key's newest `threshold` failures (and forgets the lapsed ones) under that lock.
--
-- A NULL `username` counts the failure for the address alone: a passkey sign-in names no
-- username to guess (sign_in::passkey's module note). Counting its failures under one shared
-- empty key put every instance's passkey failures behind one lock.
--
-- Same signature as v1's, so older binaries call it unchanged during a rolling upgrade.
CREATE OR REPLACE FUNCTION bf_fail(address bytea, username bytea, ids bigint[], now_ms bigint,
                                   window_ms bigint, threshold integer)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(address, 'hex'));
    u integer := hashtext('username' || encode(coalesce(username, ''::bytea), 'hex'));
    keep integer := GREATEST(threshold, 1);
    before_a bigint;
    before_u bigint := 0;
BEGIN
    IF username IS NULL THEN
        PERFORM pg_advisory_xact_lock(1, a);
    ELSE
        PERFORM pg_advisory_xact_lock(1, LEAST(a, u));
        PERFORM pg_advisory_xact_lock(1, GREATEST(a, u));
    END IF;
    SELECT count(*) INTO before_a FROM bf_attempts
        WHERE scope = 'address' AND key = address AND NOT pending AND expires_at_ms > now_ms;
    IF username IS NOT NULL THEN
        SELECT count(*) INTO before_u FROM bf_attempts
            WHERE scope = 'username' AND key = username AND NOT pending AND expires_at_ms > now_ms;
    END IF;
    DELETE FROM bf_attempts WHERE id = ANY (ids);
    INSERT INTO bf_attempts (scope, key, pending, at_ms, expires_at_ms)
    VALUES ('address', address, false, now_ms, now_ms + window_ms);
    IF username IS NOT NULL THEN
        INSERT INTO bf_attempts (scope, key, pending, at_ms, expires_at_ms)
        VALUES ('username', username, false, now_ms, now_ms + window_ms);
    END IF;
    -- Under the locks: the newest `keep` failures of each key stay.
    DELETE FROM bf_attempts WHERE id IN (
        SELECT id FROM bf_attempts
        WHERE scope = 'address' AND key = address AND NOT pending
        ORDER BY expires_at_ms > now_ms DESC, at_ms DESC, id DESC OFFSET keep);
    IF username IS NOT NULL THEN
        DELETE FROM bf_attempts WHERE id IN (
            SELECT id FROM bf_attempts
            WHERE scope = 'username' AND key = username AND NOT pending
            ORDER BY expires_at_ms > now_ms DESC, at_ms DESC, id DESC OFFSET keep);
    END IF;
    RETURN (before_a < threshold AND before_a + 1 >= threshold)
        OR (before_u < threshold AND before_u + 1 >= threshold);
END
$$;

-- The open ceremonies of one kind of one user, found without reading every open ceremony
-- (ceremony_put_one_per_user deletes them at each begin; discoverable sign-ins, which anyone
-- may open, have no user).
CREATE INDEX webauthn_ceremonies_by_user ON webauthn_ceremonies (kind, user_key) WHERE user_key IS NOT NULL;
