//! The dispatch table: the check every entry point starts with, and the
//! `table` and `schemas` commands.

use std::path::Path;

use outbox_runtime::dispatch::DispatchTable;
use outbox_runtime::schema::Application;

use crate::messages::{OrderStatusChanged, OrderSubmitted};

/// The table this binary must have: a cold start that finds it incomplete
/// fails loudly instead of dead-lettering every message as unknown.
pub(crate) fn checked_table() -> anyhow::Result<DispatchTable> {
    let table = DispatchTable::from_registry()?;
    table
        .require::<OrderStatusChanged>()?
        .require::<OrderSubmitted>()?;
    Ok(table)
}

/// `table`: prints the dispatch table, as text, JSON or a Mermaid graph.
pub(crate) fn print(json: bool, graph: bool) -> anyhow::Result<()> {
    let table = checked_table()?;
    if json {
        println!("{}", serde_json::to_string_pretty(table.entries())?);
    } else if graph {
        print!("{}", outbox_runtime::schema::mermaid(&table));
    } else {
        print!("{table}");
    }
    Ok(())
}

/// The application the AsyncAPI document describes.
const APP: Application<'static> = Application {
    title: "sample-app (orders)",
    version: env!("CARGO_PKG_VERSION"),
};

/// `schemas`: writes the JSON Schemas and the AsyncAPI document into `dir`,
/// or with `check`, fails if the ones there drifted from the code, changed
/// incompatibly, or leave a version's messages without a handler.
pub(crate) fn schemas(check: bool, dir: &Path) -> anyhow::Result<()> {
    let table = checked_table()?;
    if check {
        outbox_runtime::schema::check(&table, &APP, dir)?;
        println!("schemas in {} match the code", dir.display());
    } else {
        for path in outbox_runtime::schema::write(&table, &APP, dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
