-- Audit rows about a user (logins, user administration) name every COT of that user, so an
-- administrator sees them only for users of their own COTs: `cot_ids` is ",1,4," (the COT
-- ids between commas) or NULL. Identity-provider JWTs ended by a logout are kept (by the
-- SHA-256 of the token) until they expire.

ALTER TABLE audit_log ADD COLUMN cot_ids TEXT;

CREATE TABLE revoked_jwts (
    token_hash  TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL
);
CREATE INDEX revoked_jwts_expires_idx ON revoked_jwts (expires_at);
