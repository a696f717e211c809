use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(version = 1)]
#[outbox(version = 2)]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
