use outbox_runtime::{HandlerContext, handler};

use crate::Journal;
use crate::messages::Payment;

#[handler]
pub async fn record(msg: Payment, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let line = match msg {
        Payment::Captured { account, cents } => format!("ledger +{cents} {account}"),
        Payment::Refunded { account, cents } => format!("ledger -{cents} {account}"),
    };
    ctx.state::<Journal>()?.record(line);
    Ok(())
}
