-- The outbox: one row per message, written in the app's transaction.
-- Times are Unix milliseconds (UTC), so comparisons are integer comparisons.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    message_type TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    group_key    TEXT    NOT NULL,
    queue        TEXT,
    payload      TEXT    NOT NULL,
    headers      TEXT    NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    status       TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'relayed', 'published', 'dead')),
    published_at INTEGER,
    lease_until  INTEGER
);

CREATE INDEX outbox_pending_seq ON outbox (seq) WHERE status = 'pending';
CREATE INDEX outbox_pending_group ON outbox (group_key, seq) WHERE status = 'pending';
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE status = 'published';
-- Rows handed to a queue that dies with the process, awaiting confirmation.
CREATE INDEX outbox_relayed ON outbox (lease_until) WHERE status = 'relayed';

CREATE TABLE outbox_inbox (
    message_id TEXT    NOT NULL,
    handler    TEXT    NOT NULL,
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, handler)
) WITHOUT ROWID;
CREATE INDEX outbox_inbox_handled_at ON outbox_inbox (handled_at);

CREATE TABLE outbox_dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT,
    handler      TEXT,
    message_type TEXT,
    group_key    TEXT,
    body         TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    dead_at      INTEGER NOT NULL
);
