//! A binary whose registrations are wrong in every way the table checks: the
//! table refuses to build and lists every problem, naming the Rust types.

use std::borrow::Cow;

use outbox_runtime::{
    OutboxMessage,
    dispatch::{DispatchTable, TableProblem},
    handler,
};

mod billing {
    #[derive(
        serde::Serialize, serde::Deserialize, schemars::JsonSchema, outbox_runtime::OutboxMessage,
    )]
    #[outbox(name = "invoice.issued")]
    pub(crate) struct InvoiceIssued {
        pub(crate) id: u64,
    }
}

mod legacy {
    #[derive(
        serde::Serialize, serde::Deserialize, schemars::JsonSchema, outbox_runtime::OutboxMessage,
    )]
    #[outbox(name = "invoice.issued")]
    pub(crate) struct Invoice {
        pub(crate) number: String,
    }
}

/// Implements the trait by hand, so it is not registered.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Manual;

impl OutboxMessage for Manual {
    const NAME: &'static str = "manual";
    const VERSION: u32 = 1;
    fn group_key(&self) -> Cow<'_, str> {
        Cow::Borrowed("manual")
    }
}

/// Claims the name and version of a registered type without being it.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Impostor;

impl OutboxMessage for Impostor {
    const NAME: &'static str = "ping";
    const VERSION: u32 = 1;
    fn group_key(&self) -> Cow<'_, str> {
        Cow::Borrowed("ping")
    }
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "ping")]
struct Ping;

#[handler]
async fn on_manual(_: Manual) -> anyhow::Result<()> {
    Ok(())
}

#[handler]
async fn on_impostor(_: Impostor) -> anyhow::Result<()> {
    Ok(())
}

#[handler(name = "ping.handler")]
async fn first(_: Ping) -> anyhow::Result<()> {
    Ok(())
}

#[handler(name = "ping.handler")]
async fn second(_: Ping) -> anyhow::Result<()> {
    Ok(())
}

#[handler(name = "ping.announce", publishes = [Manual])]
async fn announce(_: Ping) -> anyhow::Result<()> {
    Ok(())
}

/// Upcasts that cannot form a path: two types replace `Quote`, `Left` and
/// `Right` replace each other, `FromManual` replaces an unregistered type.
mod upcasts {
    use super::Manual;

    macro_rules! message {
        ($name:ident, $($outbox:tt)*) => {
            #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, outbox_runtime::OutboxMessage)]
            #[outbox($($outbox)*)]
            pub(crate) struct $name;
        };
    }
    macro_rules! from {
        ($from:ty => $to:ident) => {
            impl From<$from> for $to {
                fn from(_: $from) -> Self {
                    $to
                }
            }
        };
    }

    message!(Quote, name = "quote");
    message!(QuoteV2, name = "quote", version = 2, upcast_from = Quote);
    message!(QuoteRenamed, name = "quote.renamed", upcast_from = Quote);
    from!(Quote => QuoteV2);
    from!(Quote => QuoteRenamed);

    message!(Left, name = "left", upcast_from = Right);
    message!(Right, name = "right", upcast_from = Left);
    from!(Right => Left);
    from!(Left => Right);

    message!(FromManual, name = "from.manual", upcast_from = Manual);
    from!(Manual => FromManual);

    message!(Rock, name = "rock", upcast_from = Scissors);
    message!(Paper, name = "paper", upcast_from = Rock);
    message!(Scissors, name = "scissors", upcast_from = Paper);
    from!(Scissors => Rock);
    from!(Rock => Paper);
    from!(Paper => Scissors);
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = DispatchTable::from_registry().unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 9, "{err}");
    assert!(problems.contains(&TableProblem::DuplicateMessage {
        name: "invoice.issued",
        version: 1,
        first: "table_errors::billing::InvoiceIssued",
        second: "table_errors::legacy::Invoice",
    }));
    assert!(problems.contains(&TableProblem::UnregisteredMessage {
        handler: "table_errors::on_manual",
        message_type: "table_errors::Manual",
    }));
    assert!(problems.contains(&TableProblem::MessageMismatch {
        handler: "table_errors::on_impostor",
        handler_type: "table_errors::Impostor",
        name: "ping",
        version: 1,
        registered_type: "table_errors::Ping",
    }));
    assert!(problems.contains(&TableProblem::DuplicateHandler {
        handler: "ping.handler",
        message_type: "table_errors::Ping",
    }));

    assert!(problems.contains(&TableProblem::UnregisteredPublish {
        handler: "ping.announce",
        message_type: "table_errors::Manual",
    }));
    assert!(problems.contains(&TableProblem::UpcastConflict {
        replaced: "table_errors::upcasts::Quote",
        first: "table_errors::upcasts::QuoteV2",
        second: "table_errors::upcasts::QuoteRenamed",
    }));
    assert!(problems.contains(&TableProblem::UpcastCycle {
        types: vec![
            "table_errors::upcasts::Left",
            "table_errors::upcasts::Right"
        ],
    }));
    assert!(
        problems.contains(&TableProblem::UpcastCycle {
            types: vec![
                "table_errors::upcasts::Paper",
                "table_errors::upcasts::Scissors",
                "table_errors::upcasts::Rock",
            ],
        }),
        "{err}"
    );
    assert!(problems.contains(&TableProblem::UnregisteredUpcastSource {
        message_type: "table_errors::upcasts::FromManual",
        replaced: "table_errors::Manual",
    }));

    let shown = err.to_string();
    assert!(
        shown.contains(
            "the upcasts form a cycle: `table_errors::upcasts::Left` → `table_errors::upcasts::Right` → `table_errors::upcasts::Left`; remove `upcast_from` from one of them"
        ),
        "{shown}"
    );
    assert!(
        shown.contains(
            "`table_errors::upcasts::QuoteV2` and `table_errors::upcasts::QuoteRenamed` both declare `upcast_from = table_errors::upcasts::Quote`"
        ),
        "{shown}"
    );
    assert!(
        shown.starts_with("invalid dispatch table (9 problems):\n  - "),
        "{shown}"
    );
    assert!(
        shown.contains(
            "message `invoice.issued` v1 is declared by both `table_errors::billing::InvoiceIssued` and `table_errors::legacy::Invoice`; give one of them another `#[outbox(name = ...)]` or `version`"
        ),
        "{shown}"
    );
}

#[test]
fn an_explicit_subset_builds_and_require_checks_membership() {
    let ping = outbox_runtime::registry::MESSAGES
        .iter()
        .find(|m| m.name == "ping")
        .unwrap();
    let table = DispatchTable::from_registrations([ping], []).unwrap();
    assert_eq!(table.len(), 1);
    table.require::<Ping>().unwrap();
    let err = table.require::<billing::InvoiceIssued>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid dispatch table: message `invoice.issued` v1 (`table_errors::billing::InvoiceIssued`) is not in the dispatch table; is the crate that derives it linked into this binary?"
    );
    // Same name and version as `Ping`, another type: not what the binary requires.
    assert!(table.require::<Impostor>().is_err());
}
