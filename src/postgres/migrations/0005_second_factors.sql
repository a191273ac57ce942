-- Schema v5 (issue 14): users' second factors and pending two-step sign-ins.
--
-- second_factors: one row per user with a factor. The TOTP secret is sealed (AES-256-GCM)
-- under a key kept outside the database (data_dir/factor.key), so a copy of the database
-- alone gives no codes. last_totp_step is the latest RFC 6238 time step accepted (none is
-- accepted twice); recovery_hashes are HMAC-SHA-256 digests of the unused recovery codes.
CREATE TABLE second_factors (
    user_key text PRIMARY KEY,
    totp_sealed bytea,
    totp_created_at_ms bigint,
    last_totp_step bigint,
    recovery_hashes bytea[] NOT NULL DEFAULT '{}'
);

-- A sign-in whose password was right and whose second factor is owed, under the SHA-256 of
-- the __Host-portcullis-mfa cookie's token; deleted when used (single use) or expired.
CREATE TABLE pending_sign_ins (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_key text NOT NULL,
    password_changed_at_ms bigint NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    next text
);
CREATE INDEX pending_sign_ins_by_expiry ON pending_sign_ins (expires_at_ms);

-- The failure reasons of the second step.
ALTER TABLE failures DROP CONSTRAINT IF EXISTS failures_reason_check;
ALTER TABLE failures ADD CONSTRAINT failures_reason_check CHECK (reason IN ('unknown_user',
    'bad_password', 'captcha_required', 'bad_captcha', 'rate_limited', 'csrf', 'disabled',
    'bad_second_factor', 'reused_code'));
