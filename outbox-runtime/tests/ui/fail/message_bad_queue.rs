use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(queue = "orders.fifo")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
