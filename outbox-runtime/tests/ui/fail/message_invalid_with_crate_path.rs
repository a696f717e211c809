// A failed derive given `crate = ...` reports its own error only: its stub
// impl keeps the handler from adding a "not an outbox message" error.
use outbox_runtime as renamed;
use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(version = 0, crate = renamed)]
struct OrderPlaced {
    order_id: i64,
}

#[handler(crate = renamed)]
async fn on_order(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
