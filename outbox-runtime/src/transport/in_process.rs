//! [`InProcessQueue`]: an in-memory FIFO queue with SQS FIFO semantics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

#[cfg(test)]
use super::EntryErrorKind;
use super::{Delivery, EntryError, PublishEntry, Receipt, Receiver, Transport, TransportError};

/// Settings of an [`InProcessQueue`]. The defaults follow SQS.
#[derive(Clone, Copy, Debug)]
pub struct InProcessConfig {
    /// How long a received message stays invisible before it is delivered
    /// again, unless acknowledged, released or extended. Default: 30 s.
    pub visibility_timeout: Duration,
    /// How long a deduplication id is remembered. Default: 5 minutes, as
    /// SQS.
    pub dedup_window: Duration,
    /// The largest body accepted. Default: 256 KiB, as SQS.
    pub max_body_bytes: usize,
    /// Entries per publish call. Default: 10, as SQS.
    pub max_batch: usize,
    /// The most messages it holds, in flight or not. Past it, publishing
    /// fails as an outage of the queue: the relay's rows wait, using up none
    /// of their attempts, until workers make room. Default: 10,000.
    pub capacity: usize,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        InProcessConfig {
            visibility_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(300),
            max_body_bytes: 256 * 1024,
            max_batch: 10,
            capacity: 10_000,
        }
    }
}

/// The in-process queue's OpenTelemetry `messaging.system`.
const IN_PROCESS_SYSTEM: &str = "outbox_in_process";

/// Counters of an [`InProcessQueue`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InProcessStats {
    /// Messages accepted (duplicates excluded).
    pub sent: u64,
    /// Messages dropped as duplicates within the deduplication window.
    pub duplicates_dropped: u64,
    /// Deliveries (redeliveries included).
    pub delivered: u64,
    /// Messages acknowledged (deleted).
    pub acked: u64,
    /// Messages released for a retry.
    pub released: u64,
    /// Messages in the queue now, in flight or not.
    pub queued: u64,
}

/// An in-memory FIFO queue with message groups, for the embedded default and
/// tests. It behaves like an SQS FIFO queue: order within a group, one
/// group's messages held while any of them is in flight, a visibility
/// timeout with redelivery, a receive count, and deduplication by envelope
/// id within a window.
///
/// Clones share one queue. It implements both [`Transport`] (for the relay)
/// and [`Receiver`] (for workers).
///
/// It is not durable: what it holds dies with the process. The relay and
/// the workers account for that (see [`Transport::durable`]): a row counts
/// as published only once a worker has handled it, so a crash loses nothing.
#[derive(Clone)]
pub struct InProcessQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: InProcessConfig,
    state: Mutex<State>,
    arrived: Notify,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, Group>,
    /// Groups with messages, in round-robin order.
    order: VecDeque<String>,
    seen: HashSet<Uuid>,
    seen_order: VecDeque<(Instant, Uuid)>,
    /// receipt number -> (group, message id)
    receipts: HashMap<u64, (String, Uuid)>,
    next_receipt: u64,
    unavailable: bool,
    stats: InProcessStats,
}

#[derive(Default)]
struct Group {
    messages: VecDeque<Queued>,
    in_flight: usize,
}

struct Queued {
    id: Uuid,
    body: String,
    receive_count: u32,
    /// When it may be delivered (a release delay or a visibility timeout).
    visible_at: Instant,
    /// When it was published.
    sent_at: chrono::DateTime<chrono::Utc>,
    /// The receipt number of the current delivery, while in flight.
    receipt: Option<u64>,
}

impl InProcessQueue {
    /// A queue with the default settings.
    pub fn new() -> Self {
        Self::with_config(InProcessConfig::default())
    }

    /// A queue with the given settings.
    pub fn with_config(config: InProcessConfig) -> Self {
        InProcessQueue {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
            }),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> InProcessStats {
        let state = self.lock();
        let mut stats = state.stats;
        stats.queued = state.groups.values().map(|g| g.messages.len() as u64).sum();
        stats
    }

