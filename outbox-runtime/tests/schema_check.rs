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
#[outbox(name = "receipts.send", version = 2, queue = "mail", upcast_from = SendReceipt)]
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

#[handler(max_attempts = 3, publishes = [OrderExported], on_dead_letter = "hold_group")]
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
            "audit.logged.v1.schema.json: `audit.logged` v1 (`schema_check::AuditLogged`) has no handler and no upcast path while other versions of `audit.logged` have handlers, so its messages would be acknowledged without any handler running; handle it, or let a version with handlers declare `#[outbox(upcast_from = ...)]` naming it, with a `From` impl",
        ]
    );
    let _ = (
        OrderExported { order_id: 1 },
        AuditLogged {
            line: String::new(),
        },
    );
}

/// The AsyncAPI document and flow graph of a table with an upcast across
/// queues and a declared publish, compared with the checked-in copies in
/// `tests/contracts` (`scripts/test` validates that AsyncAPI document with
/// the AsyncAPI parser). `OUTBOX_BLESS=1` rewrites them.
#[test]
fn the_asyncapi_document_and_the_graph_match_the_checked_in_copies() {
    let table = DispatchTable::from_registry().unwrap();
    let app = outbox_runtime::schema::Application {
        title: "schema_check",
        version: "1",
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contracts");
    let mut generated = outbox_runtime::schema::generate(&table, &app);
    generated.push((
        "flow.mmd".to_owned(),
        outbox_runtime::schema::mermaid(&table),
    ));
    if std::env::var_os("OUTBOX_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &generated {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    for (name, text) in &generated {
        let checked_in = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}; run with OUTBOX_BLESS=1"));
        assert_eq!(&checked_in, text, "{name} changed; review and bless it");
    }
    let graph = &generated.last().unwrap().1;
    assert!(graph.contains("m3 -. upcast .-> m4"), "{graph}");
    assert!(graph.contains("h4_0 -- publishes --> m2"), "{graph}");
}
