//! [`SqliteStore`]: the outbox in an SQLite file, the embedded default.
//!
//! SQLite has one writer at a time, so a claim runs in a `BEGIN IMMEDIATE`
//! transaction: it takes the write lock first, and two relays (in one process
//! or several) claim one after the other. Producers commit one after the
//! other too, so a group's `seq` order is its commit order. Times are Unix
//! milliseconds.
//!
//! A consumer's batch transaction is `BEGIN IMMEDIATE` as well: it holds the
//! write lock from its first handler's start to its commit, up to
//! `ConsumerConfig::runs_per_transaction` handler runs. Meanwhile every
//! other write to the database (the app's transactions, the relay, other
//! workers) waits, up to the busy timeout ([`SqliteStore::open`] sets
//! 5 s), after which it fails with `database is locked`. Keep handlers on
//! SQLite short (or lower `runs_per_transaction`); a handler that calls
//! slow services belongs on PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{
    AdminStore, BEGIN_RUN_SQL, ClaimedMessage, Columns, DEAD_LETTER_SELECT, DeadLetter, Expired,
    GROUP_HOLD_COLUMNS, GroupHold, GroupStats, HandlerState, HeldGroup, HeldLetter, KEEP_RUN_SQL,
    OutboxRow, OutboxStats, PublishFailure, RowStatus, Settlement, Store, StoreError,
    StoreTransaction, StoredDeadLetter, UNDO_RUN_SQL, claimed_from_row, group_hold, group_stats,
    headers_json, millis, outbox_row, outbox_stats, reserved_states, stored_dead_letter,
};
use crate::envelope::OutgoingEnvelope;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The outbox in SQLite: the embedded default, for local development, tests
/// and single-process apps.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    max_message_bytes: usize,
}

impl SqliteStore {
    /// A store on `pool`. Run [`Store::migrate`] once before use. The pool
    /// should use WAL mode and a busy timeout; [`SqliteStore::open`] sets
    /// them.
    pub fn new(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            max_message_bytes: crate::envelope::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Sets the largest envelope (as JSON) it accepts: your transport's
    /// limit, when it is not SQS's default 256 KiB (an SQS queue can be
    /// configured up to 1 MiB; set the same on
    /// `SqsTransport::with_max_body_bytes`, feature `sqs`).
    #[must_use]
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Opens (creating if missing) the database at `url`, such as
    /// `sqlite://outbox.db` or `sqlite::memory:`, with WAL, a 5 s busy
    /// timeout and foreign keys on, and runs the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // An in-memory database exists once per connection: keep one.
        let max = if url.contains(":memory:") || url.contains("mode=memory") {
            1
        } else {
            8
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await?;
        let store = SqliteStore::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Ids are text, times Unix milliseconds.
impl Columns for SqliteRow {
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_uuid(&self, key: i64, column: &str) -> Result<Option<Uuid>, StoreError> {
        let value: Option<String> = self.try_get(column)?;
        value
            .map(|value| {
                Uuid::parse_str(&value).map_err(|err| StoreError::CorruptRow {
                    seq: key,
                    reason: format!("{column} {value:?} is not a UUID: {err}"),
                })
            })
            .transpose()
    }

    fn opt_time(&self, key: i64, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ms: Option<i64> = self.try_get(column)?;
        ms.map(|ms| {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::CorruptRow {
                seq: key,
                reason: format!("{column} {ms} is out of range"),
            })
        })
        .transpose()
    }
}

/// A JSON array of the values, for `json_each(?)`: SQLite's way to bind a list.
fn json_list<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| String::from("[]"))
}

