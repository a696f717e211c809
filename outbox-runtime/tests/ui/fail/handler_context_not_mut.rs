use outbox_runtime::{handler, HandlerContext, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler]
async fn on_order(msg: OrderPlaced, ctx: &HandlerContext<'_>) -> anyhow::Result<()> {
    let _ = (msg, ctx);
    Ok(())
}

fn main() {}
