use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

use std::rc::Rc;

async fn audit() {}

#[handler]
async fn on_order(msg: OrderPlaced) -> anyhow::Result<()> {
    let local = Rc::new(msg.order_id);
    audit().await;
    let _ = local;
    Ok(())
}

fn main() {}
