use outbox_runtime::{HandlerContext, handler};

use crate::Journal;
use crate::messages::{OrderPlaced, Payment};

/// Charges the customer and publishes the payment that follows.
#[handler]
pub async fn charge(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.state::<Journal>()?
        .record(format!("billing.charge {}", msg.order));
    ctx.publish(&Payment::Captured {
        account: msg.customer,
        cents: 1_000,
    })?;
    Ok(())
}
