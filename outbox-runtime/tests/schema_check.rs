//! `schema::check` against a directory written by `schema::write`: versions
//! whose messages would reach no handler are reported, by name.

use outbox_runtime::{OutboxMessage, dispatch::DispatchTable, handler};

/// Two versions with no upcast between them: v1's messages reach no handler.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "audit.logged")]
struct AuditLogged {
    line: String,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "audit.logged", version = 2)]
struct AuditLoggedV2 {
    lines: Vec<String>,
}

#[handler]
async fn keep_audit(_: AuditLoggedV2) -> anyhow::Result<()> {
    Ok(())
}

/// v1 reaches v2's handler through an upcast: not reported.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "receipts.send")]
struct SendReceipt {
    order_id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "receipts.send", version = 2, upcast_from = SendReceipt)]
struct SendReceiptV2 {
    order_id: i64,
    copies: u32,
}

impl From<SendReceipt> for SendReceiptV2 {
    fn from(v1: SendReceipt) -> Self {
        SendReceiptV2 {
            order_id: v1.order_id,
            copies: 1,
        }
    }
}

#[handler]
async fn send_receipt(_: SendReceiptV2) -> anyhow::Result<()> {
    Ok(())
}

/// No version of it has handlers here (consumed elsewhere): not reported.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "orders.exported")]
struct OrderExported {
    order_id: i64,
}

#[test]
fn versions_whose_messages_would_reach_no_handler_are_named() {
    let table = DispatchTable::from_registry().unwrap();
    let app = outbox_runtime::schema::Application {
        title: "schema_check",
        version: "1",
    };
    let dir = std::env::temp_dir().join(format!("outbox-schemas-{}", std::process::id()));
    outbox_runtime::schema::write(&table, &app, &dir).unwrap();
    outbox_runtime::schema::check(&table, &app, &dir).expect_err("audit.logged v1 is reported");
    // Checked in by an earlier build; gone from this one.
    std::fs::write(dir.join("orders.cancelled.v1.schema.json"), "{}\n").unwrap();

    let err = outbox_runtime::schema::check(&table, &app, &dir).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        err.problems,
        [
            "orders.cancelled.v1.schema.json: `orders.cancelled` v1 is gone from the code, so its messages still in queues or outboxes would be dead-lettered as an unsupported version; keep the type with a handler, or as the `upcast_from` of a later version, until none can be in flight, then delete this file",
            "audit.logged.v1.schema.json: `audit.logged` v1 (`schema_check::AuditLogged`) has no handler and no upcast path while other versions of `audit.logged` have handlers, so its messages would be acknowledged without any handler running; give the next version `#[outbox(upcast_from = ...)]` naming it, with a `From` impl",
        ]
    );
    let _ = (
        OrderExported { order_id: 1 },
        AuditLogged {
            line: String::new(),
        },
    );
}
