-- A handler's failed runs of a message (its attempts), keyed like the inbox.
CREATE TABLE outbox_attempts (
    message_id TEXT    NOT NULL,
    handler    TEXT    NOT NULL,
    failures   INTEGER NOT NULL,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, handler)
) WITHOUT ROWID;
CREATE INDEX outbox_attempts_updated_at ON outbox_attempts (updated_at);

-- Rows that may hold their group: leased by a relay, or relayed and unconfirmed.
CREATE INDEX outbox_held ON outbox (group_key) WHERE lease_until IS NOT NULL;

-- The claim that leased a row: a relay's later writes to the row (published,
-- relayed, failed, released) apply only while it still holds the lease, so
-- a relay whose lease ran out cannot undo another relay's work.
ALTER TABLE outbox ADD COLUMN lease_token TEXT;
