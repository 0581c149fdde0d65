-- Readings, partitioned by device time (measured_at).
--
-- Where the timescaledb extension can be created, readings is a hypertable with 7-day chunks
-- (and compression settings, segmented by device; compression and retention *policies* are
-- left to the operator, since they need TimescaleDB's background jobs). Otherwise readings is
-- a natively range-partitioned table with monthly partitions, created ahead of time by
-- sentinella_ensure_month_partition (called by Store::ensure_partitions), and a DEFAULT
-- partition that catches readings from devices with skewed clocks.
--
-- A unique index on a partitioned table or hypertable must include the partition column, so
-- "one row per (device_id, seq)" is enforced by the small unpartitioned key table
-- reading_keys instead; Store::commit_batch inserts a key and its reading in one statement.
-- measured_at and received_at let an operator prune keys together with old readings.
--
-- No foreign key to devices: its per-row trigger cost a third of the bulk insert. Store::commit_batch
-- (the only writer) checks instead that every device of a batch exists, through the UPDATE of
-- the devices' last_seen_at/last_seq in the same transaction, and rolls back otherwise.

CREATE TABLE reading_keys (
    device_id    TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    measured_at  TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (device_id, seq)
);

DO $migrate$
DECLARE
    tsdb_schema name;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
        EXCEPTION WHEN OTHERS THEN
            -- Typically: the extension is installed but not in shared_preload_libraries.
            RAISE NOTICE 'timescaledb is available but cannot be created (%); using native partitions', SQLERRM;
        END;
    END IF;
    SELECT extnamespace::regnamespace::name INTO tsdb_schema
        FROM pg_extension WHERE extname = 'timescaledb';

    CREATE TABLE readings (
        device_id        TEXT NOT NULL,
        seq              BIGINT NOT NULL,
        patient_id       BIGINT NOT NULL,
        kind             TEXT NOT NULL,
        measured_at      TIMESTAMPTZ NOT NULL,
        received_at      TIMESTAMPTZ NOT NULL,
        clock_unset      BOOLEAN NOT NULL,
        status           INTEGER NOT NULL,
        sensor           BIGINT NOT NULL,
        systolic         REAL,
        diastolic        REAL,
        mean_arterial    REAL,
        pulse            REAL,
        spo2             REAL,
        perfusion_index  REAL,
        glucose_mg_dl    REAL,
        glucose_sample   TEXT,
        glucose_meal     TEXT,
        source_unit      TEXT
    ) PARTITION BY RANGE (measured_at);

    IF tsdb_schema IS NOT NULL THEN
        -- A hypertable must start as a plain table: recreate it without partitioning.
        DROP TABLE readings;
        CREATE TABLE readings (
            device_id        TEXT NOT NULL,
            seq              BIGINT NOT NULL,
            patient_id       BIGINT NOT NULL,
            kind             TEXT NOT NULL,
            measured_at      TIMESTAMPTZ NOT NULL,
            received_at      TIMESTAMPTZ NOT NULL,
            clock_unset      BOOLEAN NOT NULL,
            status           INTEGER NOT NULL,
            sensor           BIGINT NOT NULL,
            systolic         REAL,
            diastolic        REAL,
            mean_arterial    REAL,
            pulse            REAL,
            spo2             REAL,
            perfusion_index  REAL,
            glucose_mg_dl    REAL,
            glucose_sample   TEXT,
            glucose_meal     TEXT,
            source_unit      TEXT
        );
        -- Qualified through the extension's schema, so this also works when the search_path
        -- holds only the schema being migrated.
        EXECUTE format(
            'SELECT %I.create_hypertable(%L::regclass, %L::name, chunk_time_interval => interval %L)',
            tsdb_schema, format('%I.readings', current_schema()), 'measured_at', '7 days');
        BEGIN
            ALTER TABLE readings SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'device_id',
                timescaledb.compress_orderby = 'measured_at DESC, seq DESC'
            );
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'readings: compression settings not supported here (%)', SQLERRM;
        END;
    ELSE
        CREATE TABLE readings_default PARTITION OF readings DEFAULT;
    END IF;
END
$migrate$;

CREATE INDEX readings_patient_time_idx ON readings (patient_id, measured_at);

-- Creates the monthly partition of readings holding `month` (UTC months), unless it exists.
-- Rows of that month already sitting in the DEFAULT partition (devices with skewed clocks) are
-- moved into the new partition in the same transaction, so they never block its creation.
-- Returns true when it created the partition. Safe to call concurrently: callers serialize on
-- an advisory lock. No-op (false) when readings is not natively partitioned.
CREATE FUNCTION sentinella_ensure_month_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    parent      regclass := 'readings'::regclass;
    parent_nsp  name;
    default_rel regclass;
    part_name   text := format('readings_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
    part        text;
    lo          timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi          timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = parent) THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('sentinella_ensure_month_partition'));

    SELECT relnamespace::regnamespace::name INTO parent_nsp FROM pg_class WHERE oid = parent;
    part := format('%I.%I', parent_nsp, part_name);
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;

    SELECT p.partdefid::regclass INTO default_rel
        FROM pg_partitioned_table p WHERE p.partrelid = parent AND p.partdefid <> 0;

    -- Parent first, then the default partition: the same order as inserts take them.
    -- SHARE UPDATE EXCLUSIVE on the parent lets ingest into other partitions go on.
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', parent);
    EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
    -- Lets ATTACH skip the validation scan of the new table.
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (measured_at IS NOT NULL AND measured_at >= %L AND measured_at < %L)',
                   part, part_name || '_bounds', lo, hi);
    IF default_rel IS NOT NULL THEN
        -- Block inserts into the default partition until the new partition is attached, so
        -- no row of this month can land there in between.
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', default_rel);
        EXECUTE format('WITH moved AS (DELETE FROM %s WHERE measured_at >= %L AND measured_at < %L RETURNING *) '
                       'INSERT INTO %s SELECT * FROM moved', default_rel, lo, hi, part);
    END IF;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)', parent, part, lo, hi);
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', part, part_name || '_bounds');
    RETURN true;
END
$fn$;
