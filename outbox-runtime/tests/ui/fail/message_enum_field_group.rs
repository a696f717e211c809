use outbox_runtime::OutboxMessage;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = account)]
enum PaymentEvent {
    Authorized { account: String },
    Refunded { account: String },
}

fn main() {}
