use outbox_runtime::{handler, OutboxMessage};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

#[derive(serde::Deserialize)]
struct Plain {
    id: u32,
}

#[handler]
async fn on_plain(msg: Plain) -> anyhow::Result<()> {
    let _ = msg.id;
    Ok(())
}

fn main() {}
