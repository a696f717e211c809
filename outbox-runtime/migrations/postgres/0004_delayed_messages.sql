-- Delayed messages: a row is not published before `not_before` (NULL: at
-- once), and the rows after it in its group wait for it. The partial index
-- holds only delayed rows, so the claim finds a group's first delayed row
-- without reading the others.
--
-- Adding a nullable column is instant; building the index reads `outbox`
-- once, blocking writes to it meanwhile (only undelivered rows are there).
SET LOCAL lock_timeout = '10s';

ALTER TABLE outbox ADD COLUMN not_before TIMESTAMPTZ;
CREATE INDEX outbox_not_before ON outbox (group_key, seq) WHERE not_before IS NOT NULL;
