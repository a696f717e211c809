#[derive(Serialize, Deserialize, JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 2, group = customer_id, upcast_from = OrderPlacedV1)]
struct OrderPlacedV2 {
    order_id: i64,
    customer_id: String,
    lines: Vec<Line>,
}
