use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = custmer_id)]
struct OrderPlaced {
    order_id: i64,
    customer_id: String,
}

fn main() {}
