//! The database: the `--database-url` argument, the store it opens, and
//! the sample's own tables on either store: the same SQL (`$1` placeholders
//! work on both) runs on SQLite or PostgreSQL.

use outbox_runtime::Store;
use outbox_runtime::store::{AdminStore, StoreTransaction};
use outbox_runtime::{PgStore, SqliteStore};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Postgres, Sqlite};

use crate::domain::OrderStatus;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The database argument of every command that works on one.
#[derive(Debug, clap::Args)]
pub(crate) struct DbArgs {
    /// The database (`sqlite://FILE` or `postgres://...`).
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: String,
}

impl DbArgs {
    /// Opens the store the URL names.
    pub(crate) async fn open(&self) -> anyhow::Result<AnyStore> {
        self.open_with(PgPoolOptions::new()).await
    }

    /// Opens the store the URL names, with a PostgreSQL pool built by `pg`.
    pub(crate) async fn open_with(&self, pg: PgPoolOptions) -> anyhow::Result<AnyStore> {
        let url = &self.database_url;
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(AnyStore::Pg(PgStore::new(pg.connect(url).await?)))
        } else if url.starts_with("sqlite:") {
            Ok(AnyStore::Sqlite(SqliteStore::open(url).await?))
        } else {
            anyhow::bail!(
                "unsupported database URL `{url}`: use sqlite://FILE or postgres://USER@HOST:PORT/DATABASE"
            )
        }
    }
}

/// An opened store, either database.
#[derive(Debug)]
pub(crate) enum AnyStore {
    Sqlite(SqliteStore),
    Pg(PgStore),
}

/// Evaluates `$body` with `$store` bound to the store inside an
/// [`AnyStore`], whichever it is, so generic code runs on both:
/// `with_store!(db.open().await?, |store| status::show(&store, json).await)`.
macro_rules! with_store {
    ($any:expr, |$store:ident| $body:expr) => {
        match $any {
            $crate::db::AnyStore::Sqlite($store) => $body,
            $crate::db::AnyStore::Pg($store) => $body,
        }
    };
}
pub(crate) use with_store;

/// Runs one sqlx statement on the handler's connection, whichever database
/// the store uses, and returns its error with `?`:
/// `on_db!(ctx, |conn| sqlx::query("...").execute(conn).await)`.
macro_rules! on_db {
    ($ctx:expr, |$conn:ident| $body:expr) => {{
        match $ctx.db::<::sqlx::Sqlite>() {
            Ok($conn) => {
                $body?;
            }
            Err(_) => {
                let $conn = $ctx.db::<::sqlx::Postgres>()?;
                $body?;
            }
        }
    }};
}
pub(crate) use on_db;

/// An order row.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Order {
    pub(crate) id: i64,
    pub(crate) customer_id: String,
    pub(crate) status: OrderStatus,
}

/// An order with the status history its handler recorded: what
/// `GET /orders/{id}` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct OrderView {
    #[serde(flatten)]
    pub(crate) order: Order,
    /// Filled in by the `orders.record_status` handler, after the commit:
    /// it lags the status by the outbox's delivery time.
    pub(crate) history: Vec<HistoryEntry>,
}

/// One status change, as its handler recorded it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct HistoryEntry {
    pub(crate) status: String,
    /// The outbox message that carried it.
    pub(crate) message_id: String,
    /// Unix milliseconds.
    pub(crate) changed_at: i64,
}

