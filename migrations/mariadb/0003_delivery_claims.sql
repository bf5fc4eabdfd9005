-- Which claim (one attempt of one slice of a job) recorded each delivery. A
-- claim whose answer was lost (a connection cut after commit) is retried with
-- the same id: its devices are still to be sent to, while devices of any other
-- claim were already sent to (or lost in a crash) and are never sent again.
ALTER TABLE notification_deliveries ADD COLUMN IF NOT EXISTS claim_id BINARY(16) NULL;
