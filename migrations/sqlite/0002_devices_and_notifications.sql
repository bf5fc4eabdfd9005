-- Devices that asked for push notifications, their communes, and the jobs that
-- notify them. State tables, not events: a deleted device leaves no trace.

CREATE TABLE devices (
    id               BLOB    NOT NULL PRIMARY KEY,
    platform         TEXT    NOT NULL CHECK (platform IN ('fcm', 'apns', 'webpush')),
    token            TEXT    NOT NULL,  -- what the push service needs to reach the phone
    token_hash       BLOB    NOT NULL,  -- SHA-256 of platform and token: one device per token
    locale           TEXT    NOT NULL,
    secret_hash      BLOB    NOT NULL,  -- SHA-256 of the device secret (shown once)
    created_at       INTEGER NOT NULL,
    token_updated_at INTEGER NOT NULL,  -- APNs only disables tokens registered before its timestamp
    disabled_at      INTEGER,           -- set when the push service says the token is dead
    CONSTRAINT devices_token UNIQUE (token_hash)
);

-- The communes a device wants notifications for (its "super favourites", ≤ 50).
-- Keyed both ways: by device to edit, by commune to stream an audience in
-- device order (keyset pagination).
CREATE TABLE device_communes (
    device_id    BLOB NOT NULL,
    commune_code TEXT NOT NULL,
    PRIMARY KEY (device_id, commune_code)
);
CREATE INDEX device_communes_by_commune ON device_communes (commune_code, device_id);

-- One job per notifying publication, created at most once (the primary key), so
-- replays and redeliveries never notify again. Progress is checkpointed: the
-- communes are walked in order, each commune's devices in id order.
CREATE TABLE notification_jobs (
    publication_id BLOB    NOT NULL PRIMARY KEY,
    communes       TEXT    NOT NULL, -- JSON list, sorted
    priority       TEXT    NOT NULL,
    title          TEXT    NOT NULL,
    body           TEXT    NOT NULL, -- an excerpt, for the notification text
    published_at   INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    status         TEXT    NOT NULL, -- pending, running, done, expired, cancelled
    commune_index  INTEGER NOT NULL DEFAULT 0,
    last_device    BLOB,
    sent           INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    lease_owner    BLOB,
    lease_until    INTEGER,
    finished_at    INTEGER
);
CREATE INDEX notification_jobs_runnable ON notification_jobs (status, lease_until);

-- Devices a running job has claimed, written before sending: after a crash the
-- job resumes from its checkpoint and skips them, so nobody is notified twice.
-- Deleted when the job ends.
CREATE TABLE notification_deliveries (
    publication_id BLOB NOT NULL,
    device_id      BLOB NOT NULL,
    PRIMARY KEY (publication_id, device_id)
);

-- Where the embedded mode's log consumers (the notifier) stopped.
CREATE TABLE consumer_positions (
    name     TEXT    NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL
);

