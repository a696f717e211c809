async fn confirm(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.publish(
        &OrderConfirmed {
            order_id: msg.order_id,
        },
    )?;
    Ok(())
}
#[doc(hidden)]
const _: () = {
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::HANDLERS
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_HANDLER: ::outbox_runtime::__private::HandlerRegistration = ::outbox_runtime::__private::HandlerRegistration::of::<
        OrderPlaced,
    >("orders.confirm", ::core::option::Option::None, __outbox_handler)
        .publishing(&__OUTBOX_PUBLISHES);
    static __OUTBOX_PUBLISHES: [::outbox_runtime::__private::MessageType; 2] = [
        ::outbox_runtime::__private::MessageType::of::<OrderConfirmed>(),
        ::outbox_runtime::__private::MessageType::of::<billing::InvoiceRequested>(),
    ];
    fn __outbox_handler<'a, 'c>(
        payload: &'a ::outbox_runtime::__private::RawValue,
        ctx: &'a mut ::outbox_runtime::__private::HandlerContext<'c>,
    ) -> ::outbox_runtime::__private::HandlerFuture<'a> {
        <::outbox_runtime::__private::Box<
            _,
        >>::pin(async move {
            let message = <OrderPlaced as ::outbox_runtime::__private::OutboxMessage>::decode(
                payload,
            )?;
            ::outbox_runtime::__private::IntoHandlerResult::into_handler_result(
                confirm(message, ctx).await,
            )
        })
    }
};
