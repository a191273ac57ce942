-- Schema v10: a pending two-step sign-in remembers whether its password step solved the
-- captcha. Past the captcha threshold the second step checks no code without one; a pending
-- sign-in that brought one carries one code check, used up with it (store::PendingSignIn).
-- Rows of older binaries during a rolling upgrade say false: their sign-ins meet the
-- threshold as before.
ALTER TABLE pending_sign_ins ADD COLUMN captcha_solved boolean NOT NULL DEFAULT false;
