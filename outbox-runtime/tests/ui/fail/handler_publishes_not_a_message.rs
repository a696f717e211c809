use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[derive(serde::Serialize)]
struct AuditLine {
    text: String,
}

#[handler(publishes = [AuditLine])]
async fn audit(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
