//! `outbox-bench`: every benchmark of the toolkit next to its baseline, in
//! the same run, reported as ratios (machines are noisy; ratios measured
//! side by side are what reproduce).
//!
//! ```sh
//! scripts/bench                 # full run (15 minutes on 2 cores); rewrites BENCHMARKS.md
//! cargo run -p outbox-bench -- --quick --out /tmp/quick.md   # checks the harness runs
//! ```
//!
//! Needs PostgreSQL (`DATABASE_URL`; each scenario makes and drops its own
//! database). `--quick` shrinks every scenario to check that the harness
//! still runs; its numbers mean nothing.

mod db;
mod dispatch;
mod enqueue;
mod handling;
mod lambda;
mod latency;
mod messages;
mod peer;
mod relay;
mod report;
mod running;
mod sqs;

use std::path::PathBuf;

use clap::Parser;

use crate::report::Report;

#[derive(Debug, Parser)]
#[command(about = "The outbox toolkit's benchmarks, each against its baseline in the same run")]
struct Args {
    /// Tiny sizes: checks that every scenario runs; the numbers mean nothing.
    #[arg(long)]
    quick: bool,
    /// Write the markdown report here (as well as printing it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Rows for the relay scenario (default: 100,000; quick: 500).
    #[arg(long)]
    drain_rows: Option<usize>,
}

/// How big each scenario is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub(crate) quick: bool,
    /// Transactions per client in the enqueue scenario.
    pub(crate) enqueue_per_client: usize,
    /// Rows pre-filled for a relay drain with batches of 100 or more.
    pub(crate) drain_rows: usize,
    /// Dispatches per variant.
    pub(crate) dispatches: usize,
    /// Seconds of load per latency rate.
    pub(crate) latency_secs: f64,
    /// Messages handled per run in the peer scenario.
    pub(crate) peer_messages: usize,
    /// Messages handled per run in the handling scenario.
    pub(crate) handled_messages: usize,
    /// Cold starts measured.
    pub(crate) cold_starts: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                quick,
                enqueue_per_client: 20,
                drain_rows: 500,
                dispatches: 2_000,
                latency_secs: 0.5,
                peer_messages: 200,
                handled_messages: 200,
                cold_starts: 1,
            }
        } else {
            Sizes {
                quick,
                enqueue_per_client: 1_000,
                drain_rows: 100_000,
                dispatches: 1_000_000,
                latency_secs: 10.0,
                peer_messages: 10_000,
                handled_messages: 20_000,
                cold_starts: 5,
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sizes = Sizes::new(args.quick);
    if let Some(rows) = args.drain_rows {
        sizes.drain_rows = rows;
    }
    let server = db::server_url();
    let mut report = Report::new(sizes, &server);
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));

    if wanted("dispatch") {
        eprintln!("== dispatch");
        report.section(dispatch::run(sizes)?);
    }
    if wanted("enqueue") {
        eprintln!("== enqueue");
        report.section(enqueue::run(sizes, &server).await?);
    }
    if wanted("relay") {
        eprintln!("== relay");
        report.section(relay::run(sizes, &server).await?);
        report.section(relay::run_distant(sizes, &server).await?);
    }
    if wanted("handling") {
        eprintln!("== handling");
        report.section(handling::run(sizes, &server).await?);
    }
    if wanted("latency") {
        eprintln!("== latency");
        report.section(latency::run(sizes, &server).await?);
    }
    if wanted("peer") {
        eprintln!("== peer");
        report.section(peer::run(sizes, &server).await?);
    }
    if wanted("sqs") {
        eprintln!("== sqs");
        report.section(sqs::run(sizes, &server).await?);
    }
    if wanted("lambda") {
        eprintln!("== lambda");
        report.section(lambda::run(sizes, &server).await?);
    }

    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(out) = args.out {
        std::fs::write(&out, &markdown)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
