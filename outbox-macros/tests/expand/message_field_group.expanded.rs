#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct OrderStatusChanged {
    pub order_id: i64,
    pub customer_id: String,
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::outbox_runtime::__private::OutboxMessage for OrderStatusChanged {
        const NAME: &'static str = "orders.status_changed";
        const VERSION: u32 = 1;
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
        OrderStatusChanged,
    >(::outbox_runtime::__private::GroupSpec::Field("customer_id"));
};
