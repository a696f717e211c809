async fn post(msg: EntryPosted, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let _ = (msg, ctx);
    Ok(())
}
#[doc(hidden)]
const _: () = {
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::HANDLERS
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_HANDLER: ::outbox_runtime::__private::HandlerRegistration = ::outbox_runtime::__private::HandlerRegistration::of::<
        EntryPosted,
    >("ledger.post", ::core::option::Option::Some(3), __outbox_handler)
        .publishing(&__OUTBOX_PUBLISHES)
        .holding_group();
    static __OUTBOX_PUBLISHES: [::outbox_runtime::__private::MessageType; 1] = [
        ::outbox_runtime::__private::MessageType::of::<EntryPosted>(),
    ];
    fn __outbox_handler<'a, 'c>(
        payload: &'a ::outbox_runtime::__private::RawValue,
        ctx: &'a mut ::outbox_runtime::__private::HandlerContext<'c>,
    ) -> ::outbox_runtime::__private::HandlerFuture<'a> {
        <::outbox_runtime::__private::Box<
            _,
        >>::pin(async move {
            let message = <EntryPosted as ::outbox_runtime::__private::OutboxMessage>::decode(
                payload,
            )?;
            ::outbox_runtime::__private::IntoHandlerResult::into_handler_result(
                post(message, ctx).await,
            )
        })
    }
};
