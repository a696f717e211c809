use outbox_runtime::{handler, HandlerContext, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderConfirmed {
    order_id: i64,
}

#[handler(publishes = OrderConfirmed)]
async fn not_a_list(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

#[handler(publishes = [OrderConfirmed, OrderConfirmed])]
async fn listed_twice(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.publish(&OrderConfirmed { order_id: msg.order_id })?;
    Ok(())
}

fn main() {}
