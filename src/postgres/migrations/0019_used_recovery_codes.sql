-- Schema v19: the keyed hashes of a set's recovery codes already used, so that a code used a
-- second time is logged reused_code (SPEC, the second step), not bad_second_factor (review
-- 161). Emptied when the set is replaced; what a copy moves with the rest of the row. With a
-- default, so binaries of v18 that insert rows by their column names still run beside.
ALTER TABLE second_factors ADD COLUMN used_recovery_hashes bytea[] NOT NULL DEFAULT '{}';
