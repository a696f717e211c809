//! Scenario 5: a peer crate doing the same job on the same database server.
//! sqlxmq (pinned at 0.6.0) is the closest Rust peer: a `#[job]` macro, jobs
//! spawned in the app's transaction, typed handlers. It brings sqlx 0.8, so it
//! lives in its own workspace (`benches/peer-sqlxmq`) and runs as a child
//! process that measures itself and prints one JSON line; this process
//! alternates it with the toolkit's runs, in the same invocation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use outbox_runtime::{PgStore, Store, consume::WorkerConfig};

use crate::Sizes;
use crate::db::Scratch;
use crate::enqueue::{self, Extra};
use crate::handling::{self, WORKERS};
use crate::report::{Section, count, median, ratio};

/// The peer's binary: `OUTBOX_BENCH_PEER_BINARY`, or `sqlxmq-peer` next to
/// this binary (scripts/bench and scripts/test build it there).
fn peer_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OUTBOX_BENCH_PEER_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("sqlxmq-peer");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with `cargo build {}--manifest-path benches/peer-sqlxmq/Cargo.toml` \
         (scripts/bench and scripts/test do), or set OUTBOX_BENCH_PEER_BINARY",
        path.display(),
        if cfg!(debug_assertions) {
            ""
        } else {
            "--release "
        },
    );
    Ok(path)
}

/// Runs the peer with `args` and returns its `per_sec`.
fn peer(binary: &Path, args: &[&str]) -> anyhow::Result<f64> {
    let line = run_peer(binary, args)?;
    line["per_sec"]
        .as_f64()
        .with_context(|| format!("no `per_sec` in {line}"))
}

/// Runs the peer with `args` and returns the JSON line it printed.
fn run_peer(binary: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "sqlxmq-peer {} failed: {}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "sqlxmq-peer printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let binary = peer_binary()?;
    let ours_db = Scratch::create(server, "peer_ours").await?;
    let theirs_db = Scratch::create(server, "peer_sqlxmq").await?;
    let pool = ours_db.pool(16).await?;
    let store = PgStore::new(pool.clone());
    store.migrate().await?;
    enqueue::create_tables(&pool).await?;
    run_peer(&binary, &["setup", &theirs_db.url])?;

    let mut section = Section::new(
        "5. A peer crate: sqlxmq",
        &format!(
            "The same job done by [sqlxmq](https://crates.io/crates/sqlxmq) 0.6.0 (pinned), the \
             closest Rust peer (a `#[job]` macro, jobs spawned in the app's transaction), on the \
             same PostgreSQL server, each in its own database. It runs as a child process \
             (`benches/peer-sqlxmq`, its own workspace because it brings sqlx 0.8) that times \
             itself; the variants alternate in 3 rounds and the median round is shown. \
             **Enqueue**: scenario 1's transaction (an order row and one message: \
             `Store::enqueue_all` vs sqlxmq's `spawn`), {} transactions per client. \
             **Handle**: {} messages waiting, then handled by a typed handler that decodes \
             the payload; timed from start until every handler has committed. The toolkit: a \
             relay into the in-process queue and {WORKERS} workers (as the sample's `serve`) \
             with the default batch ({}), a batch's messages handled in one transaction that \
             records each in the inbox, in order within each group (100 groups). sqlxmq: a runner with its default concurrency \
             (16 to 32 jobs), the job completed (deleted) after the handler; once unordered \
             (its default), once ordered within 100 channels (its `set_ordered`, the toolkit's \
             guarantee).",
            count(sizes.enqueue_per_client as f64),
            count(sizes.peer_messages as f64),
            WorkerConfig::default().batch_size,
        ),
        &["what", "toolkit (/s)", "sqlxmq (/s)", "toolkit ÷ sqlxmq"],
    );

    let mut enqueue_worst = f64::INFINITY;
    for clients in [1_usize, 8] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ours.push(
                enqueue::throughput(
                    &pool,
                    &store,
                    clients,
                    sizes.enqueue_per_client,
                    Extra::Outbox(1),
                )
                .await?,
            );
            theirs.push(peer(
                &binary,
                &[
                    "enqueue",
                    &theirs_db.url,
                    &clients.to_string(),
                    &sizes.enqueue_per_client.to_string(),
                ],
            )?);
        }
        let (ours, theirs) = (median(ours), median(theirs));
        enqueue_worst = enqueue_worst.min(ours / theirs);
        section.row(vec![
            format!(
                "enqueue, {clients} client{}",
                if clients == 1 { "" } else { "s" }
            ),
            count(ours),
            count(theirs),
            ratio(ours / theirs),
        ]);
    }

    let messages = sizes.peer_messages.to_string();
    let (mut ours, mut unordered, mut ordered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(
            handling::drain(
                &store,
                sizes.peer_messages,
                "bench.m00",
                WORKERS,
                WorkerConfig::default().batch_size,
            )
            .await?,
        );
        unordered.push(peer(
            &binary,
            &["drain", &theirs_db.url, &messages, "unordered"],
        )?);
        ordered.push(peer(
            &binary,
            &["drain", &theirs_db.url, &messages, "ordered"],
        )?);
    }
    let (ours, unordered, ordered) = (median(ours), median(unordered), median(ordered));
    for (name, theirs) in [
        ("handle, sqlxmq unordered", unordered),
        ("handle, sqlxmq ordered per group", ordered),
    ] {
        section.row(vec![
            name.to_owned(),
            count(ours),
            count(theirs),
            ratio(ours / theirs),
        ]);
    }
    let handle_worst = ours / unordered.max(ordered);
    let met = |x: f64, goal: f64| if x >= goal { "met" } else { "missed" };
    section.verdict = format!(
        "Goals: at least 5× sqlxmq handling (worst here {}, {}) and 2× its enqueue (worst \
         here {}, {}). What differs is in the description: the toolkit's handler transaction \
         records an inbox row (exactly-once effects for handlers writing to the same \
         database); sqlxmq deletes the job after the handler, in a separate statement.",
        ratio(handle_worst),
        met(handle_worst, 5.0),
        ratio(enqueue_worst),
        met(enqueue_worst, 2.0),
    );

    pool.close().await;
    ours_db.drop_db().await?;
    theirs_db.drop_db().await?;
    Ok(section)
}
