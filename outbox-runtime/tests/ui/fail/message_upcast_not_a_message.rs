use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct LegacyOrder {
    id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 2, upcast_from = LegacyOrder)]
struct OrderPlaced {
    order_id: i64,
}

impl From<LegacyOrder> for OrderPlaced {
    fn from(legacy: LegacyOrder) -> Self {
        OrderPlaced { order_id: legacy.id }
    }
}

fn main() {}
