#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Invoice(u64, String);
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::outbox_runtime::__private::OutboxMessage for Invoice {
        const NAME: &'static str = "Invoice";
        const VERSION: u32 = 1;
        #[inline]
        fn group_key(&self) -> ::outbox_runtime::__private::Cow<'_, str> {
            ::outbox_runtime::__private::Cow::Borrowed("billing")
        }
    }
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::MESSAGES
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_MESSAGE: ::outbox_runtime::__private::MessageRegistration = ::outbox_runtime::__private::MessageRegistration::of::<
        Invoice,
    >(::outbox_runtime::__private::GroupSpec::Constant("billing"));
};
