//! The [`Relay`]: claims pending outbox rows and publishes them through a
//! transport, keeping per-group order.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::pump::RelayWaker;
use crate::store::{ClaimedMessage, PublishFailure, Settlement, Store, StoreError};
use crate::transport::{EntryErrorKind, PublishEntry, Transport};

/// The longest pause of [`Relay::run`] between drains while the transport is
/// down.
const MAX_OUTAGE_PAUSE: Duration = Duration::from_secs(30);

/// How many times a relay tries a settlement again after a transient error.
const SETTLE_RETRIES: u32 = 3;

/// The future an [`OutboxDrain`] returns.
pub type DrainFuture<'a> =
    Pin<Box<dyn Future<Output = Result<DrainReport, RelayError>> + Send + 'a>>;

/// A [`Relay`] with its store and transport types erased, so that a consumer
/// can drain the outbox when a pump message arrives without knowing them.
pub trait OutboxDrain: Send + Sync {
    /// Drains until no row can be claimed or `deadline` passes.
    fn drain_before(&self, deadline: Option<tokio::time::Instant>) -> DrainFuture<'_>;
}

/// Settings of a [`Relay`].
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Rows claimed per batch. Default: 100.
    pub batch_size: u32,
    /// How long a claim is exclusive. A relay that dies holds its groups this
    /// long; one that takes longer than this to publish a batch may see the
    /// batch published twice (deduplicated by id downstream). Default: 30 s.
    pub lease: Duration,
    /// Publish attempts per row before it is dead-lettered. Attempts that fail
    /// because the whole transport is down are not counted against it and
    /// never dead-letter it. Default: 10.
    pub max_attempts: u32,
    /// Delay between attempts of one row. Default: [`Backoff::default`]
    /// (1 s, doubling, at most 300 s, jittered).
    pub backoff: Backoff,
    /// How often [`Relay::run`] drains without being woken: the sweep that
    /// recovers lost pumps and retries rows whose backoff ran out. Default:
    /// 1 s.
    pub sweep_interval: Duration,
    /// On a non-durable transport, how long a published row waits for a
    /// consumer to confirm it before it is published again. The relay
    /// renews it every third of this while it lives (before each claim of a
    /// drain, once due), so only a process that died lets its rows go: another
    /// process publishes them again after this long (the inbox absorbs a
    /// repeat). Keep it below the queue's deduplication window (the
    /// in-process queue's: 5 minutes). Default: 60 s.
    pub relayed_for: Duration,
    /// How many chunks of a batch (of the transport's
    /// [`max_batch`](Transport::max_batch) entries each) are published at
    /// once. A group's rows stay in one lane, published chunk after chunk
    /// in sequence order; lanes run at once. Against a queue that takes
    /// tens of milliseconds per call (SQS on AWS), this is what one relay's
    /// rate scales with. Default: 10 (a default batch of 100 rows, in
    /// chunks of 10, is sent at once).
    pub publish_concurrency: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 100,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff: Backoff::default(),
            sweep_interval: Duration::from_secs(1),
            relayed_for: Duration::from_secs(60),
            publish_concurrency: 10,
        }
    }
}

/// What one [`Relay::drain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Batches claimed.
    pub batches: u64,
    /// Rows published.
    pub published: u64,
    /// Rows whose attempt failed and that will be retried.
    pub retried: u64,
    /// Rows dead-lettered.
    pub dead: u64,
    /// Set when the drain stopped early because the transport is down; the
    /// rows wait out their backoff.
    pub transport_down: Option<String>,
    /// Whether the drain ran until nothing could be claimed (false when a
    /// deadline cut it short).
    pub complete: bool,
}

/// A relay could not drain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The store failed: what the batch did was not recorded, and its groups
    /// are claimed again once their leases run out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Claims pending rows from a [`Store`] and publishes them through a
/// [`Transport`]: in sequence order, one relay per group at a time, a group
/// stopped at its first failure, failures retried with backoff and then
/// dead-lettered. Safe to run in several processes at once.
pub struct Relay<S, T> {
    store: S,
    transport: Arc<T>,
    config: RelayConfig,
    metrics: Arc<Metrics>,
    /// Claims whose rows sit `relayed` in this process's queue, and when
    /// they were last renewed. Shared by clones (one transport).
    relayed: Arc<Mutex<Relayed>>,
}

#[derive(Default)]
struct Relayed {
    leases: HashSet<Uuid>,
    renewed: Option<Instant>,
}

