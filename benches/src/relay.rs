//! Scenario 2: draining a backlog. Pre-filled pending rows (100 groups)
//! published by the toolkit's relay to an in-process queue that stands in
//! for SQS (durable: rows are published as soon as it has them, as on SQS;
//! a non-durable queue would hold each group until a consumer confirms its
//! batch, and no consumer runs here), swept over batch sizes and concurrent
//! relays, against three baselines run on the same number of rows in the
//! same process: the physical limit (a plain table with a status column,
//! drained by one `FOR UPDATE SKIP LOCKED` claim-and-mark statement per
//! batch, with no per-group rule), the relay's own statements issued
//! directly (no toolkit code, nothing published), and a port of the
//! original demo's relay (select 50 pending rows; per row an optimistic
//! attempt-count update, a publish and a mark, one round trip each).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_runtime::{
    Envelope, InProcessQueue, PgStore, Relay, Store,
    envelope::Headers,
    relay::RelayConfig,
    transport::{EntryError, InProcessConfig, PublishEntry, Transport, TransportError},
};
use sqlx::{PgPool, Row};

use crate::Sizes;
use crate::db::Scratch;
use crate::report::{Section, count, ratio};

const GROUPS: i64 = 100;

/// Replaces the outbox's rows with `n` pending ones, in `GROUPS` groups.
pub(crate) async fn fill(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    fill_as(pool, n, "bench.m00").await
}

/// [`fill`] with messages of type `message_type` (fields as `bench.m00`'s).
pub(crate) async fn fill_as(pool: &PgPool, n: usize, message_type: &str) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE outbox, outbox_groups, outbox_archive")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO outbox (id, message_type, version, group_key, payload, headers, created_at)
         SELECT gen_random_uuid(), $3, 1, 'customer-' || (g % $2),
                json_build_object('order_id', g, 'customer', 'customer-' || (g % $2),
                                  'amount_cents', 1999, 'note', 'gift wrap'),
                '{}', now()
         FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(n)?)
    .bind(GROUPS)
    .bind(message_type)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO outbox_groups (group_key, head_seq)
         SELECT group_key, min(seq) FROM outbox GROUP BY group_key",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE outbox, outbox_groups")
        .execute(pool)
        .await?;
    Ok(())
}

/// A table with the same rows' columns and a status per row, as a plain
/// outbox keeps them (and as the original demo did), holding `n` pending
/// rows in `GROUPS` groups.
async fn fill_plain(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS plain_outbox;
         CREATE TABLE plain_outbox (
             seq BIGSERIAL PRIMARY KEY, id UUID NOT NULL UNIQUE, message_type TEXT NOT NULL,
             version INTEGER NOT NULL, group_key TEXT NOT NULL, payload JSON NOT NULL,
             created_at TIMESTAMPTZ NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
             status TEXT NOT NULL DEFAULT 'pending', published_at TIMESTAMPTZ);
         CREATE INDEX plain_outbox_pending ON plain_outbox (seq) WHERE status = 'pending';",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO plain_outbox (id, message_type, version, group_key, payload, created_at)
         SELECT gen_random_uuid(), 'bench.m00', 1, 'customer-' || (g % $2),
                json_build_object('order_id', g, 'customer', 'customer-' || (g % $2),
                                  'amount_cents', 1999, 'note', 'gift wrap'),
                now()
         FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(n)?)
    .bind(GROUPS)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE plain_outbox").execute(pool).await?;
    Ok(())
}

