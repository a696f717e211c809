use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler]
struct NotAFunction;

fn main() {}
