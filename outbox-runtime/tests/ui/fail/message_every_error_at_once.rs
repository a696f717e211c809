use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "bad name", version = 0, group = nope, colour = "red")]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
