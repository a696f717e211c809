#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = "billing")]
struct Invoice(u64, String);
