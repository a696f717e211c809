-- Delayed messages keep their time in `available_at` (a failed row's
-- backoff does too). The claim takes a group's pending rows up to its first
-- one not yet available; this index holds only such candidates (rows whose
-- `available_at` was moved past their creation), so finding it reads few rows.
CREATE INDEX outbox_pending_later ON outbox (group_key, seq)
    WHERE status = 'pending' AND available_at > created_at;
