-- The sample's own tables, migrated with the app's own sqlx migrations
-- (`_sqlx_migrations`); the outbox's tables are migrated by the toolkit
-- (`_outbox_migrations`).
CREATE TABLE orders (
    id          BIGSERIAL PRIMARY KEY,
    customer_id TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE order_status_history (
    id         BIGSERIAL PRIMARY KEY,
    order_id   BIGINT NOT NULL,
    status     TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    changed_at BIGINT NOT NULL
);

CREATE TABLE notifications (
    id          BIGSERIAL PRIMARY KEY,
    order_id    BIGINT NOT NULL,
    customer_id TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    sent_at     BIGINT NOT NULL
);
