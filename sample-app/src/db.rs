//! The sample's own tables on either store: the same SQL (`$1` placeholders
//! work on both) run on SQLite or PostgreSQL.

use outbox_runtime::{PgStore, SqliteStore, Store, Tx};
use sqlx::migrate::Migrator;
use sqlx::{Postgres, Sqlite};

use crate::domain::OrderStatus;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

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

/// The app's queries, on the store's own database.
pub(crate) trait AppDb: Store {
    /// Migrates the app's tables (the outbox's are migrated by `Store::migrate`).
    async fn migrate_app(&self) -> anyhow::Result<()>;
    /// Inserts an order in the app's transaction.
    async fn insert_order(
        &self,
        tx: &mut Tx<Self::Database>,
        customer_id: &str,
    ) -> anyhow::Result<i64>;
    /// Reads an order, locking it for the transaction where the database can.
    async fn order(&self, tx: &mut Tx<Self::Database>, id: i64) -> anyhow::Result<Option<Order>>;
    /// Sets an order's status in the app's transaction.
    async fn set_status(
        &self,
        tx: &mut Tx<Self::Database>,
        id: i64,
        status: OrderStatus,
    ) -> anyhow::Result<()>;
    /// Counts rows of one of the sample's tables.
    async fn count(&self, table: Table) -> anyhow::Result<i64>;
}

/// The sample's tables, for counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Table {
    History,
    Notifications,
}

macro_rules! app_db {
    ($store:ty, $db:ty, $migrations:expr, $for_update:literal) => {
        impl AppDb for $store {
            async fn migrate_app(&self) -> anyhow::Result<()> {
                $migrations.run(self.pool()).await?;
                Ok(())
            }

            async fn insert_order(&self, tx: &mut Tx<$db>, customer_id: &str) -> anyhow::Result<i64> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO orders (customer_id, status, created_at) VALUES ($1, 'created', $2) RETURNING id",
                )
                .bind(customer_id)
                .bind(chrono::Utc::now().timestamp_millis())
                .fetch_one(&mut **tx)
                .await?)
            }

            async fn order(&self, tx: &mut Tx<$db>, id: i64) -> anyhow::Result<Option<Order>> {
                let row: Option<(i64, String, String)> = sqlx::query_as(concat!(
                    "SELECT id, customer_id, status FROM orders WHERE id = $1",
                    $for_update
                ))
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

            async fn set_status(&self, tx: &mut Tx<$db>, id: i64, status: OrderStatus) -> anyhow::Result<()> {
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
        }
    };
}

// SQLite transactions begun by the store hold the write lock already, so no
// row lock is needed there.
app_db!(SqliteStore, Sqlite, SQLITE_MIGRATIONS, "");
app_db!(PgStore, Postgres, POSTGRES_MIGRATIONS, " FOR UPDATE");
