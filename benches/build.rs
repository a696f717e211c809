//! Records the optimization level the runner is built with, for the report.

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "unknown".into());
    println!("cargo::rustc-env=OUTBOX_BENCH_OPT_LEVEL={level}");
}
