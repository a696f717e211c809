#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Ping {
    n: u32,
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::outbox_runtime::__private::OutboxMessage for Ping {
        const NAME: &'static str = "Ping";
        const VERSION: u32 = 1;
        #[inline]
        fn group_key(&self) -> ::outbox_runtime::__private::Cow<'_, str> {
            ::outbox_runtime::__private::Cow::Borrowed(
                <Self as ::outbox_runtime::__private::OutboxMessage>::NAME,
            )
        }
    }
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::MESSAGES
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_MESSAGE: ::outbox_runtime::__private::MessageRegistration = ::outbox_runtime::__private::MessageRegistration::of::<
        Ping,
    >(::outbox_runtime::__private::GroupSpec::PerType);
};
