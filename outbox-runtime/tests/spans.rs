//! The dispatcher's spans reach whoever records them: a `log` logger while no
//! `tracing` subscriber is set, and a subscriber at the spans' levels.
//!
//! One test, in its own binary: whether a subscriber was ever set is global
//! to the process, so the logger must be checked before any subscriber is.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outbox_runtime::{Dispatcher, Envelope, OutboxMessage};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, field};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "spans.ping", group = "pings")]
struct Ping {
    n: u32,
}

#[outbox_runtime::handler]
async fn on_ping(_msg: Ping) -> anyhow::Result<()> {
    Ok(())
}

/// Every `log` record's text.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGGED.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

/// A subscriber that keeps each new span's name and fields, up to `max`.
struct Recorder {
    max: tracing::Level,
    spans: Mutex<Vec<String>>,
    next: AtomicU64,
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.max.into())
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        struct Fields(String);
        impl field::Visit for Fields {
            fn record_debug(&mut self, field: &field::Field, value: &dyn std::fmt::Debug) {
                self.0 += &format!(" {}={value:?}", field.name());
            }
        }
        let mut fields = Fields(span.metadata().name().to_owned());
        span.record(&mut fields);
        self.spans.lock().unwrap().push(fields.0);
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn dispatch_one(dispatcher: &Dispatcher, n: u32) {
    let envelope = Envelope::from_message(&Ping { n }).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let report = runtime.block_on(dispatcher.dispatch(&envelope)).unwrap();
    assert!(report.succeeded());
}

fn recorded_at(max: tracing::Level, dispatcher: &Dispatcher, n: u32) -> Vec<String> {
    let recorder = std::sync::Arc::new(Recorder {
        max,
        spans: Mutex::new(Vec::new()),
        next: AtomicU64::new(0),
    });
    let subscriber = tracing::Dispatch::from(recorder.clone());
    tracing::dispatcher::with_default(&subscriber, || dispatch_one(dispatcher, n));
    recorder.spans.lock().unwrap().clone()
}

#[test]
fn spans_reach_a_logger_and_a_subscriber_at_their_levels() {
    let dispatcher = Dispatcher::from_registry().unwrap();

    // No logger, no subscriber: nothing to record the spans.
    dispatch_one(&dispatcher, 1);

    // A logger at INFO, still no subscriber: the dispatch span (INFO) is
    // logged with its fields, the handler's (DEBUG) is not.
    log::set_logger(&Logger).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    dispatch_one(&dispatcher, 2);
    let logged = std::mem::take(&mut *LOGGED.lock().unwrap());
    let spans: Vec<_> = logged.iter().filter(|l| l.starts_with("outbox.")).collect();
    assert_eq!(spans.len(), 1, "{logged:#?}");
    assert!(spans[0].starts_with("outbox.dispatch;"), "{logged:#?}");
    assert!(spans[0].contains("message.type=spans.ping"), "{logged:#?}");
    log::set_max_level(log::LevelFilter::Off);

    // A subscriber at INFO sees the dispatch span; at DEBUG the handler's too.
    let info = recorded_at(tracing::Level::INFO, &dispatcher, 3);
    assert_eq!(info.len(), 1, "{info:#?}");
    assert!(info[0].starts_with("outbox.dispatch "), "{info:#?}");
    assert!(info[0].contains("message.group=pings"), "{info:#?}");

    let debug = recorded_at(tracing::Level::DEBUG, &dispatcher, 4);
    assert_eq!(debug.len(), 2, "{debug:#?}");
    assert!(debug[1].starts_with("outbox.handler "), "{debug:#?}");
    assert!(
        debug[1].contains("handler=\"spans::on_ping\""),
        "{debug:#?}"
    );
    assert!(debug[1].contains("attempt=1"), "{debug:#?}");
}
