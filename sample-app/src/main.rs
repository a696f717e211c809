//! The orders sample: the outbox toolkit end to end.
//!
//! `cargo run -p sample-app` prints the dispatch table the macros built and
//! runs orders through it in-process. The store, relay and queue (SQLite by
//! default, PostgreSQL and SQS when configured) arrive with the store/relay
//! issue; see ARCHITECTURE.md.

mod handlers;
mod messages;

use std::collections::VecDeque;

use outbox_runtime::{Dispatcher, Envelope};

use crate::handlers::Records;
use crate::messages::{OrderStatus, OrderStatusChanged, OrderSubmitted};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orders: i64 = match std::env::args().nth(1).as_deref() {
        None => 3,
        Some(n) => n
            .parse()
            .map_err(|_| anyhow::anyhow!("usage: sample-app [ORDERS]; `{n}` is not a number"))?,
    };
    let dispatcher = Dispatcher::from_registry()?.with_state(Records::default());
    println!("dispatch table:\n{}", dispatcher.table());

    // What the app would commit with its orders, then deliver: each handled
    // envelope's published messages are delivered in turn (cascades).
    let mut queue = VecDeque::new();
    for order_id in 1..=orders {
        let customer_id = format!("customer-{}", order_id % 2);
        for status in [OrderStatus::Created, OrderStatus::Submitted] {
            queue.push_back(Envelope::from_message(&OrderStatusChanged {
                order_id,
                status,
                customer_id: customer_id.clone(),
            })?);
        }
        queue.push_back(Envelope::from_message(&OrderSubmitted {
            order_id,
            customer_id,
        })?);
    }

    let mut handled = 0;
    while let Some(envelope) = queue.pop_front() {
        // Through the wire format, as a consumer receives it.
        let received = Envelope::from_json(&envelope.to_json())?;
        let report = dispatcher.dispatch(&received).await?;
        if let Some(failed) = report.failures().next() {
            anyhow::bail!("handler {} failed: {:?}", failed.handler, failed.result);
        }
        handled += 1;
        queue.extend(report.published().map(|o| o.envelope.clone()));
    }

    let records = dispatcher
        .state()
        .get::<Records>()
        .expect("registered above");
    let history = records.history.lock().expect("no handler panicked").len();
    let notifications = records
        .notifications
        .lock()
        .expect("no handler panicked")
        .len();
    println!(
        "orders: {orders}, envelopes handled: {handled}, status changes recorded: {history}, confirmations: {notifications}"
    );
    Ok(())
}
