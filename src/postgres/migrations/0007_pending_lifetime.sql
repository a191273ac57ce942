-- Schema v7: a reservation whose end never comes must stop counting after its own lifetime
-- (bf_reserve's hold_ms, RESERVATION_HOLD_MS), never hold the real user behind a captcha.
-- bf_take_held ended the OLDEST place in flight of a key; after an outage had stranded places
-- (their release could not reach the database), each later check's end took a stranded place
-- (lapsed or about to) and left its own fresh one counted for a whole hold more, so the
-- stranded places lived on in the checks that followed. Ending the NEWEST instead leaves
-- counted only what lapses soonest; a lapsed place (counting for nothing already, and left
-- to the purge) is taken only when no live one is left. bf_release_held and bf_fail_held call this
-- under bf_reserve's locks, as before; bf_fail still gives a failure the whole window from
-- when it lands.
CREATE OR REPLACE FUNCTION bf_take_held(address bytea, username bytea)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM bf_attempts WHERE id = (SELECT id FROM bf_attempts
        WHERE scope = 'address' AND key = address AND pending
        ORDER BY expires_at_ms DESC, id DESC LIMIT 1);
    DELETE FROM bf_attempts WHERE id = (SELECT id FROM bf_attempts
        WHERE scope = 'username' AND key = username AND pending
        ORDER BY expires_at_ms DESC, id DESC LIMIT 1);
END
$$;
