//! The database half of the history: what the producers and the handlers
//! record in their own transactions, and reading it back.
//!
//! Four tables of the checker's own, next to the toolkit's:
//!
//! | table | rows |
//! |---|---|
//! | `history_group_clock` | per group, `n`: how many producer transactions of the group committed |
//! | `history_commits` | per committed message: `(grp, n, idx, key)`, written by its producer's transaction |
//! | `history_handler_clock` | per (group, handler), `n`: how many handler transactions committed |
//! | `history_effects` | per committed handler run: `(key, handler, grp, n)`; no unique constraint, so a duplicate is counted, not prevented |
//!
//! **A group's commit order** is the list of its messages' keys sorted by
//! `(n, idx)` in `history_commits`. A producer transaction, after its
//! enqueue and right before its commit, increments the clock of each group
//! it enqueued to (`UPDATE history_group_clock SET n = n + 1 WHERE grp = $1
//! RETURNING n`, in sorted group order) and writes one `history_commits` row
//! per message with that `n` and the message's position in the transaction
//! (`idx`). The clock's row lock serializes the group's transactions from
//! the update to the commit, so `n` orders them as they committed. It is
//! taken only after the enqueue, so it does not hide a reordering caused by
//! the order in which the library inserted the rows.
//!
//! A handler's effect is ordered the same way: its transaction increments
//! the (group, handler) clock and writes the effect with that `n`, so
//! effects sorted by `n` are in the order the handler's transactions
//! committed.

use std::collections::HashMap;

use outbox_runtime::store::{AdminStore, StoreTransaction};
use outbox_runtime::{HandlerContext, PgStore, SqliteStore};
use sqlx::{Postgres, Row, Sqlite};
use uuid::Uuid;

use crate::{Event, HandlerName};

/// One row of `history_commits`.
#[derive(Clone, Debug)]
pub(crate) struct CommitRow {
    pub(crate) group: String,
    pub(crate) n: i64,
    pub(crate) idx: i64,
    pub(crate) key: Uuid,
}

/// One row of `history_effects`.
#[derive(Clone, Debug)]
pub(crate) struct EffectRow {
    pub(crate) key: Uuid,
    pub(crate) handler: String,
    pub(crate) group: String,
    pub(crate) n: i64,
}

/// What a schedule left in the database.
#[derive(Debug)]
pub(crate) struct History {
    pub(crate) commits: Vec<CommitRow>,
    pub(crate) effects: Vec<EffectRow>,
    /// Each key's first outbox row (`seq`): where the library put it in its
    /// group's order. Only a hint for explaining order violations.
    pub(crate) outbox_seq: HashMap<Uuid, i64>,
}

impl History {
    pub(crate) async fn read<S: HistoryStore>(store: &S) -> History {
        let mut outbox_seq = HashMap::new();
        for (seq, payload) in store.outbox_payloads().await {
            if let Ok(event) = serde_json::from_str::<Event>(&payload) {
                let first = outbox_seq.entry(event.key).or_insert(seq);
                *first = (*first).min(seq);
            }
        }
        History {
            commits: store.commits().await,
            effects: store.effects().await,
            outbox_seq,
        }
    }
}

/// What the checker needs from a store beyond the [`AdminStore`] trait.
pub(crate) trait HistoryStore: AdminStore {
    /// Creates the checker's tables, if missing.
    fn create_tables(&self) -> impl Future<Output = ()> + Send;

    /// Sets the clocks of `groups` (and of each of their handlers) to 0.
    fn seed_clocks(&self, groups: &[String]) -> impl Future<Output = ()> + Send;

    /// In a producer's transaction, after its enqueue and right before its
    /// commit: increments `group`'s clock and records `keys` (each with its
    /// position in the transaction) as committed with that clock value.
    /// Call it once per group the transaction enqueued to, in sorted group
    /// order (the clocks are locked in that order, so producers never
    /// deadlock).
    fn record_commit<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        group: &'t str,
        keys: &'t [(i64, Uuid)],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 't;