/// The app's queries, on the store's own database. Every future is `Send`,
/// so the HTTP handlers can run them on any thread.
pub(crate) trait AppDb: AdminStore {
    /// Migrates the app's tables (the outbox's are migrated by `Store::migrate`).
    fn migrate_app(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Inserts an order in the app's transaction.
    fn insert_order(
        &self,
        tx: &mut StoreTransaction<Self::Database>,
        customer_id: &str,
    ) -> impl Future<Output = anyhow::Result<i64>> + Send;
    /// Reads an order, locking it for the transaction where the database can.
    fn order(
        &self,
        tx: &mut StoreTransaction<Self::Database>,
        id: i64,
    ) -> impl Future<Output = anyhow::Result<Option<Order>>> + Send;
    /// Reads an order and its status history, outside any transaction.
    fn order_view(&self, id: i64)
    -> impl Future<Output = anyhow::Result<Option<OrderView>>> + Send;
    /// Sets an order's status in the app's transaction.
    fn set_status(
        &self,
        tx: &mut StoreTransaction<Self::Database>,
        id: i64,
        status: OrderStatus,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Counts rows of one of the sample's tables.
    fn count(&self, table: Table) -> impl Future<Output = anyhow::Result<i64>> + Send;
    /// Whether the database answers (`SELECT 1`).
    fn ping(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Reads an order row in a transaction (locked where the database can).
trait OrderQuery: Store {
    async fn order_for(
        &self,
        tx: &mut StoreTransaction<Self::Database>,
        id: i64,
        lock: bool,
    ) -> anyhow::Result<Option<Order>>;
}

/// The sample's tables, for counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Table {
    History,
    Notifications,
}

macro_rules! app_db {
    ($store:ty, $db:ty, $migrations:expr, $for_update:literal) => {
        impl OrderQuery for $store {
            async fn order_for(&self, tx: &mut StoreTransaction<$db>, id: i64, lock: bool) -> anyhow::Result<Option<Order>> {
                const SELECT: &str = "SELECT id, customer_id, status FROM orders WHERE id = $1";
                let sql = if lock { concat!("SELECT id, customer_id, status FROM orders WHERE id = $1", $for_update) } else { SELECT };
                let row: Option<(i64, String, String)> = sqlx::query_as(sql)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                row.map(|(id, customer_id, status)| {
                    let status = OrderStatus::parse(&status)
                        .ok_or_else(|| anyhow::anyhow!("order {id} has unknown status {status:?}"))?;
                    Ok(Order { id, customer_id, status })
                })
                .transpose()
            }
        }

        impl AppDb for $store {
            async fn migrate_app(&self) -> anyhow::Result<()> {
                $migrations.run(self.pool()).await?;
                Ok(())
            }

            async fn insert_order(&self, tx: &mut StoreTransaction<$db>, customer_id: &str) -> anyhow::Result<i64> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO orders (customer_id, status, created_at) VALUES ($1, 'created', $2) RETURNING id",
                )
                .bind(customer_id)
                .bind(chrono::Utc::now().timestamp_millis())
                .fetch_one(&mut **tx)
                .await?)
            }

            async fn order(&self, tx: &mut StoreTransaction<$db>, id: i64) -> anyhow::Result<Option<Order>> {
                self.order_for(tx, id, true).await
            }


            async fn order_view(&self, id: i64) -> anyhow::Result<Option<OrderView>> {
                let mut tx = self.pool().begin().await?;
                let Some(order) = self.order_for(&mut tx, id, false).await? else {
                    return Ok(None);
                };
                let history: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT status, message_id, changed_at FROM order_status_history WHERE order_id = $1 ORDER BY id",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let history = history
                    .into_iter()
                    .map(|(status, message_id, changed_at)| HistoryEntry { status, message_id, changed_at })
                    .collect();
                Ok(Some(OrderView { order, history }))
            }

            async fn set_status(&self, tx: &mut StoreTransaction<$db>, id: i64, status: OrderStatus) -> anyhow::Result<()> {
                sqlx::query("UPDATE orders SET status = $1 WHERE id = $2")
                    .bind(status.as_str())
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn count(&self, table: Table) -> anyhow::Result<i64> {
                let sql = match table {
                    Table::History => "SELECT count(*) FROM order_status_history",
                    Table::Notifications => "SELECT count(*) FROM notifications",
                };
                Ok(sqlx::query_scalar(sql).fetch_one(self.pool()).await?)
            }

            async fn ping(&self) -> anyhow::Result<()> {
                sqlx::query("SELECT 1").execute(self.pool()).await?;
                Ok(())
            }
        }
    };
}

// SQLite transactions begun by the store hold the write lock already, so no
// row lock is needed there.
app_db!(SqliteStore, Sqlite, SQLITE_MIGRATIONS, "");
app_db!(PgStore, Postgres, POSTGRES_MIGRATIONS, " FOR UPDATE");
