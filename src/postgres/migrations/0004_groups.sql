-- Schema v4 (issue 13, forward auth): the groups a user is listed in, for access rules and
-- the Remote-Groups header. Sorted, without repeats; `admins` is implied for administrators
-- and not stored. Self-contained: adds one column with a default, nothing else.
ALTER TABLE users ADD COLUMN groups text[] NOT NULL DEFAULT '{}';
