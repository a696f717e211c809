use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(nmae = "orders.placed")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
