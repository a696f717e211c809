use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 2, upcast_from = Self)]
struct OrderPlaced {
    order_id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.shipped", version = 2, upcast_from = OrderShipped)]
struct OrderShipped {
    order_id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.paid", version = 2, upcast_from = "OrderPaidV1")]
struct OrderPaid {
    order_id: i64,
}

fn main() {}
