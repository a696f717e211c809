//! The orders domain's messages.

use outbox_runtime::OutboxMessage;

use crate::domain::OrderStatus;

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

/// An order was submitted. Published by the status handler (a cascade: a
/// message a handler produces, committed with the handler's own writes).
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.submitted", version = 1, group = customer_id)]
pub(crate) struct OrderSubmitted {
    /// The order.
    pub(crate) order_id: i64,
    /// Its customer.
    pub(crate) customer_id: String,
}
