//! Sixteen message types with a no-op handler each, as an app of middling
//! size has, for the dispatch scenario; `M0` also serves the others.

use outbox_runtime::{OutboxMessage, handler};

/// The fields every bench message has: an order-ish payload.
macro_rules! messages {
    ($($ty:ident $name:literal $handler:ident $handler_name:literal),* $(,)?) => {
        $(
            #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
            #[outbox(name = $name, group = customer)]
            pub(crate) struct $ty {
                pub(crate) order_id: i64,
                pub(crate) customer: String,
                pub(crate) amount_cents: i64,
                pub(crate) note: String,
            }

            #[handler(name = $handler_name)]
            pub(crate) async fn $handler(msg: $ty) -> anyhow::Result<()> {
                std::hint::black_box(&msg);
                Ok(())
            }
        )*

        /// The names, in order.
        pub(crate) const NAMES: &[&str] = &[$($name),*];
    };
}

messages!(
    M0 "bench.m00" h0 "bench.m00.h", M1 "bench.m01" h1 "bench.m01.h",
    M2 "bench.m02" h2 "bench.m02.h", M3 "bench.m03" h3 "bench.m03.h",
    M4 "bench.m04" h4 "bench.m04.h", M5 "bench.m05" h5 "bench.m05.h",
    M6 "bench.m06" h6 "bench.m06.h", M7 "bench.m07" h7 "bench.m07.h",
    M8 "bench.m08" h8 "bench.m08.h", M9 "bench.m09" h9 "bench.m09.h",
    M10 "bench.m10" h10 "bench.m10.h", M11 "bench.m11" h11 "bench.m11.h",
    M12 "bench.m12" h12 "bench.m12.h", M13 "bench.m13" h13 "bench.m13.h",
    M14 "bench.m14" h14 "bench.m14.h", M15 "bench.m15" h15 "bench.m15.h",
);

/// A message like the app would send.
pub(crate) fn m0(i: usize) -> M0 {
    M0 {
        order_id: i as i64,
        customer: format!("customer-{}", i % 50),
        amount_cents: 1999,
        note: "gift wrap".into(),
    }
}
