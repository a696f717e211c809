//! The dispatch table built from link-time registrations, and the dispatcher
//! running handlers through it.

use std::sync::Mutex;

use outbox_runtime::{
    Dispatcher, Envelope, HandlerContext, OutboxMessage,
    dispatch::{DispatchError, DispatchTable},
    handler::HandlerError,
    message::GroupSpec,
};

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 1, group = customer_id)]
struct OrderPlaced {
    order_id: i64,
    customer_id: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.placed", version = 2, group = customer_id, queue = "orders-v2")]
struct OrderPlacedV2 {
    order_id: i64,
    customer_id: u64,
    total_cents: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "receipts.send", group = "receipts")]
struct SendReceipt {
    order_id: i64,
}

/// Replaces [`SendReceipt`]; the only version with a handler.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "receipts.send", version = 2, group = "receipts", upcast_from = SendReceipt)]
struct SendReceiptV2 {
    order_id: i64,
    copies: u32,
}

impl From<SendReceipt> for SendReceiptV2 {
    fn from(v1: SendReceipt) -> Self {
        assert!(v1.order_id >= 0, "no receipt for order {}", v1.order_id);
        SendReceiptV2 {
            order_id: v1.order_id,
            copies: 1,
        }
    }
}

/// Records what the handlers saw, reached through the dispatcher's state.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

mod billing {
    use super::*;

    #[outbox_runtime::handler(publishes = [SendReceipt])]
    pub(crate) async fn charge(
        msg: OrderPlaced,
        ctx: &mut HandlerContext<'_>,
    ) -> anyhow::Result<()> {
        ctx.state::<Seen>()?
            .push(format!("charge {}", msg.order_id));
        anyhow::ensure!(msg.order_id >= 0, "negative order id {}", msg.order_id);
        ctx.publish(&SendReceipt {
            order_id: msg.order_id,
        })?;
        Ok(())
    }
}

mod shipping {
    use super::*;

    #[outbox_runtime::handler(
        name = "shipping.reserve",
        max_attempts = 3,
        on_dead_letter = "hold_group"
    )]
    pub(crate) async fn reserve(
        msg: OrderPlaced,
        ctx: &mut HandlerContext<'_>,
    ) -> Result<(), std::io::Error> {
        ctx.state::<Seen>()
            .map_err(std::io::Error::other)?
            .push(format!("reserve {}", msg.order_id));
        if msg.customer_id == "panic" {
            panic!("reserve exploded for {}", msg.order_id);
        }
        Ok(())
    }

    #[outbox_runtime::handler]
    pub(crate) async fn reserve_v2(
        msg: OrderPlacedV2,
        ctx: &mut HandlerContext<'_>,
    ) -> anyhow::Result<()> {
        ctx.state::<Seen>()?
            .push(format!("reserve_v2 {} {}", msg.order_id, msg.total_cents));
        Ok(())
    }
}

mod mail {
    use super::*;

    #[outbox_runtime::handler(name = "mail.receipt")]
    pub(crate) async fn send(
        msg: SendReceiptV2,
        ctx: &mut HandlerContext<'_>,
    ) -> anyhow::Result<()> {
        let envelope = ctx.envelope();
        ctx.state::<Seen>()?.push(format!(
            "receipt {} x{} as {} v{}",
            msg.order_id, msg.copies, envelope.message_type, envelope.version
        ));
        Ok(())
    }
}

fn dispatcher() -> Dispatcher {
    Dispatcher::from_registry()
        .unwrap()
        .with_state(Seen::default())
}

fn seen(dispatcher: &Dispatcher) -> Vec<String> {
    dispatcher.state().get::<Seen>().unwrap().take()
}

