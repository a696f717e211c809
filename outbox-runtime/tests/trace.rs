//! One OpenTelemetry trace across the outbox (feature `otel`), on real
//! parts: a span standing for the HTTP request that commits an order, the
//! relay's publish to the local SQS server, and the consumer under
//! `lambda::run`, invoked through cargo-lambda's Lambda runtime emulator as
//! the SQS event source mapping would; the order's handler publishes a
//! confirmation, whose handler runs two hops after the request. The spans
//! are collected by OpenTelemetry's in-memory exporter and checked: one
//! trace id, who is whose parent, the link of a batch that joins two
//! traces, and the messaging attributes.
//!
//! One test in its own binary: it runs again in a child process with the
//! Lambda runtime's environment, and sets the process's global subscriber
//! and propagator.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox_runtime::transport::sqs::{SqsPump, SqsTransport};
use outbox_runtime::{
    Dispatcher, HandlerContext, OutboxMessage, PgStore, Relay, Store, StoreExt, commit_and_pump,
    consume::Consumer, handler,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, filter::Targets};

use support::process::stand_in;

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "trace.order_placed", group = customer)]
struct OrderPlaced {
    order: i64,
    customer: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "trace.order_confirmed", group = customer)]
struct OrderConfirmed {
    order: i64,
    customer: String,
}

/// Confirmation handler runs.
static NOTIFIED: AtomicUsize = AtomicUsize::new(0);

#[handler(name = "trace.confirm")]
async fn confirm(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.publish(&OrderConfirmed {
        order: msg.order,
        customer: msg.customer,
    })?;
    Ok(())
}

