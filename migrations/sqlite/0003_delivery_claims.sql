-- Which claim recorded each delivery (see the MariaDB migration).
ALTER TABLE notification_deliveries ADD COLUMN claim_id BLOB;
