-- Registry: COTs, patients, devices, API tokens; plus the quarantine and the audit log.
-- Timestamps are TIMESTAMPTZ; ids are identities except device ids, which devices carry themselves.

CREATE TABLE cots (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE patients (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cot_id        BIGINT NOT NULL REFERENCES cots (id),
    -- Pseudonymous code, unique across the installation.
    code          TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    birth_year    INTEGER,
    -- Comma-separated condition codes (hypertension, copd, diabetes, heart_failure, ...).
    conditions    TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX patients_cot_idx ON patients (cot_id);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    patient_id    BIGINT NOT NULL REFERENCES patients (id),
    kind          TEXT NOT NULL CHECK (kind IN ('bp', 'spo2', 'glucose')),
    model         TEXT,
    -- Lowercase hex SHA-256 of the device secret (see store::credentials).
    secret_hash   TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ,
    last_seen_at  TIMESTAMPTZ,
    online        BOOLEAN NOT NULL DEFAULT false,
    battery_pct   SMALLINT,
    firmware      TEXT,
    rssi          SMALLINT,
    status_at     TIMESTAMPTZ,
    last_seq      BIGINT
-- Every ingest batch updates last_seen_at/last_seq of its devices: leave room on each page
-- so those updates stay HOT (no index touched, no page hopping) and the table stays small.
) WITH (fillfactor = 70);
CREATE INDEX devices_patient_idx ON devices (patient_id);

CREATE TABLE api_tokens (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

-- Device input the gateway could not accept, kept for diagnosis. No foreign key: the
-- device may be unknown, which can be the very reason for the quarantine.
CREATE TABLE quarantine (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at   TIMESTAMPTZ NOT NULL,
    topic         TEXT NOT NULL,
    device_id     TEXT,
    seq           BIGINT,
    reason        TEXT NOT NULL,
    detail        TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    payload_size  BIGINT NOT NULL
);
CREATE INDEX quarantine_received_idx ON quarantine (received_at);

CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    source  TEXT,
    detail  TEXT
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
