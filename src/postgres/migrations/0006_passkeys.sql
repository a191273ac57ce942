-- Passkeys (issue 14): each user's WebAuthn credentials, and the server-side state of open
-- WebAuthn ceremonies, shared by every instance. Self-contained: depends only on `users`.
CREATE TABLE IF NOT EXISTS passkeys (
    -- The credential id (W3C WebAuthn: at most 1023 bytes), unique across all users.
    id bytea PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 1023),
    -- Deleting a user removes their passkeys in the same statement.
    user_key text NOT NULL REFERENCES users (key) ON DELETE CASCADE ON UPDATE CASCADE,
    user_handle bytea NOT NULL CHECK (length(user_handle) = 16),
    name text NOT NULL,
    -- webauthn-rs's Passkey as JSON: the public key, algorithm, counter; no secret.
    passkey text NOT NULL,
    created_at_ms bigint NOT NULL,
    last_used_at_ms bigint,
    sign_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS passkeys_by_user ON passkeys (user_key);

-- Open ceremonies under the SHA-256 of the browser's ceremony cookie; taken once, or purged
-- after `expires_at_ms`.
CREATE TABLE IF NOT EXISTS webauthn_ceremonies (
    key bytea PRIMARY KEY CHECK (length(key) = 32),
    kind text NOT NULL CHECK (kind IN ('register', 'sign_in', 'second_factor')),
    user_key text,
    state text NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS webauthn_ceremonies_by_expiry ON webauthn_ceremonies (expires_at_ms);

-- The failure reason of a refused passkey sign-in. The list is whole (the second factor's
-- reasons of 0005 included), so this file stands alone whatever order it is applied in
-- after 0005.
ALTER TABLE failures DROP CONSTRAINT IF EXISTS failures_reason_check;
ALTER TABLE failures ADD CONSTRAINT failures_reason_check CHECK (reason IN ('unknown_user',
    'bad_password', 'captcha_required', 'bad_captcha', 'rate_limited', 'csrf', 'disabled',
    'bad_second_factor', 'reused_code', 'bad_passkey'));
