//! Drives one schedule on a store: producers commit while consumer nodes
//! relay and handle, faults hit them, an operator replays dead letters; then
//! the faults stop, the doomed handlers are fixed, and everything runs until
//! the outbox, the queues and the dead letters are empty (or the settle
//! bound passes).
//!
//! A node is relays and workers, each a spawned task looping on
//! `Relay::drain` or `Worker::run_once`, so a fault can abort it at any
//! await point (its future is dropped mid-claim, mid-publish, mid-handler,
//! mid-commit). In process, each node has an [`InProcessQueue`] of its own
//! (a process of the app); on SQS, the node uses the schedule's FIFO queue
//! on the local server.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_runtime::consume::Consumer;
use outbox_runtime::{
    Dispatcher, InProcessQueue, Relay, StoreExt, Worker,
    admin::{self, Resume},
    backoff::Backoff,
    consume::{ConsumerConfig, WorkerConfig},
    envelope::OutgoingEnvelope,
    metrics::Metrics,
    relay::RelayConfig,
    store::AdminStore,
    transport::{InProcessConfig, Receiver, Transport},
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::HandlerName;
use crate::db::HistoryStore;
use crate::plan::{EnqueueStyle, FaultKind, NodeShape, Plan, TxPlan};
use crate::record::{Recorder, Run, SeenDeadLetter};

/// How long a schedule may take to settle once the faults stop. A healthy
/// one needs a few seconds at most: the time a killed node's relayed rows
/// wait for their confirmation ([`RELAYED_FOR`]), plus retries.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// How long a received message stays invisible; the worker's heartbeat
/// ([`HEARTBEAT`]) extends it while a batch is handled, so it only decides
/// how soon a killed worker's messages come back.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a worker extends the visibility of the batch it handles.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// The visibility timeout of the schedule's SQS queue, and the heartbeat
/// there (it extends by twice as much, in whole seconds). Long: when a
/// batch's messages time out together, the local server may deliver a
/// group's later message first (see `Plan::on_sqs`), and 200 schedules on
/// a loaded machine (`scripts/reliability`) made a 1 s timeout expire.
#[cfg(feature = "sqs")]
const SQS_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(10);
#[cfg(feature = "sqs")]
const SQS_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a relayed row waits for its confirmation before it is claimed
/// again (`RelayConfig::relayed_for`): how long a killed node's rows take to
/// come back. A live node's relay renews its rows every third of it.
const RELAYED_FOR: Duration = Duration::from_millis(1500);

/// A relay's claim: from the claim to its settlement, a few milliseconds
/// unless the relay is killed (then its groups wait this long).
const LEASE: Duration = Duration::from_secs(1);

/// A relay's claim on SQS, where publishing a batch to the local server
/// takes hundreds of milliseconds on a loaded machine: long enough that no
/// lease runs out mid-publish (no relay is killed there).
#[cfg(feature = "sqs")]
const SQS_LEASE: Duration = Duration::from_secs(10);

/// What a schedule did, besides what it left in the database.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// Every handler run.
    pub(crate) runs: Vec<Run>,
    /// Every dead letter: those the operator replayed, and those left.
    pub(crate) dead_letters: Vec<SeenDeadLetter>,
    /// Whether a task was killed (a failed run may then go unrecorded by
    /// the library, so attempts are only bounded, not exact).
    pub(crate) killed: bool,
    /// Keys of the messages of rolled-back transactions.
    pub(crate) rolled_back: HashSet<Uuid>,
    /// The delayed messages' keys, each with the time it was enqueued for
    /// (not handled before it).
    pub(crate) due: HashMap<Uuid, chrono::DateTime<chrono::Utc>>,
    /// Set when the schedule did not settle in time.
    pub(crate) unsettled: Option<Unsettled>,
    /// What went wrong outside the checks: a producer transaction failed, a
    /// relay or worker task panicked.
    pub(crate) trouble: Vec<String>,
    /// Redeliveries the inbox absorbed, by the consumers' counters.
    pub(crate) duplicates_suppressed: u64,
}

