-- Schema v15: "sign out everywhere else" also ends the user's pending second-step sign-ins
-- (FactorStore::take_pending_of), one DELETE by user_key.
CREATE INDEX pending_sign_ins_by_user ON pending_sign_ins (user_key);
