-- Registry: COTs, patients, devices, API tokens; plus the quarantine and the audit log.
-- Timestamps are INTEGER unix milliseconds (UTC), converted in Rust.

CREATE TABLE cots (
    id          INTEGER PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE patients (
    id            INTEGER PRIMARY KEY,
    cot_id        INTEGER NOT NULL REFERENCES cots (id),
    -- Pseudonymous code, unique across the installation.
    code          TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    birth_year    INTEGER,
    -- Comma-separated condition codes (hypertension, copd, diabetes, heart_failure, ...).
    conditions    TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL
);
CREATE INDEX patients_cot_idx ON patients (cot_id);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY NOT NULL CHECK (length(id) BETWEEN 1 AND 64),
    patient_id    INTEGER NOT NULL REFERENCES patients (id),
    kind          TEXT NOT NULL CHECK (kind IN ('bp', 'spo2', 'glucose')),
    model         TEXT,
    -- Lowercase hex SHA-256 of the device secret (see store::credentials).
    secret_hash   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_seen_at  INTEGER,
    online        INTEGER NOT NULL DEFAULT 0,
    battery_pct   INTEGER,
    firmware      TEXT,
    rssi          INTEGER,
    status_at     INTEGER,
    last_seq      INTEGER
);
CREATE INDEX devices_patient_idx ON devices (patient_id);

CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

-- Device input the gateway could not accept, kept for diagnosis. No foreign key: the
-- device may be unknown, which can be the very reason for the quarantine.
CREATE TABLE quarantine (
    id            INTEGER PRIMARY KEY,
    received_at   INTEGER NOT NULL,
    topic         TEXT NOT NULL,
    device_id     TEXT,
    seq           INTEGER,
    reason        TEXT NOT NULL,
    detail        TEXT NOT NULL,
    payload       BLOB NOT NULL,
    payload_size  INTEGER NOT NULL
);
CREATE INDEX quarantine_received_idx ON quarantine (received_at);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    source  TEXT,
    detail  TEXT
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
