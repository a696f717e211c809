//! The transactional outbox for Rust, declared with two macros.
//!
//! Mark message structs with `#[derive(OutboxMessage)]` and async functions
//! with `#[handler]`. The macros generate, at compile time, the serializers,
//! the JSON Schemas and a link-time registration of every message and
//! handler, so a consumer routes envelopes to typed handlers with no
//! reflection and no registration list.
//!
//! The whole pipeline in one process, on SQLite: a message committed in
//! the app's transaction, relayed through the in-process queue and handled
//! ([`local::Pipeline`] runs the relay and the workers):
//!
//! ```standalone_crate
//! use outbox_runtime::{
//!     commit_and_pump, handler, local::Pipeline, Dispatcher, OutboxMessage, SqliteStore, Store,
//!     StoreExt,
//! };
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
//! #[outbox(name = "greetings.sent", group = to)]
//! struct GreetingSent { to: String }
//!
//! #[handler]
//! async fn log_greeting(msg: GreetingSent) -> anyhow::Result<()> {
//!     println!("greeted {}", msg.to);
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     // Opening runs the store's migrations (`PgStore::new` then `migrate()`).
//!     let store = SqliteStore::open("sqlite::memory:").await?;
//!     sqlx::query("CREATE TABLE greetings (name TEXT NOT NULL)").execute(store.pool()).await?;
//!     let running = Pipeline::new(store.clone(), Dispatcher::from_registry()?).start();
//!
//!     // The app's row and the message in one transaction; after the commit, the pump.
//!     let mut tx = store.begin().await?;
//!     sqlx::query("INSERT INTO greetings (name) VALUES ('ada')").execute(&mut *tx).await?;
//!     store.enqueue(&mut tx, &GreetingSent { to: "ada".into() }).await?;
//!     commit_and_pump(tx, running.waker()).await?;
//!
//!     running.wait_idle(Duration::from_secs(10)).await?;
//!     let metrics = std::sync::Arc::clone(running.metrics());
//!     let report = running.shutdown().await;
//!     assert!(!report.timed_out);
//!     // Final once the pipeline has stopped.
//!     assert_eq!(metrics.snapshot().handled, 1);
//!     Ok(())
//! }
//! ```
//!
//! See `ARCHITECTURE.md` in the repository for how data flows from the app's
//! transaction to a handler, and [`registry`] for the linker caveat.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod admin;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod consume;
pub mod dispatch;
pub mod envelope;
pub mod handler;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod local;
pub mod message;
pub mod metrics;
pub mod pump;
pub mod registry;
pub mod relay;
pub mod schema;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;

pub use crate::consume::{Consumer, Worker};
pub use crate::dispatch::Dispatcher;
pub use crate::envelope::Envelope;
pub use crate::handler::HandlerContext;
pub use crate::message::OutboxMessage;
pub use crate::pump::{RelayWaker, commit_and_pump};
pub use crate::relay::Relay;
#[cfg(feature = "postgres")]
pub use crate::store::PgStore;
#[cfg(feature = "sqlite")]
pub use crate::store::SqliteStore;
pub use crate::store::{Store, StoreExt};
pub use crate::transport::InProcessQueue;

