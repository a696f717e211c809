//! Scenario 4: commit-to-handler latency. Producers commit one message per
//! transaction at a fixed rate and pump; a relay and two workers in the same
//! process deliver through the in-process queue; the handler notes when it
//! starts. Latency = handler start − the producer's commit returning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_runtime::{
    Dispatcher, HandlerContext, OutboxMessage, PgStore, Store, StoreExt, commit_and_pump,
    consume::WorkerConfig, handler, pump::RelayWaker,
};
use uuid::Uuid;

use crate::Sizes;
use crate::db::Scratch;
use crate::report::{Section, count, ms, quantile};

/// The smaller worker batch measured next to the default.
const SMALL_BATCH: usize = 10;

/// The latency probe's message.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "bench.ping", group = group)]
pub(crate) struct Ping {
    group: String,
}

/// Commit times by message id, and the latencies seen.
#[derive(Debug, Default)]
struct Clock {
    committed: Mutex<HashMap<Uuid, Instant>>,
    started: Mutex<HashMap<Uuid, Instant>>,
}

#[handler(name = "bench.ping.clock")]
async fn clock(_: Ping, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let now = Instant::now();
    let clock = ctx.state::<Arc<Clock>>()?;
    clock
        .started
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .entry(ctx.message_id())
        .or_insert(now);
    Ok(())
}

async fn at_rate(
    store: &PgStore,
    waker: &RelayWaker,
    clock: &Arc<Clock>,
    rate: u32,
    secs: f64,
) -> anyhow::Result<Vec<Duration>> {
    let total = (f64::from(rate) * secs).round() as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut producers = tokio::task::JoinSet::new();
    let mut ids = Vec::with_capacity(total);
    for i in 0..total {
        ticks.tick().await;
        let (store, waker, clock) = (store.clone(), waker.clone(), Arc::clone(clock));
        let id_slot = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&id_slot);
        producers.spawn(async move {
            let mut tx = store.begin().await?;
            let envelope = store
                .enqueue(
                    &mut tx,
                    &Ping {
                        group: format!("g{}", i % 20),
                    },
                )
                .await?;
            commit_and_pump(tx, &waker).await?;
            let committed = Instant::now();
            clock
                .committed
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(envelope.id, committed);
            *slot.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(envelope.id);
            anyhow::Ok(())
        });
        ids.push(id_slot);
    }
    while let Some(done) = producers.join_next().await {
        done??;
    }
    let ids: Vec<Uuid> = ids
        .iter()
        .filter_map(|slot| slot.lock().ok().and_then(|s| *s))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all_handled = {
            let started = clock
                .started
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            ids.iter().all(|id| started.contains_key(id))
        };
        if all_handled {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not every message was handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let committed = clock
        .committed
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let started = clock
        .started
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut latencies: Vec<Duration> = ids
        .iter()
        .map(|id| started[id].saturating_duration_since(committed[id]))
        .collect();
    latencies.sort();
    Ok(latencies)
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let clock = Arc::new(Clock::default());
    let default_batch = WorkerConfig::default().batch_size;

    let mut section = Section::new(
        "4. Commit-to-handler latency",
        &format!(
            "Producers commit one message per transaction on PostgreSQL at a fixed rate for {} s \
             and pump (`commit_and_pump` with a `RelayWaker`); a relay and two workers in the same \
             process deliver through the in-process queue, with batches of up to \
             {SMALL_BATCH} messages and of up to the default ({default_batch}), each in a new \
             database (rows left by a previous run slow the next). Latency: from the \
             commit returning to the handler starting. Goal: p50 ≤ 5 ms and p99 ≤ 20 ms.",
            sizes.latency_secs
        ),
        &[
            "worker batch",
            "rate (messages/s)",
            "messages",
            "p50",
            "p99",
            "max",
            "goal",
        ],
    );
    for batch in [SMALL_BATCH, default_batch] {
        let scratch = Scratch::create(server, "latency").await?;
        let pool = scratch.pool(16).await?;
        let store = PgStore::new(pool.clone());
        store.migrate().await?;
        let dispatcher = Dispatcher::from_registry()?.with_state(Arc::clone(&clock));
        let running = crate::running::start(&store, dispatcher, 2, batch);
        for rate in [100_u32, 1000] {
            let latencies =
                at_rate(&store, running.waker(), &clock, rate, sizes.latency_secs).await?;
            let (p50, p99) = (quantile(&latencies, 0.5), quantile(&latencies, 0.99));
            let met = p50 <= Duration::from_millis(5) && p99 <= Duration::from_millis(20);
            section.row(vec![
                if batch == default_batch {
                    format!("{batch} (default)")
                } else {
                    batch.to_string()
                },
                count(f64::from(rate)),
                count(latencies.len() as f64),
                ms(p50),
                ms(p99),
                ms(latencies.last().copied().unwrap_or_default()),
                if met { "met" } else { "missed" }.to_owned(),
            ]);
        }
        running.shutdown().await;
        pool.close().await;
        scratch.drop_db().await?;
    }
    Ok(section)
}
