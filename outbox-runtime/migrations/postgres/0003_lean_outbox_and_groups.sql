-- The outbox keeps only undelivered rows, written once and deleted when
-- delivered; what a relay changes (leases, backoffs, attempts) lives in one
-- row per group with undelivered rows.
--
-- Stop every relay, consumer and producer of the previous version first:
-- relays and consumers name columns this migration drops, and a producer's
-- rows would wait for `Store::cleanup` to restore their group. Rows relayed to an
-- in-process queue and not yet confirmed become pending again (published
-- once more; the inbox absorbs the repeat).
SET LOCAL lock_timeout = '10s';

-- Delivered and dead rows, for operators and retention.
CREATE TABLE outbox_archive (
    seq          BIGINT      PRIMARY KEY,
    id           UUID        NOT NULL,
    message_type TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    group_key    TEXT        NOT NULL,
    queue        TEXT,
    payload      JSON        NOT NULL,
    headers      JSON        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    attempts     INTEGER     NOT NULL,
    last_error   TEXT,
    status       TEXT        NOT NULL CHECK (status IN ('published', 'dead')),
    -- When it was published, or given up on.
    archived_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Retention deletes published rows by age.
CREATE INDEX outbox_archive_published ON outbox_archive (archived_at) WHERE status = 'published';

INSERT INTO outbox_archive
    (seq, id, message_type, version, group_key, queue, payload, headers, created_at,
     attempts, last_error, status, archived_at)
SELECT seq, id, message_type, version, group_key, queue, payload, headers, created_at,
       attempts, last_error, status, COALESCE(published_at, now())
FROM outbox WHERE status IN ('published', 'dead');
DELETE FROM outbox WHERE status IN ('published', 'dead');

-- One row per group with rows in the outbox. Relays claim groups, not rows:
-- a claim locks group rows (FOR UPDATE SKIP LOCKED) and leases them.
CREATE TABLE outbox_groups (
    group_key       TEXT        PRIMARY KEY,
    -- Claim order: the group's first row when the group last changed hands.
    head_seq        BIGINT      NOT NULL,
    -- The first row's backoff after a failed publish.
    available_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Failed publish attempts of row failed_seq (the group's first row).
    failed_seq      BIGINT,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- The claim holding the group, until when.
    lease_token     UUID,
    lease_until     TIMESTAMPTZ,
    -- Rows up to relayed_through were handed to a non-durable queue under
    -- claim relayed_token, and hold the group until confirmed (deleted) or
    -- until relayed_until passes.
    relayed_through BIGINT,
    relayed_token   UUID,
    relayed_until   TIMESTAMPTZ
) WITH (fillfactor = 50);
CREATE INDEX outbox_groups_head ON outbox_groups (head_seq);

INSERT INTO outbox_groups (group_key, head_seq)
SELECT group_key, min(seq) FROM outbox GROUP BY group_key;
-- A group's failure state is its first failed row's (rows before it were
-- relayed and not yet confirmed).
UPDATE outbox_groups g
SET failed_seq = f.seq, attempts = f.attempts, last_error = f.last_error,
    available_at = f.available_at
FROM (SELECT DISTINCT ON (group_key) group_key, seq, attempts, last_error, available_at
      FROM outbox
      WHERE attempts > 0 OR last_error IS NOT NULL OR available_at > now()
      ORDER BY group_key, seq) f
WHERE g.group_key = f.group_key;

-- Drops the indexes on these columns with them.
ALTER TABLE outbox
    DROP COLUMN available_at,
    DROP COLUMN attempts,
    DROP COLUMN last_error,
    DROP COLUMN status,
    DROP COLUMN published_at,
    DROP COLUMN lease_until,
    DROP COLUMN lease_token;
DROP INDEX IF EXISTS outbox_held;

-- A claimed group's rows, in order.
CREATE INDEX outbox_group_seq ON outbox (group_key, seq);

ANALYZE outbox, outbox_groups, outbox_archive;
