-- Schema v8: fewer statements, round trips and WAL flushes per sign-in (issue 12's targets:
-- on a small machine the database shares the cores with argon2). Four functions, each one
-- round trip, for steps a sign-in always takes together; the functions they replace stay for
-- the other callers (and for older binaries during a rolling upgrade).
--
-- Durability (SECURITY.md, "PostgreSQL"): a reservation and its end on success guard only
-- against CONCURRENT attempts; a crash loses the attempts in flight with them, so their commits
-- need not wait for the WAL flush (synchronous_commit off for that transaction alone: set_config
-- with is_local, reset at its end, so a pooled connection never keeps it). Other instances see
-- the rows at once; only the flush is deferred. A failure (bf_fail, bf_fail_held), a failure
-- record and a session stay synchronous. What else an asynchronous commit here carries, the
-- retired pre-login id and the cleared failure count, is flushed before any response that says
-- a sign-in happened: that response follows a synchronous commit (the session, or the pending
-- two-step sign-in) on the same server, and a WAL flush covers every record before its own.

-- The start of a password check: is the form's pre-login id retired, and if not, a
-- reservation (bf_reserve: test and insert under both keys' locks). Returns 0 when `prelogin`
-- (NULL: no form to check) is retired, 1 when a captcha is demanded, 2 when reserved.
CREATE FUNCTION bf_begin_check(prelogin bytea, address bytea, username bytea, now_ms bigint,
                               threshold integer, hold_ms bigint)
RETURNS smallint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF prelogin IS NOT NULL AND EXISTS (SELECT 1 FROM bf_retired_prelogins WHERE id = prelogin) THEN
        RETURN 0;
    END IF;
    IF bf_reserve(address, username, now_ms, threshold, hold_ms) IS NULL THEN
        RETURN 1;
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN 2;
END
$$;

-- The end of a password check that did not fail, in one transaction: its reservation's places
-- given back (when `address` is not NULL: bf_take_held under bf_reserve's locks), the form's
-- pre-login id retired until `prelogin_expires_ms` (when `prelogin` is not NULL; a lapsed
-- retirement not yet purged is taken over, as retire_prelogin does), then `clear_username`'s
-- failures forgotten (when not NULL; its checks in flight stay). Returns NULL when the id was
-- already retired (the form signed in before: nothing is cleared), else how many failure rows
-- were cleared.
CREATE FUNCTION bf_end_check(address bytea, username bytea, prelogin bytea,
                             prelogin_expires_ms bigint, clear_username bytea, now_ms bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(coalesce(address, ''::bytea), 'hex'));
    u integer := hashtext('username' || encode(coalesce(username, ''::bytea), 'hex'));
    n bigint;
    cleared bigint := 0;
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
        DELETE FROM bf_attempts WHERE scope = 'username' AND key = clear_username AND NOT pending;
        GET DIAGNOSTICS cleared = ROW_COUNT;
    END IF;
    RETURN cleared;
END
$$;

-- A new session in place of the browser's previous one, and the user's session cap, in one
-- transaction (one synchronous commit): `previous` (NULL: none) ended, the session stored,
-- then the user's least recently used sessions beyond `cap` ended, expired ones first (idle
-- for `idle_ms` or older than `absolute_ms` at `now_ms`), ties by token hash. The per-user
-- advisory lock (space 2, apart from the brute-force functions' space 1) is taken before any
-- row is touched: concurrent sign-ins of one user run this one at a time, each seeing the
-- sessions of those before it, so together they end exactly the sessions past the cap, never
-- one just handed out and never too few; taken before the previous session's row lock, so a
-- sign-in whose previous session another's cap is ending cannot deadlock with it.
CREATE FUNCTION session_start(previous bytea, new_hash bytea, owner text, created_ms bigint,
                              seen_ms bigint, from_ip text, agent text, factor_count smallint,
                              cap integer, idle_ms bigint, absolute_ms bigint, now_ms bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(2, hashtext(owner));
    IF previous IS NOT NULL THEN
        DELETE FROM sessions WHERE token_hash = previous;
    END IF;
    INSERT INTO sessions (token_hash, user_key, created_at_ms, last_seen_at_ms, ip, user_agent, factors)
    VALUES (new_hash, owner, created_ms, seen_ms, from_ip, agent, factor_count)
    ON CONFLICT (token_hash) DO UPDATE SET user_key = EXCLUDED.user_key,
        created_at_ms = EXCLUDED.created_at_ms, last_seen_at_ms = EXCLUDED.last_seen_at_ms,
        ip = EXCLUDED.ip, user_agent = EXCLUDED.user_agent, factors = EXCLUDED.factors;
    DELETE FROM sessions WHERE token_hash IN (
        SELECT s.token_hash FROM sessions s WHERE s.user_key = owner
        ORDER BY (now_ms - s.last_seen_at_ms < idle_ms AND now_ms - s.created_at_ms < absolute_ms) DESC,
                 s.last_seen_at_ms DESC, s.token_hash DESC
        OFFSET cap);
END
$$;


-- A failed password check (bf_fail_held for a reserved one, `held`; bf_fail for one that ran
-- with a solved captcha), and whether attempts from `address` or for `username` must now carry
-- a captcha (failures and checks in flight at `now_ms` against `threshold`, as needs_captcha
-- asks), in one round trip: the refusal that follows needs both. Synchronous, as every failure.
CREATE FUNCTION bf_fail_counted(address bytea, username bytea, held boolean, now_ms bigint,
                                window_ms bigint, threshold integer,
                                OUT reached boolean, OUT demanded boolean)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF held THEN
        reached := bf_fail_held(address, username, now_ms, window_ms, threshold);
    ELSE
        reached := bf_fail(address, username, ARRAY[]::bigint[], now_ms, window_ms, threshold);
    END IF;
    SELECT count(*) FILTER (WHERE scope = 'address' AND key = address) >= threshold
        OR count(*) FILTER (WHERE scope = 'username' AND key = username) >= threshold
    INTO demanded
    FROM bf_attempts
    WHERE ((scope = 'address' AND key = address) OR (scope = 'username' AND key = username))
      AND expires_at_ms > now_ms;
END
$$;
