async fn record_status(
    msg: OrderStatusChanged,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    sqlx::query("insert into history (order_id) values ($1)")
        .bind(msg.order_id)
        .execute(ctx.transaction::<Tx>()?.as_mut())
        .await?;
    Ok(())
}
#[doc(hidden)]
const _: () = {
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::HANDLERS
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_HANDLER: ::outbox_runtime::__private::HandlerRegistration = ::outbox_runtime::__private::HandlerRegistration::of::<
        OrderStatusChanged,
    >(
        ::core::concat!(::core::module_path!(), "::record_status"),
        ::core::option::Option::None,
        __outbox_handler,
    );
    fn __outbox_handler<'a, 'c>(
        payload: &'a ::outbox_runtime::__private::RawValue,
        ctx: &'a mut ::outbox_runtime::__private::HandlerContext<'c>,
    ) -> ::outbox_runtime::__private::HandlerFuture<'a> {
        <::outbox_runtime::__private::Box<
            _,
        >>::pin(async move {
            let message = <OrderStatusChanged as ::outbox_runtime::__private::OutboxMessage>::decode(
                payload,
            )?;
            ::outbox_runtime::__private::IntoHandlerResult::into_handler_result(
                record_status(message, ctx).await,
            )
        })
    }
};
