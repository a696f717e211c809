#[handler(name = "orders.confirm", publishes = [OrderConfirmed, billing::InvoiceRequested])]
async fn confirm(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.publish(&OrderConfirmed { order_id: msg.order_id })?;
    Ok(())
}
