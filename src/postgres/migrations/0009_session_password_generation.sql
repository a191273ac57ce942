-- Schema v9: each session keeps its user's credential generation (users.password_changed_at_ms:
-- a password change, a factor reset or a disable starts a new one) from when it began; a
-- session of another generation than its user's is over (store::Session). Each of those ends
-- every session, but a sign-in checked just before could store its session just after: that
-- session is of the old generation.
ALTER TABLE sessions ADD COLUMN password_changed_at_ms bigint NOT NULL DEFAULT 0;
-- Sessions from before outlived every password change so far: they are of the current one.
UPDATE sessions s SET password_changed_at_ms = u.password_changed_at_ms FROM users u WHERE u.key = s.user_key;

-- session_start (v8) with the generation. The v8 function stays, taking the generation from
-- the user's row, for older binaries during a rolling upgrade.
CREATE FUNCTION session_start(previous bytea, new_hash bytea, owner text, created_ms bigint,
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
        ORDER BY (now_ms - s.last_seen_at_ms < idle_ms AND now_ms - s.created_at_ms < absolute_ms) DESC,
                 s.last_seen_at_ms DESC, s.token_hash DESC
        OFFSET cap);
END
$$;

CREATE OR REPLACE FUNCTION session_start(previous bytea, new_hash bytea, owner text, created_ms bigint,
                                         seen_ms bigint, from_ip text, agent text, factor_count smallint,
                                         cap integer, idle_ms bigint, absolute_ms bigint, now_ms bigint)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT session_start(previous, new_hash, owner, created_ms, seen_ms, from_ip, agent, factor_count,
                         coalesce((SELECT password_changed_at_ms FROM users WHERE key = owner), 0),
                         cap, idle_ms, absolute_ms, now_ms);
$$;
