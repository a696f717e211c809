//! Consuming: what happens to a received batch ([`Consumer`]) and the two
//! loops that feed it, the long-poll [`Worker`] here and
//! `lambda::run` (feature `lambda`) for SQS events on Lambda.

mod consumer;
mod worker;

pub use consumer::{Consumer, ConsumerConfig, DeliveryOutcome, Savepoints};
pub use worker::{BatchReport, Worker, WorkerConfig};
