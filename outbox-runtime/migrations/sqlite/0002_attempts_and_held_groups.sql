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
