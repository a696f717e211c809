//! The benchmark harness still runs: every scenario in quick mode, against
//! the real PostgreSQL and cargo-lambda's emulator, producing every section
//! of the report. Speed is not asserted (machines are noisy; the ratios in
//! BENCHMARKS.md are what `scripts/bench` measured).

use std::io::Write;
use std::process::Command;

#[test]
fn every_scenario_runs_in_quick_mode_and_reports() {
    // The sample's binary from the same build stands in for the release
    // artefact: quick mode checks the harness, not the numbers.
    let exe = std::env::current_exe().expect("the test's path");
    let debug_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/debug");
    let sample_app = debug_dir.join("sample-app");
    let missing: Vec<String> = [
        (!sample_app.exists()).then(|| format!("{} (build the workspace)", sample_app.display())),
        (!debug_dir.join("sqlxmq-peer").exists()).then(|| {
            "the sqlxmq peer (cargo build --manifest-path benches/peer-sqlxmq/Cargo.toml)".into()
        }),
        std::env::var_os("OUTBOX_CARGO_LAMBDA")
            .is_none()
            .then(|| "cargo-lambda (OUTBOX_CARGO_LAMBDA)".into()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        // scripts/test provides all three: there, a missing one fails.
        assert!(
            std::env::var_os("OUTBOX_SERVICES").is_none_or(|v| v != "required"),
            "missing under scripts/test: {}",
            missing.join(", ")
        );
        // Written to the process's stderr, past the test harness's capture.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: this needs {}; scripts/test builds and installs them",
            missing.join(", ")
        );
        return;
    }
    let out = std::env::temp_dir().join(format!("outbox-bench-quick-{}.md", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_outbox-bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .env("OUTBOX_BENCH_LAMBDA_BINARY", &sample_app)
        .output()
        .expect("outbox-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report = std::fs::read_to_string(&out).expect("the report was written");
    let _ = std::fs::remove_file(&out);
    assert!(
        report.starts_with("# Benchmarks\n\n**Quick mode"),
        "{report}"
    );
    // Every section, in numbered order whatever order they ran in.
    let mut last = 0;
    for section in [
        "## 1. Enqueue",
        "## 2. Relay",
        "## 2b. Relay at AWS's latency",
        "## 3. Dispatch",
        "## 4. Commit-to-handler latency",
        "## 5. A peer crate: sqlxmq",
        "## 6. The Lambda artefact",
        "## 7. SQS requests per delivered message",
        "## 8. Handling: relay and workers against plain SQL",
    ] {
        let at = report
            .find(section)
            .unwrap_or_else(|| panic!("no `{section}` in:\n{report}"));
        assert!(at > last, "`{section}` is out of order in:\n{report}");
        last = at;
    }
    // Every table row has as many cells as its header.
    for table in report.split("\n\n").filter(|b| b.starts_with('|')) {
        let mut lines = table.lines();
        let header = lines.next().expect("a header").matches('|').count();
        for line in lines {
            assert_eq!(line.matches('|').count(), header, "{line}");
        }
    }
}
