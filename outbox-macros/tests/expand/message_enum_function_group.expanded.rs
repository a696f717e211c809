#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind")]
enum PaymentEvent {
    Authorized { account: String, cents: u64 },
    Refunded { account: String, cents: u64 },
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl my::outbox::__private::OutboxMessage for PaymentEvent {
        const NAME: &'static str = "payments.event";
        const VERSION: u32 = 3;
        const QUEUE: ::core::option::Option<&'static str> = ::core::option::Option::Some(
            "payments",
        );
        #[inline]
        fn group_key(&self) -> my::outbox::__private::Cow<'_, str> {
            my::outbox::__private::Cow::Owned(
                ::core::convert::Into::<
                    my::outbox::__private::String,
                >::into(Self::account(self)),
            )
        }
    }
    #[my::outbox::__private::linkme::distributed_slice(my::outbox::__private::MESSAGES)]
    #[linkme(crate = my::outbox::__private::linkme)]
    static __OUTBOX_MESSAGE: my::outbox::__private::MessageRegistration = my::outbox::__private::MessageRegistration::of::<
        PaymentEvent,
    >(my::outbox::__private::GroupSpec::Function("Self::account"));
};
