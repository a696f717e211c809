//! Scenario 8: handling throughput. A backlog drained by a relay and 4 or 8
//! workers, each handler writing one app row, against plain SQL doing the
//! same writes (an inbox row and an app row per message) from as many
//! clients: one transaction per message (the ceiling a consumer that commits
//! each message reaches) and 50 messages per transaction (what batching can
//! reach at most).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_runtime::{Dispatcher, HandlerContext, OutboxMessage, PgStore, Store, handler};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Sizes;
use crate::db::Scratch;
use crate::relay;
use crate::report::{Section, count, median, ratio};

/// Workers, as many as the sample's `serve` runs (the scenario also runs
/// twice as many), and as many plain-SQL clients.
pub(crate) const WORKERS: usize = 4;

/// Messages per transaction in the batched plain-SQL variant.
const PLAIN_BATCH: usize = 50;
/// The smaller worker batch measured next to the default.
const SMALL_BATCH: usize = 10;

/// An order whose handler records an effect, as an app's handler does.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "bench.effect", group = customer)]
pub(crate) struct Effect {
    order_id: i64,
    customer: String,
    amount_cents: i64,
    note: String,
}

/// Writes one app row in the handler's transaction.
#[handler(name = "bench.effect.record")]
async fn record(msg: Effect, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let message_id = ctx.message_id();
    sqlx::query("INSERT INTO bench_effects (order_id, message_id) VALUES ($1, $2)")
        .bind(msg.order_id)
        .bind(message_id)
        .execute(ctx.db::<sqlx::Postgres>()?)
        .await?;
    Ok(())
}

/// Messages per second handled by the toolkit: `n` pending rows of
/// `message_type` drained by a relay into the in-process queue and handled
/// by `workers` workers with batches of up to `batch_size`.
pub(crate) async fn drain(
    store: &PgStore,
    n: usize,
    message_type: &str,
    workers: usize,
    batch_size: usize,
) -> anyhow::Result<f64> {
    relay::fill_as(store.pool(), n, message_type).await?;
    // The previous round's rows go too: every variant starts from empty
    // tables.
    sqlx::query("TRUNCATE outbox_inbox")
        .execute(store.pool())
        .await?;
    let started = Instant::now();
    let running = crate::running::start(store, Dispatcher::from_registry()?, workers, batch_size);
    let metrics = Arc::clone(running.metrics());
    running.waker().wake();
    let deadline = started + Duration::from_secs(600);
    while metrics.snapshot().handled < n as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the toolkit handled {} of {n} messages in 10 minutes",
            metrics.snapshot().handled
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    running.shutdown().await;
    let handled = metrics.snapshot().handled;
    anyhow::ensure!(handled == n as u64, "{handled} handlings of {n} messages");
    Ok(n as f64 / secs)
}

/// [`drain`] of `n` `bench.effect` messages by `workers` workers, from
/// empty tables.
async fn toolkit(
    store: &PgStore,
    n: usize,
    workers: usize,
    batch_size: usize,
) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE bench_effects")
        .execute(store.pool())
        .await?;
    let rate = drain(store, n, "bench.effect", workers, batch_size).await?;
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_effects")
        .fetch_one(store.pool())
        .await?;
    anyhow::ensure!(effects == n as i64, "{effects} effects of {n} messages");
    Ok(rate)
}

/// Messages per second written by plain SQL: `n` messages, each an inbox
/// row and an app row, `per_tx` messages per transaction, from `clients`
/// tasks.
async fn plain(pool: &PgPool, n: usize, clients: usize, per_tx: usize) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE bench_inbox, bench_effects")
        .execute(pool)
        .await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let pool = pool.clone();
        let mine = n / clients + usize::from(client < n % clients);
        tasks.spawn(async move {
            let mut done = 0;
            while done < mine {
                let take = per_tx.min(mine - done);
                let ids: Vec<Uuid> = (0..take).map(|_| Uuid::now_v7()).collect();
                let orders: Vec<i64> = (done..done + take).map(|i| i as i64).collect();
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO bench_inbox (message_id, handler)
                     SELECT id, 'bench.effect.record' FROM unnest($1::uuid[]) id",
                )
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO bench_effects (order_id, message_id)
                     SELECT * FROM unnest($1::bigint[], $2::uuid[])",
                )
                .bind(&orders)
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                done += take;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let scratch = Scratch::create(server, "handling").await?;
    let pool = scratch.pool(16).await?;
    let store = PgStore::new(pool.clone());
    store.migrate().await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_effects (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL, message_id UUID NOT NULL);
         CREATE TABLE bench_inbox (LIKE outbox_inbox INCLUDING ALL);",
    )
    .execute(&pool)
    .await?;
    let n = sizes.handled_messages;
    let default_batch = outbox_runtime::consume::WorkerConfig::default().batch_size;

    let mut section = Section::new(
        "8. Handling: relay and workers against plain SQL",
        &format!(
            "{} messages waiting in 100 groups on PostgreSQL, each handled by a handler that \
             inserts one app row in its transaction. *Toolkit*: a relay into the in-process \
             queue and 4 or 8 workers (`Worker` with the relay's waker as its pump, batches of \
             up to the given size, inbox rows, in order within each group); timed from start \
             until every message is handled. *Plain SQL*: the same writes (an inbox row like \
             the toolkit's, with its index, and the app row) from as many clients, one message \
             per transaction (the ceiling of a consumer that commits each message: the \
             baseline) and {PLAIN_BATCH} per transaction (what batching reaches at most, with \
             no outbox, relay or dispatch). The variants alternate in 3 rounds; the median \
             round is shown.",
            count(n as f64),
        ),
        &["clients", "variant", "messages/s", "× one tx per message"],
    );
    let mut verdicts = Vec::new();
    for clients in [WORKERS, 2 * WORKERS] {
        let names = [
            "plain SQL, one transaction per message (baseline)".to_owned(),
            format!("plain SQL, {PLAIN_BATCH} messages per transaction"),
            format!("toolkit, batch {SMALL_BATCH}"),
            format!("toolkit, default batch ({default_batch})"),
        ];
        let mut rounds: [Vec<f64>; 4] = Default::default();
        for _ in 0..3 {
            rounds[0].push(plain(&pool, n, clients, 1).await?);
            rounds[1].push(plain(&pool, n, clients, PLAIN_BATCH).await?);
            rounds[2].push(toolkit(&store, n, clients, SMALL_BATCH).await?);
            rounds[3].push(toolkit(&store, n, clients, default_batch).await?);
        }
        let rates = rounds.map(median);
        for (name, rate) in names.into_iter().zip(rates) {
            section.row(vec![
                clients.to_string(),
                name,
                count(rate),
                ratio(rate / rates[0]),
            ]);
        }
        let judge = |rate: f64| {
            format!(
                "{} messages/s, {} ({})",
                count(rate),
                ratio(rate / rates[0]),
                if rate >= 10_000.0 && rate / rates[0] >= 2.5 {
                    "met"
                } else {
                    "missed"
                }
            )
        };
        verdicts.push(format!(
            "{clients} workers and clients: at the default batch ({default_batch}) {} ({} of \
             plain SQL at {PLAIN_BATCH} per transaction), at batch {SMALL_BATCH} {}",
            judge(rates[3]),
            ratio(rates[3] / rates[1]),
            judge(rates[2]),
        ));
    }
    section.verdict = format!(
        "Goals: at least 10,000 messages/s, and at least 2.5× one transaction per message \
         from as many clients. {}.",
        verdicts.join("; ")
    );
    pool.close().await;
    scratch.drop_db().await?;
    Ok(section)
}