/// A schedule that did not settle within [`SETTLE_LIMIT`].
#[derive(Debug)]
pub(crate) struct Unsettled {
    /// Groups with rows still pending or relayed, or with dead letters.
    pub(crate) groups: BTreeSet<String>,
    /// The outbox and queue counts at the bound.
    pub(crate) state: String,
}

/// Problems seen by tasks, collected for the schedule's report.
#[derive(Clone, Debug, Default)]
struct Trouble(Arc<Mutex<Vec<String>>>);

impl Trouble {
    fn note(&self, what: String) {
        self.0
            .lock()
            .expect("never locked across a panic")
            .push(what);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("never locked across a panic"))
    }
}

/// What every node is built from.
struct Wiring<S> {
    store: S,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    trouble: Trouble,
}

fn fast_backoff(initial_ms: u64, max_ms: u64) -> Backoff {
    Backoff {
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_millis(max_ms),
        multiplier: 2.0,
        jitter: true,
    }
}

/// Where a schedule's messages travel.
#[derive(Clone, Debug)]
pub(crate) enum Queues {
    /// An in-process queue per node.
    InProcess,
    /// One SQS FIFO queue for every node, made for the schedule.
    #[cfg(feature = "sqs")]
    Sqs(SqsQueue),
}

/// A FIFO queue on the local SQS server.
#[cfg(feature = "sqs")]
#[derive(Clone, Debug)]
pub(crate) struct SqsQueue {
    pub(crate) client: aws_sdk_sqs::Client,
    pub(crate) url: String,
}

#[cfg(feature = "sqs")]
impl SqsQueue {
    /// A new FIFO queue (a unique name per schedule).
    pub(crate) async fn create(client: aws_sdk_sqs::Client) -> Self {
        use aws_sdk_sqs::types::QueueAttributeName;
        let url = client
            .create_queue()
            .queue_name(format!("history-{}.fifo", Uuid::now_v7().simple()))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                SQS_VISIBILITY_TIMEOUT.as_secs().to_string(),
            )
            .send()
            .await
            .expect("the local SQS server creates a queue")
            .queue_url
            .expect("a created queue has a URL");
        SqsQueue { client, url }
    }

    /// Messages in the queue, visible, in flight or delayed (`u64::MAX`
    /// when the server does not answer).
    async fn queued(&self) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName;
        let Ok(got) = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
        else {
            return u64::MAX;
        };
        got.attributes()
            .into_iter()
            .flatten()
            .map(|(_, n)| n.parse::<u64>().unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add)
    }
}

/// A node's queue, as the faults and the settling see it.
enum NodeQueue {
    InProcess(Arc<InProcessQueue>),
    #[cfg(feature = "sqs")]
    Sqs(SqsQueue),
}

impl NodeQueue {
    async fn queued(&self) -> u64 {
        match self {
            NodeQueue::InProcess(queue) => queue.stats().queued,
            #[cfg(feature = "sqs")]
            NodeQueue::Sqs(queue) => queue.queued().await,
        }
    }
}

/// Starts a relay or a worker task.
type Spawn = Box<dyn Fn() -> JoinHandle<()> + Send + Sync>;

