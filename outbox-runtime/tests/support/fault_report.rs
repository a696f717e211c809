//! The fault-injection tests' report: each scenario appends one JSON line to
//! the file `OUTBOX_FAULT_REPORT` names (when set), and
//! `scripts/reliability` turns the lines into the table of RELIABILITY.md.
//! Shared by the test crates through `#[path]`.

/// One fault scenario's outcome.
#[derive(Debug, serde::Serialize)]
pub(crate) struct FaultRecord<'a> {
    /// What went wrong.
    pub(crate) scenario: &'a str,
    /// How the test made it go wrong.
    pub(crate) injection: &'a str,
    /// How many times the fault was injected.
    pub(crate) runs: u64,
    /// Messages committed.
    pub(crate) sent: u64,
    /// Messages whose handler effect is in the database.
    pub(crate) handled: u64,
    /// Messages committed but never handled.
    pub(crate) lost: u64,
    /// Handler effects committed twice (must be 0).
    pub(crate) duplicate_effects: u64,
    /// Redeliveries the inbox absorbed, where the test can count them.
    pub(crate) duplicates_suppressed: Option<u64>,
    /// Adjacent pairs of handler effects out of their group's commit order
    /// (must be 0), where the test checks order against commits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) order_violations: Option<u64>,
    /// Groups still pending when the test's settle bound passed (must be 0),
    /// where the test has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stuck_groups: Option<u64>,
    /// Handler runs whose `ctx.attempt()` did not count the handler's own
    /// failed runs, and give-ups after a wrong number of them (must be 0),
    /// where the test logs every run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempt_mismatches: Option<u64>,
    /// Runs of delayed messages that started before their time (must be
    /// 0), where the test enqueues delayed messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) early_runs: Option<u64>,
    /// Runs that failed outside the checks (must be 0): a producer
    /// transaction that ran out of retries, a task that panicked; where the
    /// test tells them apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) harness_problems: Option<u64>,
}

/// Prints the record and appends it to `OUTBOX_FAULT_REPORT`, if set.
pub(crate) fn report(record: &FaultRecord<'_>) {
    let line = serde_json::to_string(record).expect("a record serializes");
    println!("fault report: {line}");
    if let Ok(path) = std::env::var("OUTBOX_FAULT_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("cannot open {path}: {err}"));
        writeln!(file, "{line}").expect("the report is writable");
    }
}
