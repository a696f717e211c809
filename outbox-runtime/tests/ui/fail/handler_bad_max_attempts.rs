use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler(max_attempts = 0)]
async fn on_order(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

#[handler(max_attempts = "3")]
async fn on_order_again(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
