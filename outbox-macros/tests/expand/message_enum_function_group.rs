#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "payments.event", version = 3, group = Self::account, queue = "payments", crate = my::outbox)]
#[serde(tag = "kind")]
enum PaymentEvent {
    Authorized { account: String, cents: u64 },
    Refunded { account: String, cents: u64 },
}