impl<S: Clone, T> Clone for Relay<S, T> {
    fn clone(&self) -> Self {
        Relay {
            store: self.store.clone(),
            transport: Arc::clone(&self.transport),
            config: self.config,
            metrics: Arc::clone(&self.metrics),
            relayed: Arc::clone(&self.relayed),
        }
    }
}

impl<S, T> std::fmt::Debug for Relay<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Store, T: Transport> Relay<S, T> {
    /// A relay with the default settings.
    pub fn new(store: S, transport: Arc<T>) -> Self {
        Relay {
            store,
            transport,
            config: RelayConfig::default(),
            metrics: Arc::default(),
            relayed: Arc::default(),
        }
    }

    /// Replaces the settings.
    #[must_use]
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Shares counters with other parts (a worker, a dashboard).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Publishes batches until no row can be claimed: the outbox is empty,
    /// or every remaining group waits on a backoff or another relay's lease.
    /// Stops early, without error, when the transport is down.
    pub async fn drain(&self) -> Result<DrainReport, RelayError> {
        self.drain_until(None).await
    }

    /// Like [`drain`](Self::drain), but claims no new batch once `deadline`
    /// has passed (a Lambda's remaining time); `complete` is then false. The
    /// first batch is always claimed, so every drain makes progress.
    pub async fn drain_until(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<DrainReport, RelayError> {
        self.drain_while(deadline, None).await
    }

    /// [`drain_until`](Self::drain_until), claiming nothing more once
    /// `stop` is set.
    async fn drain_while(
        &self,
        deadline: Option<tokio::time::Instant>,
        stop: Option<&AtomicBool>,
    ) -> Result<DrainReport, RelayError> {
        let mut report = DrainReport::default();
        loop {
            // Before each claim: a long drain renews its early rows too.
            self.renew_relayed().await;
            // The first batch is claimed whatever the deadline says, so that
            // every drain makes progress (a pump that re-pumps without
            // draining would loop forever).
            if report.batches > 0 && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(report);
            }
            // Checked last before the claim: a stop that came during the
            // renewal claims nothing.
            if stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
                return Ok(report);
            }
            let batch = self
                .store
                .claim(self.config.batch_size, self.config.lease)
                .await?;
            if batch.is_empty() {
                report.complete = true;
                return Ok(report);
            }
            report.batches += 1;
            let span = tracing::info_span!(
                "outbox.relay.batch",
                rows = batch.len(),
                otel.name = "publish",
                otel.kind = "producer",
                messaging.system = self.transport.messaging_system(),
                messaging.operation.type = "send",
                messaging.batch.message_count = batch.len(),
            );
            continue_traces(&span, &batch);
            self.publish_batch(batch, &mut report)
                .instrument(span)
                .await?;
            if report.transport_down.is_some() {
                // Nothing more can be published now; the rows' backoff and
                // the sweep take it from here.
                report.complete = true;
                return Ok(report);
            }
        }
    }

    /// Drains whenever `waker` wakes it and every `sweep_interval`, until
    /// `shutdown` resolves: then it claims no further batch, settles the
    /// one it is publishing, and returns. Store errors are logged and
    /// retried at the next sweep.
    ///
    /// While the transport is down, it pauses between drains for the
    /// backoff's growing delays (at most 30 s, at least `sweep_interval`),
    /// and wakes do not cut the pause short: an outage costs a few calls, not
    /// a loop of them.
    pub async fn run(&self, waker: RelayWaker, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Drains in a row that found the transport down.
        let mut outage: u32 = 0;
        let stop = AtomicBool::new(false);
        loop {
            let drain = self.drain_while(None, Some(&stop));
            tokio::pin!(drain);
            // Shutdown first: once it has come, the drain (even one not
            // started yet) claims nothing more and only settles its batch.
            let (drained, stopped) = tokio::select! {
                biased;
                () = &mut shutdown => {
                    stop.store(true, Ordering::Relaxed);
                    (drain.await, true)
                }
                drained = &mut drain => (drained, false),
            };
            match drained {
                Ok(report) => {
                    if report.published + report.retried + report.dead > 0 {
                        tracing::debug!(?report, "relay drained");
                    }
                    outage = if report.transport_down.is_some() {
                        outage.saturating_add(1)
                    } else {
                        0
                    };
                }
                Err(err) => {
                    tracing::warn!(error = %err, "relay drain failed; retrying at the next sweep")
                }
            }
            if stopped {
                return;
            }
            if outage > 0 {
                let pause = self
                    .config
                    .backoff
                    .delay(outage)
                    .min(MAX_OUTAGE_PAUSE)
                    .max(self.config.sweep_interval);
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = waker.woken() => {}
                () = tokio::time::sleep(self.config.sweep_interval) => {}
            }
        }
    }

    /// Renews the confirmation deadline of the rows this relay handed to its
    /// non-durable queue, once a third of `relayed_for` has passed since the
    /// last renewal, and forgets claims whose rows are all confirmed. A
    /// failure is logged: the rows are renewed at the next drain, or
    /// published again once their deadline passes.
    async fn renew_relayed(&self) {
        let leases: Vec<Uuid> = {
            let relayed = self.lock_relayed();
            let due = relayed
                .renewed
                .is_none_or(|at| at.elapsed() >= self.config.relayed_for / 3);
            if relayed.leases.is_empty() || !due {
                return;
            }
            relayed.leases.iter().copied().collect()
        };
        match self
            .store
            .renew_relayed(&leases, self.config.relayed_for)
            .await
        {
            Ok(held) => {
                let held: HashSet<Uuid> = held.into_iter().collect();
                let mut relayed = self.lock_relayed();
                // Claims relayed since the query started are kept.
                relayed
                    .leases
                    .retain(|lease| held.contains(lease) || !leases.contains(lease));
                relayed.renewed = Some(Instant::now());
            }
            Err(err) => tracing::warn!(error = %err, "could not renew relayed rows"),
        }
    }

    /// Makes the rows this relay handed to its non-durable queue and no
    /// consumer confirmed pending again, so that the next claim (this
    /// process's or another's) relays them at once instead of after
    /// `relayed_for`. For a shutdown, once this relay's [`run`](Self::run)
    /// has returned (a drain running beside it would renew and hold them
    /// again) and the workers have stopped (rows released under a live
    /// worker are delivered twice; the inbox keeps the handlers from
    /// running twice). Returns how many rows it released.
    ///
    /// # Errors
    ///
    /// The store failed; the rows are relayed again after `relayed_for`.
    pub async fn release_relayed(&self) -> Result<u64, RelayError> {
        let leases: Vec<Uuid> = self.lock_relayed().leases.iter().copied().collect();
        let released = self.store.release_relayed(&leases).await?;
        let mut relayed = self.lock_relayed();
        relayed.leases.retain(|lease| !leases.contains(lease));
        Ok(released)
    }

    fn lock_relayed(&self) -> std::sync::MutexGuard<'_, Relayed> {
        self.relayed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn publish_batch(
        &self,
        batch: Vec<ClaimedMessage>,
        report: &mut DrainReport,
    ) -> Result<(), RelayError> {
        let Some(lease) = batch.first().map(|m| m.lease) else {
            return Ok(());
        };
        let lanes = lanes(&batch, self.config.publish_concurrency);
        let results = LaneResults::default();
        {
            let mut running: FuturesUnordered<_> = lanes
                .iter()
                .map(|lane| self.publish_lane(lane, &results))
                .collect();
            // The first lane to find the transport down stops the others:
            // their calls in flight are dropped, not waited for through the
            // client's retries, and their rows are released.
            while let Some(down) = running.next().await {
                if down.is_some() {
                    report.transport_down = down;
                    break;
                }
            }
        }
        let (published, failures) = results.into_inner();

        // One transaction: what was published, what failed, and the lease
        // given back. On a transport that dies with the process, published
        // rows stay in the outbox, holding their groups, until a consumer
        // confirms them.
        let durable = self.transport.durable();
        let settlement = Settlement {
            claimed: &batch,
            published: &published,
            confirm_within: (!durable).then_some(self.config.relayed_for),
            failures: &failures,
        };
        // A settlement that failed on a transient error (a connection lost)
        // is tried again: otherwise its groups would wait out the lease. One
        // that committed unbeknownst to us finds its lease given back and
        // writes nothing the second time.
        let mut retries = 0;
        loop {
            match self.store.settle(settlement).await {
                Ok(()) => break,
                Err(err) if err.is_transient() && retries < SETTLE_RETRIES => {
                    retries += 1;
                    tracing::debug!(error = %err, retries, "settlement failed; trying again");
                    tokio::time::sleep(Duration::from_millis(20) * retries).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        if !durable && !published.is_empty() {
            let mut relayed = self.lock_relayed();
            if relayed.leases.is_empty() {
                relayed.renewed = Some(Instant::now());
            }
            relayed.leases.insert(lease);
        }

        record_time_in_outbox(&batch, &published);
        let dead = failures.iter().filter(|f| f.retry_after.is_none()).count() as u64;
        report.published += published.len() as u64;
        report.dead += dead;
        report.retried += failures.len() as u64 - dead;
        self.metrics.add_published(published.len() as u64);
        self.metrics.add_publish_failures(failures.len() as u64);
        self.metrics.add_relay_dead(dead);
        Ok(())
    }

    /// Publishes one lane's rows in chunks of the transport's batch size, one
    /// chunk after another, into `results` as each chunk returns: a group
    /// stops at its first failure (its later rows are released by the
    /// settlement). Returns the error when the transport is down, which ends
    /// the lane.
    async fn publish_lane(
        &self,
        lane: &[&ClaimedMessage],
        results: &LaneResults,
    ) -> Option<String> {
        let mut blocked: HashSet<&str> = HashSet::new();
        let max_batch = self.transport.max_batch().max(1);
        let mut rest = lane.iter().peekable();
        while rest.peek().is_some() {
            // Each body is serialized once, when its row joins a chunk, and
            // moved into the entry the transport takes.
            let mut messages: Vec<&ClaimedMessage> = Vec::with_capacity(max_batch);
            let mut entries: Vec<PublishEntry<'_>> = Vec::with_capacity(max_batch);
            while entries.len() < max_batch {
                let Some(&message) = rest.next() else {
                    break;
                };
                if blocked.contains(message.envelope.group.as_str()) {
                    continue;
                }
                messages.push(message);
                entries.push(PublishEntry {
                    envelope: &message.envelope,
                    queue: message.queue.as_deref(),
                    body: message.envelope.to_json(),
                });
            }
            if entries.is_empty() {
                break;
            }
            match self.transport.publish(&entries).await {
                Ok(outcomes) => {
                    let mut published = lock(&results.published);
                    let mut failures = lock(&results.failures);
                    for (message, outcome) in messages.iter().zip(outcomes) {
                        let Err(err) = outcome else {
                            published.push(message.seq);
                            continue;
                        };
                        blocked.insert(message.envelope.group.as_str());
                        // A held-back row is released by the settlement.
                        if err.kind != EntryErrorKind::HeldBack {
                            failures.push(self.failure(message, err.to_string(), err.kind));
                        }
                    }
                }
                Err(err) => {
                    // Nothing in this chunk is known to be published; nothing
                    // after it is attempted.
                    tracing::warn!(error = %err, "transport unavailable; rows wait out their backoff");
                    lock(&results.failures).extend(messages.iter().map(|message| {
                        self.failure(message, err.to_string(), EntryErrorKind::Unavailable)
                    }));
                    return Some(err.to_string());
                }
            }
        }
        None
    }

    /// The failure record of one attempt: retry after a backoff, or dead when
    /// the error is permanent or the row is out of attempts. An unavailable
    /// queue uses up no attempt and never dead-letters a row.
    fn failure(
        &self,
        message: &ClaimedMessage,
        error: String,
        kind: EntryErrorKind,
    ) -> PublishFailure {
        let permanent = kind == EntryErrorKind::Permanent;
        let counts = kind != EntryErrorKind::Unavailable;
        let attempt = message.attempts + 1;
        let out_of_attempts = counts && attempt >= self.config.max_attempts;
        let retry_after = if permanent || out_of_attempts {
            tracing::error!(
                message.id = %message.envelope.id,
                message.type = %message.envelope.message_type,
                message.group = %message.envelope.group,
                attempt,
                %error,
                "outbox row dead-lettered"
            );
            None
        } else {
            Some(self.config.backoff.delay(attempt))
        };
        PublishFailure {
            seq: message.seq,
            error,
            retry_after,
            counts,
        }
    }
}

/// What the lanes of a batch published and what failed, written as each
/// chunk returns (so a lane stopped early loses nothing it learned).
#[derive(Default)]
struct LaneResults {
    published: Mutex<Vec<i64>>,
    failures: Mutex<Vec<PublishFailure>>,
}

impl LaneResults {
    fn into_inner(self) -> (Vec<i64>, Vec<PublishFailure>) {
        (
            self.published
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            self.failures
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// With feature `otel`, ties the batch's span to the traces of its
/// messages' producers: their child when they are all of one trace, or
/// linked to each otherwise (a batch joins several traces).
fn continue_traces(span: &tracing::Span, batch: &[ClaimedMessage]) {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if span.is_disabled() {
            return;
        }
        let mut contexts: Vec<opentelemetry::trace::SpanContext> = Vec::new();
        for message in batch {
            if let Some(context) = message.envelope.headers.producer_trace() {
                let context = context.span().span_context().clone();
                if !contexts.contains(&context) {
                    contexts.push(context);
                }
            }
        }
        let Some(first) = contexts.first() else {
            return;
        };
        if contexts.iter().all(|c| c.trace_id() == first.trace_id()) {
            let parent = opentelemetry::Context::new().with_remote_span_context(first.clone());
            let _ = span.set_parent(parent);
        } else {
            for context in contexts {
                span.add_link(context);
            }
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, batch);
}

/// Records, for each published row, how long it waited in the outbox.
fn record_time_in_outbox(batch: &[ClaimedMessage], published: &[i64]) {
    if published.is_empty() {
        return;
    }
    let mut seqs = published.to_vec();
    seqs.sort_unstable();
    let histogram = ::metrics::histogram!(crate::metrics::COMMIT_TO_PUBLISH_SECONDS);
    for message in batch {
        if seqs.binary_search(&message.seq).is_ok() {
            histogram.record(crate::metrics::seconds_since(message.envelope.created_at));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Splits a batch (each group's rows in sequence order) into at most
/// `concurrency` lanes, each group's rows in one lane and in order: a
/// group's chunks are published one after another, different lanes at
/// once. Each group joins the lane with the fewest rows so far.
fn lanes(batch: &[ClaimedMessage], concurrency: usize) -> Vec<Vec<&ClaimedMessage>> {
    let mut lanes: Vec<Vec<&ClaimedMessage>> = vec![Vec::new(); concurrency.max(1)];
    let mut lane_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for message in batch {
        let group = message.envelope.group.as_str();
        let lane = *lane_of.entry(group).or_insert_with(|| {
            (0..lanes.len())
                .min_by_key(|&i| lanes[i].len())
                .unwrap_or(0)
        });
        lanes[lane].push(message);
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

impl<S: Store, T: Transport> OutboxDrain for Relay<S, T> {
    fn drain_before(&self, deadline: Option<tokio::time::Instant>) -> DrainFuture<'_> {
        Box::pin(self.drain_until(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(rows: &[(&str, i64)]) -> Vec<ClaimedMessage> {
        rows.iter()
            .map(|&(group, seq)| ClaimedMessage {
                seq,
                envelope: crate::envelope::Envelope {
                    id: Uuid::now_v7(),
                    message_type: "t".into(),
                    version: 1,
                    group: group.into(),
                    payload: serde_json::value::RawValue::from_string("{}".into()).expect("JSON"),
                    created_at: chrono::Utc::now(),
                    headers: crate::envelope::Headers::default(),
                },
                queue: None,
                attempts: 0,
                lease: Uuid::nil(),
            })
            .collect()
    }

    fn seqs(lanes: &[Vec<&ClaimedMessage>]) -> Vec<Vec<i64>> {
        lanes
            .iter()
            .map(|lane| lane.iter().map(|m| m.seq).collect())
            .collect()
    }

    #[test]
    fn a_groups_rows_stay_in_one_lane_in_order_and_groups_spread_over_the_lanes() {
        let batch = claimed(&[
            ("a", 1),
            ("b", 2),
            ("a", 3),
            ("c", 4),
            ("c", 5),
            ("d", 6),
            ("a", 7),
        ]);
        let lanes = lanes(&batch, 2);
        // a → lane 0; b → lane 1; c → lane 1 (1 row against a's 2); d → lane 0
        // (2 rows against 3).
        assert_eq!(seqs(&lanes), [vec![1, 3, 6, 7], vec![2, 4, 5]]);
    }

    #[test]
    fn one_lane_or_one_group_publishes_in_sequence_order() {
        let batch = claimed(&[("a", 1), ("b", 2), ("a", 3)]);
        assert_eq!(seqs(&lanes(&batch, 1)), [vec![1, 2, 3]]);
        assert_eq!(seqs(&lanes(&batch, 0)), [vec![1, 2, 3]], "0 means 1");
        let one = claimed(&[("a", 1), ("a", 2), ("a", 3)]);
        assert_eq!(seqs(&lanes(&one, 10)), [vec![1, 2, 3]]);
    }
}
