-- Care plans (versioned per patient) and the alerts the engine raises from them.
-- Timestamps are INTEGER unix milliseconds (UTC). The PostgreSQL twin of this file has the
-- same tables and columns.

-- One row per version; a change inserts version + 1 and never updates an old row.
CREATE TABLE care_plans (
    id          INTEGER PRIMARY KEY,
    patient_id  INTEGER NOT NULL REFERENCES patients (id),
    version     INTEGER NOT NULL CHECK (version >= 1),
    -- The template this version started from, if any (hypertension, copd, ...).
    template    TEXT,
    -- The plan itself, JSON (see gateway::alerts::plan::CarePlan).
    plan        TEXT NOT NULL,
    author      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (patient_id, version)
);

CREATE TABLE alerts (
    id                 INTEGER PRIMARY KEY,
    patient_id         INTEGER NOT NULL REFERENCES patients (id),
    cot_id             INTEGER NOT NULL REFERENCES cots (id),
    -- The rule's id within the care plan (or a built-in rule such as device-offline).
    rule_id            TEXT NOT NULL,
    rule_kind          TEXT NOT NULL,
    title              TEXT NOT NULL,
    severity           TEXT NOT NULL,
    -- 4 critical, 3 high, 2 medium, 1 low, 0 info: the triage order.
    severity_rank      INTEGER NOT NULL,
    condition          TEXT NOT NULL CHECK (condition IN ('active', 'cleared')),
    workflow           TEXT NOT NULL CHECK (workflow IN ('new', 'acknowledged', 'resolved')),
    outcome            TEXT,
    assignee           TEXT,
    plan_version       INTEGER,
    metric             TEXT,
    unit               TEXT,
    count              INTEGER NOT NULL DEFAULT 1,
    first_value        REAL,
    worst_value        REAL,
    last_value         REAL,
    opened_at          INTEGER NOT NULL,
    last_triggered_at  INTEGER NOT NULL,
    -- Measurement time of the newest reading that touched the condition.
    last_measured_at   INTEGER,
    cleared_at         INTEGER,
    acknowledged_at    INTEGER,
    acknowledged_by    TEXT,
    resolved_at        INTEGER,
    resolved_by        TEXT,
    -- When the alert must be acknowledged by; past it, it escalates.
    due_at             INTEGER,
    escalation_level   INTEGER NOT NULL DEFAULT 0,
    escalated_at       INTEGER,
    updated_at         INTEGER NOT NULL
);
-- One unresolved alert per (patient, rule).
CREATE UNIQUE INDEX alerts_open_rule_idx ON alerts (patient_id, rule_id) WHERE workflow <> 'resolved';
CREATE INDEX alerts_triage_idx ON alerts (cot_id, workflow, severity_rank, opened_at);
CREATE INDEX alerts_due_idx ON alerts (due_at) WHERE workflow = 'new';

-- The readings that raised or updated an alert.
CREATE TABLE alert_readings (
    alert_id     INTEGER NOT NULL REFERENCES alerts (id),
    device_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    measured_at  INTEGER NOT NULL,
    value        REAL,
    PRIMARY KEY (alert_id, device_id, seq)
) WITHOUT ROWID;

-- Every transition of every alert, in the order they happened: the live stream resumes
-- from an id (SSE Last-Event-ID).
CREATE TABLE alert_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    INTEGER NOT NULL REFERENCES alerts (id),
    patient_id  INTEGER NOT NULL,
    cot_id      INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX alert_events_alert_idx ON alert_events (alert_id, id);

-- Committed reading batches the alert engine has not evaluated yet, written in the same
-- transaction as the readings: after a crash the engine re-evaluates their time range.
CREATE TABLE alert_outbox (
    id               INTEGER PRIMARY KEY,
    min_received_at  INTEGER NOT NULL,
    max_received_at  INTEGER NOT NULL,
    readings         INTEGER NOT NULL,
    -- The patients whose readings the batch stored, comma-separated: recovery reads their
    -- readings by (patient_id, measured_at) and filters on received_at, so readings need
    -- no extra index.
    patients         TEXT NOT NULL
);
