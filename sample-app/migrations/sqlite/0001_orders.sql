-- The sample's own tables, migrated with the app's own sqlx migrations
-- (`_sqlx_migrations`); the outbox's tables are migrated by the toolkit
-- (`_outbox_migrations`).
CREATE TABLE orders (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE order_status_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id   INTEGER NOT NULL,
    status     TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    changed_at INTEGER NOT NULL
);

CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id   INTEGER NOT NULL,
    customer_id TEXT   NOT NULL,
    body       TEXT    NOT NULL,
    sent_at    INTEGER NOT NULL
);
