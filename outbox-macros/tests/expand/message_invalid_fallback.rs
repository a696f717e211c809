#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(version = 0, crate = renamed)]
struct Ping {
    n: u32,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(version = 0, crate = "not a path")]
struct Pong {
    n: u32,
}