#[handler(name = "trace.notify")]
async fn notify(_msg: OrderConfirmed) -> anyhow::Result<()> {
    NOTIFIED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// This test's name, to run it again in a child process.
const TEST: &str =
    "one_trace_runs_from_the_request_through_sqs_and_lambda_to_the_handler_two_hops_later";

#[test]
fn one_trace_runs_from_the_request_through_sqs_and_lambda_to_the_handler_two_hops_later() {
    let (Some(_endpoint), Some(cargo_lambda)) = (
        stand_in("AWS_ENDPOINT_URL"),
        stand_in("OUTBOX_CARGO_LAMBDA"),
    ) else {
        return;
    };
    // The Lambda runtime reads its API's address from the environment: the
    // test runs again in a child process that has it.
    let Ok(runtime_api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        let (_emulator, port) =
            support::lambda::emulator(&cargo_lambda, env!("CARGO_MANIFEST_DIR"));
        let child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args([TEST, "--exact", "--nocapture"])
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "trace-consumer")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .output()
            .expect("the test runs again");
        let stdout = String::from_utf8_lossy(&child.stdout);
        eprint!("{}", String::from_utf8_lossy(&child.stderr));
        assert!(
            child.status.success(),
            "the test in the child process failed ({}):\n{stdout}",
            child.status
        );
        // A renamed test would run nothing there, and pass.
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "the child process did not run this test:\n{stdout}"
        );
        return;
    };
    let port: u16 = runtime_api
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port in AWS_LAMBDA_RUNTIME_API");

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("outbox-trace-test"))
        .with_filter(
            Targets::new()
                .with_target("outbox_runtime", tracing::Level::TRACE)
                .with_target("trace", tracing::Level::TRACE),
        );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))
        .expect("the only subscriber");
    opentelemetry::global::set_text_map_propagator(
        opentelemetry::propagation::TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]),
    );

    let db = support::database::TempDatabase::create("outbox_trace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (requests, published_ids) = rt.block_on(async {
        let client = Client::new(&outbox_runtime::aws::sdk_config().await);
        let url = client
            .create_queue()
            .queue_name(format!("trace-{}.fifo", uuid::Uuid::now_v7().simple()))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::VisibilityTimeout, "5")
            .send()
            .await
            .expect("queue")
            .queue_url
            .expect("url");
        let pool = sqlx::PgPool::connect(&db.url).await.expect("connects");
        let store = PgStore::new(pool.clone());
        store.migrate().await.expect("migrates");
        let pump = SqsPump::new(client.clone(), &url);
        let relay = Relay::new(
            store.clone(),
            Arc::new(SqsTransport::new(client.clone(), &url)),
        );
        let consumer = Consumer::new(
            store.clone(),
            Arc::new(Dispatcher::from_registry().expect("table")),
        )
        .with_relay(Arc::new(relay))
        .with_pump(Arc::new(pump.clone()));
        // The function, on a thread of its own (its future is not `Send`).
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(outbox_runtime::lambda::run(consumer))
        });

        // Two requests, two traces, one relay batch for both orders.
        let mut requests = Vec::new();
        let mut published_ids = Vec::new();
        for order in [1_i64, 2] {
            // The first commit does not pump: the second's pump drains both.
            let (trace, id) = request(&store, &pump, order, order == 2).await;
            requests.push(trace);
            published_ids.push(id);
        }

        let player = support::lambda::Player::new(&client, &url, port).await;
        play(&player, 2).await;

        // A third, alone: its batch is of one trace.
        let (trace, id) = request(&store, &pump, 3, true).await;
        requests.push(trace);
        published_ids.push(id);
        play(&player, 3).await;
        pool.close().await;
        (requests, published_ids)
    });
    provider.force_flush().expect("flushes");
    let spans = exporter.get_finished_spans().expect("spans");

    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let attribute = |span: &SpanData, key: &str| -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };

    // Each request's trace reaches the confirmation's handler, two hops on.
    for (order, (&trace, id)) in requests.iter().zip(&published_ids).enumerate() {
        assert_ne!(trace, TraceId::INVALID);
        let request = named("POST /orders")
            .into_iter()
            .find(|s| s.span_context.trace_id() == trace)
            .expect("the request's span");
        assert_eq!(request.span_kind, SpanKind::Server);
        let in_trace = |name: &str| -> Vec<&SpanData> {
            named(name)
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .collect()
        };
        let placed = in_trace("process trace.order_placed");
        assert_eq!(placed.len(), 1, "order {}: {placed:?}", order + 1);
        let placed = placed[0];
        assert_eq!(
            placed.parent_span_id,
            request.span_context.span_id(),
            "the order's handling continues the request"
        );
        assert_eq!(placed.span_kind, SpanKind::Consumer);
        assert_eq!(
            attribute(placed, "messaging.system").as_deref(),
            Some("aws_sqs")
        );
        assert_eq!(
            attribute(placed, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attribute(placed, "messaging.destination.name").as_deref(),
            Some("default")
        );
        assert_eq!(
            attribute(placed, "messaging.message.id"),
            Some(id.to_string())
        );

        let confirmed = in_trace("process trace.order_confirmed");
        assert_eq!(confirmed.len(), 1, "order {}: {confirmed:?}", order + 1);
        // Published inside the handler's span, which runs in the order's.
        let publisher = by_id
            .get(&confirmed[0].parent_span_id)
            .expect("the confirmation's parent was exported");
        assert_eq!(publisher.name, "outbox.handler");
        assert_eq!(
            attribute(publisher, "handler").as_deref(),
            Some("trace.confirm")
        );
        assert_eq!(publisher.parent_span_id, placed.span_context.span_id());
        let notify = spans
            .iter()
            .find(|s| {
                s.name == "outbox.handler"
                    && s.parent_span_id == confirmed[0].span_context.span_id()
            })
            .expect("the confirmation's handler span");
        assert_eq!(
            attribute(notify, "handler").as_deref(),
            Some("trace.notify")
        );
    }

    // The batch that published both orders joins two traces: a root of its
    // own, linked to both requests.
    let publishes = named("publish");
    let joined = publishes
        .iter()
        .find(|s| s.links.len() == 2)
        .unwrap_or_else(|| panic!("no publish linked to both requests: {publishes:?}"));
    let linked: Vec<TraceId> = joined
        .links
        .iter()
        .map(|l| l.span_context.trace_id())
        .collect();
    assert!(
        requests[..2].iter().all(|t| linked.contains(t)),
        "{linked:?}"
    );
    assert_eq!(joined.span_kind, SpanKind::Producer);
    assert_eq!(
        attribute(joined, "messaging.system").as_deref(),
        Some("aws_sqs")
    );
    assert_eq!(
        attribute(joined, "messaging.operation.type").as_deref(),
        Some("send")
    );
    // A batch of one trace continues it: the third order's publish is the
    // child of its request.
    let third = named("POST /orders")
        .into_iter()
        .find(|s| s.span_context.trace_id() == requests[2])
        .expect("the third request");
    assert!(
        publishes
            .iter()
            .any(|s| s.parent_span_id == third.span_context.span_id() && s.links.is_empty()),
        "the third order's publish does not continue its request: {publishes:?}"
    );

    eprintln!("{}", tree(&spans, requests[0]));
    eprintln!("{}", tree(&spans, requests[2]));
}

