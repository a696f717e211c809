use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler]
async fn on_any<M: OutboxMessage>(msg: M) -> anyhow::Result<()> {
    let _ = msg;
    Ok(())
}

fn main() {}
