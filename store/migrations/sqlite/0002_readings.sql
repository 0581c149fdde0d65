-- Readings: one row per (device_id, seq), the key devices resend under. WITHOUT ROWID
-- clusters rows by that key, so an insert maintains two b-trees (table and the patient/time
-- index) instead of three.

CREATE TABLE readings (
    device_id        TEXT NOT NULL REFERENCES devices (id),
    seq              INTEGER NOT NULL,
    patient_id       INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    measured_at      INTEGER NOT NULL,
    received_at      INTEGER NOT NULL,
    clock_unset      INTEGER NOT NULL,
    status           INTEGER NOT NULL,
    sensor           INTEGER NOT NULL,
    systolic         REAL,
    diastolic        REAL,
    mean_arterial    REAL,
    pulse            REAL,
    spo2             REAL,
    perfusion_index  REAL,
    glucose_mg_dl    REAL,
    glucose_sample   TEXT,
    glucose_meal     TEXT,
    source_unit      TEXT,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;

CREATE INDEX readings_patient_time_idx ON readings (patient_id, measured_at);