/// A consumer node: a queue, its relays and its workers.
struct Node {
    queue: NodeQueue,
    spawn_relay: Spawn,
    spawn_worker: Spawn,
    relays: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Node {
    fn start<S: HistoryStore>(wiring: &Wiring<S>, shape: NodeShape, queues: &Queues) -> Self {
        let (queue, spawn_relay, spawn_worker): (NodeQueue, Spawn, Spawn) = match queues {
            Queues::InProcess => {
                let queue = Arc::new(InProcessQueue::with_config(InProcessConfig {
                    visibility_timeout: VISIBILITY_TIMEOUT,
                    ..InProcessConfig::default()
                }));
                let relay = relay(wiring, shape, Arc::clone(&queue), LEASE);
                let worker = worker(wiring, shape, Arc::clone(&queue), HEARTBEAT);
                (
                    NodeQueue::InProcess(queue),
                    Box::new(move || spawn_relay(relay.clone())),
                    Box::new(move || spawn_worker(worker.clone())),
                )
            }
            #[cfg(feature = "sqs")]
            Queues::Sqs(sqs) => {
                let transport =
                    outbox_runtime::transport::sqs::SqsTransport::new(sqs.client.clone(), &sqs.url);
                let receiver =
                    outbox_runtime::transport::sqs::SqsReceiver::new(sqs.client.clone(), &sqs.url);
                let relay = relay(wiring, shape, Arc::new(transport), SQS_LEASE);
                let worker = worker(wiring, shape, Arc::new(receiver), SQS_HEARTBEAT);
                (
                    NodeQueue::Sqs(sqs.clone()),
                    Box::new(move || spawn_relay(relay.clone())),
                    Box::new(move || spawn_worker(worker.clone())),
                )
            }
        };
        let mut node = Node {
            queue,
            spawn_relay,
            spawn_worker,
            relays: Vec::new(),
            workers: Vec::new(),
        };
        for _ in 0..shape.relays {
            let task = (node.spawn_relay)();
            node.relays.push(task);
        }
        for _ in 0..shape.workers {
            let task = (node.spawn_worker)();
            node.workers.push(task);
        }
        node
    }

    /// Aborts one relay (chosen by `pick`) and starts a fresh one.
    async fn restart_relay(&mut self, pick: u64, trouble: &Trouble) {
        let at = pick_index(pick, self.relays.len());
        let fresh = (self.spawn_relay)();
        stop(
            std::mem::replace(&mut self.relays[at], fresh),
            "relay",
            trouble,
        )
        .await;
    }

    /// Aborts one worker (chosen by `pick`) and starts a fresh one.
    async fn restart_worker(&mut self, pick: u64, trouble: &Trouble) {
        let at = pick_index(pick, self.workers.len());
        let fresh = (self.spawn_worker)();
        stop(
            std::mem::replace(&mut self.workers[at], fresh),
            "worker",
            trouble,
        )
        .await;
    }

    /// Aborts every task; the queue dies with the node.
    async fn stop(self, trouble: &Trouble) {
        for task in self.relays {
            stop(task, "relay", trouble).await;
        }
        for task in self.workers {
            stop(task, "worker", trouble).await;
        }
    }
}

fn relay<S: HistoryStore, T: Transport>(
    wiring: &Wiring<S>,
    shape: NodeShape,
    transport: Arc<T>,
    lease: Duration,
) -> Relay<S, T> {
    Relay::new(wiring.store.clone(), transport)
        .with_config(RelayConfig {
            batch_size: shape.relay_batch,
            lease,
            backoff: fast_backoff(10, 100),
            sweep_interval: Duration::from_millis(50),
            relayed_for: RELAYED_FOR,
            ..RelayConfig::default()
        })
        .with_metrics(Arc::clone(&wiring.metrics))
}

fn worker<S: HistoryStore, R: Receiver>(
    wiring: &Wiring<S>,
    shape: NodeShape,
    receiver: Arc<R>,
    heartbeat: Duration,
) -> Worker<S, R> {
    Worker::new(
        Consumer::new(wiring.store.clone(), Arc::clone(&wiring.dispatcher))
            .with_config(ConsumerConfig {
                default_max_attempts: crate::MAX_ATTEMPTS,
                retry_backoff: fast_backoff(5, 40),
                runs_per_transaction: shape.runs_per_transaction,
                savepoints: shape.savepoints,
            })
            .with_metrics(Arc::clone(&wiring.metrics)),
        receiver,
    )
    .with_config(WorkerConfig {
        batch_size: shape.worker_batch,
        linger: Duration::from_millis(5),
        wait: Duration::from_millis(20),
        retention: None,
        stuck_after: None,
        stats_interval: None,
        heartbeat: Some(heartbeat),
        drain_budget: shape.drain_budget,
    })
}

fn spawn_relay<S: HistoryStore, T: Transport>(relay: Relay<S, T>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let busy = matches!(
                relay.drain().await,
                Ok(report) if report.published > 0 && report.transport_down.is_none()
            );
            if !busy {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    })
}

