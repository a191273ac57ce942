-- Schema v20: a check that did not fail no longer forgets the username's failures; it counts
-- them (for the record of a success after failures) and leaves them to lapse. Cleared on a
-- success, a name's captcha demand went away only for a real account whose owner signed in,
-- which anyone could watch for after arming the name with failures (review 181). Same
-- signature and meaning of the other arguments as migration 8's; `clear_username` names the
-- username whose failures are counted. Binaries of v19 still run beside (their successes
-- call this one, and so clear nothing either).
CREATE OR REPLACE FUNCTION bf_end_check(address bytea, username bytea, prelogin bytea,
                                        prelogin_expires_ms bigint, clear_username bytea, now_ms bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(coalesce(address, ''::bytea), 'hex'));
    u integer := hashtext('username' || encode(coalesce(username, ''::bytea), 'hex'));
    n bigint;
    counted bigint := 0;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF address IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(1, LEAST(a, u));
        PERFORM pg_advisory_xact_lock(1, GREATEST(a, u));
        PERFORM bf_take_held(address, username);
    END IF;
    IF prelogin IS NOT NULL THEN
        INSERT INTO bf_retired_prelogins AS r (id, expires_at_ms) VALUES (prelogin, prelogin_expires_ms)
        ON CONFLICT (id) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms WHERE r.expires_at_ms <= now_ms;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    IF clear_username IS NOT NULL THEN
        SELECT count(*) INTO counted FROM bf_attempts
         WHERE scope = 'username' AND key = clear_username AND NOT pending AND expires_at_ms > now_ms;
    END IF;
    RETURN counted;
END
$$;
