//! [`PgStore`]: the outbox on PostgreSQL. Batches use `UNNEST`, claims use
//! `FOR UPDATE SKIP LOCKED` on group heads.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::{
    BEGIN_RUN_SQL, ClaimedMessage, CleanupReport, DeadLetter, GroupStats, HandlerState,
    KEEP_RUN_SQL, OutboxRow, OutboxStats, PublishFailure, RetentionPolicy, RowStatus, Store,
    StoreError, StoredDeadLetter, Tx, UNDO_RUN_SQL, attempts_from, envelope_from_row, headers_json,
    millis, reserved_states, status_from, u32_column,
};
use crate::envelope::Outgoing;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The outbox on PostgreSQL (RDS, Aurora, or any server from 12 on).
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// use outbox_runtime::{OutboxMessage, PgStore, Store, StoreExt};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct OrderPlaced { order_id: i64 }
///
/// let store = PgStore::new(pool.clone());
/// store.migrate().await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("insert into orders (id) values ($1)").bind(7_i64).execute(&mut *tx).await?;
/// store.enqueue(&mut tx, &OrderPlaced { order_id: 7 }).await?;
/// tx.commit().await?; // the order and its message, or neither
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    max_message_bytes: usize,
}

impl PgStore {
    /// A store on `pool`. Run [`Store::migrate`] once before use.
    pub fn new(pool: PgPool) -> Self {
        PgStore {
            pool,
            max_message_bytes: crate::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Sets the largest envelope (as JSON) it accepts: your transport's
    /// limit, when it is not SQS's default 256 KiB (an SQS queue can be
    /// configured up to 1 MiB; set the same on
    /// [`SqsTransport::with_max_body_bytes`](crate::SqsTransport)).
    #[must_use]
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    // The relay's statements, public (hidden) so that the benchmark's raw SQL
    // ceiling issues exactly these and cannot drift from them.

    /// Puts rows relayed to a queue that died before confirming them back
    /// to pending.
    #[doc(hidden)]
    pub const RECOVER_SQL: &'static str = "UPDATE outbox SET status = 'pending', lease_until = NULL
             WHERE status = 'relayed' AND lease_until < now()";

    /// Claims up to `$1` rows of groups whose heads it locks and that no
    /// live lease or unconfirmed relayed row holds, leased for `$2`
    /// milliseconds under token `$4` (see the store's module docs), looking for heads
    /// among the first `$3` claimable rows ([`Self::claim_window`]) and, when that
    /// window is full of rows behind other heads, group by group.
    ///
    /// Finding heads by walking pending rows in sequence order is cheap
    /// while most rows are heads, and costly when they are not: a group
    /// another relay holds, or one whose head waits out a backoff, puts all
    /// its rows between the walker and the next free head (at 100,000 rows
    /// in 100 groups with every group held, 700 ms to find nothing). So the
    /// walk stops after a window; if the window held fewer heads than
    /// wanted, a skip scan of the `(group_key, seq)` index visits each
    /// group's first row instead: one index probe per group.
    #[doc(hidden)]
    pub const CLAIM_SQL: &'static str = "WITH RECURSIVE
             window_heads AS (
                 SELECT c.seq FROM (
                     SELECT seq, group_key FROM outbox
                     WHERE status = 'pending'
                       AND available_at <= now()
                       AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY seq
                     LIMIT $3) c
                 WHERE NOT EXISTS (
                     SELECT 1 FROM outbox e
                     WHERE e.status = 'pending' AND e.group_key = c.group_key AND e.seq < c.seq)
                   AND NOT EXISTS (
                     SELECT 1 FROM outbox e
                     WHERE e.group_key = c.group_key AND e.lease_until IS NOT NULL
                       AND (e.status = 'relayed' OR (e.status = 'pending' AND e.lease_until >= now())))
                 ORDER BY c.seq
                 LIMIT $1
             ),
             -- Runs only when the window was full and short of heads (the
             -- planner gates it on these two conditions, evaluated once).
             -- The window is written out again for the count: a CTE read
             -- twice is materialized whole, and `window_heads` could no
             -- longer stop at `$1` heads.
             groups (group_key) AS (
                 (SELECT group_key FROM outbox
                  WHERE status = 'pending'
                    AND (SELECT count(*) FROM window_heads) < $1
                    AND (SELECT count(*) FROM (
                            SELECT 1 FROM outbox
                            WHERE status = 'pending'
                              AND available_at <= now()
                              AND (lease_until IS NULL OR lease_until < now())
                            ORDER BY seq
                            LIMIT $3) w) = $3
                  ORDER BY group_key
                  LIMIT 1)
                 UNION ALL
                 SELECT (SELECT o.group_key FROM outbox o
                         WHERE o.status = 'pending' AND o.group_key > g.group_key
                         ORDER BY o.group_key
                         LIMIT 1)
                 FROM groups g
                 WHERE g.group_key IS NOT NULL
             ),
             group_heads AS (
                 SELECT h.seq FROM groups g CROSS JOIN LATERAL (
                     SELECT o.seq FROM outbox o
                     WHERE o.status = 'pending' AND o.group_key = g.group_key
                     ORDER BY o.seq
                     LIMIT 1) h
             ),
             heads AS (
                 SELECT o.seq, o.group_key FROM outbox o
                 WHERE o.seq = ANY (ARRAY(SELECT seq FROM window_heads
                                          UNION ALL
                                          SELECT seq FROM group_heads))
                   AND o.status = 'pending'
                   AND o.available_at <= now()
                   AND (o.lease_until IS NULL OR o.lease_until < now())
                   -- The group is held while any of its rows is leased by a
                   -- live claim or relayed and unconfirmed (a relayed row past
                   -- its deadline too, until RECOVER_SQL, a statement of its
                   -- own, has made it pending: else its group's later rows
                   -- could pass it).
                   AND NOT EXISTS (
                     SELECT 1 FROM outbox e
                     WHERE e.group_key = o.group_key AND e.lease_until IS NOT NULL
                       AND (e.status = 'relayed' OR (e.status = 'pending' AND e.lease_until >= now())))
                 ORDER BY o.seq
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             ),
             picked AS (
                 SELECT o.seq FROM outbox o JOIN heads h ON h.group_key = o.group_key
                 WHERE o.status = 'pending'
                 ORDER BY o.seq
                 LIMIT $1
             )
             UPDATE outbox SET lease_until = now() + $2 * interval '1 millisecond', lease_token = $4
             FROM picked
             WHERE outbox.seq = picked.seq
               -- `picked` is read from the statement's snapshot, unlocked:
               -- another relay may have leased or relayed a row since. These
               -- conditions are rechecked on the row's newest version, so
               -- such a row is left out rather than claimed twice.
               AND outbox.status = 'pending'
               AND (outbox.lease_until IS NULL OR outbox.lease_until < now())
             RETURNING outbox.seq, outbox.id, outbox.message_type, outbox.version, outbox.group_key,
                       outbox.queue, outbox.payload::text AS payload, outbox.headers::text AS headers,
                       outbox.created_at, outbox.attempts";

    /// `$3` of [`Self::CLAIM_SQL`]: how many claimable rows it walks for
    /// heads before it visits groups one by one; four per row wanted, at
    /// least 64.
    #[doc(hidden)]
    pub fn claim_window(limit: u32) -> i64 {
        (i64::from(limit) * 4).max(64)
    }

    /// Locks the groups `$1` (text[]) until the transaction ends, in a fixed
    /// order (two calls never deadlock each other; two transactions of
    /// several calls each can, see the store's module docs): producers of
    /// one group commit in their enqueue order. The first key is the
    /// toolkit's (`'outb'`); advisory locks with two keys never collide with
    /// an app's one-key locks.
    #[doc(hidden)]
    pub const LOCK_GROUPS_SQL: &'static str = "SELECT pg_advisory_xact_lock(1869968482, k)
             FROM (SELECT DISTINCT hashtext(g) AS k FROM unnest($1::text[]) AS g) AS l
             ORDER BY k";

    /// Marks rows `$1` published, if still leased under token `$2`.
    #[doc(hidden)]
    pub const MARK_PUBLISHED_SQL: &'static str =
        "UPDATE outbox SET status = 'published', published_at = now(), lease_until = NULL
             WHERE seq = ANY($1) AND status = 'pending' AND lease_token = $2";

    /// Marks rows `$1` handed to a non-durable queue, for `$2` milliseconds,
    /// if still leased under token `$3`.
    #[doc(hidden)]
    pub const MARK_RELAYED_SQL: &'static str =
        "UPDATE outbox SET status = 'relayed', lease_until = now() + $2 * interval '1 millisecond'
             WHERE seq = ANY($1) AND status = 'pending' AND lease_token = $3";
}

fn claimed_from_row(
    row: &sqlx::postgres::PgRow,
    lease: Uuid,
) -> Result<ClaimedMessage, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let version: i32 = row.try_get("version")?;
    let attempts: i32 = row.try_get("attempts")?;
    let headers: String = row.try_get("headers")?;
    Ok(ClaimedMessage {
        seq,
        envelope: envelope_from_row(
            seq,
            row.try_get("id")?,
            row.try_get("message_type")?,
            i64::from(version),
            row.try_get("group_key")?,
            row.try_get("payload")?,
            &headers,
            row.try_get("created_at")?,
        )?,
        queue: row.try_get("queue")?,
        attempts: attempts_from(seq, i64::from(attempts))?,
        lease,
    })
}

fn outbox_row(row: &sqlx::postgres::PgRow) -> Result<OutboxRow, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let version: i32 = row.try_get("version")?;
    let attempts: i32 = row.try_get("attempts")?;
    let status: String = row.try_get("status")?;
    Ok(OutboxRow {
        seq,
        id: row.try_get("id")?,
        message_type: row.try_get("message_type")?,
        version: u32_column(seq, "version", i64::from(version))?,
        group: row.try_get("group_key")?,
        queue: row.try_get("queue")?,
        status: status_from(seq, &status)?,
        attempts: attempts_from(seq, i64::from(attempts))?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        published_at: row.try_get("published_at")?,
    })
}