fn spawn_worker<S: HistoryStore, R: Receiver>(worker: Worker<S, R>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Waits up to the worker's `wait` when the queue is empty.
            if worker.run_once().await.is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
}

fn pick_index(pick: u64, len: usize) -> usize {
    usize::try_from(pick % len.max(1) as u64).expect("an index fits a usize")
}

/// Aborts a task and waits until its future is dropped; a task that had
/// panicked is trouble.
async fn stop(task: JoinHandle<()>, what: &str, trouble: &Trouble) {
    task.abort();
    if let Err(err) = task.await
        && err.is_panic()
    {
        trouble.note(format!("a {what} task panicked: {err}"));
    }
}

/// Runs `plan` on `store` (whose tables are empty) and returns what happened.
pub(crate) async fn run<S: HistoryStore>(store: &S, plan: &Plan, queues: &Queues) -> Recorded {
    store.seed_clocks(&plan.groups).await;
    let recorder = Arc::new(Recorder::default());
    let wiring = Wiring {
        store: store.clone(),
        dispatcher: Arc::new(
            Dispatcher::from_registry()
                .expect("the checker's dispatch table is complete")
                .with_state(Arc::clone(&recorder)),
        ),
        metrics: Arc::new(Metrics::default()),
        trouble: Trouble::default(),
    };
    let trouble = &wiring.trouble;
    let mut nodes: Vec<Node> = plan
        .nodes
        .iter()
        .map(|&shape| Node::start(&wiring, shape, queues))
        .collect();

    let started = Instant::now();
    let producers: Vec<_> = plan
        .producers
        .iter()
        .map(|txs| tokio::spawn(produce(store.clone(), txs.clone())))
        .collect();
    let operator = tokio::spawn(operate(
        store.clone(),
        Arc::clone(&wiring.dispatcher),
        Arc::clone(&recorder),
    ));

    inject_faults(plan, &mut nodes, &wiring, queues, started).await;
    let mut rolled_back = HashSet::new();
    let mut due = HashMap::new();
    for producer in producers {
        match producer.await {
            Ok(Ok(done)) => {
                rolled_back.extend(done.rolled_back);
                due.extend(done.due);
            }
            Ok(Err(err)) => trouble.note(err),
            Err(err) => trouble.note(format!("a producer task failed: {err}")),
        }
    }

    // The final phase: no more faults, the bug is fixed, settle.
    recorder.fix();
    let unsettled = settle(store, &nodes).await;
    stop(operator, "operator", trouble).await;
    for node in nodes {
        node.stop(trouble).await;
    }
    // Dead letters written after the operator last looked.
    for letter in store
        .dead_letters(10_000)
        .await
        .expect("dead letters are readable")
    {
        recorder.saw_dead_letter(&letter);
    }
    let (runs, dead_letters) = recorder.snapshot();
    Recorded {
        runs,
        dead_letters,
        killed: plan.kills(),
        rolled_back,
        due,
        unsettled,
        trouble: trouble.take(),
        duplicates_suppressed: wiring.metrics.snapshot().duplicates_suppressed,
    }
}