    /// `history_commits`.
    fn commits(&self) -> impl Future<Output = Vec<CommitRow>> + Send;

    /// `history_effects`.
    fn effects(&self) -> impl Future<Output = Vec<EffectRow>> + Send;

    /// Every outbox row's `seq` and payload.
    fn outbox_payloads(&self) -> impl Future<Output = Vec<(i64, String)>> + Send;
}

/// Records a handler's effect in its transaction, on whichever store it
/// runs: increments the (group, handler) clock and inserts the effect with
/// the clock's value.
pub(crate) async fn record_effect(
    ctx: &mut HandlerContext<'_>,
    event: &Event,
    handler: HandlerName,
) -> anyhow::Result<()> {
    let key = event.key.to_string();
    if let Ok(conn) = ctx.db::<Postgres>() {
        let n: i64 = sqlx::query_scalar(
            "UPDATE history_handler_clock SET n = n + 1 WHERE grp = $1 AND handler = $2 RETURNING n",
        )
        .bind(&event.group)
        .bind(handler.name())
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO history_effects (key, handler, grp, n) VALUES ($1, $2, $3, $4)")
            .bind(&key)
            .bind(handler.name())
            .bind(&event.group)
            .bind(n)
            .execute(conn)
            .await?;
    } else {
        let conn = ctx.db::<Sqlite>()?;
        let n: i64 = sqlx::query_scalar(
            "UPDATE history_handler_clock SET n = n + 1 WHERE grp = ?1 AND handler = ?2 RETURNING n",
        )
        .bind(&event.group)
        .bind(handler.name())
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO history_effects (key, handler, grp, n) VALUES (?1, ?2, ?3, ?4)")
            .bind(&key)
            .bind(handler.name())
            .bind(&event.group)
            .bind(n)
            .execute(conn)
            .await?;
    }
    Ok(())
}

fn parse_key(key: &str) -> Uuid {
    Uuid::parse_str(key).expect("the checker writes keys as UUIDs")
}

fn commit_rows<R: Row>(rows: Vec<R>) -> Vec<CommitRow>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    rows.into_iter()
        .map(|r| CommitRow {
            group: r.get("grp"),
            n: r.get("n"),
            idx: r.get("idx"),
            key: parse_key(&r.get::<String, _>("key")),
        })
        .collect()
}

fn effect_rows<R: Row>(rows: Vec<R>) -> Vec<EffectRow>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    rows.into_iter()
        .map(|r| EffectRow {
            key: parse_key(&r.get::<String, _>("key")),
            handler: r.get("handler"),
            group: r.get("grp"),
            n: r.get("n"),
        })
        .collect()
}

impl HistoryStore for PgStore {
    async fn create_tables(&self) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS history_group_clock (grp TEXT PRIMARY KEY, n BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS history_commits (grp TEXT NOT NULL, n BIGINT NOT NULL, idx BIGINT NOT NULL, key TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS history_handler_clock (grp TEXT NOT NULL, handler TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (grp, handler));
             CREATE TABLE IF NOT EXISTS history_effects (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, handler TEXT NOT NULL, grp TEXT NOT NULL, n BIGINT NOT NULL);",
        )
        .execute(self.pool())
        .await
        .expect("the history tables are created");
    }

