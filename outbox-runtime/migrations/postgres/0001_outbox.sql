-- The outbox: one row per message, written in the app's transaction.
CREATE TABLE outbox (
    seq          BIGSERIAL   PRIMARY KEY,
    id           UUID        NOT NULL UNIQUE,
    message_type TEXT        NOT NULL,
    version      INTEGER     NOT NULL CHECK (version >= 1),
    group_key    TEXT        NOT NULL,
    queue        TEXT,
    -- JSON (not JSONB): the payload is kept byte for byte as the producer wrote it.
    payload      JSON        NOT NULL,
    headers      JSON        NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT,
    status       TEXT        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'relayed', 'published', 'dead')),
    published_at TIMESTAMPTZ,
    lease_until  TIMESTAMPTZ
);

-- The relay's claim reads only pending rows: in order, and per group.
CREATE INDEX outbox_pending_seq ON outbox (seq) WHERE status = 'pending';
CREATE INDEX outbox_pending_group ON outbox (group_key, seq) WHERE status = 'pending';
-- Retention deletes published rows by age.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE status = 'published';
-- Rows handed to a queue that dies with the process, awaiting confirmation.
CREATE INDEX outbox_relayed ON outbox (lease_until) WHERE status = 'relayed';

-- The inbox: one row per (message, handler) that committed.
CREATE TABLE outbox_inbox (
    message_id UUID        NOT NULL,
    handler    TEXT        NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, handler)
);
CREATE INDEX outbox_inbox_handled_at ON outbox_inbox (handled_at);

-- Messages a consumer gave up on: poison, or a handler out of attempts.
CREATE TABLE outbox_dead_letters (
    id           BIGSERIAL   PRIMARY KEY,
    message_id   UUID,
    handler      TEXT,
    message_type TEXT,
    group_key    TEXT,
    body         TEXT        NOT NULL,
    error        TEXT        NOT NULL,
    attempts     INTEGER     NOT NULL,
    dead_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
