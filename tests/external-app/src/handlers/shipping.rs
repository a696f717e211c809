use outbox_runtime::{HandlerContext, handler};

use crate::Journal;
use crate::messages::OrderPlaced;

#[handler(name = "shipping.reserve", max_attempts = 3)]
pub async fn reserve(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.state::<Journal>()?
        .record(format!("shipping.reserve {}", msg.order));
    Ok(())
}
