-- Schema v21: a browser the user signed in with before (a device token of the user's
-- generation) meets the captcha threshold of its address alone, not of the username, which
-- anyone can push past it for a name (OWASP device cookies); its reservation still holds a
-- place in both counts, and its failures count for both. Overloads of migration 1's
-- bf_reserve and migration 8's bf_begin_check with `username_counts` last; the old ones stay
-- for binaries of v20 running beside.
CREATE FUNCTION bf_reserve(address bytea, username bytea, now_ms bigint, threshold integer,
                           hold_ms bigint, username_counts boolean)
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(address, 'hex'));
    u integer := hashtext('username' || encode(username, 'hex'));
    ids bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock(1, LEAST(a, u));
    PERFORM pg_advisory_xact_lock(1, GREATEST(a, u));
    IF (SELECT count(*) FROM bf_attempts
        WHERE scope = 'address' AND key = address AND expires_at_ms > now_ms) >= threshold
       OR (username_counts AND (SELECT count(*) FROM bf_attempts
        WHERE scope = 'username' AND key = username AND expires_at_ms > now_ms) >= threshold) THEN
        RETURN NULL;
    END IF;
    WITH ins AS (
        INSERT INTO bf_attempts (scope, key, pending, at_ms, expires_at_ms)
        VALUES ('address', address, true, now_ms, now_ms + hold_ms),
               ('username', username, true, now_ms, now_ms + hold_ms)
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM ins;
    RETURN ids;
END
$$;

CREATE FUNCTION bf_begin_check(prelogin bytea, address bytea, username bytea, now_ms bigint,
                               threshold integer, hold_ms bigint, username_counts boolean)
RETURNS smallint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF prelogin IS NOT NULL AND EXISTS (SELECT 1 FROM bf_retired_prelogins WHERE id = prelogin) THEN
        RETURN 0;
    END IF;
    IF bf_reserve(address, username, now_ms, threshold, hold_ms, username_counts) IS NULL THEN
        RETURN 1;
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN 2;
END
$$;