fn stored_dead_letter(row: &sqlx::postgres::PgRow) -> Result<StoredDeadLetter, StoreError> {
    let id: i64 = row.try_get("id")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(StoredDeadLetter {
        id,
        message_id: row.try_get("message_id")?,
        handler: row.try_get("handler")?,
        message_type: row.try_get("message_type")?,
        group: row.try_get("group_key")?,
        body: row.try_get("body")?,
        error: row.try_get("error")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        dead_at: row.try_get("dead_at")?,
    })
}

const DEAD_LETTER_COLUMNS: &str = "SELECT id, message_id, handler, message_type, group_key, body, error, attempts, dead_at FROM outbox_dead_letters";

impl PgStore {
    /// Runs `delete` (`$1`: an age in milliseconds, `$2`: the batch) until
    /// it deletes fewer rows than a batch; returns how many it deleted.
    async fn delete_in_batches(
        &self,
        delete: &'static str,
        age: Duration,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(delete)
                .bind(millis(age))
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < batch.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

impl Store for PgStore {
    type Database = Postgres;

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::own_migrator(&MIGRATIONS).run(&self.pool).await?;
        Ok(())
    }

    async fn enqueue_all<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        messages: &'c [Outgoing],
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        super::check_sizes(messages, self.max_message_bytes)?;
        let n = messages.len();
        let (mut ids, mut types, mut versions, mut groups) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut queues, mut payloads, mut headers, mut created) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut locks: Vec<&str> = messages.iter().map(|m| m.envelope.group.as_str()).collect();
        locks.sort_unstable();
        locks.dedup();
        sqlx::query(Self::LOCK_GROUPS_SQL)
            .bind(&locks)
            .execute(&mut *conn)
            .await?;
        for Outgoing { envelope, queue } in messages {
            ids.push(envelope.id);
            types.push(envelope.message_type.as_str());
            versions.push(i32::try_from(envelope.version).unwrap_or(i32::MAX));
            groups.push(envelope.group.as_str());
            queues.push(*queue);
            payloads.push(envelope.payload.get());
            headers.push(headers_json(envelope));
            created.push(envelope.created_at);
        }
        sqlx::query(
            "INSERT INTO outbox (id, message_type, version, group_key, queue, payload, headers, created_at)
             SELECT id, message_type, version, group_key, queue, payload::json, headers::json, created_at
             FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])
                  WITH ORDINALITY AS m(id, message_type, version, group_key, queue, payload, headers, created_at, ord)
             ORDER BY ord",
        )
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&groups)
        .bind(&queues)
        .bind(&payloads)
        .bind(&headers)
        .bind(&created)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn claim(&self, limit: u32, lease: Duration) -> Result<Vec<ClaimedMessage>, StoreError> {
        // Rows relayed to a queue that died before confirming them.
        sqlx::query(Self::RECOVER_SQL).execute(&self.pool).await?;
        let token = Uuid::now_v7();
        let rows = sqlx::query(Self::CLAIM_SQL)
            .bind(i64::from(limit))
            .bind(millis(lease))
            .bind(Self::claim_window(limit))
            .bind(token)
            .fetch_all(&self.pool)
            .await?;
        super::sort_out(
            self,
            token,
            rows.iter().map(|row| claimed_from_row(row, token)),
        )
        .await
    }

    async fn mark_published(&self, lease: Uuid, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(Self::MARK_PUBLISHED_SQL)
            .bind(seqs)
            .bind(lease)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_relayed(
        &self,
        lease: Uuid,
        seqs: &[i64],
        confirm_within: Duration,
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(Self::MARK_RELAYED_SQL)
            .bind(seqs)
            .bind(millis(confirm_within))
            .bind(lease)
            .execute(&self.pool)
            .await?;
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
        Ok(sqlx::query_scalar(
            "WITH renewed AS (
                 UPDATE outbox SET lease_until = now() + $2 * interval '1 millisecond'
                 WHERE status = 'relayed' AND lease_token = ANY($1)
                 RETURNING lease_token)
             SELECT DISTINCT lease_token FROM renewed",
        )
        .bind(leases)
        .bind(millis(confirm_within))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn confirm<'t>(
        &'t self,
        tx: &'t mut Tx<Postgres>,
        ids: &'t [Uuid],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE outbox SET status = 'published', published_at = now(), lease_until = NULL
             WHERE id = ANY($1) AND status IN ('pending', 'relayed')",
        )
        .bind(ids)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn record_failures(
        &self,
        lease: Uuid,
        failures: &[PublishFailure],
    ) -> Result<(), StoreError> {
        if failures.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let retry_after: Vec<Option<i64>> =
            failures.iter().map(|f| f.retry_after.map(millis)).collect();
        let counts: Vec<bool> = failures.iter().map(|f| f.counts).collect();
        sqlx::query(
            "UPDATE outbox AS o SET
                 attempts = o.attempts + CASE WHEN f.counts THEN 1 ELSE 0 END,
                 last_error = f.error,
                 available_at = COALESCE(now() + f.retry_ms * interval '1 millisecond', o.available_at),
                 status = CASE WHEN f.retry_ms IS NULL THEN 'dead' ELSE 'pending' END,
                 lease_until = NULL
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::bool[]) AS f(seq, error, retry_ms, counts)
             WHERE o.seq = f.seq AND o.status = 'pending' AND o.lease_token = $5",
        )
        .bind(&seqs)
        .bind(&errors)
        .bind(&retry_after)
        .bind(&counts)
        .bind(lease)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release(&self, lease: Uuid, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE outbox SET lease_until = NULL
             WHERE seq = ANY($1) AND status = 'pending' AND lease_token = $2",
        )
        .bind(seqs)
        .bind(lease)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Tx<Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn inbox_reserve<'t>(
        &'t self,
        tx: &'t mut Tx<Postgres>,
        keys: &'t [(Uuid, &'t str)],
    ) -> Result<Vec<HandlerState>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, handlers): (Vec<Uuid>, Vec<&str>) = keys.iter().copied().unzip();
        // Inserted in key order, so two transactions reserving overlapping
        // keys lock them in the same order.
        let reserved: Vec<(Uuid, String)> = sqlx::query_as(
            "INSERT INTO outbox_inbox (message_id, handler)
             SELECT message_id, handler FROM UNNEST($1::uuid[], $2::text[]) AS k(message_id, handler)
             ORDER BY message_id, handler
             ON CONFLICT DO NOTHING
             RETURNING message_id, handler",
        )
        .bind(&ids)
        .bind(&handlers)
        .fetch_all(&mut **tx)
        .await?;
        // A statement of its own: its snapshot is taken after the insert
        // waited for a concurrent run, so it sees the failures that run counted.
        let failed: Vec<(Uuid, String, i32)> = sqlx::query_as(
            "SELECT a.message_id, a.handler, a.failures
             FROM outbox_attempts a
             JOIN UNNEST($1::uuid[], $2::text[]) AS k(message_id, handler) USING (message_id, handler)",
        )
        .bind(&ids)
        .bind(&handlers)
        .fetch_all(&mut **tx)
        .await?;
        Ok(reserved_states(
            keys.iter()
                .map(|(id, handler)| (*id, (*handler).to_owned())),
            reserved,
            failed
                .into_iter()
                .map(|(id, handler, n)| ((id, handler), i64::from(n))),
        ))
    }

    async fn inbox_unreserve<'t>(
        &'t self,
        tx: &'t mut Tx<Postgres>,
        keys: &'t [(Uuid, &'t str)],
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (ids, handlers): (Vec<Uuid>, Vec<&str>) = keys.iter().copied().unzip();
        sqlx::query(
            "DELETE FROM outbox_inbox i USING UNNEST($1::uuid[], $2::text[]) AS k(message_id, handler)
             WHERE i.message_id = k.message_id AND i.handler = k.handler",
        )
        .bind(&ids)
        .bind(&handlers)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn begin_run<'t>(&'t self, tx: &'t mut Tx<Postgres>) -> Result<(), StoreError> {
        sqlx::raw_sql(BEGIN_RUN_SQL).execute(&mut **tx).await?;
        Ok(())
    }

    async fn end_run<'t>(&'t self, tx: &'t mut Tx<Postgres>, keep: bool) -> Result<(), StoreError> {
        let sql = if keep { KEEP_RUN_SQL } else { UNDO_RUN_SQL };
        sqlx::raw_sql(sql).execute(&mut **tx).await?;
        Ok(())
    }

    async fn record_handler_failure<'t>(
        &'t self,
        tx: &'t mut Tx<Postgres>,
        message_id: Uuid,
        handler: &'t str,
        error: &'t str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_attempts (message_id, handler, failures, last_error)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (message_id, handler) DO UPDATE
             SET failures = outbox_attempts.failures + 1, last_error = EXCLUDED.last_error, updated_at = now()",
        )
        .bind(message_id)
        .bind(handler)
        .bind(error)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn dead_letter<'t>(
        &'t self,
        tx: &'t mut Tx<Postgres>,
        entry: &'t DeadLetter,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_dead_letters (message_id, handler, message_type, group_key, body, error, attempts)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(entry.message_id)
        .bind(&entry.handler)
        .bind(&entry.message_type)
        .bind(&entry.group)
        .bind(&entry.body)
        .bind(&entry.error)
        .bind(i32::try_from(entry.attempts).unwrap_or(i32::MAX))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn cleanup(&self, policy: &RetentionPolicy) -> Result<CleanupReport, StoreError> {
        let batch = i64::from(policy.batch_size.max(1));
        Ok(CleanupReport {
            published_deleted: self
                .delete_in_batches(
                    "DELETE FROM outbox WHERE seq IN (
                         SELECT seq FROM outbox
                         WHERE status = 'published' AND published_at < now() - $1 * interval '1 millisecond'
                         ORDER BY seq LIMIT $2)",
                    policy.published_for,
                    batch,
                )
                .await?,
            inbox_deleted: self
                .delete_in_batches(
                    "DELETE FROM outbox_inbox WHERE (message_id, handler) IN (
                         SELECT message_id, handler FROM outbox_inbox
                         WHERE handled_at < now() - $1 * interval '1 millisecond'
                         LIMIT $2)",
                    policy.inbox_for,
                    batch,
                )
                .await?,
            attempts_deleted: self
                .delete_in_batches(
                    "DELETE FROM outbox_attempts WHERE (message_id, handler) IN (
                         SELECT message_id, handler FROM outbox_attempts
                         WHERE updated_at < now() - $1 * interval '1 millisecond'
                         LIMIT $2)",
                    policy.inbox_for,
                    batch,
                )
                .await?,
        })
    }

    async fn stats(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT
                 count(*) FILTER (WHERE status IN ('pending', 'relayed')) AS pending,
                 count(*) FILTER (WHERE status = 'published') AS published,
                 count(*) FILTER (WHERE status = 'dead') AS dead,
                 (EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status IN ('pending', 'relayed'))) * 1000)::int8 AS oldest_ms,
                 (SELECT count(*) FROM outbox_dead_letters) AS dead_letters
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = |name: &str| -> Result<u64, StoreError> {
            Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
        };
        let oldest: Option<i64> = row.try_get("oldest_ms")?;
        Ok(OutboxStats {
            pending: count("pending")?,
            oldest_pending_age: oldest.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
            published: count("published")?,
            dead: count("dead")?,
            dead_letters: count("dead_letters")?,
        })
    }

    async fn group_stats(&self, limit: u32) -> Result<Vec<GroupStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT group_key,
                    count(*) FILTER (WHERE status IN ('pending', 'relayed')) AS pending,
                    (EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status IN ('pending', 'relayed'))) * 1000)::int8 AS oldest_ms,
                    count(*) FILTER (WHERE status = 'dead') AS dead
             FROM outbox WHERE status IN ('pending', 'relayed', 'dead')
             GROUP BY group_key
             ORDER BY oldest_ms DESC NULLS LAST, group_key
             LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let oldest: Option<i64> = row.try_get("oldest_ms")?;
                Ok(GroupStats {
                    group: row.try_get("group_key")?,
                    pending: u64::try_from(row.try_get::<i64, _>("pending")?).unwrap_or(0),
                    oldest_pending_age: oldest
                        .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
                    dead: u64::try_from(row.try_get::<i64, _>("dead")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn rows(
        &self,
        status: Option<RowStatus>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, message_type, version, group_key, queue, status, attempts, last_error, created_at, published_at
             FROM outbox WHERE $1::text IS NULL OR status = $1
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(status.map(RowStatus::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAD_LETTER_COLUMNS} ORDER BY id DESC LIMIT $1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_dead_letter).collect()
    }

    async fn dead_letter_by_id(&self, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEAD_LETTER_COLUMNS} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_dead_letter).transpose()
    }

    async fn replay_dead_letter(&self, id: i64, replay: &Outgoing) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(handler) = sqlx::query_scalar::<_, Option<String>>(
            "DELETE FROM outbox_dead_letters WHERE id = $1 RETURNING handler",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let original = replay.envelope.original_id();
        sqlx::query("DELETE FROM outbox_inbox WHERE message_id = $1 AND handler = $2")
            .bind(original)
            .bind(&handler)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM outbox_attempts WHERE message_id = $1 AND ($2::text IS NULL OR handler = $2)",
        )
        .bind(original)
        .bind(&handler)
        .execute(&mut *tx)
        .await?;
        self.enqueue_all(&mut tx, std::slice::from_ref(replay))
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM outbox_dead_letters WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn requeue_dead_row(&self, seq: i64) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL,
                 available_at = now(), lease_until = NULL
             WHERE seq = $1 AND status = 'dead'",
        )
        .bind(seq)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn purge_dead_row(&self, seq: i64) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq = $1 AND status = 'dead'")
            .bind(seq)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }
}
