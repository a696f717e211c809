//! Prints the dispatch table and fails if it is not the one this crate
//! declares: run in release with fat LTO to show registrations survive.

use external_app::messages::{OrderPlaced, Payment};
use outbox_runtime::dispatch::DispatchTable;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let table = DispatchTable::from_registry()?;
    table.require::<OrderPlaced>()?.require::<Payment>()?;
    let handlers: usize = table.entries().iter().map(|e| e.handlers().len()).sum();
    print!("{table}");
    if table.len() != 2 || handlers != 3 {
        return Err(format!(
            "expected 2 messages and 3 handlers, found {} and {handlers}",
            table.len()
        )
        .into());
    }
    println!("ok: 2 messages, 3 handlers registered");
    Ok(())
}
