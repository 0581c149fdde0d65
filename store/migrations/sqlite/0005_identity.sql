-- Staff identity and tenancy: users (people and service accounts) with one role, members of
-- one or more COTs. API tokens now belong to a user (sessions from a login, or API keys of a
-- service account); tokens from before this migration belong to nobody and are refused.
-- The audit log gains the patient and COT an entry concerns and becomes append-only.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    display_name   TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('nurse', 'physician', 'device_manager', 'admin')),
    kind           TEXT NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'service')),
    password_hash  TEXT,
    created_at     INTEGER NOT NULL,
    disabled_at    INTEGER
);

CREATE TABLE user_cots (
    user_id  INTEGER NOT NULL REFERENCES users (id),
    cot_id   INTEGER NOT NULL REFERENCES cots (id),
    PRIMARY KEY (user_id, cot_id)
);
CREATE INDEX user_cots_cot_idx ON user_cots (cot_id);

ALTER TABLE api_tokens ADD COLUMN user_id INTEGER REFERENCES users (id);
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'api_key'
    CHECK (kind IN ('session', 'api_key'));
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id);

ALTER TABLE audit_log ADD COLUMN patient_id INTEGER;
ALTER TABLE audit_log ADD COLUMN cot_id INTEGER;
CREATE INDEX audit_log_patient_idx ON audit_log (patient_id, at) WHERE patient_id IS NOT NULL;
CREATE INDEX audit_log_cot_idx ON audit_log (cot_id, at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
