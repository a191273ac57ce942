-- Schema v16: each session keeps the credential id of the passkey it was signed in with
-- (store::Session::passkey_id; NULL without one), so removing a passkey ends the sessions it
-- began (SessionStore::delete_for_passkey: one DELETE by user_key, through sessions_by_user).
ALTER TABLE sessions ADD COLUMN passkey_id bytea;

-- session_start (v13) with the passkey. The v13 function stays, for older binaries during a
-- rolling upgrade, and now stores its sessions through this one, without a passkey.
CREATE FUNCTION session_start(previous bytea, new_hash bytea, owner text, created_ms bigint,
                              seen_ms bigint, from_ip text, agent text, factor_count smallint,
                              generation bigint, passkey bytea, cap integer, idle_ms bigint,
                              absolute_ms bigint, now_ms bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(2, hashtext(owner));
    IF previous IS NOT NULL THEN
        DELETE FROM sessions WHERE token_hash = previous;
    END IF;
    INSERT INTO sessions (token_hash, user_key, created_at_ms, last_seen_at_ms, ip, user_agent, factors,
                          password_changed_at_ms, passkey_id)
    VALUES (new_hash, owner, created_ms, seen_ms, from_ip, agent, factor_count, generation, passkey)
    ON CONFLICT (token_hash) DO UPDATE SET user_key = EXCLUDED.user_key,
        created_at_ms = EXCLUDED.created_at_ms, last_seen_at_ms = EXCLUDED.last_seen_at_ms,
        ip = EXCLUDED.ip, user_agent = EXCLUDED.user_agent, factors = EXCLUDED.factors,
        password_changed_at_ms = EXCLUDED.password_changed_at_ms, passkey_id = EXCLUDED.passkey_id;
    DELETE FROM sessions WHERE token_hash IN (
        SELECT s.token_hash FROM sessions s WHERE s.user_key = owner
        ORDER BY (now_ms - s.last_seen_at_ms < idle_ms AND now_ms - s.created_at_ms < absolute_ms
                  AND greatest(s.last_seen_at_ms, s.created_at_ms) <= now_ms + 60000) DESC,
                 s.last_seen_at_ms DESC, s.token_hash DESC
        OFFSET cap);
END
$$;

CREATE OR REPLACE FUNCTION session_start(previous bytea, new_hash bytea, owner text, created_ms bigint,
                                         seen_ms bigint, from_ip text, agent text, factor_count smallint,
                                         generation bigint, cap integer, idle_ms bigint, absolute_ms bigint,
                                         now_ms bigint)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT session_start(previous, new_hash, owner, created_ms, seen_ms, from_ip, agent, factor_count,
                         generation, NULL::bytea, cap, idle_ms, absolute_ms, now_ms);
$$;
