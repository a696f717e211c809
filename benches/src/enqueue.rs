//! Scenario 1: what the outbox costs the app's transaction. The same
//! transaction (insert an order row, commit) alone, with one outbox message,
//! and with ten (one batched insert), from 1 and 8 concurrent clients.

use std::time::Instant;

use outbox_runtime::{PgStore, Store, envelope::OutgoingEnvelope};
use sqlx::PgPool;

use crate::Sizes;
use crate::db::Scratch;
use crate::messages::m0;
use crate::report::{Section, count, median, ratio};

/// What each transaction writes besides the order row.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Extra {
    Nothing,
    /// `n` outbox messages through the toolkit.
    Outbox(usize),
    /// One plain row in a table with one index, the same JSON payload: the
    /// control that tells the toolkit's cost from a second statement's.
    PlainRow,
}

/// Transactions per second, from `clients` tasks doing `per_client`
/// transactions each.
pub(crate) async fn throughput(
    pool: &PgPool,
    store: &PgStore,
    clients: usize,
    per_client: usize,
    extra: Extra,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let pool = pool.clone();
        let store = store.clone();
        tasks.spawn(async move {
            let messages = match extra {
                Extra::Outbox(k) => k,
                Extra::Nothing | Extra::PlainRow => 0,
            };
            for i in 0..per_client {
                let n = client * per_client + i;
                // Encoding is part of the cost: the app does it per message.
                let outgoing = (0..messages)
                    .map(|k| OutgoingEnvelope::new(&m0(n * 10 + k)))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO bench_orders (customer, amount_cents) VALUES ($1, $2)")
                    .bind(format!("customer-{}", n % 50))
                    .bind(1999_i64)
                    .execute(&mut *tx)
                    .await?;
                if !outgoing.is_empty() {
                    store.enqueue_all(&mut tx, &outgoing).await?;
                }
                if let Extra::PlainRow = extra {
                    sqlx::query("INSERT INTO bench_control (payload) VALUES ($1::json)")
                        .bind(serde_json::to_string(&m0(n))?)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((clients * per_client) as f64 / started.elapsed().as_secs_f64())
}

/// The domain table and the control's table.
pub(crate) async fn create_tables(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE bench_orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, amount_cents BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE TABLE bench_control (id BIGSERIAL PRIMARY KEY, payload JSON NOT NULL)")
        .execute(pool)
        .await?;
    Ok(())
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let scratch = Scratch::create(server, "enqueue").await?;
    let pool = scratch.pool(8).await?;
    let store = PgStore::new(pool.clone());
    store.migrate().await?;
    create_tables(&pool).await?;

    let mut section = Section::new(
        "1. Enqueue: the outbox's cost in the app's transaction",
        &format!(
            "One transaction = insert an order row and commit, on PostgreSQL, {} transactions per \
             client; with the outbox, the same transaction also inserts 1 or 10 outbox rows \
             (`Store::enqueue_all`, one statement, messages encoded inside the loop). Control: \
             the same transaction with one plain row (the same JSON, a table with only a primary \
             key) instead of the outbox, to tell what a second statement costs from what the \
             toolkit adds. The variants alternate in 3 rounds; the median round is shown. \
             Baseline: the transaction without the outbox.",
            count(sizes.enqueue_per_client as f64)
        ),
        &["clients", "variant", "transactions/s", "× domain only"],
    );
    let mut verdicts = Vec::new();
    for clients in [1, 8] {
        let mut rounds: [Vec<f64>; 4] = Default::default();
        let extras = [
            Extra::Nothing,
            Extra::Outbox(1),
            Extra::Outbox(10),
            Extra::PlainRow,
        ];
        for _ in 0..3 {
            for (slot, extra) in extras.into_iter().enumerate() {
                let tps =
                    throughput(&pool, &store, clients, sizes.enqueue_per_client, extra).await?;
                rounds[slot].push(tps);
            }
        }
        let [alone, one, ten, control] = rounds.map(median);
        for (name, tps) in [
            ("domain row only (baseline)", alone),
            ("+ 1 outbox message", one),
            ("+ 10 outbox messages (batched)", ten),
            ("+ 1 plain row (control)", control),
        ] {
            section.row(vec![
                clients.to_string(),
                name.to_owned(),
                count(tps),
                ratio(tps / alone),
            ]);
        }
        let versus = one / control;
        verdicts.push(format!(
            "{clients} client{}: {} ({}; one message costs {:.1}% of domain-only throughput, \
             a plain row {:.1}%)",
            if clients == 1 { "" } else { "s" },
            ratio(versus),
            if versus >= 0.92 { "met" } else { "missed" },
            (1.0 - one / alone) * 100.0,
            (1.0 - control / alone) * 100.0
        ));
    }
    section.verdict = format!(
        "Goal: the transaction with one outbox message runs at least 0.92× as fast as the \
         same transaction with the plain row (control) instead. {}.",
        verdicts.join("; ")
    );
    pool.close().await;
    scratch.drop_db().await?;
    Ok(section)
}