    async fn seed_clocks(&self, groups: &[String]) {
        for group in groups {
            sqlx::query(
                "INSERT INTO history_group_clock (grp, n) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .execute(self.pool())
            .await
            .expect("a group clock is seeded");
            for handler in HandlerName::ALL {
                sqlx::query("INSERT INTO history_handler_clock (grp, handler, n) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING")
                    .bind(group)
                    .bind(handler.name())
                    .execute(self.pool())
                    .await
                    .expect("a handler clock is seeded");
            }
        }
    }

    async fn record_commit<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Postgres>,
        group: &'t str,
        keys: &'t [(i64, Uuid)],
    ) -> Result<(), sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "UPDATE history_group_clock SET n = n + 1 WHERE grp = $1 RETURNING n",
        )
        .bind(group)
        .fetch_one(&mut **tx)
        .await?;
        for (idx, key) in keys {
            sqlx::query("INSERT INTO history_commits (grp, n, idx, key) VALUES ($1, $2, $3, $4)")
                .bind(group)
                .bind(n)
                .bind(idx)
                .bind(key.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn commits(&self) -> Vec<CommitRow> {
        commit_rows(
            sqlx::query("SELECT grp, n, idx, key FROM history_commits")
                .fetch_all(self.pool())
                .await
                .expect("history_commits is readable"),
        )
    }

    async fn effects(&self) -> Vec<EffectRow> {
        effect_rows(
            sqlx::query("SELECT key, handler, grp, n FROM history_effects")
                .fetch_all(self.pool())
                .await
                .expect("history_effects is readable"),
        )
    }

    async fn outbox_payloads(&self) -> Vec<(i64, String)> {
        sqlx::query_as(
            "SELECT seq, payload::text FROM outbox
             UNION ALL SELECT seq, payload::text FROM outbox_archive",
        )
        .fetch_all(self.pool())
        .await
        .expect("the outbox is readable")
    }
}

impl HistoryStore for SqliteStore {
    async fn create_tables(&self) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS history_group_clock (grp TEXT PRIMARY KEY, n INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS history_commits (grp TEXT NOT NULL, n INTEGER NOT NULL, idx INTEGER NOT NULL, key TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS history_handler_clock (grp TEXT NOT NULL, handler TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (grp, handler));
             CREATE TABLE IF NOT EXISTS history_effects (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, handler TEXT NOT NULL, grp TEXT NOT NULL, n INTEGER NOT NULL);",
        )
        .execute(self.pool())
        .await
        .expect("the history tables are created");
    }

    async fn seed_clocks(&self, groups: &[String]) {
        for group in groups {
            sqlx::query("INSERT OR IGNORE INTO history_group_clock (grp, n) VALUES (?1, 0)")
                .bind(group)
                .execute(self.pool())
                .await
                .expect("a group clock is seeded");
            for handler in HandlerName::ALL {
                sqlx::query(
                    "INSERT OR IGNORE INTO history_handler_clock (grp, handler, n) VALUES (?1, ?2, 0)",
                )
                .bind(group)
                .bind(handler.name())
                .execute(self.pool())
                .await
                .expect("a handler clock is seeded");
            }
        }
    }

    async fn record_commit<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        group: &'t str,
        keys: &'t [(i64, Uuid)],
    ) -> Result<(), sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "UPDATE history_group_clock SET n = n + 1 WHERE grp = ?1 RETURNING n",
        )
        .bind(group)
        .fetch_one(&mut **tx)
        .await?;
        for (idx, key) in keys {
            sqlx::query("INSERT INTO history_commits (grp, n, idx, key) VALUES (?1, ?2, ?3, ?4)")
                .bind(group)
                .bind(n)
                .bind(idx)
                .bind(key.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn commits(&self) -> Vec<CommitRow> {
        commit_rows(
            sqlx::query("SELECT grp, n, idx, key FROM history_commits")
                .fetch_all(self.pool())
                .await
                .expect("history_commits is readable"),
        )
    }

    async fn effects(&self) -> Vec<EffectRow> {
        effect_rows(
            sqlx::query("SELECT key, handler, grp, n FROM history_effects")
                .fetch_all(self.pool())
                .await
                .expect("history_effects is readable"),
        )
    }

    async fn outbox_payloads(&self) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT seq, payload FROM outbox")
            .fetch_all(self.pool())
            .await
            .expect("the outbox is readable")
    }
}
