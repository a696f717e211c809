use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders placed")]
struct Spaced {
    n: u32,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "")]
struct Empty {
    n: u32,
}

fn main() {}
