-- Schema v14: a failure record says whether the attempt came from a browser with a device
-- token for its username (store::FailureRecord::known_browser). A constant default adds the
-- column without rewriting the table, and older binaries, which do not name it, insert false.
ALTER TABLE failures ADD COLUMN known_browser boolean NOT NULL DEFAULT false;
