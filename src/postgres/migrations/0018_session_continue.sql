-- A session going on under a new token (a password change, sign out everywhere else) only
-- while its old token is still stored: a sign-out that ended it meanwhile wins, and nothing
-- is stored (review 129). The DELETE decides: a racing sign-out's DELETE of the same row waits
-- for this transaction and then finds nothing, or commits first and this one finds nothing.
-- Under a new token it also records, for a minute, which token the old one went on as: a
-- sign-out sent with the old token from another tab, just after the change stored the new
-- one, ends that one too (review 131). Rows past their minute are purged with the sessions
-- and never followed.
CREATE TABLE session_successors (
    from_token bytea PRIMARY KEY,
    to_token   bytea NOT NULL,
    at_ms      bigint NOT NULL
);

CREATE FUNCTION session_continue(previous bytea, new_hash bytea, owner text, created_ms bigint,
                                 seen_ms bigint, from_ip text, agent text, factor_count smallint,
                                 generation bigint, passkey bytea, cap integer, idle_ms bigint,
                                 absolute_ms bigint, now_ms bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(2, hashtext(owner));
    DELETE FROM sessions WHERE token_hash = previous;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM session_start(NULL::bytea, new_hash, owner, created_ms, seen_ms, from_ip, agent, factor_count,
                          generation, passkey, cap, idle_ms, absolute_ms, now_ms);
    IF previous <> new_hash THEN
        INSERT INTO session_successors (from_token, to_token, at_ms) VALUES (previous, new_hash, now_ms)
        ON CONFLICT (from_token) DO UPDATE SET to_token = EXCLUDED.to_token, at_ms = EXCLUDED.at_ms;
    END IF;
    RETURN true;
END
$$;
