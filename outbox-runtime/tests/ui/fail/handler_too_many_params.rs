use outbox_runtime::{handler, HandlerContext, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler]
async fn on_order(msg: OrderPlaced, ctx: &mut HandlerContext<'_>, retries: u32) -> anyhow::Result<()> {
    let _ = (msg, ctx, retries);
    Ok(())
}

fn main() {}
