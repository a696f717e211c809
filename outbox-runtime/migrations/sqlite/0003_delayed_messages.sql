-- Delayed messages: a row is not published before `not_before` (unix
-- milliseconds; NULL: at once), and the rows after it in its group wait for
-- it. Its `available_at` starts at the same time, so a group whose first
-- row is delayed is not claimed; a failed row's backoff stays in
-- `available_at` alone. The partial index holds only delayed rows, so the
-- claim finds a group's first one without reading the others.
ALTER TABLE outbox ADD COLUMN not_before INTEGER;
CREATE INDEX outbox_pending_not_before ON outbox (group_key, seq)
    WHERE status = 'pending' AND not_before IS NOT NULL;
