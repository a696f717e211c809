//! The toolkit's pipeline in the background, as the latency and handling
//! scenarios run it: `local::Pipeline` with the benchmarks' settings.

use std::time::Duration;

use outbox_runtime::local::{Pipeline, Running};
use outbox_runtime::{Dispatcher, PgStore, consume::WorkerConfig};

/// Starts a relay from `store` into a new in-process queue, and `workers`
/// workers handling its messages with `dispatcher` in batches of up to
/// `batch_size` (no retention: a benchmark measures delivery only).
pub(crate) fn start(
    store: &PgStore,
    dispatcher: Dispatcher,
    workers: usize,
    batch_size: usize,
) -> Running<PgStore> {
    Pipeline::new(store.clone(), dispatcher)
        .with_workers(workers)
        .with_worker_config(WorkerConfig {
            batch_size,
            wait: Duration::from_millis(100),
            retention: None,
            stats_interval: None,
            ..WorkerConfig::default()
        })
        .start()
}
