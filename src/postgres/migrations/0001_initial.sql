-- Schema v1 of portcullis's PostgreSQL store. Times are Unix milliseconds (bigint), as in the
-- domain (store::now_ms). Applied once, in one transaction, by migrate.rs.

-- Users, keyed by the normalised username (domain::normalise_key).
CREATE TABLE users (
    key text PRIMARY KEY,
    display_name text NOT NULL,
    -- An argon2id PHC string; never a plaintext password.
    password_hash text NOT NULL,
    admin boolean NOT NULL DEFAULT false,
    disabled boolean NOT NULL DEFAULT false,
    created_at_ms bigint NOT NULL,
    password_changed_at_ms bigint NOT NULL,
    last_login_at_ms bigint
);

-- Sessions under the SHA-256 of their token (the token itself is never stored). Deleting a
-- user ends their sessions in the same statement.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_key text NOT NULL REFERENCES users (key) ON DELETE CASCADE ON UPDATE CASCADE,
    created_at_ms bigint NOT NULL,
    last_seen_at_ms bigint NOT NULL,
    ip text NOT NULL,
    user_agent text NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_key);

-- Failed and refused login attempts (audit::FailureRecord), time-ordered: `id` breaks ties
-- between records of one millisecond and is the paging cursor. The indexes serve the audit
-- filters: by time, by username key and time, by address (or range: inet's btree answers
-- `ip <<= net`) and time.
CREATE TABLE failures (
    id bigserial PRIMARY KEY,
    time_ms bigint NOT NULL,
    ip inet NOT NULL,
    -- The identity checked (the stored spelling, or the normalised typed form).
    username text NOT NULL,
    -- Its normalised key, for the username filter.
    user_key text NOT NULL,
    typed text,
    reason text NOT NULL CHECK (reason IN ('unknown_user', 'bad_password', 'captcha_required',
        'bad_captcha', 'rate_limited', 'csrf', 'disabled')),
    user_agent text NOT NULL,
    count bigint NOT NULL DEFAULT 1 CHECK (count >= 1),
    -- instance_name of the server that recorded it.
    instance text NOT NULL DEFAULT ''
);
CREATE INDEX failures_by_time ON failures (time_ms, id);
CREATE INDEX failures_by_user ON failures (user_key, time_ms, id);
CREATE INDEX failures_by_ip ON failures (ip, time_ms, id);

-- 32-byte server secrets (CSRF and captcha keys), made once and shared by every instance.
CREATE TABLE secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL CHECK (length(value) = 32),
    created_at_ms bigint NOT NULL
);

-- Brute-force state shared by the instances (postgres/brute_force.rs).

-- GCRA quotas: one row per (quota, key) with its theoretical arrival time. A row whose
-- tat_ms is past is a full bucket, the same as no row, and is purged. No index beside the
-- key: tat_ms changes on every attempt, and an index on it would cost every update its
-- heap-only (HOT) path; the purge scans the table instead.
CREATE TABLE bf_quotas (
    quota text NOT NULL,
    key bytea NOT NULL,
    tat_ms bigint NOT NULL,
    PRIMARY KEY (quota, key)
);

-- Failed password checks and checks in flight (reservations), per address and per username
-- key. A row counts while expires_at_ms is ahead: a failure for failure_window, a
-- reservation for a bounded time, so an instance that dies mid-check cannot hold a place
-- for ever.
CREATE TABLE bf_attempts (
    id bigserial PRIMARY KEY,
    scope text NOT NULL CHECK (scope IN ('address', 'username')),
    key bytea NOT NULL,
    pending boolean NOT NULL,
    at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX bf_attempts_by_key ON bf_attempts (scope, key, expires_at_ms);
CREATE INDEX bf_attempts_by_expiry ON bf_attempts (expires_at_ms);

-- Open captcha challenges: a keyed hash of the visitor's pre-login id and of the answer.
CREATE TABLE bf_captchas (
    slot bytea PRIMARY KEY,
    answer_hash bytea NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX bf_captchas_by_expiry ON bf_captchas (expires_at_ms);

-- Pre-login ids that signed in once and may not again, until they would have expired anyway.
CREATE TABLE bf_retired_prelogins (
    id bytea PRIMARY KEY,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX bf_retired_prelogins_by_expiry ON bf_retired_prelogins (expires_at_ms);

-- Reserving a password check must test "failures plus reservations below the threshold" for
-- an address and a username and insert the reservation atomically, across instances. One
-- statement cannot do it (its snapshot predates any lock it takes), so this function takes
-- both keys' advisory locks (in a fixed order: no deadlock) and then, with a fresh snapshot
-- per statement, counts and inserts. Returns the two reservation ids, or NULL when a captcha
-- is demanded.
CREATE FUNCTION bf_reserve(address bytea, username bytea, now_ms bigint, threshold integer,
                           hold_ms bigint)
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
       OR (SELECT count(*) FROM bf_attempts
        WHERE scope = 'username' AND key = username AND expires_at_ms > now_ms) >= threshold THEN
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

-- Records failures (turning the reservations `ids` into failures, or, with no ids, adding a
-- failure for a check that ran with a solved captcha) under the same locks as bf_reserve,
-- and says whether this made either count of failures reach the threshold from below.
CREATE FUNCTION bf_fail(address bytea, username bytea, ids bigint[], now_ms bigint,
                        window_ms bigint, threshold integer)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a integer := hashtext('address' || encode(address, 'hex'));
    u integer := hashtext('username' || encode(username, 'hex'));
    before_a bigint;
    before_u bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1, LEAST(a, u));
    PERFORM pg_advisory_xact_lock(1, GREATEST(a, u));
    SELECT count(*) INTO before_a FROM bf_attempts
        WHERE scope = 'address' AND key = address AND NOT pending AND expires_at_ms > now_ms;
    SELECT count(*) INTO before_u FROM bf_attempts
        WHERE scope = 'username' AND key = username AND NOT pending AND expires_at_ms > now_ms;
    DELETE FROM bf_attempts WHERE id = ANY (ids);
    INSERT INTO bf_attempts (scope, key, pending, at_ms, expires_at_ms)
    VALUES ('address', address, false, now_ms, now_ms + window_ms),
           ('username', username, false, now_ms, now_ms + window_ms);
    RETURN (before_a < threshold AND before_a + 1 >= threshold)
        OR (before_u < threshold AND before_u + 1 >= threshold);
END
$$;
