-- State shared by the nodes of a cluster (several `sentinella run` on one database), which
-- one node's memory used to hold: failed-login counts, repeat requests waiting for their
-- device; and the NOTIFY channels that wake the other nodes (see store::cluster).

-- One row per admitted login attempt and key (a (username, address) pair, or an address),
-- while it is inside the limiter's window; a successful login deletes its own.
CREATE TABLE login_attempts (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key  TEXT NOT NULL,
    at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_attempts_key_idx ON login_attempts (key, at);
CREATE INDEX login_attempts_at_idx ON login_attempts (at);

-- One row per key seen recently: locked by the admission that reads the key's attempts (so
-- parallel attempts on two nodes are counted one after the other), and the key's refusals in
-- the current audit window (`auth.login.throttled` is written once per window).
CREATE TABLE login_throttle (
    key            TEXT PRIMARY KEY,
    touched_at     TIMESTAMPTZ NOT NULL,
    refused_since  TIMESTAMPTZ,
    refused_count  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX login_throttle_touched_idx ON login_throttle (touched_at);

-- The alert engine's latest repeat request per device, until it is stale: the node holding
-- the device's connection publishes it at once, any node the device connects to later puts
-- it in the config message at connect.
CREATE TABLE device_repeat_requests (
    device_id    TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    in_minutes   INTEGER NOT NULL CHECK (in_minutes >= 0),
    -- When the engine asked (its clock): the request's id on the wire.
    asked_at     TIMESTAMPTZ NOT NULL,
    -- When the request was stored (the nodes' clock): the wait counts from here.
    received_at  TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX device_repeat_requests_expires_idx ON device_repeat_requests (expires_at);

-- Wake-ups, delivered at commit to every node that LISTENs (store::cluster). The alert
-- stream's channel carries the newest event id of the statement; the devices' channel the
-- device id with something new to publish.
CREATE FUNCTION sentinella_notify_alert_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sentinella_alert_events', (SELECT COALESCE(MAX(id), 0)::text FROM new_events));
    RETURN NULL;
END
$$;
CREATE TRIGGER alert_events_notify AFTER INSERT ON alert_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION sentinella_notify_alert_events();

CREATE FUNCTION sentinella_notify_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sentinella_devices', NEW.device_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER device_repeat_requests_notify AFTER INSERT OR UPDATE ON device_repeat_requests
    FOR EACH ROW EXECUTE FUNCTION sentinella_notify_device();
