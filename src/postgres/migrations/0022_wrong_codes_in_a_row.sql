-- Schema v22: wrong codes in a row per user (sign_in::WRONG_CODES_IN_A_ROW, NIST SP 800-63B
-- §5.2.2), kept with the user's factors for the run that began at wrong_codes_run_ms (the
-- later of the user's last sign-in and credential generation): read from the failure
-- records, the count could be pushed out of them by anyone's failures (review 208). Gone with
-- the row (`user reset-factors`). A pending sign-in counts the codes it had refused itself,
-- which the alert of its success leaves out (review 211). Binaries of v21 running beside
-- leave the columns alone.
ALTER TABLE second_factors ADD COLUMN wrong_codes integer NOT NULL DEFAULT 0,
                           ADD COLUMN wrong_codes_run_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE pending_sign_ins ADD COLUMN codes_refused integer NOT NULL DEFAULT 0;