/// A span standing for the HTTP request `POST /orders` that commits order
/// `order` (and pumps, with `pump_it`). Returns its trace and the
/// message's id.
async fn request(
    store: &PgStore,
    pump: &SqsPump,
    order: i64,
    pump_it: bool,
) -> (TraceId, uuid::Uuid) {
    let span = tracing::info_span!(
        "request",
        otel.name = "POST /orders",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/orders",
    );
    let trace = span.context().span().span_context().trace_id();
    let placed = OrderPlaced {
        order,
        customer: format!("c-{order}"),
    };
    let id = async {
        let mut tx = store.begin().await.expect("begins");
        let envelope = store.enqueue(&mut tx, &placed).await.expect("enqueues");
        if pump_it {
            commit_and_pump(tx, pump).await.expect("commits and pumps");
        } else {
            tx.commit().await.expect("commits");
        }
        envelope.id
    }
    .instrument(span)
    .await;
    (trace, id)
}

/// Plays the SQS event source mapping until `until` confirmations were
/// handled.
async fn play(player: &support::lambda::Player, until: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while NOTIFIED.load(Ordering::SeqCst) < until {
        assert!(
            Instant::now() < deadline,
            "{until} confirmations were not handled in 60 s"
        );
        player.play_once().await;
    }
}

/// The spans of `trace` as an indented tree, with their kinds and the
/// messaging attributes.
fn tree(spans: &[SpanData], trace: TraceId) -> String {
    let mine: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let ids: Vec<SpanId> = mine.iter().map(|s| s.span_context.span_id()).collect();
    let mut out = format!("trace {trace}\n");
    fn walk(out: &mut String, mine: &[&SpanData], parent: SpanId, depth: usize) {
        let mut children: Vec<&&SpanData> =
            mine.iter().filter(|s| s.parent_span_id == parent).collect();
        children.sort_by_key(|s| s.start_time);
        for span in children {
            let attrs: Vec<String> = span
                .attributes
                .iter()
                .filter(|kv| {
                    kv.key.as_str().starts_with("messaging.") || kv.key.as_str() == "handler"
                })
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect();
            out.push_str(&format!(
                "{}{} ({:?}) {}\n",
                "  ".repeat(depth),
                span.name,
                span.span_kind,
                attrs.join(" ")
            ));
            walk(out, mine, span.span_context.span_id(), depth + 1);
        }
    }
    // Roots: spans whose parent is not in this trace.
    let roots: Vec<&SpanData> = mine
        .iter()
        .copied()
        .filter(|s| !ids.contains(&s.parent_span_id))
        .collect();
    for root in roots {
        out.push_str(&format!("{} ({:?})\n", root.name, root.span_kind));
        walk(&mut out, &mine, root.span_context.span_id(), 1);
    }
    out
}
