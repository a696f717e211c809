use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed")]
struct OrderPlacedV1 {
    order_id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 2, upcast_from = OrderPlacedV1)]
struct OrderPlacedV2 {
    order_id: i64,
    total_cents: u64,
}

fn main() {}