    /// Makes every call fail with [`TransportError::Unavailable`] until set
    /// back: the queue-is-down case, for fault-injection tests.
    pub fn set_available(&self, available: bool) {
        self.lock().unavailable = !available;
        if available {
            self.inner.arrived.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue's invariants
        // intact (every mutation is completed before anything can panic), so
        // a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_available(state: &State) -> Result<(), TransportError> {
        if state.unavailable {
            Err(TransportError::Unavailable(
                "the in-process queue is switched off".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn take_visible(&self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let mut state = self.lock();
        Self::check_available(&state)?;
        let now = Instant::now();
        let visibility = self.inner.config.visibility_timeout;
        let mut out = Vec::new();
        let groups = state.order.len();
        let State {
            groups: queues,
            order,
            receipts,
            next_receipt,
            stats,
            ..
        } = &mut *state;
        for _ in 0..groups {
            if out.len() >= max {
                break;
            }
            let Some(name) = order.front().cloned() else {
                break;
            };
            order.rotate_left(1);
            let Some(group) = queues.get_mut(&name) else {
                continue;
            };
            // Deliveries whose visibility timeout passed become visible again.
            if group.in_flight > 0 {
                for message in group.messages.iter_mut() {
                    if message.receipt.is_some() && message.visible_at <= now {
                        if let Some(old) = message.receipt.take() {
                            receipts.remove(&old);
                        }
                        group.in_flight -= 1;
                    }
                }
            }
            if group.in_flight > 0 {
                continue;
            }
            for message in group.messages.iter_mut() {
                if out.len() >= max || message.visible_at > now {
                    break;
                }
                let receipt = *next_receipt;
                *next_receipt += 1;
                message.receipt = Some(receipt);
                message.receive_count += 1;
                message.visible_at = now + visibility;
                group.in_flight += 1;
                receipts.insert(receipt, (name.clone(), message.id));
                stats.delivered += 1;
                out.push(Delivery {
                    body: message.body.clone(),
                    group: name.clone(),
                    receive_count: message.receive_count,
                    receipt: Receipt(receipt.to_string()),
                    message_id: Some(message.id),
                    sent_at: Some(message.sent_at),
                });
            }
        }
        Ok(out)
    }

    /// Finds the in-flight message a receipt refers to: its group, its
    /// position there, and the receipt's number.
    fn find(state: &State, receipt: &Receipt) -> Result<(String, usize, u64), TransportError> {
        let stale = || TransportError::StaleReceipt(receipt.clone());
        let number: u64 = receipt.0.parse().map_err(|_| stale())?;
        let (group, id) = state.receipts.get(&number).cloned().ok_or_else(stale)?;
        let queue = state.groups.get(&group).ok_or_else(stale)?;
        let at = queue
            .messages
            .iter()
            .position(|m| m.id == id && m.receipt == Some(number))
            .ok_or_else(stale)?;
        Ok((group, at, number))
    }

    /// [`find`](Self::find), and retires the receipt (the message is
    /// acknowledged or released).
    fn locate(state: &mut State, receipt: &Receipt) -> Result<(String, usize), TransportError> {
        let (group, at, number) = Self::find(state, receipt)?;
        state.receipts.remove(&number);
        Ok((group, at))
    }
}

impl Default for InProcessQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InProcessQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessQueue")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Transport for InProcessQueue {
    fn messaging_system(&self) -> &'static str {
        IN_PROCESS_SYSTEM
    }

    fn max_batch(&self) -> usize {
        self.inner.config.max_batch
    }

    /// Not durable: its messages die with the process.
    fn durable(&self) -> bool {
        false
    }

    async fn publish(
        &self,
        entries: &[PublishEntry<'_>],
    ) -> Result<Vec<Result<(), EntryError>>, TransportError> {
        let config = self.inner.config;
        let results = {
            let mut state = self.lock();
            Self::check_available(&state)?;
            let now = Instant::now();
            while let Some(&(at, id)) = state.seen_order.front() {
                if now.duration_since(at) < config.dedup_window {
                    break;
                }
                state.seen_order.pop_front();
                state.seen.remove(&id);
            }
            let mut failed_groups: HashSet<&str> = HashSet::new();
            let mut results = Vec::with_capacity(entries.len());
            let mut queued: usize = state.groups.values().map(|g| g.messages.len()).sum();
            for entry in entries {
                let group = entry.envelope.group.as_str();
                if queued >= config.capacity {
                    failed_groups.insert(group);
                    results.push(Err(EntryError::unavailable(format!(
                        "the in-process queue is full ({} messages); the row waits for the workers",
                        config.capacity
                    ))));
                    continue;
                }
                if failed_groups.contains(group) {
                    results.push(Err(EntryError::held_back()));
                    continue;
                }
                if entry.body.len() > config.max_body_bytes {
                    failed_groups.insert(group);
                    results.push(Err(EntryError::permanent(format!(
                        "body is {} bytes, the limit is {}",
                        entry.body.len(),
                        config.max_body_bytes
                    ))));
                    continue;
                }
                let id = entry.envelope.id;
                if !state.seen.insert(id) {
                    state.stats.duplicates_dropped += 1;
                    results.push(Ok(()));
                    continue;
                }
                state.seen_order.push_back((now, id));
                if !state.groups.contains_key(group) {
                    state.order.push_back(group.to_owned());
                }
                state
                    .groups
                    .entry(group.to_owned())
                    .or_default()
                    .messages
                    .push_back(Queued {
                        id,
                        body: entry.body.clone(),
                        receive_count: 0,
                        visible_at: now,
                        sent_at: chrono::Utc::now(),
                        receipt: None,
                    });
                state.stats.sent += 1;
                queued += 1;
                results.push(Ok(()));
            }
            results
        };
        self.inner.arrived.notify_waiters();
        Ok(results)
    }
}

impl Receiver for InProcessQueue {
    fn messaging_system(&self) -> &'static str {
        IN_PROCESS_SYSTEM
    }

    fn durable(&self) -> bool {
        false
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so a publish in between is not missed.
            let arrived = self.inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let deliveries = self.take_visible(max.max(1))?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake for new messages, or to notice delays and visibility
            // timeouts running out.
            let nap = (deadline - now).min(Duration::from_millis(20));
            let _ = tokio::time::timeout(nap, arrived).await;
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), TransportError> {
        let mut state = self.lock();
        Self::check_available(&state)?;
        let mut first_error = None;
        for receipt in receipts {
            match Self::locate(&mut state, receipt) {
                Ok((group, at)) => {
                    let queue = state.groups.get_mut(&group).expect("located above");
                    queue.messages.remove(at);
                    queue.in_flight -= 1;
                    if queue.messages.is_empty() {
                        state.groups.remove(&group);
                        state.order.retain(|g| *g != group);
                    }
                    state.stats.acked += 1;
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn extend(&self, receipts: &[Receipt], by: Duration) -> Result<(), TransportError> {
        let mut state = self.lock();
        Self::check_available(&state)?;
        let until = Instant::now() + by;
        for receipt in receipts {
            // Acknowledged or delivered again since: nothing to extend.
            let Ok((group, at, _)) = Self::find(&state, receipt) else {
                continue;
            };
            if let Some(message) = state
                .groups
                .get_mut(&group)
                .and_then(|queue| queue.messages.get_mut(at))
            {
                message.visible_at = message.visible_at.max(until);
            }
        }
        Ok(())
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), TransportError> {
        {
            let mut state = self.lock();
            Self::check_available(&state)?;
            let (group, at) = Self::locate(&mut state, receipt)?;
            let queue = state.groups.get_mut(&group).expect("located above");
            let message = &mut queue.messages[at];
            message.receipt = None;
            message.visible_at = Instant::now() + delay;
            queue.in_flight -= 1;
            state.stats.released += 1;
        }
        self.inner.arrived.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::message::OutboxMessage;

    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    struct Note {
        group: String,
        n: u32,
    }

    impl OutboxMessage for Note {
        const NAME: &'static str = "note";
        const VERSION: u32 = 1;
        fn group_key(&self) -> std::borrow::Cow<'_, str> {
            std::borrow::Cow::Borrowed(&self.group)
        }
    }

    fn envelope(group: &str, n: u32) -> Envelope {
        Envelope::from_message(&Note {
            group: group.into(),
            n,
        })
        .unwrap()
    }

    async fn send(queue: &InProcessQueue, envelopes: &[&Envelope]) -> Vec<Result<(), EntryError>> {
        let entries: Vec<_> = envelopes
            .iter()
            .map(|e| PublishEntry {
                envelope: e,
                queue: None,
                body: e.to_json(),
            })
            .collect();
        queue.publish(&entries).await.unwrap()
    }

    fn ns(deliveries: &[Delivery]) -> Vec<(String, u64)> {
        deliveries
            .iter()
            .map(|d| {
                let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
                (d.group.clone(), v["payload"]["n"].as_u64().unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_group_is_held_while_any_of_its_messages_is_in_flight() {
        let queue = InProcessQueue::new();
        let (a1, a2, b1) = (envelope("a", 1), envelope("a", 2), envelope("b", 1));
        send(&queue, &[&a1, &a2, &b1]).await;

        let first = queue.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(ns(&first), [("a".into(), 1)]);
        // a1 is in flight: a2 is held, b flows.
        let second = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(ns(&second), [("b".into(), 1)]);
        queue.ack(&[first[0].receipt.clone()]).await.unwrap();
        let third = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(ns(&third), [("a".into(), 2)]);
    }

    #[tokio::test]
    async fn unacknowledged_messages_come_back_after_the_visibility_timeout() {
        let queue = InProcessQueue::with_config(InProcessConfig {
            visibility_timeout: Duration::from_millis(30),
            ..InProcessConfig::default()
        });
        let (a1, a2) = (envelope("a", 1), envelope("a", 2));
        send(&queue, &[&a1, &a2]).await;
        let first = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());

        let again = queue.receive(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(
            ns(&again),
            [("a".into(), 1), ("a".into(), 2)],
            "redelivered in order"
        );
        assert_eq!(again[0].receive_count, 2);
        let stale = queue.ack(&[first[0].receipt.clone()]).await.unwrap_err();
        assert!(matches!(stale, TransportError::StaleReceipt(_)), "{stale}");
        queue
            .ack(&[again[0].receipt.clone(), again[1].receipt.clone()])
            .await
            .unwrap();
        assert_eq!(queue.stats().queued, 0);
    }

    #[tokio::test]
    async fn extending_a_delivery_keeps_it_invisible_past_the_visibility_timeout() {
        let queue = InProcessQueue::with_config(InProcessConfig {
            visibility_timeout: Duration::from_millis(50),
            ..InProcessConfig::default()
        });
        send(&queue, &[&envelope("a", 1)]).await;
        let got = queue.receive(1, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        queue
            .extend(&[got[0].receipt.clone()], Duration::from_millis(300))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert!(
            queue.receive(1, Duration::ZERO).await.unwrap().is_empty(),
            "a heartbeat keeps a slow handler's message from being delivered again"
        );
        queue.ack(&[got[0].receipt.clone()]).await.unwrap();
    }

    #[tokio::test]
    async fn a_released_message_waits_out_its_delay_and_keeps_its_place() {
        let queue = InProcessQueue::new();
        let (a1, a2) = (envelope("a", 1), envelope("a", 2));
        send(&queue, &[&a1, &a2]).await;
        let got = queue.receive(1, Duration::ZERO).await.unwrap();
        queue
            .release(&got[0].receipt, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(
            queue.receive(10, Duration::ZERO).await.unwrap().is_empty(),
            "a2 does not overtake a1"
        );
        let later = queue.receive(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(ns(&later), [("a".into(), 1), ("a".into(), 2)]);
    }

    #[tokio::test]
    async fn duplicates_are_dropped_within_the_window() {
        let queue = InProcessQueue::new();
        let a1 = envelope("a", 1);
        send(&queue, &[&a1, &a1]).await;
        send(&queue, &[&a1]).await;
        let stats = queue.stats();
        assert_eq!(
            (stats.sent, stats.duplicates_dropped, stats.queued),
            (1, 2, 1)
        );
    }

    #[tokio::test]
    async fn an_oversized_entry_fails_with_the_rest_of_its_group_only() {
        let big = Envelope::from_message(&Note {
            group: "a".repeat(100),
            n: 1,
        })
        .unwrap();
        let mut after = envelope("x", 2);
        after.group.clone_from(&big.group);
        let other = envelope("b", 3);
        let queue = InProcessQueue::with_config(InProcessConfig {
            max_body_bytes: other.to_json().len() + 50,
            ..InProcessConfig::default()
        });
        let results = send(&queue, &[&big, &after, &other]).await;
        assert!(
            results[0]
                .as_ref()
                .is_err_and(|e| e.kind == EntryErrorKind::Permanent)
        );
        assert!(
            results[1]
                .as_ref()
                .is_err_and(|e| e.kind == EntryErrorKind::HeldBack),
            "never accepted behind a failure"
        );
        assert!(results[2].is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_more_as_an_outage_until_a_message_leaves() {
        let queue = InProcessQueue::with_config(InProcessConfig {
            capacity: 2,
            ..InProcessConfig::default()
        });
        let (a1, b1, c1) = (envelope("a", 1), envelope("b", 1), envelope("c", 1));
        let results = send(&queue, &[&a1, &b1, &c1]).await;
        assert!(results[0].is_ok() && results[1].is_ok());
        assert!(
            results[2]
                .as_ref()
                .is_err_and(|e| e.kind == EntryErrorKind::Unavailable && e.message.contains("full")),
            "{results:?}"
        );
        let got = queue.receive(1, Duration::ZERO).await.unwrap();
        queue.ack(&[got[0].receipt.clone()]).await.unwrap();
        assert!(send(&queue, &[&c1]).await[0].is_ok(), "room again");
    }

    #[tokio::test]
    async fn a_switched_off_queue_refuses_every_call() {
        let queue = InProcessQueue::new();
        queue.set_available(false);
        let a1 = envelope("a", 1);
        let entry = PublishEntry {
            envelope: &a1,
            queue: None,
            body: a1.to_json(),
        };
        assert!(matches!(
            queue.publish(&[entry]).await,
            Err(TransportError::Unavailable(_))
        ));
        assert!(queue.receive(1, Duration::ZERO).await.is_err());
        queue.set_available(true);
        assert!(queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_when_a_message_arrives() {
        let queue = InProcessQueue::new();
        let receiver = queue.clone();
        let waiting =
            tokio::spawn(async move { receiver.receive(10, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        send(&queue, &[&envelope("a", 1)]).await;
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
