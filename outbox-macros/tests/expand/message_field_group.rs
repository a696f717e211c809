#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.status_changed", version = 1, group = customer_id)]
pub struct OrderStatusChanged {
    pub order_id: i64,
    pub customer_id: String,
}
