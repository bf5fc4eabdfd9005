-- Panneau, embedded mode: the event log and the state tables beside it.
-- Times are microseconds since the Unix epoch (UTC); ids are 16-byte UUIDs.

-- The event log, the system of record. Rows are only ever inserted.
-- Optimistic concurrency comes from the key: two commands that read a stream at
-- version N both try to insert version N+1, and the second one violates
-- events_stream_version and is told the stream moved on.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT, -- commit order on this node
    event_id       BLOB    NOT NULL,                  -- UUIDv7, also Nats-Msg-Id
    stream_id      TEXT    NOT NULL,                  -- e.g. publication-0193...
    stream_version INTEGER NOT NULL,                  -- 1, 2, 3... within a stream
    event_type     TEXT    NOT NULL,                  -- wire name, e.g. PublicationPublished
    schema_version INTEGER NOT NULL,                  -- version of that wire form
    publisher_id   BLOB,                              -- owner, on a stream's first event only
    occurred_at    INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    envelope       BLOB    NOT NULL,                  -- the whole envelope, bincode (src/codec.rs)
    CONSTRAINT events_event_id UNIQUE (event_id),
    CONSTRAINT events_stream_version UNIQUE (stream_id, stream_version)
);

-- "My publications" for the publisher back-office.
CREATE INDEX events_by_publisher ON events (publisher_id, position) WHERE publisher_id IS NOT NULL;

-- Answers to requests made with an Idempotency-Key, committed in the same
-- transaction as the events they produced: a retry sees either nothing (and
-- publishes) or the answer (and publishes nothing).
CREATE TABLE idempotency_keys (
    publisher_id    BLOB    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    request_hash    BLOB    NOT NULL, -- SHA-256 of the canonical JSON body
    stream_id       TEXT    NOT NULL,
    status          INTEGER NOT NULL,
    response        BLOB    NOT NULL, -- the JSON body answered
    created_at      INTEGER NOT NULL,
    CONSTRAINT idempotency_keys_pk PRIMARY KEY (publisher_id, idempotency_key)
);

CREATE TABLE publishers (
    id         BLOB    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- Bearer tokens. Only a SHA-256 of the token is kept: the token itself is shown
-- once, by `panneau publisher create`, and cannot be recovered from here.
CREATE TABLE tokens (
    id           BLOB    NOT NULL PRIMARY KEY,
    publisher_id BLOB    NOT NULL REFERENCES publishers (id),
    token_hash   BLOB    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('editor', 'admin')),
    scope        TEXT    NOT NULL, -- JSON: {"communes":[...]} or {"departments":[...]}
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    CONSTRAINT tokens_hash UNIQUE (token_hash)
);

-- Commands refused for lack of rights (outside the scope, not the owner): part
-- of the audit trail, beside the events of accepted commands.
CREATE TABLE refusals (
    id             BLOB    NOT NULL PRIMARY KEY, -- UUIDv7
    at             INTEGER NOT NULL,
    publisher_id   BLOB    NOT NULL,
    token_id       BLOB    NOT NULL,
    request_id     TEXT,
    action         TEXT    NOT NULL, -- publish, amend, retract, history
    publication_id BLOB,
    reason         TEXT    NOT NULL
);
CREATE INDEX refusals_by_publication ON refusals (publication_id, at);

-- Anonymous "read for more than 3 s" beacons, counted per publication.
CREATE TABLE publication_views (
    publication_id BLOB    NOT NULL PRIMARY KEY,
    views          INTEGER NOT NULL
);

-- Publications waiting to go live. Maintained in the same transaction as the
-- events that schedule, move, put live or retract them; the scheduler polls it
-- and records the go-live (optimistic concurrency on the stream makes exactly one
-- instance succeed).
CREATE TABLE scheduled_publications (
    publication_id BLOB    NOT NULL PRIMARY KEY,
    publish_at     INTEGER NOT NULL
);
CREATE INDEX scheduled_by_time ON scheduled_publications (publish_at);