/// Derives [`OutboxMessage`] and registers the type in the dispatch table.
///
/// Keys of `#[outbox(...)]`, all optional:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `name = "orders.created"` | the stable message name on the wire | the type's name |
/// | `version = 2` | the payload's schema version, from 1 | `1` |
/// | `group = customer_id` | the message group: a field (its type implements [`GroupKey`](message::GroupKey)) | one group per type |
/// | `group = self::group_of` | ... or a function `fn(&Self) -> impl Into<String>` (a path with `::`) | |
/// | `group = "all"` | ... or a constant | |
/// | `queue = "billing"` | the logical queue it is published to | the default queue |
/// | `upcast_from = OrderPlacedV1` | the message type this version replaces; the type implements `From<OrderPlacedV1>` | none |
/// | `crate = my::reexport` | where `outbox_runtime` is, if renamed | `::outbox_runtime` |
///
/// The type must also implement `serde::Serialize`, `serde::Deserialize` and
/// `schemars::JsonSchema` (schemars 1). Structs and enums work, in serde's
/// representation; generic types cannot be messages.
///
/// ```
/// use outbox_runtime::OutboxMessage;
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// #[outbox(name = "payments.event", version = 3, group = Self::account)]
/// #[serde(tag = "kind")]
/// enum PaymentEvent {
///     Authorized { account: String, cents: u64 },
///     Refunded { account: String, cents: u64 },
/// }
///
/// impl PaymentEvent {
///     fn account(&self) -> &str {
///         match self {
///             PaymentEvent::Authorized { account, .. } | PaymentEvent::Refunded { account, .. } => account,
///         }
///     }
/// }
///
/// let event = PaymentEvent::Refunded { account: "acct-9".into(), cents: 500 };
/// assert_eq!(event.group_key(), "acct-9");
/// assert_eq!(event.encode()?.get(), r#"{"kind":"Refunded","account":"acct-9","cents":500}"#);
/// # Ok::<(), outbox_runtime::message::EncodeError>(())
/// ```
///
/// # Upcasting
///
/// Messages outlive deploys: a queue or an outbox can still hold messages of
/// a version the running build no longer handles. Keep the old type and let
/// the new version declare it replaces it. A message of a version with no
/// handler of its own is converted, one `From` at a time along the
/// `upcast_from` chain, to the first version on it with handlers, and
/// handled there; the handler's context sees the converted envelope (same
/// id and group, the handling version's type and version). A version that
/// has handlers runs them and is not converted. A version may also replace
/// a message of another name (a rename): `upcast_from` names any registered
/// type. Two types replacing one
/// version, a cycle, or a source that is not a registered message make
/// [`DispatchTable::from_registry`](dispatch::DispatchTable::from_registry)
/// fail, naming the types; a conversion that fails (the old payload does not
/// decode) is poison.
///
/// ```standalone_crate
/// use outbox_runtime::{handler, Dispatcher, Envelope, OutboxMessage};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// #[outbox(name = "orders.placed", group = customer)]
/// struct OrderPlacedV1 { order_id: i64, customer: String }
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// #[outbox(name = "orders.placed", version = 2, group = customer, upcast_from = OrderPlacedV1)]
/// struct OrderPlaced { order_id: i64, customer: String, total_cents: u64 }
///
/// impl From<OrderPlacedV1> for OrderPlaced {
///     fn from(v1: OrderPlacedV1) -> Self {
///         OrderPlaced { order_id: v1.order_id, customer: v1.customer, total_cents: 0 }
///     }
/// }
///
/// #[handler]
/// async fn on_placed(msg: OrderPlaced) -> anyhow::Result<()> {
///     println!("order {} of {} cents", msg.order_id, msg.total_cents);
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dispatcher = Dispatcher::from_registry()?;
/// // A v1 message, enqueued by the build before this one.
/// let v1 = Envelope::from_message(&OrderPlacedV1 { order_id: 1, customer: "c-1".into() })?;
/// let report = dispatcher.dispatch(&v1).await?;
/// assert!(report.succeeded());
/// assert_eq!(report.outcomes()[0].handler, "rust_out::on_placed");
/// # Ok::<(), anyhow::Error>(())
/// # }).unwrap();
/// ```
///
/// `sample-app schemas --check` ([`schema::check`]) fails when a version
/// whose schema is checked in is gone from the code, or when a version has
/// neither a handler nor an upcast path while other versions of its name
/// have handlers: in both cases its messages would reach no handler.
///
/// A group field must exist:
///
/// ```compile_fail
/// use outbox_runtime::OutboxMessage;
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// #[outbox(group = custmer_id)]
/// struct OrderPlaced {
///     customer_id: String,
/// }
/// ```
pub use outbox_macros::OutboxMessage;