/// The chaos: each fault at its time, then the end of the chaos, with every
/// queue back up.
async fn inject_faults<S: HistoryStore>(
    plan: &Plan,
    nodes: &mut Vec<Node>,
    wiring: &Wiring<S>,
    queues: &Queues,
    started: Instant,
) {
    let trouble = &wiring.trouble;
    let mut restores = Vec::new();
    for fault in &plan.faults {
        tokio::time::sleep_until(started + fault.at).await;
        let at = pick_index(fault.pick, nodes.len());
        let pick = fault.pick / nodes.len().max(1) as u64;
        match fault.kind {
            FaultKind::KillRelay => nodes[at].restart_relay(pick, trouble).await,
            FaultKind::KillWorker => nodes[at].restart_worker(pick, trouble).await,
            FaultKind::KillNode(shape) => {
                let node = nodes.swap_remove(at);
                node.stop(trouble).await;
                nodes.push(Node::start(wiring, shape, queues));
            }
            FaultKind::QueueDown(down) => {
                // Without the `sqs` feature, the queue has one kind.
                #[cfg_attr(not(feature = "sqs"), allow(irrefutable_let_patterns))]
                let NodeQueue::InProcess(queue) = &nodes[at].queue else {
                    unreachable!("SQS plans have no faults (Plan::on_sqs)");
                };
                let queue = Arc::clone(queue);
                queue.set_available(false);
                restores.push(tokio::spawn(async move {
                    tokio::time::sleep(down).await;
                    queue.set_available(true);
                }));
            }
        }
    }
    tokio::time::sleep_until(started + plan.chaos).await;
    for restore in restores {
        restore.await.expect("a queue comes back up");
    }
}

/// What one producer task did.
#[derive(Default)]
struct Produced {
    /// The keys it rolled back.
    rolled_back: Vec<Uuid>,
    /// The delayed keys it committed, with their times.
    due: Vec<(Uuid, chrono::DateTime<chrono::Utc>)>,
}

/// One producer task: its transactions in order.
async fn produce<S: HistoryStore>(store: S, txs: Vec<TxPlan>) -> Result<Produced, String> {
    let mut produced = Produced::default();
    for tx in txs {
        tokio::time::sleep(tx.gap).await;
        // As an app does: a transaction the database aborted to break a
        // deadlock (two producers locking the same groups in opposite
        // orders, see the store's docs) is retried after a random delay
        // that grows with each try (retried at once, it can meet the same
        // lock order again); it wrote nothing.
        let mut tries: u32 = 0;
        loop {
            match transact(&store, &tx).await {
                Ok(due) => {
                    produced.due.extend(due);
                    break;
                }
                Err(err) if tries < PRODUCER_RETRIES && is_transient(&err) => {
                    tries += 1;
                    let ceiling = 10 * u64::from(tries);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=ceiling))).await;
                }
                Err(err) => {
                    return Err(format!(
                        "a producer transaction failed after {tries} retries: {err:#}"
                    ));
                }
            }
        }
        if tx.rollback {
            produced.rolled_back.extend(tx.events.iter().map(|e| e.key));
        }
    }
    Ok(produced)
}

/// How often a producer retries a transaction the database aborted.
const PRODUCER_RETRIES: u32 = 10;

/// Whether the database aborted the transaction in a way worth retrying
/// (a deadlock or a serialization failure, SQLSTATE class 40).
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<outbox_runtime::store::StoreError>()
            .is_some_and(outbox_runtime::store::StoreError::is_transient)
            || cause.downcast_ref::<sqlx::Error>().is_some_and(|err| {
                err.as_database_error()
                    .and_then(|db| db.code())
                    .is_some_and(|code| code.starts_with("40"))
            })
    })
}

