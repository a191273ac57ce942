-- Schema v11: at most one open passkey registration and one open second-factor check per
-- user (store::passkeys::CeremonyKind::one_per_user), also when they are begun at once. v6's
-- single statement deleted the user's others and inserted the new one, but two such
-- statements each saw the other's row not yet there, and both stayed. Here the user's puts
-- of one kind take turns (a transaction-scoped advisory lock), and each turn's delete runs
-- after the lock, on a snapshot that sees the turns before it. Older binaries' statement
-- still works beside it during a rolling upgrade (racing as before).
CREATE FUNCTION ceremony_put_one_per_user(new_key bytea, new_kind text, owner text, new_state text,
                                          expires_ms bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(3, hashtext(new_kind || ':' || owner));
    DELETE FROM webauthn_ceremonies WHERE kind = new_kind AND user_key = owner AND key <> new_key;
    INSERT INTO webauthn_ceremonies (key, kind, user_key, state, expires_at_ms)
    VALUES (new_key, new_kind, owner, new_state, expires_ms)
    ON CONFLICT (key) DO UPDATE SET kind = new_kind, user_key = owner, state = new_state,
        expires_at_ms = expires_ms;
END
$$;
