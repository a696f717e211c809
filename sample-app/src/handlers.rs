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
#[handler(name = "orders.record_status", publishes = [OrderSubmitted])]
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

/// The handlers under the runtime's test harness: the app's own functions
/// commit and pump, the real relay and consumer deliver, on SQLite.
#[cfg(test)]
mod tests {
    use outbox_runtime::testing::TestHarness;

    use crate::db::{AppDb, Table};
    use crate::domain::CustomerId;
    use crate::messages::{OrderStatusChanged, OrderSubmitted};

    async fn harness() -> TestHarness {
        let harness = TestHarness::start().await.expect("harness");
        harness.store().migrate_app().await.expect("app tables");
        harness
    }

    /// Creates and submits an order through the app's own functions.
    async fn submitted_order(harness: &TestHarness, customer: usize) -> i64 {
        let (store, pump) = (harness.store(), harness.waker());
        let order = crate::orders::create(store, pump, &CustomerId::numbered(customer))
            .await
            .expect("created");
        crate::orders::submit(store, pump, order)
            .await
            .expect("submitted");
        order
    }

    #[tokio::test]
    async fn a_submitted_order_is_recorded_twice_and_confirmed_once() {
        let harness = harness().await;
        let order = submitted_order(&harness, 1).await;
        let store = harness.store();

        let settled = harness.settle().await.expect("settled");
        let statuses: Vec<&str> = settled
            .handled::<OrderStatusChanged>()
            .iter()
            .map(|m| m.status.as_str())
            .collect();
        assert_eq!(statuses, ["created", "submitted"]);
        let confirmed: Vec<i64> = settled
            .handled::<OrderSubmitted>()
            .iter()
            .map(|m| m.order_id)
            .collect();
        assert_eq!(confirmed, [order]);
        assert_eq!(store.count(Table::History).await.expect("count"), 2);
        assert_eq!(store.count(Table::Notifications).await.expect("count"), 1);
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn a_confirmation_failing_every_attempt_is_dead_lettered_and_the_history_stays() {
        let harness = harness().await;
        harness
            .faults()
            .fail_handler_first_attempts("notifications.order_confirmation", 5);
        let order = submitted_order(&harness, 2).await;
        let store = harness.store();

        let settled = harness.settle().await.expect("settled");
        let dead: Vec<i64> = settled
            .dead_lettered::<OrderSubmitted>()
            .iter()
            .map(|m| m.order_id)
            .collect();
        assert_eq!(dead, [order]);
        assert_eq!(settled.dead_letters()[0].letter.attempts, 5);
        assert_eq!(store.count(Table::History).await.expect("count"), 2);
        assert_eq!(store.count(Table::Notifications).await.expect("count"), 0);
        harness.shutdown().await;
    }
}
