-- Waits at most 10 s for its locks (ADD COLUMN takes a brief exclusive lock
-- on outbox): behind a long transaction it fails instead of stalling every
-- query on the table; migrate again.
SET LOCAL lock_timeout = '10s';

-- A handler's failed runs of a message (its attempts), keyed like the inbox.
-- Written after a failed run, in a transaction of its own; read with the
-- inbox before each run.
CREATE TABLE outbox_attempts (
    message_id UUID        NOT NULL,
    handler    TEXT        NOT NULL,
    failures   INTEGER     NOT NULL,
    last_error TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, handler)
);
CREATE INDEX outbox_attempts_updated_at ON outbox_attempts (updated_at);

-- Rows that may hold their group: leased by a relay, or relayed to a
-- non-durable queue and not yet confirmed. The claim skips a group with a
-- row leased by a live claim, or relayed.
-- Built in the migration's transaction, which blocks writes to outbox while
-- it scans the table; on a large table, create it first with
--   CREATE INDEX CONCURRENTLY outbox_held ON outbox (group_key) WHERE lease_until IS NOT NULL;
-- and this statement leaves it be.
CREATE INDEX IF NOT EXISTS outbox_held ON outbox (group_key) WHERE lease_until IS NOT NULL;

-- The claim that leased a row: a relay's later writes to the row (published,
-- relayed, failed, released) apply only while it still holds the lease, so
-- a relay whose lease ran out cannot undo another relay's work.
ALTER TABLE outbox ADD COLUMN lease_token UUID;
