//! Scenario 5's peer: sqlxmq doing the toolkit's job on the same database
//! server. `outbox-bench` runs this binary between its own measurements and
//! reads the one JSON line it prints; the time is measured in here, so the
//! process start is not part of it.
//!
//! ```text
//! sqlxmq-peer setup   <database-url>                         # sqlxmq's migrations + the domain table
//! sqlxmq-peer enqueue <database-url> <clients> <per-client>  # {"per_sec": ...}
//! sqlxmq-peer drain   <database-url> <messages> <ordered|unordered>  # {"per_sec": ...}
//! ```
//!
//! The job is the bench's `bench.m00` message: the same four fields, decoded
//! into a typed struct by the handler, which then completes the job (sqlxmq
//! deletes it), as the toolkit's worker records its handler's success.

use std::error::Error;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use sqlxmq::{CurrentJob, JobRegistry, job};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    amount_cents: i64,
    note: String,
}

fn order(n: usize) -> OrderPlaced {
    OrderPlaced {
        order_id: n as i64,
        customer: format!("customer-{}", n % 100),
        amount_cents: 1999,
        note: "gift wrap".into(),
    }
}

/// Jobs completed by [`order_placed`].
static COMPLETED: AtomicUsize = AtomicUsize::new(0);

#[job(name = "bench.m00")]
async fn order_placed(mut job: CurrentJob) -> Result<(), Box<dyn Error + Send + Sync + 'static>> {
    let order: OrderPlaced = job.json()?.ok_or("the job has no payload")?;
    std::hint::black_box(&order);
    job.complete().await?;
    COMPLETED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// sqlxmq's migrations, from the copy of the crate cargo built this binary
/// from (its documentation asks users to copy them into their migrations).
fn migrations() -> anyhow::Result<Vec<PathBuf>> {
    // Only the host's packages: all of them would mean downloads.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running `rustc -vV` for the host's target triple")?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .context("`rustc -vV` printed no host")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &host, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .context("running `cargo metadata` to find sqlxmq's migrations")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "sqlxmq"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("sqlxmq is not among this crate's packages")?;
    let dir = PathBuf::from(manifest).with_file_name("migrations");
    let mut ups: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.to_string_lossy().ends_with(".up.sql"))
        .collect();
    ups.sort();
    if ups.is_empty() {
        bail!("no migrations in {}", dir.display());
    }
    Ok(ups)
}

async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    for path in migrations()? {
        let sql = std::fs::read_to_string(&path)?;
        sqlx::raw_sql(&sql)
            .execute(pool)
            .await
            .with_context(|| format!("applying {}", path.display()))?;
    }
    sqlx::query(
        "CREATE TABLE bench_orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, amount_cents BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Spawns the job for `n` with `executor` (the app's transaction).
async fn spawn<'c, E: sqlx::Executor<'c, Database = Postgres>>(
    executor: E,
    n: usize,
    ordered: bool,
) -> anyhow::Result<()> {
    let order = order(n);
    let mut builder = order_placed.builder();
    builder.set_json(&order)?;
    if ordered {
        // Strict order within the customer, as the toolkit's group key gives.
        builder.set_channel_args(&order.customer).set_ordered(true);
    }
    builder.spawn(executor).await?;
    Ok(())
}

/// Transactions per second: each inserts an order row and spawns its job.
async fn enqueue(pool: &PgPool, clients: usize, per_client: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..per_client {
                let n = client * per_client + i;
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO bench_orders (customer, amount_cents) VALUES ($1, $2)")
                    .bind(format!("customer-{}", n % 50))
                    .bind(1999_i64)
                    .execute(&mut *tx)
                    .await?;
                spawn(&mut *tx, n, false).await?;
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

/// Jobs per second: `messages` spawned first (not timed), then a runner
/// with sqlxmq's default concurrency runs them all.
async fn drain(pool: &PgPool, messages: usize, ordered: bool) -> anyhow::Result<f64> {
    sqlx::query("SELECT mq_clear_all()").execute(pool).await?;
    let mut tx = pool.begin().await?;
    for n in 0..messages {
        spawn(&mut *tx, n, ordered).await?;
    }
    tx.commit().await?;
    COMPLETED.store(0, Ordering::Relaxed);

    let started = Instant::now();
    let runner = JobRegistry::new(&[order_placed]).runner(pool).run().await?;
    let deadline = started + Duration::from_secs(600);
    while COMPLETED.load(Ordering::Relaxed) < messages {
        if Instant::now() > deadline {
            bail!(
                "sqlxmq completed {} of {messages} jobs in 10 minutes",
                COMPLETED.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(runner);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM mq_msgs WHERE id != uuid_nil()")
        .fetch_one(pool)
        .await?;
    if left != 0 {
        bail!("{left} jobs are left after every job completed");
    }
    let completed = COMPLETED.load(Ordering::Relaxed);
    if completed != messages {
        bail!("{completed} completions of {messages} jobs: some ran twice");
    }
    Ok(messages as f64 / secs)
}

fn arg(args: &[String], i: usize, what: &str) -> anyhow::Result<String> {
    args.get(i)
        .cloned()
        .with_context(|| format!("missing argument {i}: {what} (see the module docs)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let command = arg(&args, 1, "setup, enqueue or drain")?;
    let url = arg(&args, 2, "the database URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    match command.as_str() {
        "setup" => {
            setup(&pool).await?;
            println!("{{}}");
        }
        "enqueue" => {
            let clients = arg(&args, 3, "clients")?.parse()?;
            let per_client = arg(&args, 4, "transactions per client")?.parse()?;
            let per_sec = enqueue(&pool, clients, per_client).await?;
            println!("{}", serde_json::json!({ "per_sec": per_sec }));
        }
        "drain" => {
            let messages = arg(&args, 3, "messages")?.parse()?;
            let ordered = match arg(&args, 4, "ordered or unordered")?.as_str() {
                "ordered" => true,
                "unordered" => false,
                other => bail!("expected `ordered` or `unordered`, got `{other}`"),
            };
            let per_sec = drain(&pool, messages, ordered).await?;
            println!("{}", serde_json::json!({ "per_sec": per_sec }));
        }
        other => bail!("unknown command `{other}`: setup, enqueue or drain"),
    }
    pool.close().await;
    Ok(())
}
