#[handler]
async fn record_status(msg: OrderStatusChanged, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    sqlx::query("insert into history (order_id) values ($1)")
        .bind(msg.order_id)
        .execute(ctx.transaction::<Tx>()?.as_mut())
        .await?;
    Ok(())
}
