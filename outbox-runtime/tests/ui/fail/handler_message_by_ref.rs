use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler]
async fn on_order(msg: &OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
