//! What the scenarios need from each database beyond the `Store` trait: the
//! app's own tables, and read-backs for assertions.

use std::path::PathBuf;

use outbox_runtime::store::{AdminStore, StoreTransaction};
use outbox_runtime::{HandlerContext, PgStore, SqliteStore};
use sqlx::{Postgres, Row, Sqlite};

/// One handler effect, in the order effects were committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Effect {
    pub(crate) kind: String,
    pub(crate) message_id: String,
    pub(crate) group: String,
    pub(crate) n: i64,
}

/// One outbox row, as the scenarios inspect it.
#[derive(Clone, Debug)]
pub(crate) struct Row_ {
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) available_in_future: bool,
}

/// The tables of handler runs that retention trims.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HandlerRows {
    Inbox,
    Attempts,
}

impl HandlerRows {
    /// The table and the time retention reads.
    fn table_and_time(self) -> (&'static str, &'static str) {
        match self {
            HandlerRows::Inbox => ("outbox_inbox", "handled_at"),
            HandlerRows::Attempts => ("outbox_attempts", "updated_at"),
        }
    }
}

pub(crate) trait TestDb: AdminStore {
    /// The database, for reports.
    const KIND: &'static str;

    async fn create_app_tables(&self);
    /// An app write in the app's transaction.
    async fn insert_order(&self, tx: &mut StoreTransaction<Self::Database>, id: i64);
    async fn orders(&self) -> i64;
    async fn effects(&self) -> Vec<Effect>;
    async fn outbox_rows(&self) -> Vec<Row_>;
    /// The rows of `outbox_inbox` or `outbox_attempts`.
    async fn count_rows(&self, table: HandlerRows) -> i64;
    async fn inbox_count(&self) -> i64 {
        self.count_rows(HandlerRows::Inbox).await
    }
    async fn dead_letter_errors(&self) -> Vec<(Option<String>, String)>;
    /// Ages published rows and inbox rows for retention tests.
    async fn age_published(&self, n_oldest: i64, hours: i64);
    /// Ages the `n_oldest` rows of `outbox_inbox` or `outbox_attempts`.
    async fn age_handler_rows(&self, table: HandlerRows, n_oldest: i64, hours: i64);
    async fn insert_inbox(&self, message_id: &str, handler: &str);
    /// Breaks the first pending row the way a hand edit could.
    async fn corrupt_first_pending_row(&self);
}

/// Records a handler effect through the handler's transaction, whichever
/// store it runs on.
pub(crate) async fn record_effect(
    ctx: &mut HandlerContext<'_>,
    kind: &str,
    group: &str,
    n: i64,
) -> anyhow::Result<()> {
    let id = ctx.message_id().to_string();
    if let Ok(conn) = ctx.db::<Postgres>() {
        sqlx::query("INSERT INTO effects (kind, message_id, grp, n) VALUES ($1, $2, $3, $4)")
            .bind(kind)
            .bind(&id)
            .bind(group)
            .bind(n)
            .execute(conn)
            .await?;
    } else {
        sqlx::query("INSERT INTO effects (kind, message_id, grp, n) VALUES (?1, ?2, ?3, ?4)")
            .bind(kind)
            .bind(&id)
            .bind(group)
            .bind(n)
            .execute(ctx.db::<Sqlite>()?)
            .await?;
    }
    Ok(())
}

/// A store on a fresh SQLite file; the directory is removed when the guard drops.
pub(crate) async fn sqlite_store() -> (SqliteStore, TempDir) {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.0.join("outbox.db").display());
    (SqliteStore::open(&url).await.expect("sqlite opens"), dir)
}

pub(crate) struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("outbox-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn effect_rows<R: Row>(rows: Vec<R>) -> Vec<Effect>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    rows.into_iter()
        .map(|r| Effect {
            kind: r.get("kind"),
            message_id: r.get("message_id"),
            group: r.get("grp"),
            n: r.get("n"),
        })
        .collect()
}

impl TestDb for PgStore {
    const KIND: &'static str = "PostgreSQL";

    async fn corrupt_first_pending_row(&self) {
        sqlx::query(
            r#"UPDATE outbox SET headers = '{"correlation_id": 5}' WHERE seq = (SELECT min(seq) FROM outbox)"#,
        )
        .execute(self.pool())
        .await
        .expect("corrupt");
    }

