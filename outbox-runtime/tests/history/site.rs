//! Where each schedule's store comes from: PostgreSQL (one database,
//! emptied between schedules) or SQLite (a fresh file per schedule).

use std::path::PathBuf;
use std::time::Duration;

use outbox_runtime::{PgStore, SqliteStore, Store};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::db::HistoryStore;

/// Where schedules get their stores: one kind of database.
pub(crate) trait Site {
    type Store: HistoryStore;
    /// The database, for reports.
    const KIND: &'static str;

    /// A store with the toolkit's and the checker's tables, all empty.
    async fn fresh(&mut self) -> Self::Store;

    /// Lets go of a schedule's store: every connection is closed (so nothing
    /// of a schedule's killed tasks outlives it).
    async fn release(&mut self, store: Self::Store);

    /// After the last schedule.
    async fn close(self);
}

/// PostgreSQL: one database for every schedule, emptied in between; each
/// schedule's store has a pool of its own, closed after it.
#[derive(Debug)]
pub(crate) struct PgSite {
    options: PgConnectOptions,
    admin: PgPool,
}

impl PgSite {
    /// Migrates the database and creates the checker's tables.
    pub(crate) async fn new(options: PgConnectOptions) -> Self {
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await
            .expect("PostgreSQL is reachable");
        let store = PgStore::new(admin.clone());
        store.migrate().await.expect("the outbox migrations run");
        store.create_tables().await;
        PgSite { options, admin }
    }

    /// Empties every table in schema `public` but the migrations' record:
    /// found in `pg_tables`, so tables the toolkit adds are emptied too.
    async fn empty_tables(&self) {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables
             WHERE schemaname = 'public' AND tablename <> '_outbox_migrations'
             ORDER BY tablename",
        )
        .fetch_all(&self.admin)
        .await
        .expect("pg_tables is readable");
        let list = tables
            .iter()
            .map(|t| format!("public.\"{}\"", t.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        // The names come from the catalogue and are quoted as identifiers.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "TRUNCATE TABLE {list} RESTART IDENTITY"
        )))
        .execute(&self.admin)
        .await
        .expect("the tables are emptied");
    }
}

impl Site for PgSite {
    type Store = PgStore;
    const KIND: &'static str = "PostgreSQL";

    async fn fresh(&mut self) -> PgStore {
        self.empty_tables().await;
        // A task killed while `BEGIN` was on the wire leaves its connection
        // in a transaction sqlx does not know of (the `Transaction` that
        // would roll it back was never built); the next user of the
        // connection then runs inside it, and its locks are held for ever
        // (seen: a 1,000-schedule run hung on such a connection). A process
        // that dies closes its connections; a dropped future does not, so
        // the pool rolls back whatever a connection holds before lending it.
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .acquire_timeout(Duration::from_secs(30))
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, "ROLLBACK").await?;
                    Ok(true)
                })
            })
            .connect_with(self.options.clone())
            .await
            .expect("PostgreSQL is reachable");
        PgStore::new(pool)
    }

    async fn release(&mut self, store: PgStore) {
        store.pool().close().await;
    }

    async fn close(self) {
        self.admin.close().await;
    }
}

/// SQLite: a fresh file per schedule, in a directory removed at the end.
#[derive(Debug)]
pub(crate) struct SqliteSite {
    dir: PathBuf,
    next: u64,
}

impl SqliteSite {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-history-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        SqliteSite { dir, next: 0 }
    }

    fn file(&self, n: u64) -> PathBuf {
        self.dir.join(format!("schedule-{n}.db"))
    }
}

impl Site for SqliteSite {
    type Store = SqliteStore;
    const KIND: &'static str = "SQLite";

    async fn fresh(&mut self) -> SqliteStore {
        self.next += 1;
        let url = format!("sqlite://{}", self.file(self.next).display());
        let store = SqliteStore::open(&url)
            .await
            .expect("the SQLite file opens");
        store.create_tables().await;
        store
    }

    async fn release(&mut self, store: SqliteStore) {
        store.pool().close().await;
        let file = self.file(self.next);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }

    async fn close(self) {}
}

impl Drop for SqliteSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
