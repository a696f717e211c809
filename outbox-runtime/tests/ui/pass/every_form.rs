//! Every supported form of both macros, in one crate, with the resulting
//! dispatch table checked.

use outbox_runtime as renamed;
use outbox_runtime::{handler, HandlerContext, OutboxMessage, dispatch::DispatchTable, message::GroupSpec};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 2, group = customer_id, queue = "orders", upcast_from = OrderPlacedV1)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub customer_id: String,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(v1: OrderPlacedV1) -> Self {
        OrderPlaced { order_id: v1.order_id, customer_id: v1.customer_id }
    }
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = 1)]
struct Pair(u64, u64);

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = self::by_account)]
enum Payment {
    Authorized { account: String },
    Refunded { account: String },
}

fn by_account(payment: &Payment) -> &str {
    match payment {
        Payment::Authorized { account } | Payment::Refunded { account } => account,
    }
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = "ticks", crate = renamed)]
struct Tick;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(group = r#type, crate = "outbox_runtime")]
struct RawField {
    r#type: String,
}

/// The version `OrderPlaced` replaces.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", group = customer_id)]
pub struct OrderPlacedV1 {
    pub order_id: i64,
    pub customer_id: String,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 3, group = customer_id, upcast_from = OrderPlaced, crate = renamed)]
pub struct OrderPlacedV3 {
    pub order_id: i64,
    pub customer_id: String,
}

impl From<OrderPlaced> for OrderPlacedV3 {
    fn from(v2: OrderPlaced) -> Self {
        OrderPlacedV3 { order_id: v2.order_id, customer_id: v2.customer_id }
    }
}

#[handler(publishes = [Tick, self::Pair])]
async fn publishing(msg: OrderPlacedV3, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.publish(&Tick)?;
    ctx.publish(&Pair(1, msg.order_id as u64))?;
    Ok(())
}

#[handler(publishes = [])]
async fn publishing_nothing(_: RawField) -> anyhow::Result<()> {
    Ok(())
}

#[handler(on_dead_letter = "hold_group", max_attempts = 2)]
async fn holding(_: Payment) -> anyhow::Result<()> {
    Ok(())
}

#[handler(on_dead_letter = "move_on")]
async fn moving_on(_: Payment) -> anyhow::Result<()> {
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("custom failure")]
struct CustomError;

#[handler]
async fn with_context(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let _ = (msg.order_id, ctx.message_id());
    Ok(())
}

#[handler(name = "orders.audit", max_attempts = 7)]
pub async fn without_context(msg: OrderPlaced) -> Result<(), CustomError> {
    let _ = msg;
    Ok(())
}

#[handler]
async fn explicit_lifetimes<'a, 'b>(msg: Pair, ctx: &'a mut HandlerContext<'b>) -> Result<(), std::io::Error> {
    let _ = (msg.0, ctx);
    Ok(())
}

#[handler]
async fn boxed_error(_: Payment, _ctx: &mut outbox_runtime::HandlerContext<'_>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

#[handler(crate = renamed)]
async fn r#async(msg: Tick) -> anyhow::Result<()> {
    let _ = msg;
    Ok(())
}

fn main() {
    let table = DispatchTable::from_registry().expect("valid table");
    let names: Vec<_> = table
        .entries()
        .iter()
        .map(|m| (m.registration().name, m.registration().version))
        .collect();
    assert_eq!(
        names,
        [("Pair", 1), ("Payment", 1), ("RawField", 1), ("Tick", 1), ("orders.placed", 1), ("orders.placed", 2), ("orders.placed", 3)]
    );
    // v1 runs v2's handlers, its own being none; v2 has its own.
    let v1 = table.message("orders.placed", 1).unwrap();
    let path: Vec<u32> = v1.upcast_path().iter().map(|m| m.version).collect();
    assert_eq!(path, [2]);
    assert!(table.message("orders.placed", 2).unwrap().upcast_path().is_empty());
    let edges: Vec<_> = table.publish_edges().map(|e| (e.from.version, e.to.name)).collect();
    assert_eq!(edges, [(3, "Tick"), (3, "Pair")], "in declared order");
    let payment: Vec<_> = table.message("Payment", 1).unwrap().handlers().iter().map(|h| (h.name.rsplit("::").next().unwrap(), h.holds_group)).collect();
    assert_eq!(payment, [("boxed_error", false), ("holding", true), ("moving_on", false)]);
    let raw = table.message("RawField", 1).unwrap();
    assert_eq!(raw.handlers()[0].publishes.map(<[_]>::len), Some(0));
    let placed = table.message("orders.placed", 2).unwrap();
    assert_eq!(placed.registration().group, GroupSpec::Field("customer_id"));
    assert_eq!(placed.registration().queue, Some("orders"));
    let handlers: Vec<_> = placed.handlers().iter().map(|h| (h.name, h.max_attempts)).collect();
    let with_context = format!("{}::with_context", module_path!());
    assert_eq!(handlers, [("orders.audit", Some(7)), (with_context.as_str(), None)]);
    let tick_handler = table.message("Tick", 1).unwrap().handlers()[0].name;
    assert_eq!(tick_handler, format!("{}::async", module_path!()));

    assert_eq!(Pair(1, 2).group_key(), "2");
    assert_eq!(Payment::Refunded { account: "a-1".into() }.group_key(), "a-1");
    assert_eq!(Tick.group_key(), "ticks");
    assert_eq!(RawField { r#type: "t".into() }.group_key(), "t");
    assert_eq!(OrderPlaced::QUEUE, Some("orders"));
    assert_eq!(<Pair as OutboxMessage>::QUEUE, None);
}
