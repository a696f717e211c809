#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Ping {
    n: u32,
}
::core::compile_error! {
    "`version` must be a whole number from 1 to 4294967295"
}
#[automatically_derived]
impl renamed::__private::OutboxMessage for Ping {
    const NAME: &'static str = "Ping";
    const VERSION: u32 = 1;
    fn group_key(&self) -> renamed::__private::Cow<'_, str> {
        ::core::unreachable!()
    }
}
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Pong {
    n: u32,
}
::core::compile_error! {
    "`version` must be a whole number from 1 to 4294967295"
}
::core::compile_error! {
    "`crate` takes a path such as `my::outbox`"
}
#[automatically_derived]
impl ::outbox_runtime::__private::OutboxMessage for Pong {
    const NAME: &'static str = "Pong";
    const VERSION: u32 = 1;
    fn group_key(&self) -> ::outbox_runtime::__private::Cow<'_, str> {
        ::core::unreachable!()
    }
}
