-- A patient's contacts and context (phones, caregiver, GP, language, clinical note), and the
-- interventions nurses record on alerts (calls and their outcome, advice, GP informed, home
-- visit, emergency services). The SQLite twin of this file has the same tables and columns.

-- One row per patient, replaced whole by each edit (the audit log keeps who changed what).
CREATE TABLE patient_contacts (
    patient_id          BIGINT PRIMARY KEY REFERENCES patients (id),
    -- JSON array of {"label": "...", "number": "..."}.
    phones              TEXT NOT NULL DEFAULT '[]',
    caregiver_name      TEXT,
    caregiver_relation  TEXT,
    caregiver_phone     TEXT,
    gp_name             TEXT,
    gp_phone            TEXT,
    gp_email            TEXT,
    -- BCP 47 tag (it, en, de, ...).
    preferred_language  TEXT,
    clinical_note       TEXT,
    -- Who wrote the note as it stands, and when (kept when an edit leaves the note as it was).
    note_author         TEXT,
    note_at             TIMESTAMPTZ,
    updated_by          TEXT NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);

-- What was done about an alert, one row per act; never updated.
CREATE TABLE alert_interventions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    BIGINT NOT NULL REFERENCES alerts (id),
    patient_id  BIGINT NOT NULL REFERENCES patients (id),
    cot_id      BIGINT NOT NULL REFERENCES cots (id),
    kind        TEXT NOT NULL CHECK (kind IN ('phone_call', 'advice_given', 'gp_informed',
                    'home_visit_requested', 'emergency_services')),
    -- A phone call's result: reached, not_reached, wrong_number; NULL for the other kinds.
    call_result TEXT CHECK (call_result IN ('reached', 'not_reached', 'wrong_number')),
    note        TEXT,
    actor       TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    -- A call not reached re-queues the alert until this time.
    retry_at    TIMESTAMPTZ,
    CHECK ((kind = 'phone_call') = (call_result IS NOT NULL))
);
CREATE INDEX alert_interventions_alert_idx ON alert_interventions (alert_id, id);
CREATE INDEX alert_interventions_patient_idx ON alert_interventions (patient_id, at);

-- How many interventions the alert has (resolution of medium and above needs one), and when a
-- call not reached is to be retried.
ALTER TABLE alerts ADD COLUMN interventions BIGINT NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN retry_at TIMESTAMPTZ;