/// One producer transaction: enqueue, pause, record the commit order (see
/// [`crate::db`]), commit or roll back. Returns the delayed keys it
/// committed, each with the earliest time it may be handled.
async fn transact<S: HistoryStore>(
    store: &S,
    plan: &TxPlan,
) -> anyhow::Result<Vec<(Uuid, chrono::DateTime<chrono::Utc>)>> {
    let mut tx = store.begin().await?;
    let mut due = Vec::new();
    match plan.style {
        EnqueueStyle::All => {
            let mut outgoing = Vec::with_capacity(plan.events.len());
            for (event, delay) in plan.events.iter().zip(&plan.delays) {
                let mut one = OutgoingEnvelope::new(event)?;
                if let Some(delay) = delay {
                    one = one.with_delay(*delay);
                    due.extend(one.not_before.map(|when| (event.key, when)));
                }
                outgoing.push(one);
            }
            store.enqueue_all(&mut *tx, &outgoing).await?;
        }
        EnqueueStyle::OneByOne => {
            for (event, delay) in plan.events.iter().zip(&plan.delays) {
                match delay {
                    Some(delay) => {
                        let when = chrono::Utc::now() + chrono::Duration::from_std(*delay)?;
                        store.enqueue_at(&mut *tx, event, when).await?;
                        due.push((event.key, when));
                    }
                    None => {
                        store.enqueue(&mut *tx, event).await?;
                    }
                }
            }
        }
    }
    tokio::time::sleep(plan.pause).await;
    let mut by_group: BTreeMap<&str, Vec<(i64, Uuid)>> = BTreeMap::new();
    for (idx, event) in (0_i64..).zip(&plan.events) {
        by_group
            .entry(event.group.as_str())
            .or_default()
            .push((idx, event.key));
    }
    for (group, keys) in &by_group {
        store.record_commit(&mut tx, group, keys).await?;
    }
    if plan.rollback {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(if plan.rollback { Vec::new() } else { due })
}

/// The operator: replays every dead letter of our handlers as soon as it
/// appears, and releases every group the ledger holds (logging the letters
/// first, so the run log knows where the replays' lives start). What fails
/// is tried again at the next look.
async fn operate<S: AdminStore>(store: S, dispatcher: Arc<Dispatcher>, recorder: Arc<Recorder>) {
    let ledger = Some(HandlerName::Ledger.name());
    loop {
        // The holds first: a hold's give-up committed with it, so the
        // letters listed next hold it. A held group's letters are replayed
        // by its release only.
        let holds = store.held_groups(1000).await.unwrap_or_default();
        if let Ok(letters) = store.dead_letters(1000).await {
            // Newest first: replay the oldest first.
            for letter in letters.iter().rev() {
                if recorder.saw_dead_letter(letter)
                    && letter.letter.handler.as_deref() != ledger
                    && let Ok(replayed) =
                        admin::replay_dead_letter(&store, dispatcher.table(), letter.id).await
                {
                    recorder.replayed(letter.id, replayed.replay_id);
                }
            }
        }
        for held in holds.iter().filter(|held| held.hold.release.is_none()) {
            let hold = &held.hold;
            if let Ok(released) = admin::release_group(
                &store,
                dispatcher.table(),
                &hold.handler,
                &hold.group,
                Resume::Replay,
            )
            .await
            {
                for replayed in released.replays {
                    recorder.replayed(replayed.dead_letter, replayed.replay_id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until nothing is pending in the outbox, no queue holds anything
/// and no dead letter or group hold is left; `Some` if that did not happen
/// in time.
async fn settle<S: AdminStore>(store: &S, nodes: &[Node]) -> Option<Unsettled> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let stats = store.stats().await;
        let mut queued: u64 = 0;
        for node in nodes {
            queued = queued.saturating_add(node.queue.queued().await);
        }
        let holds = store.held_groups(10_000).await;
        if let (Ok(stats), Ok(holds)) = (&stats, &holds)
            && stats.pending == 0
            && stats.dead_letters == 0
            && holds.is_empty()
            && queued == 0
        {
            return None;
        }
        if Instant::now() >= deadline {
            let mut groups: BTreeSet<String> = store
                .group_stats(10_000)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|g| g.pending > 0)
                .map(|g| g.group)
                .collect();
            groups.extend(
                store
                    .dead_letters(10_000)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|d| d.letter.group),
            );
            let holds = holds.unwrap_or_default();
            groups.extend(holds.iter().map(|held| held.hold.group.clone()));
            return Some(Unsettled {
                groups,
                state: format!(
                    "{stats:?}, {queued} in the queues, holds {:?}",
                    holds.iter().map(|held| &held.hold).collect::<Vec<_>>()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