async fn pending(pool: &PgPool, table: &'static str) -> anyhow::Result<i64> {
    let sql = match table {
        "plain_outbox" => "SELECT count(*) FROM plain_outbox WHERE status = 'pending'",
        _ => "SELECT count(*) FROM outbox",
    };
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Runs `relays` copies of `drain_once` until nothing is pending; rows/s.
/// `drain_once` returns how many rows it took (0: nothing claimable now).
async fn drain<F, Fut>(
    pool: &PgPool,
    table: &'static str,
    n: usize,
    relays: usize,
    drain_once: F,
) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..relays {
        let drain_once = drain_once.clone();
        let pool = pool.clone();
        tasks.spawn(async move {
            loop {
                if drain_once().await? == 0 {
                    if pending(&pool, table).await? == 0 {
                        return anyhow::Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let left = pending(pool, table).await?;
    anyhow::ensure!(left == 0, "{left} rows left pending");
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// An in-process queue without its default cap of 10,000 messages: no
/// consumer empties it here, and a full queue would hold the relay back.
fn unbounded() -> InProcessQueue {
    InProcessQueue::with_config(InProcessConfig {
        capacity: usize::MAX,
        ..InProcessConfig::default()
    })
}

/// An in-process queue that says it is durable, like SQS: the relay marks
/// rows published once it has them.
struct AsIfSqs(InProcessQueue);

impl Transport for AsIfSqs {
    fn max_batch(&self) -> usize {
        self.0.max_batch()
    }

    async fn publish(
        &self,
        entries: &[PublishEntry<'_>],
    ) -> Result<Vec<Result<(), EntryError>>, TransportError> {
        self.0.publish(entries).await
    }
}

/// The toolkit: `Relay::drain` into the queue.
async fn toolkit(pool: &PgPool, n: usize, batch: u32, relays: usize) -> anyhow::Result<f64> {
    let queue = Arc::new(AsIfSqs(unbounded()));
    let relay =
        Relay::new(PgStore::new(pool.clone()), Arc::clone(&queue)).with_config(RelayConfig {
            batch_size: batch,
            ..RelayConfig::default()
        });
    let rate = drain(pool, "outbox", n, relays, move || {
        let relay = relay.clone();
        async move { Ok(relay.drain().await?.published) }
    })
    .await?;
    let sent = queue.0.stats().sent;
    anyhow::ensure!(sent == n as u64, "the queue got {sent} of {n}");
    Ok(rate)
}

/// The statements `PgStore` issues for a drain on a durable queue (the
/// claim's first round, which fills the batch when groups hold a chunk's
/// rows or more, as here; then, in one transaction, the move of the
/// published rows to the archive and the groups' release), with no toolkit
/// code around them and nothing published: the ceiling the relay works
/// under.
async fn raw_sql(pool: &PgPool, n: usize, batch: u32, relays: usize) -> anyhow::Result<f64> {
    let pool2 = pool.clone();
    drain(pool, "outbox", n, relays, move || {
        let pool = pool2.clone();
        async move {
            let token = uuid::Uuid::now_v7();
            let rows = sqlx::query(PgStore::CLAIM_SQL)
                .bind(i64::from(batch))
                .bind(30_000_i64)
                .bind(token)
                .bind(i64::from(batch.div_ceil(PgStore::CLAIM_ROWS_PER_GROUP)))
                .fetch_all(&pool)
                .await?;
            let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
            let mut groups: Vec<String> = Vec::new();
            for row in &rows {
                if let Some(seq) = row.try_get::<Option<i64>, _>("seq")? {
                    seqs.push(seq);
                    groups.push(row.try_get("group_key")?);
                }
            }
            groups.sort_unstable();
            groups.dedup();
            if !seqs.is_empty() {
                let mut tx = pool.begin().await?;
                sqlx::query(PgStore::PUBLISHED_SQL)
                    .bind(&seqs)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?;
                let unleased: Vec<(String, bool)> = sqlx::query_as(PgStore::UNLEASE_SQL)
                    .bind(&groups)
                    .bind(token)
                    .fetch_all(&mut *tx)
                    .await?;
                let empty: Vec<String> = unleased
                    .into_iter()
                    .filter_map(|(group, empty)| empty.then_some(group))
                    .collect();
                if !empty.is_empty() {
                    let idle: Vec<String> = sqlx::query_scalar(PgStore::LOCK_IDLE_GROUPS_SQL)
                        .bind(&empty)
                        .fetch_all(&mut *tx)
                        .await?;
                    sqlx::query(PgStore::DROP_EMPTY_GROUPS_SQL)
                        .bind(&idle)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Ok(seqs.len() as u64)
        }
    })
    .await
}

/// The physical limit: one statement per batch claims and marks the oldest
/// pending rows of a plain table (`FOR UPDATE SKIP LOCKED`), returning what
/// a relay would publish; no per-group rule, no lease, nothing published.
async fn plain(pool: &PgPool, n: usize, batch: u32, relays: usize) -> anyhow::Result<f64> {
    let pool2 = pool.clone();
    drain(pool, "plain_outbox", n, relays, move || {
        let pool = pool2.clone();
        async move {
            let rows = sqlx::query(
                "UPDATE plain_outbox SET status = 'published', published_at = now()
                 WHERE seq IN (SELECT seq FROM plain_outbox WHERE status = 'pending'
                               ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING seq, group_key, payload::text AS payload",
            )
            .bind(i64::from(batch))
            .fetch_all(&pool)
            .await?;
            Ok(rows.len() as u64)
        }
    })
    .await
}

/// The original demo's relay, ported faithfully: 50 pending rows at a time,
/// and per row an optimistic update of its attempt count, a publish of that
/// one message, and a mark, each its own round trip.
async fn original(pool: &PgPool, n: usize, relays: usize) -> anyhow::Result<f64> {
    let queue = Arc::new(unbounded());
    let pool2 = pool.clone();
    let q = Arc::clone(&queue);
    let rate = drain(pool, "plain_outbox", n, relays, move || {
        let pool = pool2.clone();
        let queue = Arc::clone(&q);
        async move {
            let rows = sqlx::query(
                "SELECT seq, id, message_type, version, group_key, payload::text AS payload,
                        created_at, attempts
                 FROM plain_outbox WHERE status = 'pending' ORDER BY seq LIMIT 50",
            )
            .fetch_all(&pool)
            .await?;
            let mut done = 0;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let attempts: i32 = row.try_get("attempts")?;
                let claimed = sqlx::query(
                    "UPDATE plain_outbox SET attempts = attempts + 1
                     WHERE seq = $1 AND attempts = $2 AND status = 'pending'",
                )
                .bind(seq)
                .bind(attempts)
                .execute(&pool)
                .await?
                .rows_affected();
                if claimed == 0 {
                    continue; // another relay took it
                }
                let version: i32 = row.try_get("version")?;
                let envelope = Envelope {
                    id: row.try_get("id")?,
                    message_type: row.try_get("message_type")?,
                    version: u32::try_from(version)?,
                    group: row.try_get("group_key")?,
                    payload: serde_json::value::RawValue::from_string(row.try_get("payload")?)?,
                    created_at: row.try_get("created_at")?,
                    headers: Headers::default(),
                };
                let entry = PublishEntry {
                    envelope: &envelope,
                    queue: None,
                    body: envelope.to_json(),
                };
                queue
                    .publish(std::slice::from_ref(&entry))
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("no publish result"))?
                    .map_err(|err| anyhow::anyhow!("publish: {err}"))?;
                sqlx::query(
                    "UPDATE plain_outbox SET status = 'published', published_at = now()
                     WHERE seq = $1",
                )
                .bind(seq)
                .execute(&pool)
                .await?;
                done += 1;
            }
            Ok(if rows.is_empty() { 0 } else { done.max(1) })
        }
    })
    .await?;
    Ok(rate)
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let scratch = Scratch::create(server, "relay").await?;
    let pool = scratch.pool(16).await?;
    PgStore::new(pool.clone()).migrate().await?;

    let mut section = Section::new(
        "2. Relay: draining a backlog",
        &format!(
            "{} pending rows in {GROUPS} groups on PostgreSQL (fewer for small batches: batch 10 \
             drains a tenth, batch 1 a hundredth, so each run takes seconds), published to an \
             in-process queue standing in for SQS (rows published once it has them) until none \
             is pending; rows/s. *Plain*: the physical limit, the same number of rows in a plain \
             table with a status column, drained by one `FOR UPDATE SKIP LOCKED` claim-and-mark \
             statement per batch, with no per-group order, lease or archive. *Raw SQL*: the \
             statements the relay issues (claim; archive and release), from the same number of \
             tasks, with no toolkit code and nothing published. *Original*: the original demo's \
             relay algorithm (50 rows per select; per row an optimistic attempt update, a \
             publish and a mark, one round trip each), same rows, same relays.",
            count(sizes.drain_rows as f64)
        ),
        &[
            "batch",
            "relays",
            "rows",
            "toolkit (rows/s)",
            "plain (rows/s)",
            "× plain",
            "raw SQL (rows/s)",
            "× raw SQL",
            "original (rows/s)",
            "× original",
        ],
    );
    let mut worst_plain = f64::INFINITY;
    let mut worst_raw = f64::INFINITY;
    let mut best_original = 0.0_f64;
    let mut originals = std::collections::HashMap::new();
    for relays in [1, 2, 4] {
        let n = sizes.drain_rows / 10;
        fill_plain(&pool, n).await?;
        let rate = original(&pool, n, relays).await?;
        originals.insert(relays, rate);
    }
    for batch in [1_u32, 10, 100, 1000] {
        let n = (sizes.drain_rows * batch.min(100) as usize / 100).max(100);
        for relays in [1, 2, 4] {
            eprintln!("relay: batch {batch}, {relays} relays, {n} rows");
            fill(&pool, n).await?;
            let ours = toolkit(&pool, n, batch, relays).await?;
            fill(&pool, n).await?;
            let raw = raw_sql(&pool, n, batch, relays).await?;
            fill_plain(&pool, n).await?;
            let limit = plain(&pool, n, batch, relays).await?;
            let orig = originals[&relays];
            if batch >= 100 {
                worst_plain = worst_plain.min(ours / limit);
                worst_raw = worst_raw.min(ours / raw);
                best_original = best_original.max(ours / orig);
            }
            section.row(vec![
                batch.to_string(),
                relays.to_string(),
                count(n as f64),
                count(ours),
                count(limit),
                ratio(ours / limit),
                count(raw),
                ratio(ours / raw),
                count(orig),
                ratio(ours / orig),
            ]);
        }
    }
    section.verdict = format!(
        "The original design was measured once per relay count on a tenth of the rows (its \
         rate does not depend on a batch size). At the default batch size (100) and above, the \
         toolkit reached at worst {} of the plain claim (which keeps no group order) and {} of \
         its own statements, and up to {} the original design.",
        ratio(worst_plain),
        ratio(worst_raw),
        ratio(best_original)
    );
    pool.close().await;
    scratch.drop_db().await?;
    Ok(section)
}

/// The in-process queue behind `latency` per call, as SQS is from a Lambda
/// on AWS (tens of milliseconds per `SendMessageBatch`; about one locally),
/// taking SQS's 10 entries per call. Records the order each group's
/// messages were accepted in.
struct Distant {
    queue: InProcessQueue,
    latency: Duration,
    accepted: std::sync::Mutex<std::collections::HashMap<String, Vec<i64>>>,
}

impl Transport for Distant {
    fn max_batch(&self) -> usize {
        10
    }

    async fn publish(
        &self,
        entries: &[PublishEntry<'_>],
    ) -> Result<Vec<Result<(), EntryError>>, TransportError> {
        tokio::time::sleep(self.latency).await;
        let results = self.queue.publish(entries).await?;
        let mut accepted = self
            .accepted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (entry, result) in entries.iter().zip(&results) {
            if result.is_ok() {
                let order: serde_json::Value =
                    serde_json::from_str(entry.envelope.payload.get())
                        .map_err(|err| TransportError::Unavailable(err.to_string()))?;
                accepted
                    .entry(entry.envelope.group.clone())
                    .or_default()
                    .push(order["order_id"].as_i64().unwrap_or(-1));
            }
        }
        Ok(results)
    }
}

/// One relay publishing `n` rows through [`Distant`]; rows/s, after checking
/// that every row was accepted once and each group in sequence order.
async fn distant(
    pool: &PgPool,
    n: usize,
    batch: u32,
    concurrency: usize,
    latency: Duration,
) -> anyhow::Result<f64> {
    let transport = Arc::new(Distant {
        queue: unbounded(),
        latency,
        accepted: std::sync::Mutex::default(),
    });
    let relay =
        Relay::new(PgStore::new(pool.clone()), Arc::clone(&transport)).with_config(RelayConfig {
            batch_size: batch,
            publish_concurrency: concurrency,
            ..RelayConfig::default()
        });
    let rate = drain(pool, "outbox", n, 1, move || {
        let relay = relay.clone();
        async move { Ok(relay.drain().await?.published) }
    })
    .await?;
    let accepted = transport
        .accepted
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let total: usize = accepted.values().map(Vec::len).sum();
    anyhow::ensure!(total == n, "the queue accepted {total} of {n}");
    for (group, orders) in accepted.iter() {
        anyhow::ensure!(
            orders.windows(2).all(|w| w[0] < w[1]),
            "group {group} was published out of order"
        );
    }
    Ok(rate)
}

/// Scenario 2b: one relay at AWS's latency, by publish concurrency.
pub(crate) async fn run_distant(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let scratch = Scratch::create(server, "distant").await?;
    let pool = scratch.pool(8).await?;
    PgStore::new(pool.clone()).migrate().await?;
    let latency = Duration::from_millis(20);
    let n = (sizes.drain_rows / 5).max(200);
    let mut section = Section::new(
        "2b. Relay at AWS's latency",
        &format!(
            "{} pending rows in {GROUPS} groups on PostgreSQL, published by one relay to a queue \
             that takes {} ms per call and 10 entries per call (SQS's `SendMessageBatch` as seen \
             from AWS), by how many chunks it sends at once (`RelayConfig::publish_concurrency`; \
             1 sends them one after another); rows/s. Every run checks that each group's rows \
             were accepted in sequence order. The ceiling of one call at a time is 10 rows per \
             {} ms: {} rows/s.",
            count(n as f64),
            latency.as_millis(),
            latency.as_millis(),
            count(10.0 / latency.as_secs_f64())
        ),
        &["batch", "concurrency", "rows/s", "× one at a time"],
    );
    let mut best = 0.0_f64;
    for batch in [100_u32, 200] {
        let mut sequential = None;
        for concurrency in [1_usize, 10, 20] {
            if concurrency * 10 > batch as usize * 2 {
                continue;
            }
            eprintln!("relay at {latency:?}: batch {batch}, concurrency {concurrency}");
            fill(&pool, n).await?;
            let rate = distant(&pool, n, batch, concurrency, latency).await?;
            let base = *sequential.get_or_insert(rate);
            if concurrency == RelayConfig::default().publish_concurrency {
                best = best.max(rate);
            }
            section.row(vec![
                batch.to_string(),
                concurrency.to_string(),
                count(rate),
                ratio(rate / base),
            ]);
        }
    }
    section.verdict = format!(
        "At the default publish concurrency ({}), one relay published up to {} rows/s; the goal \
         is 5,000.",
        RelayConfig::default().publish_concurrency,
        count(best)
    );
    pool.close().await;
    scratch.drop_db().await?;
    Ok(section)
}