    async fn create_app_tables(&self) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS effects (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, message_id TEXT NOT NULL, grp TEXT NOT NULL, n BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY);",
        )
        .execute(self.pool())
        .await
        .expect("app tables");
    }

    async fn insert_order(&self, tx: &mut StoreTransaction<Postgres>, id: i64) {
        sqlx::query("INSERT INTO orders (id) VALUES ($1)")
            .bind(id)
            .execute(&mut **tx)
            .await
            .expect("order insert");
    }

    async fn orders(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(self.pool())
            .await
            .expect("orders")
    }

    async fn effects(&self) -> Vec<Effect> {
        effect_rows(
            sqlx::query("SELECT kind, message_id, grp, n FROM effects ORDER BY id")
                .fetch_all(self.pool())
                .await
                .expect("effects"),
        )
    }

    async fn outbox_rows(&self) -> Vec<Row_> {
        sqlx::query(
            "SELECT status, attempts, last_error, future FROM (
                 SELECT o.seq,
                        CASE WHEN g.relayed_until >= now() AND o.seq <= g.relayed_through
                             THEN 'relayed' ELSE 'pending' END AS status,
                        (CASE WHEN o.seq = g.failed_seq THEN g.attempts ELSE 0 END)::int8 AS attempts,
                        CASE WHEN o.seq = g.failed_seq THEN g.last_error END AS last_error,
                        COALESCE(o.seq = g.failed_seq AND g.available_at > now(), false) AS future
                 FROM outbox o LEFT JOIN outbox_groups g USING (group_key)
                 UNION ALL
                 SELECT seq, status, attempts::int8, last_error, false FROM outbox_archive) r
             ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .expect("outbox rows")
        .into_iter()
        .map(|r| Row_ {
            status: r.get("status"),
            attempts: r.get("attempts"),
            last_error: r.get("last_error"),
            available_in_future: r.get("future"),
        })
        .collect()
    }

    async fn count_rows(&self, table: HandlerRows) -> i64 {
        let (table, _) = table.table_and_time();
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(self.pool())
            .await
            .expect("count")
    }

    async fn dead_letter_errors(&self) -> Vec<(Option<String>, String)> {
        sqlx::query_as("SELECT handler, error FROM outbox_dead_letters ORDER BY id")
            .fetch_all(self.pool())
            .await
            .expect("dead letters")
    }

    async fn age_published(&self, n_oldest: i64, hours: i64) {
        sqlx::query(
            "UPDATE outbox_archive SET archived_at = now() - $2 * interval '1 hour'
             WHERE seq IN (SELECT seq FROM outbox_archive WHERE status = 'published' ORDER BY seq LIMIT $1)",
        )
        .bind(n_oldest)
        .bind(hours)
        .execute(self.pool())
        .await
        .expect("age published");
    }

    async fn age_handler_rows(&self, table: HandlerRows, n_oldest: i64, hours: i64) {
        let (table, at) = table.table_and_time();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {at} = now() - $2 * interval '1 hour'
             WHERE (message_id, handler) IN (SELECT message_id, handler FROM {table} ORDER BY {at}, message_id LIMIT $1)"
        )))
        .bind(n_oldest)
        .bind(hours)
        .execute(self.pool())
        .await
        .expect("age rows");
    }

    async fn insert_inbox(&self, message_id: &str, handler: &str) {
        sqlx::query("INSERT INTO outbox_inbox (message_id, handler) VALUES ($1::uuid, $2)")
            .bind(message_id)
            .bind(handler)
            .execute(self.pool())
            .await
            .expect("inbox insert");
    }
}

impl TestDb for SqliteStore {
    const KIND: &'static str = "SQLite";

    async fn corrupt_first_pending_row(&self) {
        sqlx::query("UPDATE outbox SET payload = 'not json' WHERE seq = (SELECT min(seq) FROM outbox WHERE status = 'pending')")
            .execute(self.pool())
            .await
            .expect("corrupt");
    }

    async fn create_app_tables(&self) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS effects (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, message_id TEXT NOT NULL, grp TEXT NOT NULL, n INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY);",
        )
        .execute(self.pool())
        .await
        .expect("app tables");
    }

    async fn insert_order(&self, tx: &mut StoreTransaction<Sqlite>, id: i64) {
        sqlx::query("INSERT INTO orders (id) VALUES (?1)")
            .bind(id)
            .execute(&mut **tx)
            .await
            .expect("order insert");
    }

    async fn orders(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(self.pool())
            .await
            .expect("orders")
    }

    async fn effects(&self) -> Vec<Effect> {
        effect_rows(
            sqlx::query("SELECT kind, message_id, grp, n FROM effects ORDER BY id")
                .fetch_all(self.pool())
                .await
                .expect("effects"),
        )
    }

    async fn outbox_rows(&self) -> Vec<Row_> {
        let now = chrono::Utc::now().timestamp_millis();
        sqlx::query("SELECT status, attempts, last_error, available_at > ?1 AS future FROM outbox ORDER BY seq")
            .bind(now)
            .fetch_all(self.pool())
            .await
            .expect("outbox rows")
            .into_iter()
            .map(|r| Row_ {
                status: r.get("status"),
                attempts: r.get("attempts"),
                last_error: r.get("last_error"),
                available_in_future: r.get("future"),
            })
            .collect()
    }

    async fn count_rows(&self, table: HandlerRows) -> i64 {
        let (table, _) = table.table_and_time();
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(self.pool())
            .await
            .expect("count")
    }

    async fn dead_letter_errors(&self) -> Vec<(Option<String>, String)> {
        sqlx::query_as("SELECT handler, error FROM outbox_dead_letters ORDER BY id")
            .fetch_all(self.pool())
            .await
            .expect("dead letters")
    }

    async fn age_published(&self, n_oldest: i64, hours: i64) {
        sqlx::query(
            "UPDATE outbox SET published_at = published_at - ?2 * 3600000
             WHERE seq IN (SELECT seq FROM outbox WHERE status = 'published' ORDER BY seq LIMIT ?1)",
        )
        .bind(n_oldest)
        .bind(hours)
        .execute(self.pool())
        .await
        .expect("age published");
    }

    async fn age_handler_rows(&self, table: HandlerRows, n_oldest: i64, hours: i64) {
        let (table, at) = table.table_and_time();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {at} = {at} - ?2 * 3600000
             WHERE (message_id, handler) IN (SELECT message_id, handler FROM {table} ORDER BY {at}, message_id LIMIT ?1)"
        )))
        .bind(n_oldest)
        .bind(hours)
        .execute(self.pool())
        .await
        .expect("age rows");
    }

    async fn insert_inbox(&self, message_id: &str, handler: &str) {
        sqlx::query(
            "INSERT INTO outbox_inbox (message_id, handler, handled_at) VALUES (?1, ?2, ?3)",
        )
        .bind(message_id)
        .bind(handler)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(self.pool())
        .await
        .expect("inbox insert");
    }
}
