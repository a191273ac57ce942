-- Schema v13: a session stamped further ahead of the reading clock than the allowed skew
-- (store::CLOCK_SKEW_MS, 60 s: a clock stepped back, or an instance whose clock runs behind)
-- counts as expired at the cap, as store::SessionCap::has_expired says and the sled engine
-- does. v9's ranking took it for the most recently used session, so a new sign-in ended a
-- live session in its place.
--
-- Same signature as v9's, so older binaries call it unchanged during a rolling upgrade.
CREATE OR REPLACE FUNCTION session_start(previous bytea, new_hash bytea, owner text, created_ms bigint,
                                         seen_ms bigint, from_ip text, agent text, factor_count smallint,
                                         generation bigint, cap integer, idle_ms bigint, absolute_ms bigint,
                                         now_ms bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(2, hashtext(owner));
    IF previous IS NOT NULL THEN
        DELETE FROM sessions WHERE token_hash = previous;
    END IF;
    INSERT INTO sessions (token_hash, user_key, created_at_ms, last_seen_at_ms, ip, user_agent, factors,
                          password_changed_at_ms)
    VALUES (new_hash, owner, created_ms, seen_ms, from_ip, agent, factor_count, generation)
    ON CONFLICT (token_hash) DO UPDATE SET user_key = EXCLUDED.user_key,
        created_at_ms = EXCLUDED.created_at_ms, last_seen_at_ms = EXCLUDED.last_seen_at_ms,
        ip = EXCLUDED.ip, user_agent = EXCLUDED.user_agent, factors = EXCLUDED.factors,
        password_changed_at_ms = EXCLUDED.password_changed_at_ms;
    DELETE FROM sessions WHERE token_hash IN (
        SELECT s.token_hash FROM sessions s WHERE s.user_key = owner
        ORDER BY (now_ms - s.last_seen_at_ms < idle_ms AND now_ms - s.created_at_ms < absolute_ms
                  AND greatest(s.last_seen_at_ms, s.created_at_ms) <= now_ms + 60000) DESC,
                 s.last_seen_at_ms DESC, s.token_hash DESC
        OFFSET cap);
END
$$;