#[test]
fn the_table_lists_every_message_and_handler() {
    let table = DispatchTable::from_registry().unwrap();
    let rows: Vec<_> = table
        .entries()
        .iter()
        .map(|m| {
            (
                m.registration().name,
                m.registration().version,
                m.handlers().iter().map(|h| h.name).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "orders.placed",
                1,
                vec!["dispatch::billing::charge", "shipping.reserve"]
            ),
            ("orders.placed", 2, vec!["dispatch::shipping::reserve_v2"]),
            ("receipts.send", 1, vec![]),
            ("receipts.send", 2, vec!["mail.receipt"]),
        ]
    );
    let entries = table.entries();
    assert_eq!(
        entries[0].registration().group,
        GroupSpec::Field("customer_id")
    );
    assert_eq!(
        (entries[0].registration().rust_type)(),
        "dispatch::OrderPlaced"
    );
    assert_eq!(entries[1].registration().queue, Some("orders-v2"));
    assert_eq!(
        entries[2].registration().group,
        GroupSpec::Constant("receipts")
    );
    assert_eq!(entries[0].handlers()[1].max_attempts, Some(3));

    let json = serde_json::to_value(&entries[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "orders.placed",
            "version": 1,
            "rust_type": "dispatch::OrderPlaced",
            "group": {"kind": "field", "value": "customer_id"},
            "queue": null,
            "upcast_from": null,
            "upcast_path": [],
            "handlers": [
                {
                    "name": "dispatch::billing::charge",
                    "max_attempts": null,
                    "publishes": [
                        {"name": "receipts.send", "version": 1, "rust_type": "dispatch::SendReceipt"},
                    ],
                    "on_dead_letter": "move_on",
                },
                {
                    "name": "shipping.reserve",
                    "max_attempts": 3,
                    "publishes": null,
                    "on_dead_letter": "hold_group",
                },
            ],
        })
    );
    let receipt_v1 = serde_json::to_value(&entries[2]).unwrap();
    assert_eq!(
        receipt_v1["upcast_path"],
        serde_json::json!([{"name": "receipts.send", "version": 2, "rust_type": "dispatch::SendReceiptV2"}])
    );
    let receipt_v2 = serde_json::to_value(&entries[3]).unwrap();
    assert_eq!(
        receipt_v2["upcast_from"],
        serde_json::json!({"name": "receipts.send", "version": 1, "rust_type": "dispatch::SendReceipt"})
    );

    let shown = table.to_string();
    assert_eq!(
        shown,
        "\
message        version  group                queue      handler
orders.placed  v1       field `customer_id`  default    dispatch::billing::charge
                                                        shipping.reserve (holds group)
orders.placed  v2       field `customer_id`  orders-v2  dispatch::shipping::reserve_v2
receipts.send  v1       constant \"receipts\"  default    (upcast to v2) mail.receipt
receipts.send  v2       constant \"receipts\"  default    mail.receipt
"
    );
}

#[test]
fn the_table_lists_the_declared_publish_edges() {
    let table = DispatchTable::from_registry().unwrap();
    let edges: Vec<_> = table
        .publish_edges()
        .map(|e| {
            (
                e.handler.name,
                e.from.name,
                e.from.version,
                e.to.name,
                e.to.version,
            )
        })
        .collect();
    assert_eq!(
        edges,
        [(
            "dispatch::billing::charge",
            "orders.placed",
            1,
            "receipts.send",
            1
        )]
    );
}

#[tokio::test]
async fn a_version_without_handlers_reaches_the_next_version_s_handler_converted() {
    let dispatcher = dispatcher();
    let v1 = Envelope::from_message(&SendReceipt { order_id: 7 }).unwrap();
    let report = dispatcher.dispatch(&v1).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(seen(&dispatcher), ["receipt 7 x1 as receipts.send v2"]);

    let mut upcast = v1.clone();
    let entry = dispatcher.resolve(&mut upcast).unwrap();
    assert_eq!(entry.registration().version, 2);
    assert_eq!((upcast.id, upcast.version), (v1.id, 2));
    assert_eq!(upcast.payload.get(), r#"{"order_id":7,"copies":1}"#);

    // A v2 envelope is not converted.
    let v2 = Envelope::from_message(&SendReceiptV2 {
        order_id: 8,
        copies: 3,
    })
    .unwrap();
    dispatcher.dispatch(&v2).await.unwrap();
    assert_eq!(seen(&dispatcher), ["receipt 8 x3 as receipts.send v2"]);
}

#[tokio::test]
async fn an_old_version_that_does_not_decode_is_poison_naming_the_step() {
    let dispatcher = dispatcher();
    let bad = envelope_json("receipts.send", 1, r#"{"order_id":"seven"}"#);
    let err = dispatcher.dispatch(&bad).await.unwrap_err();
    assert!(err.is_poison());
    assert!(matches!(err, DispatchError::Upcast { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot upcast receipts.send v1 to receipts.send v2: payload of `receipts.send` v1 does not decode at `order_id`: invalid type: string \"seven\", expected i64 at line 1 column 19"
    );
    assert!(seen(&dispatcher).is_empty());
}

#[tokio::test]
async fn a_message_runs_every_handler_of_its_version() {
    let dispatcher = dispatcher();
    let placed = Envelope::from_message(&OrderPlaced {
        order_id: 5,
        customer_id: "c-9".into(),
    })
    .unwrap();
    let report = dispatcher.dispatch(&placed).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(seen(&dispatcher), ["charge 5", "reserve 5"]);

    let published: Vec<_> = report.published().map(|o| &o.envelope).collect();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].message_type, "receipts.send");
    assert_eq!(published[0].group, "receipts");
    assert_eq!(published[0].headers.causation_id, Some(placed.id));
    assert_eq!(published[0].headers.correlation_id, Some(placed.id));

    let v2 = Envelope::from_message(&OrderPlacedV2 {
        order_id: 6,
        customer_id: 42,
        total_cents: 990,
    })
    .unwrap();
    assert_eq!(v2.group, "42");
    dispatcher.dispatch(&v2).await.unwrap();
    assert_eq!(seen(&dispatcher), ["reserve_v2 6 990"]);
}

#[tokio::test]
async fn one_failing_handler_does_not_stop_the_other() {
    let dispatcher = dispatcher();
    let placed = Envelope::from_message(&OrderPlaced {
        order_id: -1,
        customer_id: "c".into(),
    })
    .unwrap();
    let report = dispatcher.dispatch(&placed).await.unwrap();
    assert_eq!(seen(&dispatcher), ["charge -1", "reserve -1"]);
    let failures: Vec<_> = report.failures().map(|o| o.handler).collect();
    assert_eq!(failures, ["dispatch::billing::charge"]);
    let err = report
        .failures()
        .next()
        .unwrap()
        .result
        .as_ref()
        .unwrap_err();
    assert!(matches!(err, HandlerError::Failed(_)));
    assert!(!err.is_permanent());
    assert_eq!(err.to_string(), "handler failed: negative order id -1");
}

#[tokio::test]
async fn a_panicking_handler_is_a_failure_of_that_handler_only() {
    let dispatcher = dispatcher();
    let placed = Envelope::from_message(&OrderPlaced {
        order_id: 3,
        customer_id: "panic".into(),
    })
    .unwrap();
    let report = dispatcher.dispatch(&placed).await.unwrap();
    let outcomes = report.outcomes();
    assert!(outcomes[0].result.is_ok());
    let Err(HandlerError::Panicked(message)) = &outcomes[1].result else {
        panic!("expected a panic outcome, got {:?}", outcomes[1].result);
    };
    assert_eq!(message, "reserve exploded for 3");
}

fn envelope_json(message_type: &str, version: u32, payload: &str) -> Envelope {
    Envelope::from_json(&format!(
        r#"{{"id":"0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69","type":"{message_type}","version":{version},
            "group":"g","payload":{payload},"created_at":"2026-11-28T10:00:00Z"}}"#
    ))
    .unwrap()
}

