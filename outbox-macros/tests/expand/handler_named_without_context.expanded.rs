pub async fn send_welcome(msg: UserSignedUp) -> Result<(), std::io::Error> {
    println!("welcome, {}", msg.email);
    Ok(())
}
#[doc(hidden)]
const _: () = {
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::HANDLERS
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_HANDLER: ::outbox_runtime::__private::HandlerRegistration = ::outbox_runtime::__private::HandlerRegistration::of::<
        UserSignedUp,
    >("email.welcome", ::core::option::Option::Some(5), __outbox_handler);
    fn __outbox_handler<'a, 'c>(
        payload: &'a ::outbox_runtime::__private::RawValue,
        _ctx: &'a mut ::outbox_runtime::__private::HandlerContext<'c>,
    ) -> ::outbox_runtime::__private::HandlerFuture<'a> {
        <::outbox_runtime::__private::Box<
            _,
        >>::pin(async move {
            let message = <UserSignedUp as ::outbox_runtime::__private::OutboxMessage>::decode(
                payload,
            )?;
            ::outbox_runtime::__private::IntoHandlerResult::into_handler_result(
                send_welcome(message).await,
            )
        })
    }
};
