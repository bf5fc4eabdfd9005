-- Panneau, cluster mode: the event log, the outbox and the state tables.
--
-- Built for MariaDB Galera: InnoDB everywhere, a primary key on every table,
-- no GET_LOCK, no LOCK TABLES, and nothing that relies on auto-increment values
-- being contiguous or in commit order (Galera interleaves them across nodes).
-- Server settings it needs: innodb_flush_log_at_trx_commit=1, binlog_format=ROW,
-- innodb_autoinc_lock_mode=2 (see docs/operations/mariadb.md).
-- Times are microseconds since the Unix epoch (UTC); ids are 16-byte UUIDs.

-- The event log, the system of record. Rows are only ever inserted. Optimistic
-- concurrency comes from the primary key: two commands that read a stream at
-- version N both insert version N+1, and the second fails with a duplicate key
-- (or, on another Galera node, a certification conflict at commit).
CREATE TABLE IF NOT EXISTS events (
    stream_id      VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    stream_version BIGINT NOT NULL,
    event_id       BINARY(16) NOT NULL,        -- UUIDv7, also the Nats-Msg-Id
    position       BIGINT NOT NULL AUTO_INCREMENT, -- rough order for scans; never a sequence
    event_type     VARCHAR(100) CHARACTER SET ascii NOT NULL,
    schema_version BIGINT NOT NULL,
    publisher_id   BINARY(16) NULL,            -- owner, on a stream's first event only
    occurred_at    BIGINT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    envelope       MEDIUMBLOB NOT NULL,        -- the whole envelope, bincode (src/codec.rs)
    PRIMARY KEY (stream_id, stream_version),
    UNIQUE KEY events_event_id (event_id),
    UNIQUE KEY events_position (position),
    KEY events_by_publisher (publisher_id, position)
) ENGINE = InnoDB;

-- Events waiting to be published to NATS JetStream, written in the same
-- transaction as the events. The relay of every instance publishes them with
-- Nats-Msg-Id = event_id (so a re-publication is deduplicated by the broker), in
-- version order per stream, and marks them published only after the broker's
-- acknowledgement. Published rows are deleted after a retention period.
CREATE TABLE IF NOT EXISTS outbox (
    event_id       BINARY(16) NOT NULL PRIMARY KEY,
    stream_id      VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    stream_version BIGINT NOT NULL,
    envelope       MEDIUMBLOB NOT NULL,
    instance_id    BINARY(16) NOT NULL,  -- the instance that committed it publishes it first
    created_at     BIGINT NOT NULL,
    published_at   BIGINT NULL,
    KEY outbox_pending (published_at, stream_id, stream_version)
) ENGINE = InnoDB;

-- Answers to requests made with an Idempotency-Key, committed with the events.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    publisher_id    BINARY(16) NOT NULL,
    idempotency_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    request_hash    BINARY(32) NOT NULL, -- SHA-256 of the canonical JSON body
    stream_id       VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status          BIGINT NOT NULL,
    response        BLOB NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (publisher_id, idempotency_key)
) ENGINE = InnoDB;

-- Publications waiting to go live, kept with the events that change them.
CREATE TABLE IF NOT EXISTS scheduled_publications (
    publication_id BINARY(16) NOT NULL PRIMARY KEY,
    publish_at     BIGINT NOT NULL,
    KEY scheduled_by_time (publish_at)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS publishers (
    id         BINARY(16) NOT NULL PRIMARY KEY,
    name       VARCHAR(200) CHARACTER SET utf8mb4 NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE = InnoDB;

-- Bearer tokens: only a SHA-256 of each token is kept.
CREATE TABLE IF NOT EXISTS tokens (
    id           BINARY(16) NOT NULL PRIMARY KEY,
    publisher_id BINARY(16) NOT NULL,
    token_hash   BINARY(32) NOT NULL,
    role         VARCHAR(10) CHARACTER SET ascii NOT NULL,
    scope        TEXT CHARACTER SET utf8mb4 NOT NULL, -- JSON: {"communes":[...]} or {"departments":[...]}
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT NULL,
    UNIQUE KEY tokens_hash (token_hash),
    KEY tokens_by_publisher (publisher_id),
    CONSTRAINT tokens_role CHECK (role IN ('editor', 'admin'))
) ENGINE = InnoDB;

-- Commands refused for lack of rights: the audit trail beside the events.
CREATE TABLE IF NOT EXISTS refusals (
    id             BINARY(16) NOT NULL PRIMARY KEY, -- UUIDv7
    at             BIGINT NOT NULL,
    publisher_id   BINARY(16) NOT NULL,
    token_id       BINARY(16) NOT NULL,
    request_id     VARCHAR(128) CHARACTER SET ascii NULL,
    action         VARCHAR(20) CHARACTER SET ascii NOT NULL,
    publication_id BINARY(16) NULL,
    reason         VARCHAR(1000) CHARACTER SET utf8mb4 NOT NULL,
    KEY refusals_by_publication (publication_id, at)
) ENGINE = InnoDB;

-- Anonymous "read for more than 3 s" beacons, counted per publication.
CREATE TABLE IF NOT EXISTS publication_views (
    publication_id BINARY(16) NOT NULL PRIMARY KEY,
    views          BIGINT NOT NULL
) ENGINE = InnoDB;

-- Every event gets its outbox row from this trigger, inside the statement that
-- inserts it: an append of one event is then a single autocommitted INSERT (one
-- round trip, one fsync) and still can never commit without its outbox row.
-- @panneau_instance is set by each Panneau connection (its instance id).
-- Galera replicates the trigger's row like any other (binlog_format=ROW).
CREATE TRIGGER IF NOT EXISTS events_to_outbox AFTER INSERT ON events FOR EACH ROW
    INSERT INTO outbox (event_id, stream_id, stream_version, envelope, instance_id, created_at)
    VALUES (NEW.event_id, NEW.stream_id, NEW.stream_version, NEW.envelope,
            COALESCE(@panneau_instance, UNHEX('00000000000000000000000000000000')), NEW.recorded_at);