/// Records failed publish attempts (attempts + 1 where the failure counts,
/// last error, backoff or dead), in one statement.
async fn record_failures(
    conn: &mut SqliteConnection,
    lease: Uuid,
    failures: &[PublishFailure],
) -> Result<(), StoreError> {
    if failures.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<(i64, &str, Option<i64>, bool)> = failures
        .iter()
        .map(|f| {
            (
                f.seq,
                f.error.as_str(),
                f.retry_after.map(|after| now.saturating_add(millis(after))),
                f.counts,
            )
        })
        .collect();
    sqlx::query(
        "UPDATE outbox SET
             attempts = attempts + (f.value ->> 3),
             last_error = f.value ->> 1,
             available_at = COALESCE(f.value ->> 2, available_at),
             status = CASE WHEN f.value ->> 2 IS NULL THEN 'dead' ELSE 'pending' END,
             lease_until = NULL
         FROM json_each(?1) AS f
         WHERE outbox.seq = f.value ->> 0 AND outbox.status = 'pending' AND outbox.lease_token = ?2",
    )
    .bind(json_list(&rows))
    .bind(lease.hyphenated().to_string())
    .execute(conn)
    .await?;
    Ok(())
}

impl Store for SqliteStore {
    type Database = Sqlite;

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::own_migrator(&MIGRATIONS).run(&self.pool).await?;
        Ok(())
    }

    async fn enqueue_all<'c>(
        &'c self,
        conn: &'c mut SqliteConnection,
        messages: &'c [OutgoingEnvelope],
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        super::check_sizes(messages, self.max_message_bytes)?;
        // One multi-row INSERT per chunk; SQLite allows 32,766 bound
        // parameters, 9 per row.
        for chunk in messages.chunks(3000) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO outbox (id, message_type, version, group_key, queue, payload, headers, created_at, available_at, not_before) ",
            );
            insert.push_values(chunk, |mut row, outgoing| {
                let OutgoingEnvelope {
                    envelope,
                    queue,
                    not_before,
                } = outgoing;
                let created = envelope.created_at.timestamp_millis();
                let not_before = not_before.map(|t| t.timestamp_millis());
                let available = not_before.map_or(created, |t| t.max(created));
                row.push_bind(envelope.id.hyphenated().to_string())
                    .push_bind(envelope.message_type.clone())
                    .push_bind(i64::from(envelope.version))
                    .push_bind(envelope.group.clone())
                    .push_bind(queue.map(str::to_owned))
                    .push_bind(envelope.payload.get().to_owned())
                    .push_bind(headers_json(envelope))
                    .push_bind(created)
                    .push_bind(available)
                    .push_bind(not_before);
            });
            insert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn claim(&self, limit: u32, lease: Duration) -> Result<Vec<ClaimedMessage>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        // Rows relayed to a queue that died before confirming them.
        sqlx::query(
            "UPDATE outbox SET status = 'pending', lease_until = NULL
             WHERE status = 'relayed' AND lease_until < ?1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT o.group_key FROM outbox o
             WHERE o.status = 'pending'
               AND o.available_at <= ?1
               AND (o.lease_until IS NULL OR o.lease_until < ?1)
               AND NOT EXISTS (
                   SELECT 1 FROM outbox e
                   WHERE e.status = 'pending' AND e.group_key = o.group_key AND e.seq < o.seq)
               -- The group is held while any of its rows is leased by a live
               -- claim or relayed and unconfirmed.
               AND NOT EXISTS (
                   SELECT 1 FROM outbox e
                   WHERE e.group_key = o.group_key AND e.lease_until IS NOT NULL
                     AND (e.status = 'relayed' OR (e.status = 'pending' AND e.lease_until >= ?1)))
             ORDER BY o.seq
             LIMIT ?2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if groups.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let token = Uuid::now_v7();
        let rows = sqlx::query(
            "UPDATE outbox SET lease_until = ?1, lease_token = ?4
             WHERE seq IN (
                 SELECT o.seq FROM outbox o
                 WHERE o.status = 'pending' AND o.group_key IN (SELECT value FROM json_each(?2))
                   -- Up to the group's first delayed row not yet due: the
                   -- rows after it wait.
                   AND o.seq < COALESCE(
                       (SELECT min(d.seq) FROM outbox d
                        WHERE d.group_key = o.group_key AND d.status = 'pending'
                          AND d.not_before IS NOT NULL AND d.not_before > ?5),
                       9223372036854775807)
                 ORDER BY o.seq LIMIT ?3)
             RETURNING seq, id, message_type, version, group_key, queue, payload, headers, created_at, attempts",
        )
        .bind(now.saturating_add(millis(lease)))
        .bind(json_list(&groups))
        .bind(i64::from(limit))
        .bind(token.hyphenated().to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let (claimed, corrupt) =
            super::sort_out(rows.iter().map(|row| claimed_from_row(row, token)))?;
        record_failures(&mut tx, token, &corrupt).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn settle<'a>(&'a self, settlement: Settlement<'a>) -> Result<(), StoreError> {
        let Some(lease) = settlement.claimed.first().map(|m| m.lease) else {
            return Ok(());
        };
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let token = lease.hyphenated().to_string();
        let published = json_list(settlement.published);
        if let Some(within) = settlement.confirm_within {
            sqlx::query(
                "UPDATE outbox SET status = 'relayed', lease_until = ?1
                 WHERE seq IN (SELECT value FROM json_each(?2)) AND status = 'pending' AND lease_token = ?3",
            )
            .bind(now.saturating_add(millis(within)))
            .bind(&published)
            .bind(&token)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE outbox SET status = 'published', published_at = ?1, lease_until = NULL
                 WHERE seq IN (SELECT value FROM json_each(?2)) AND status = 'pending' AND lease_token = ?3",
            )
            .bind(now)
            .bind(&published)
            .bind(&token)
            .execute(&mut *tx)
            .await?;
        }
        record_failures(&mut tx, lease, settlement.failures).await?;
        let claimed: Vec<i64> = settlement.claimed.iter().map(|m| m.seq).collect();
        sqlx::query(
            "UPDATE outbox SET lease_until = NULL
             WHERE seq IN (SELECT value FROM json_each(?1)) AND status = 'pending' AND lease_token = ?2",
        )
        .bind(json_list(&claimed))
        .bind(&token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn renew_relayed(
        &self,
        leases: &[Uuid],
        confirm_within: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<String> = leases.iter().map(|l| l.hyphenated().to_string()).collect();
        let renewed: Vec<String> = sqlx::query_scalar(
            "UPDATE outbox SET lease_until = ?2
             WHERE status = 'relayed' AND lease_token IN (SELECT value FROM json_each(?1))
             RETURNING lease_token",
        )
        .bind(json_list(&tokens))
        .bind(now_ms().saturating_add(millis(confirm_within)))
        .fetch_all(&self.pool)
        .await?;
        let mut held: Vec<Uuid> = renewed
            .iter()
            .filter_map(|token| Uuid::parse_str(token).ok())
            .collect();
        held.sort_unstable();
        held.dedup();
        Ok(held)
    }

    async fn release_relayed(&self, leases: &[Uuid]) -> Result<u64, StoreError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let tokens: Vec<String> = leases.iter().map(|l| l.hyphenated().to_string()).collect();
        let released = sqlx::query(
            "UPDATE outbox SET status = 'pending', lease_until = NULL
             WHERE status = 'relayed' AND lease_token IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(&tokens))
        .execute(&self.pool)
        .await?;
        Ok(released.rows_affected())
    }

    async fn confirm<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        ids: &'t [Uuid],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
        sqlx::query(
            "UPDATE outbox SET status = 'published', published_at = ?1, lease_until = NULL
             WHERE id IN (SELECT value FROM json_each(?2)) AND status IN ('pending', 'relayed')",
        )
        .bind(now_ms())
        .bind(json_list(&ids))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn begin(&self) -> Result<StoreTransaction<Sqlite>, StoreError> {
        // IMMEDIATE: a handler's transaction writes (the inbox row at least);
        // taking the write lock up front avoids a deadlock-prone upgrade.
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn inbox_reserve<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        keys: &'t [(Uuid, &'t str)],
    ) -> Result<Vec<HandlerState>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(id, handler)| (id.hyphenated().to_string(), (*handler).to_owned()))
            .collect();
        let listed = json_list(&keys);
        // `WHERE true` keeps SQLite from reading ON CONFLICT as a join's.
        let reserved: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO outbox_inbox (message_id, handler, handled_at)
             SELECT value ->> 0, value ->> 1, ?2 FROM json_each(?1) WHERE true
             ON CONFLICT DO NOTHING
             RETURNING message_id, handler",
        )
        .bind(&listed)
        .bind(now_ms())
        .fetch_all(&mut **tx)
        .await?;
        let failed: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT a.message_id, a.handler, a.failures FROM outbox_attempts a
             JOIN json_each(?1) k ON a.message_id = k.value ->> 0 AND a.handler = k.value ->> 1",
        )
        .bind(&listed)
        .fetch_all(&mut **tx)
        .await?;
        Ok(reserved_states(
            keys,
            reserved,
            failed
                .into_iter()
                .map(|(id, handler, n)| ((id, handler), n)),
        ))
    }

    async fn inbox_unreserve<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        keys: &'t [(Uuid, &'t str)],
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<(String, &str)> = keys
            .iter()
            .map(|(id, handler)| (id.hyphenated().to_string(), *handler))
            .collect();
        sqlx::query(
            "DELETE FROM outbox_inbox
             WHERE (message_id, handler) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))",
        )
        .bind(json_list(&keys))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn begin_run<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
    ) -> Result<(), StoreError> {
        sqlx::raw_sql(BEGIN_RUN_SQL).execute(&mut **tx).await?;
        Ok(())
    }

    async fn end_run<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        keep: bool,
    ) -> Result<(), StoreError> {
        let sql = if keep { KEEP_RUN_SQL } else { UNDO_RUN_SQL };
        sqlx::raw_sql(sql).execute(&mut **tx).await?;
        Ok(())
    }

    async fn record_handler_failure<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        message_id: Uuid,
        handler: &'t str,
        error: &'t str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_attempts (message_id, handler, failures, last_error, updated_at)
             VALUES (?1, ?2, 1, ?3, ?4)
             ON CONFLICT (message_id, handler) DO UPDATE
             SET failures = failures + 1, last_error = excluded.last_error, updated_at = excluded.updated_at",
        )
        .bind(message_id.hyphenated().to_string())
        .bind(handler)
        .bind(error)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn dead_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        entry: &'t DeadLetter,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_dead_letters (message_id, handler, message_type, group_key, body, error, attempts, dead_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(entry.message_id.map(|id| id.hyphenated().to_string()))
        .bind(&entry.handler)
        .bind(&entry.message_type)
        .bind(&entry.group)
        .bind(&entry.body)
        .bind(&entry.error)
        .bind(i64::from(entry.attempts))
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn group_holds<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        keys: &'t [(&'t str, &'t str)],
    ) -> Result<Vec<GroupHold>, StoreError> {
        let mut holds = Vec::new();
        for (handler, group) in keys {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {GROUP_HOLD_COLUMNS} FROM outbox_group_holds
                 WHERE handler = ?1 AND group_key = ?2"
            )))
            .bind(handler)
            .bind(group)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(row) = row {
                holds.push(group_hold(&row)?);
            }
        }
        Ok(holds)
    }

    async fn put_group_hold<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        hold: &'t GroupHold,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_group_holds (handler, group_key, held_at, release_id, release_last)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (handler, group_key)
             DO UPDATE SET release_id = excluded.release_id, release_last = excluded.release_last",
        )
        .bind(&hold.handler)
        .bind(&hold.group)
        .bind(hold.held_at.timestamp_millis())
        .bind(hold.release.map(|r| r.id.hyphenated().to_string()))
        .bind(hold.release.map(|r| r.last.hyphenated().to_string()))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn delete_group_hold<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        handler: &'t str,
        group: &'t str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox_group_holds WHERE handler = ?1 AND group_key = ?2")
            .bind(handler)
            .bind(group)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn keep_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        entry: &'t DeadLetter,
        why: HeldLetter,
    ) -> Result<bool, StoreError> {
        let (gave_up, running) = match why {
            HeldLetter::GaveUp => (true, None),
            HeldLetter::NotRun { running } => (false, running),
        };
        let message_id = entry.message_id.map(|id| id.hyphenated().to_string());
        let found: Vec<(i64, Option<String>)> = sqlx::query_as(
            "SELECT id, release_id FROM outbox_dead_letters
             WHERE handler = ?1 AND group_key = ?2 AND message_id = ?3",
        )
        .bind(&entry.handler)
        .bind(&entry.group)
        .bind(&message_id)
        .fetch_all(&mut **tx)
        .await?;
        let running = running.map(|id| id.hyphenated().to_string());
        let mut held = false;
        for (id, release) in &found {
            if !gave_up && (release.is_none() || *release == running) {
                continue;
            }
            sqlx::query(
                "UPDATE outbox_dead_letters
                 SET error = ?2, attempts = ?3, dead_at = ?4, release_id = NULL
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(&entry.error)
            .bind(i64::from(entry.attempts))
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            held = true;
        }
        if found.is_empty() {
            self.dead_letter(tx, entry).await?;
        }
        Ok(found.is_empty() || held)
    }

    async fn release_letters<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        handler: &'t str,
        group: &'t str,
        release: Uuid,
        skip_first: bool,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAD_LETTER_SELECT} WHERE handler = ?1 AND group_key = ?2 ORDER BY id"
        )))
        .bind(handler)
        .bind(group)
        .fetch_all(&mut **tx)
        .await?;
        let letters = rows
            .iter()
            .map(stored_dead_letter)
            .collect::<Result<Vec<_>, _>>()?;
        let release = release.hyphenated().to_string();
        for (at, letter) in letters.iter().enumerate() {
            let skipped = skip_first && at == 0;
            let message_id = letter
                .letter
                .message_id
                .map(|id| id.hyphenated().to_string());
            if skipped {
                sqlx::query("DELETE FROM outbox_dead_letters WHERE id = ?1")
                    .bind(letter.id)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO outbox_inbox (message_id, handler, handled_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(&message_id)
                .bind(handler)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
            } else {
                sqlx::query("UPDATE outbox_dead_letters SET release_id = ?2 WHERE id = ?1")
                    .bind(letter.id)
                    .bind(&release)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("DELETE FROM outbox_inbox WHERE message_id = ?1 AND handler = ?2")
                    .bind(&message_id)
                    .bind(handler)
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("DELETE FROM outbox_attempts WHERE message_id = ?1 AND handler = ?2")
                .bind(&message_id)
                .bind(handler)
                .execute(&mut **tx)
                .await?;
        }
        Ok(letters)
    }

    async fn first_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        handler: &'t str,
        group: &'t str,
    ) -> Result<Option<Uuid>, StoreError> {
        let first: Option<Option<String>> = sqlx::query_scalar(
            "SELECT message_id FROM outbox_dead_letters
             WHERE handler = ?1 AND group_key = ?2 ORDER BY id LIMIT 1",
        )
        .bind(handler)
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(first.flatten().and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn settle_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        handler: &'t str,
        group: &'t str,
        message_id: Uuid,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM outbox_dead_letters
             WHERE handler = ?1 AND group_key = ?2 AND message_id = ?3 AND release_id IS NOT NULL",
        )
        .bind(handler)
        .bind(group)
        .bind(message_id.hyphenated().to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn delete_expired(
        &self,
        kind: Expired,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let sql = match kind {
            Expired::Published => {
                "DELETE FROM outbox WHERE seq IN (
                     SELECT seq FROM outbox WHERE status = 'published' AND published_at < ?1
                     ORDER BY seq LIMIT ?2)"
            }
            Expired::Inbox => {
                "DELETE FROM outbox_inbox WHERE (message_id, handler) IN (
                     SELECT message_id, handler FROM outbox_inbox WHERE handled_at < ?1 LIMIT ?2)"
            }
            Expired::Attempts => {
                "DELETE FROM outbox_attempts WHERE (message_id, handler) IN (
                     SELECT message_id, handler FROM outbox_attempts WHERE updated_at < ?1 LIMIT ?2)"
            }
        };
        Ok(sqlx::query(sql)
            .bind(before.timestamp_millis())
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn has_undelivered(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            // One EXISTS per status, so that each uses its partial index.
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending')
                 OR EXISTS (SELECT 1 FROM outbox WHERE status = 'relayed')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn stats(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT
                 (SELECT count(*) FROM outbox WHERE status IN ('pending', 'relayed')) AS pending,
                 (SELECT count(*) FROM outbox WHERE status = 'published') AS published,
                 (SELECT count(*) FROM outbox WHERE status = 'dead') AS dead,
                 -- A delayed row counts from its time, and not before it.
                 ?1 - (SELECT min(max(created_at, coalesce(not_before, created_at)))
                        FROM outbox WHERE status IN ('pending', 'relayed')
                          AND (not_before IS NULL OR not_before <= ?1))
                     AS oldest_ms,
                 (SELECT count(*) FROM outbox_dead_letters) AS dead_letters",
        )
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        outbox_stats(&row)
    }

    async fn group_stats(&self, limit: u32) -> Result<Vec<GroupStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT group_key,
                    sum(status IN ('pending', 'relayed')) AS pending,
                    ?2 - min(CASE WHEN status IN ('pending', 'relayed')
                                       AND (not_before IS NULL OR not_before <= ?2)
                                  THEN max(created_at, coalesce(not_before, created_at))
                             END)
                        AS oldest_ms,
                    sum(status = 'dead') AS dead
             FROM outbox WHERE status IN ('pending', 'relayed', 'dead')
             GROUP BY group_key
             ORDER BY oldest_ms IS NULL, oldest_ms DESC, group_key
             LIMIT ?1",
        )
        .bind(i64::from(limit))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(group_stats).collect()
    }
}

