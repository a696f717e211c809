#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderPlacedV2 {
    order_id: i64,
    customer_id: String,
    lines: Vec<Line>,
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::outbox_runtime::__private::OutboxMessage for OrderPlacedV2 {
        const NAME: &'static str = "orders.placed";
        const VERSION: u32 = 2;
        #[inline]
        fn group_key(&self) -> ::outbox_runtime::__private::Cow<'_, str> {
            ::outbox_runtime::__private::GroupKey::group_key(&self.customer_id)
        }
    }
    #[::outbox_runtime::__private::linkme::distributed_slice(
        ::outbox_runtime::__private::MESSAGES
    )]
    #[linkme(crate = ::outbox_runtime::__private::linkme)]
    static __OUTBOX_MESSAGE: ::outbox_runtime::__private::MessageRegistration = ::outbox_runtime::__private::MessageRegistration::of::<
        OrderPlacedV2,
    >(::outbox_runtime::__private::GroupSpec::Field("customer_id"))
        .upcasting(
            ::outbox_runtime::__private::Upcast::of::<OrderPlacedV2, OrderPlacedV1>(),
        );
};
