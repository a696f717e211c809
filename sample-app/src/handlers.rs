//! The orders domain's handlers. None of them is listed anywhere: the
//! dispatch table finds them.

use chrono::Utc;
use outbox_runtime::{HandlerContext, handler};

use crate::db::on_db;
use crate::domain::OrderStatus;
use crate::messages::{OrderStatusChanged, OrderSubmitted};
use crate::probe::Probe;

/// Records an order's status history; a submitted order gets a confirmation
/// through `OrderSubmitted`, published in the same transaction.
#[handler(name = "orders.record_status")]
pub(crate) async fn record_status(
    msg: OrderStatusChanged,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    observe(ctx);
    let message_id = ctx.message_id().to_string();
    on_db!(ctx, |conn| {
        sqlx::query(
            "INSERT INTO order_status_history (order_id, status, message_id, changed_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(msg.order_id)
        .bind(msg.status.as_str())
        .bind(&message_id)
        .bind(Utc::now().timestamp_millis())
        .execute(conn)
        .await
    });
    if msg.status == OrderStatus::Submitted {
        ctx.publish(&OrderSubmitted {
            order_id: msg.order_id,
            customer_id: msg.customer_id,
        })?;
    }
    Ok(())
}

/// Set, it makes every confirmation fail: a notification provider outage.
pub(crate) const NOTIFY_OUTAGE: &str = "SAMPLE_APP_NOTIFY_OUTAGE";

/// Sends (here: records) the order confirmation.
#[handler(name = "notifications.order_confirmation", max_attempts = 5)]
pub(crate) async fn send_confirmation(
    msg: OrderSubmitted,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    observe(ctx);
    // A stand-in for the provider being down, to see retries, dead letters
    // and replay at work (README: "When a handler fails").
    anyhow::ensure!(
        std::env::var_os(NOTIFY_OUTAGE).is_none(),
        "the notification provider is unavailable ({NOTIFY_OUTAGE} is set)"
    );
    let body = format!("Order {} is confirmed.", msg.order_id);
    on_db!(ctx, |conn| {
        sqlx::query("INSERT INTO notifications (order_id, customer_id, body, sent_at) VALUES ($1, $2, $3, $4)")
            .bind(msg.order_id)
            .bind(&msg.customer_id)
            .bind(&body)
            .bind(Utc::now().timestamp_millis())
            .execute(conn)
            .await
    });
    Ok(())
}

/// Reports the message's age to the demo's probe, when one is running.
fn observe(ctx: &HandlerContext<'_>) {
    if let Ok(probe) = ctx.state::<Probe>() {
        probe.observe(ctx.envelope().created_at);
    }
}