impl AdminStore for SqliteStore {
    async fn rows(
        &self,
        status: Option<RowStatus>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, message_type, version, group_key, queue, status, attempts, last_error, created_at, published_at
             FROM outbox WHERE ?1 IS NULL OR status = ?1
             ORDER BY seq DESC LIMIT ?2",
        )
        .bind(status.map(RowStatus::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAD_LETTER_SELECT} ORDER BY id DESC LIMIT ?1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_dead_letter).collect()
    }

    async fn dead_letter_by_id(&self, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAD_LETTER_SELECT} WHERE id = ?1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_dead_letter).transpose()
    }

    async fn remove_dead_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Sqlite>,
        id: i64,
        message_id: Uuid,
    ) -> Result<bool, StoreError> {
        let Some(handler) = sqlx::query_scalar::<_, Option<String>>(
            "DELETE FROM outbox_dead_letters WHERE id = ?1 RETURNING handler",
        )
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(false);
        };
        let message_id = message_id.hyphenated().to_string();
        sqlx::query("DELETE FROM outbox_inbox WHERE message_id = ?1 AND handler = ?2")
            .bind(&message_id)
            .bind(&handler)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "DELETE FROM outbox_attempts WHERE message_id = ?1 AND (?2 IS NULL OR handler = ?2)",
        )
        .bind(&message_id)
        .bind(&handler)
        .execute(&mut **tx)
        .await?;
        Ok(true)
    }

    async fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM outbox_dead_letters WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn requeue_dead_row(&self, seq: i64) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL,
                 available_at = ?2, lease_until = NULL
             WHERE seq = ?1 AND status = 'dead'",
        )
        .bind(seq)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn held_groups(&self, limit: u32) -> Result<Vec<HeldGroup>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {GROUP_HOLD_COLUMNS},
                    (SELECT count(*) FROM outbox_dead_letters d
                     WHERE d.handler = h.handler AND d.group_key = h.group_key) AS letters
             FROM outbox_group_holds h ORDER BY held_at, handler, group_key LIMIT ?1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HeldGroup {
                    hold: group_hold(row)?,
                    dead_letters: row.count("letters")?,
                })
            })
            .collect()
    }

    async fn purge_dead_row(&self, seq: i64) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq = ?1 AND status = 'dead'")
            .bind(seq)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }
}
