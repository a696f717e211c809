//! The dispatch table: the check every entry point starts with, and the
//! `table` and `schemas` commands.

use std::path::Path;

use outbox_runtime::dispatch::DispatchTable;

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

/// `table`: prints the dispatch table, as text or JSON.
pub(crate) fn print(json: bool) -> anyhow::Result<()> {
    let table = checked_table()?;
    if json {
        println!("{}", serde_json::to_string_pretty(table.entries())?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// `schemas`: writes the JSON Schemas into `dir`, or with `check`, fails if
/// the ones there drifted from the code or changed incompatibly.
pub(crate) fn schemas(check: bool, dir: &Path) -> anyhow::Result<()> {
    let table = checked_table()?;
    if check {
        outbox_runtime::schema::check(&table, dir)?;
        println!("schemas in {} match the code", dir.display());
    } else {
        for path in outbox_runtime::schema::write(&table, dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
