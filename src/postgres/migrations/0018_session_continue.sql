-- A session going on under a new token (a password change, sign out everywhere else) only
-- while its old token is still stored: a sign-out that ended it meanwhile wins, and nothing
-- is stored (review 129). The DELETE decides: a racing sign-out's DELETE of the same row waits
-- for this transaction and then finds nothing, or commits first and this one finds nothing.
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
    RETURN true;
END
$$;
