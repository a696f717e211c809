-- Groups held for one handler (`#[handler(on_dead_letter = "hold_group")]`):
-- the handler gave up on a message of the group, and its later messages of
-- the group are kept as dead letters until an operator releases the group.
-- While a release runs, `release_id` is the id its replays carry and
-- `release_last` the message id its last replay is handled under. `held_at` is unix
-- milliseconds.
CREATE TABLE outbox_group_holds (
    handler      TEXT    NOT NULL,
    group_key    TEXT    NOT NULL,
    held_at      INTEGER NOT NULL,
    release_id   TEXT,
    release_last TEXT,
    PRIMARY KEY (handler, group_key)
);

-- A held group's dead letters, in order: a release marks them with its id
-- (`release_id`) and a replay handled deletes its own. One that gives up or
-- is kept again is held again in its place.
ALTER TABLE outbox_dead_letters ADD COLUMN release_id TEXT;
CREATE INDEX outbox_dead_letters_group ON outbox_dead_letters (handler, group_key, id);