#[tokio::test]
async fn unknown_types_unsupported_versions_and_bad_payloads_are_distinct_poison() {
    let dispatcher = dispatcher();

    let err = dispatcher
        .dispatch(&envelope_json("orders.shipped", 1, "{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, DispatchError::UnknownType { .. }), "{err:?}");
    assert!(err.is_poison());

    let err = dispatcher
        .dispatch(&envelope_json("orders.placed", 7, "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DispatchError::UnsupportedVersion { version: 7, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "unsupported version 7 of message `orders.placed` (this binary handles v1, v2)"
    );

    let bad = envelope_json(
        "orders.placed",
        1,
        r#"{"order_id":"seven","customer_id":"c"}"#,
    );
    let err = dispatcher.dispatch(&bad).await.unwrap_err();
    let DispatchError::Decode(decode) = &err else {
        panic!("expected a decode error, got {err:?}")
    };
    assert_eq!(decode.path, "order_id");
    assert!(err.is_poison());
    assert!(
        err.to_string().starts_with(
            "payload of `orders.placed` v1 does not decode at `order_id`: invalid type"
        ),
        "{err}"
    );
    assert!(
        seen(&dispatcher).is_empty(),
        "no handler ran for poison messages"
    );
}

#[test]
fn handlers_stay_callable_as_written() {
    let state = outbox_runtime::handler::State::new().with(Seen::default());
    let envelope = Envelope::from_message(&OrderPlaced {
        order_id: 1,
        customer_id: "c".into(),
    })
    .unwrap();
    let mut ctx = HandlerContext::new(&envelope, &state);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(billing::charge(
        OrderPlaced {
            order_id: 1,
            customer_id: "c".into(),
        },
        &mut ctx,
    ))
    .unwrap();
    assert_eq!(ctx.published().len(), 1);
    assert_eq!(state.get::<Seen>().unwrap().take(), ["charge 1"]);
}

#[tokio::test]
async fn a_conversion_that_panics_is_poison_and_changes_nothing() {
    let dispatcher = dispatcher();
    let v1 = Envelope::from_message(&SendReceipt { order_id: -1 }).unwrap();
    let err = dispatcher.dispatch(&v1).await.unwrap_err();
    assert!(err.is_poison());
    assert_eq!(
        err.to_string(),
        "cannot upcast receipts.send v1 to receipts.send v2: the conversion panicked: no receipt for order -1"
    );
    let mut envelope = v1.clone();
    dispatcher.resolve(&mut envelope).unwrap_err();
    assert_eq!(
        (envelope.version, envelope.payload.get()),
        (1, v1.payload.get()),
        "a failed upcast leaves the envelope as delivered"
    );
    assert!(seen(&dispatcher).is_empty());
}
