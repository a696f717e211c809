use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[handler(on_dead_letter = "hold")]
async fn unknown_value(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

#[handler(on_dead_letter = hold_group)]
async fn not_a_string(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

#[handler(on_dead_letter = "hold_group", on_dead_letter = "move_on")]
async fn given_twice(msg: OrderPlaced) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
