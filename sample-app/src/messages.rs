//! The orders domain's messages.

use outbox_runtime::OutboxMessage;

/// An order's lifecycle.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OrderStatus {
    /// Created, not yet submitted.
    Created,
    /// Submitted by the customer.
    Submitted,
}

/// An order changed status. Grouped by customer: one customer's changes are
/// handled in order, different customers' in parallel.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.status_changed", version = 1, group = customer_id)]
pub(crate) struct OrderStatusChanged {
    /// The order.
    pub(crate) order_id: i64,
    /// Its new status.
    pub(crate) status: OrderStatus,
    /// Its customer.
    pub(crate) customer_id: String,
}

/// An order was submitted; its confirmation is sent by a handler.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.submitted", version = 1, group = customer_id)]
pub(crate) struct OrderSubmitted {
    /// The order.
    pub(crate) order_id: i64,
    /// Its customer.
    pub(crate) customer_id: String,
}

/// A confirmation to send, published by the `OrderSubmitted` handler (a cascade).
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "notifications.order_confirmation", version = 1, group = customer_id)]
pub(crate) struct SendOrderConfirmation {
    /// The order.
    pub(crate) order_id: i64,
    /// Who to notify.
    pub(crate) customer_id: String,
}
