use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = tags)]
struct Tagged {
    tags: Vec<String>,
}

fn main() {}
