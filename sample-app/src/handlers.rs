//! The orders domain's handlers. None of them is listed anywhere: the
//! dispatch table finds them.

use std::sync::Mutex;

use outbox_runtime::{HandlerContext, handler};

use crate::messages::{OrderStatusChanged, OrderSubmitted, SendOrderConfirmation};

/// Where the handlers write, until the store arrives: status history and
/// notifications, in memory.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// (order, status) pairs, in handling order.
    pub(crate) history: Mutex<Vec<(i64, String)>>,
    /// Notifications sent.
    pub(crate) notifications: Mutex<Vec<String>>,
}

/// Records an order's status history.
#[handler(name = "orders.record_status")]
pub(crate) async fn record_status(
    msg: OrderStatusChanged,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    let records = ctx.state::<Records>()?;
    let status = serde_json::to_value(msg.status)?;
    lock(&records.history)?.push((msg.order_id, status.as_str().unwrap_or_default().to_owned()));
    Ok(())
}

/// Asks for a confirmation when an order is submitted (a cascade).
#[handler(name = "orders.confirm")]
pub(crate) async fn confirm(
    msg: OrderSubmitted,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    ctx.publish(&SendOrderConfirmation {
        order_id: msg.order_id,
        customer_id: msg.customer_id,
    })?;
    Ok(())
}

/// Writes the notification row.
#[handler(name = "notifications.send_confirmation", max_attempts = 5)]
pub(crate) async fn send_confirmation(
    msg: SendOrderConfirmation,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    let records = ctx.state::<Records>()?;
    lock(&records.notifications)?.push(format!(
        "order {} confirmed for {}",
        msg.order_id, msg.customer_id
    ));
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| anyhow::anyhow!("records lock poisoned"))
}