/// Registers an `async fn` as a handler of its first parameter's message type.
///
/// The function stays as written and callable. Its parameters are the message
/// (by value) and, optionally, `&mut HandlerContext<'_>`; it returns
/// `Result<(), E>` for any `E` that converts into `Box<dyn Error + Send + Sync>`.
///
/// Keys of `#[handler(...)]`, all optional:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `name = "billing.charge"` | the handler's stable name: its inbox key | the function's path from the crate's name, `my_app::billing::charge` (`module_path!()`); renaming or moving the function, its module or the crate changes it, and the inbox then takes the handler for a new one: name handlers whose messages may be in flight across such a change |
/// | `max_attempts = 5` | how many times a failing message is tried before it is dead-lettered | the consumer's default, [`ConsumerConfig::default_max_attempts`](consume::ConsumerConfig::default_max_attempts): 5 |
/// | `publishes = [OrderConfirmed, OrderShipped]` | the only message types it may publish through its context (`[]`: none) | any type |
/// | `on_dead_letter = "hold_group"` | when it gives up on a message, its later messages of that group wait for it (kept as dead letters) until an operator releases the group with [`admin::release_group`] | `"move_on"`: the group goes on |
/// | `crate = my::reexport` | where `outbox_runtime` is, if renamed | `::outbox_runtime` |
///
/// Several handlers may handle one message type; each is tracked on its own
/// (a group held for one handler runs the others).
///
/// With `publishes`, the message flow is known at compile time: the
/// dispatch table lists each handler's edges
/// ([`DispatchTable::publish_edges`](dispatch::DispatchTable::publish_edges)).
/// Publishing a type the list does not name returns
/// [`PublishError::Undeclared`](handler::PublishError::Undeclared), and the
/// run fails even if the handler ignores that error: it is dead-lettered at
/// once (the same code would fail the same way), its writes and publishes
/// rolled back.
///
/// ```
/// use outbox_runtime::{handler, HandlerContext, OutboxMessage};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct OrderPlaced { order_id: i64 }
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct OrderConfirmed { order_id: i64 }
///
/// #[handler(publishes = [OrderConfirmed])]
/// async fn confirm(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
///     ctx.publish(&OrderConfirmed { order_id: msg.order_id })?;
///     Ok(())
/// }
/// ```
///
/// ```
/// use outbox_runtime::{handler, HandlerContext, OutboxMessage};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct UserSignedUp { email: String }
///
/// #[handler(name = "email.welcome", max_attempts = 5)]
/// async fn send_welcome(msg: UserSignedUp) -> Result<(), std::io::Error> {
///     println!("welcome, {}", msg.email);
///     Ok(())
/// }
/// ```
///
/// A handler must be `async`:
///
/// ```compile_fail
/// use outbox_runtime::{handler, OutboxMessage};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct UserSignedUp { email: String }
///
/// #[handler]
/// fn send_welcome(msg: UserSignedUp) -> anyhow::Result<()> {
///     Ok(())
/// }
/// ```
pub use outbox_macros::handler;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// Not public API: what the macros' expansions refer to, so that user crates
/// need no dependency but `outbox-runtime`.
#[doc(hidden)]
pub mod __private {
    pub use ::core;
    pub use ::linkme;
    pub use ::std::borrow::Cow;
    pub use ::std::boxed::Box;
    pub use ::std::string::String;

    pub use crate::handler::{HandlerContext, IntoHandlerResult};
    pub use crate::message::{GroupKey, GroupSpec, MessageType, OutboxMessage};
    pub use crate::registry::{
        HANDLERS, HandlerFuture, HandlerRegistration, MESSAGES, MessageRegistration, Upcast,
    };
    pub use serde_json::value::RawValue;
}
