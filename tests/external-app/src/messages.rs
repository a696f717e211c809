use outbox_runtime::OutboxMessage;

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "shop.order_placed", group = customer)]
pub struct OrderPlaced {
    pub order: u64,
    pub customer: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "shop.payment", version = 2, group = Self::account)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payment {
    Captured { account: String, cents: u64 },
    Refunded { account: String, cents: u64 },
}

impl Payment {
    fn account(&self) -> &str {
        match self {
            Payment::Captured { account, .. } | Payment::Refunded { account, .. } => account,
        }
    }
}
