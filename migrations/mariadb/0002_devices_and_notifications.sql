-- Devices that asked for push notifications, their communes, and the jobs that
-- notify them. State tables, not events: a deleted device leaves no trace.

CREATE TABLE IF NOT EXISTS devices (
    id               BINARY(16) NOT NULL PRIMARY KEY,
    platform         VARCHAR(10) CHARACTER SET ascii NOT NULL,
    token            TEXT CHARACTER SET utf8mb4 NOT NULL, -- what the push service needs to reach the phone
    token_hash       BINARY(32) NOT NULL,  -- SHA-256 of platform and token: one device per token
    locale           VARCHAR(35) CHARACTER SET ascii NOT NULL,
    secret_hash      BINARY(32) NOT NULL,  -- SHA-256 of the device secret (shown once)
    created_at       BIGINT NOT NULL,
    token_updated_at BIGINT NOT NULL,      -- APNs only disables tokens registered before its timestamp
    disabled_at      BIGINT NULL,          -- set when the push service says the token is dead
    UNIQUE KEY devices_token (token_hash),
    CONSTRAINT devices_platform CHECK (platform IN ('fcm', 'apns', 'webpush'))
) ENGINE = InnoDB;

-- The communes a device wants notifications for (≤ 50). Keyed both ways: by
-- device to edit, by commune to stream an audience in device order.
CREATE TABLE IF NOT EXISTS device_communes (
    device_id    BINARY(16) NOT NULL,
    commune_code CHAR(5) CHARACTER SET ascii NOT NULL,
    PRIMARY KEY (device_id, commune_code),
    KEY device_communes_by_commune (commune_code, device_id)
) ENGINE = InnoDB;

-- One job per notifying publication, created at most once (the primary key), so
-- replays and redeliveries never notify again. Progress is checkpointed: the
-- communes are walked in order, each commune's devices in id order. A worker
-- holds a lease (conditional UPDATE, no GET_LOCK); an expired lease lets another
-- instance resume from the checkpoint.
CREATE TABLE IF NOT EXISTS notification_jobs (
    publication_id BINARY(16) NOT NULL PRIMARY KEY,
    communes       MEDIUMTEXT CHARACTER SET ascii NOT NULL, -- JSON list, sorted
    priority       VARCHAR(10) CHARACTER SET ascii NOT NULL,
    title          VARCHAR(600) CHARACTER SET utf8mb4 NOT NULL,
    body           VARCHAR(1200) CHARACTER SET utf8mb4 NOT NULL, -- an excerpt, for the notification text
    published_at   BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    status         VARCHAR(12) CHARACTER SET ascii NOT NULL, -- pending, running, done, expired, cancelled
    commune_index  BIGINT NOT NULL DEFAULT 0,
    last_device    BINARY(16) NULL,
    sent           BIGINT NOT NULL DEFAULT 0,
    failed         BIGINT NOT NULL DEFAULT 0,
    disabled       BIGINT NOT NULL DEFAULT 0,
    lease_owner    BINARY(16) NULL,
    lease_until    BIGINT NULL,
    finished_at    BIGINT NULL,
    KEY notification_jobs_runnable (status, lease_until)
) ENGINE = InnoDB;

-- Devices a running job has claimed, written before sending: after a crash the
-- job resumes from its checkpoint and skips them, so nobody is notified twice.
-- Deleted when the job ends.
CREATE TABLE IF NOT EXISTS notification_deliveries (
    publication_id BINARY(16) NOT NULL,
    device_id      BINARY(16) NOT NULL,
    PRIMARY KEY (publication_id, device_id)
) ENGINE = InnoDB;

-- Where local log consumers stopped (used by the embedded mode; kept for symmetry).
CREATE TABLE IF NOT EXISTS consumer_positions (
    name     VARCHAR(50) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL
) ENGINE = InnoDB;

