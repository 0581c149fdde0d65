-- State shared by the nodes of a cluster on PostgreSQL, kept in the store on SQLite too so
-- both backends run the same queries: failed-login counts and repeat requests waiting for
-- their device. (SQLite has no NOTIFY: one process, which wakes itself.) Timestamps are unix
-- milliseconds.

CREATE TABLE login_attempts (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    key  TEXT NOT NULL,
    at   INTEGER NOT NULL
);
CREATE INDEX login_attempts_key_idx ON login_attempts (key, at);
CREATE INDEX login_attempts_at_idx ON login_attempts (at);

CREATE TABLE login_throttle (
    key            TEXT PRIMARY KEY NOT NULL,
    touched_at     INTEGER NOT NULL,
    refused_since  INTEGER,
    refused_count  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX login_throttle_touched_idx ON login_throttle (touched_at);

CREATE TABLE device_repeat_requests (
    device_id    TEXT PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    in_minutes   INTEGER NOT NULL CHECK (in_minutes >= 0),
    asked_at     INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX device_repeat_requests_expires_idx ON device_repeat_requests (expires_at);
