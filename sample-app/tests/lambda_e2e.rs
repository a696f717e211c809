//! End to end on the AWS path, on real parts: the sample's binary runs as
//! two Lambda functions under cargo-lambda's Lambda runtime emulator. The
//! `api` function gets function URL events (through `lambda_http`); its
//! transactions commit orders and outbox rows in PostgreSQL and pump the
//! local SQS server. The `consumer` function gets SQS events; this test
//! plays the SQS event source mapping through
//! `outbox_runtime::lambda::event_source` (receive up to 10, invoke, delete
//! the successes, leave the failures to the visibility timeout). The function drains the outbox on the pump,
//! publishes the envelopes to the queue with their groups, and handles them
//! when they come back: effects in PostgreSQL, exactly once, in group order.
//!
//! Needs what `scripts/test` sets up: `AWS_ENDPOINT_URL` (moto),
//! `OUTBOX_CARGO_LAMBDA` (cargo-lambda) and PostgreSQL.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use sqlx::PgPool;

use support::{Process, TempDatabase, api_call, invoke, post_json};

/// The sample's binary as the Lambda function `role`, polling the emulator
/// on `port`, with `env` added and its stdout to `stdout`.
fn function(
    port: u16,
    role: &str,
    database_url: &str,
    queue_url: &str,
    env: &[(&str, &str)],
    stdout: Stdio,
) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_sample-app"))
            .envs(env.iter().copied())
            .stdout(stdout)
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", format!("sample-app-{role}"))
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("SAMPLE_APP_ROLE", role)
            .env("DATABASE_URL", database_url)
            .env("OUTBOX_QUEUE_URL", queue_url)
            .env(
                "RUST_LOG",
                std::env::var("OUTBOX_E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("the function starts"),
    )
}

/// Checks the consumer's CloudWatch Embedded Metric Format lines: one
/// document per invocation, in namespace `outbox-e2e`, whose handled
/// counts add up to `handled` and which time the handlers.
fn assert_emf_lines(path: &std::path::Path, handled: i64) {
    let text = std::fs::read_to_string(path).expect("the consumer's stdout");
    let documents: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|doc| doc.get("_aws").is_some())
        .collect();
    assert!(
        !documents.is_empty(),
        "no EMF line in the consumer's stdout:\n{text}"
    );
    let mut handled_total = 0.0;
    let mut handler_timings = 0;
    for doc in &documents {
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "outbox-e2e", "{doc}");
        assert!(doc["RequestId"].is_string(), "{doc}");
        handled_total += doc["outbox_handled_total"].as_f64().unwrap_or(0.0);
        if doc.get("outbox_handler_duration_seconds").is_some() {
            handler_timings += 1;
        }
    }
    assert!(
        handled_total >= handled as f64,
        "EMF counted {handled_total} handled runs, expected at least {handled}:\n{text}"
    );
    assert!(
        handler_timings > 0,
        "no handler timing in the EMF lines:\n{text}"
    );
}

#[test]
fn orders_flow_from_the_api_function_through_sqs_to_the_consumer_function_exactly_once_in_order() {
    let (Some(endpoint), Some(cargo_lambda)) = (
        support::stand_in("AWS_ENDPOINT_URL"),
        support::stand_in("OUTBOX_CARGO_LAMBDA"),
    ) else {
        return;
    };
    let db = TempDatabase::create("outbox_lambda");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (client, queue_url) = rt.block_on(async {
        let client = Client::new(&outbox_runtime::aws::sdk_config().await);
        let url = client
            .create_queue()
            .queue_name(format!("orders-{}.fifo", uuid::Uuid::now_v7().simple()))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::VisibilityTimeout, "5")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        (client, url)
    });
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");

    // Two functions, each under its own runtime API: the HTTP API behind a
    // function URL, and the queue's consumer.
    let (_api_emulator, api) = support::emulator(&cargo_lambda, env!("CARGO_MANIFEST_DIR"));
    let _api = function(api, "api", &db.url, &queue_url, &[], Stdio::inherit());
    let (_consumer_emulator, port) = support::emulator(&cargo_lambda, env!("CARGO_MANIFEST_DIR"));
    // The consumer writes CloudWatch EMF lines to stdout, kept here.
    let emf_log = support::TempDir::new();
    let emf_path = emf_log.0.join("consumer.stdout");
    let _consumer = function(
        port,
        "consumer",
        &db.url,
        &queue_url,
        &[("OUTBOX_EMF_NAMESPACE", "outbox-e2e")],
        Stdio::from(std::fs::File::create(&emf_path).expect("stdout file")),
    );

    // The app, through its API: each call commits and pumps the queue.
    const ORDERS: i64 = 12;
    support::place_orders(api, ORDERS);
    // Client mistakes through the function URL: problems, not failures.
    let (status, problem) = api_call(api, "POST", "/orders", "{");
    assert_eq!(
        (status, problem["status"].as_u64()),
        (400, Some(400)),
        "{problem}"
    );
    let (status, problem) = api_call(api, "POST", "/orders/1/submit", "");
    assert_eq!(status, 409, "{problem}");
    let (status, problem) = api_call(api, "GET", "/orders/424242", "");
    assert_eq!(status, 404, "{problem}");
    let pool = rt.block_on(async { PgPool::connect(&db.url).await.unwrap() });

    // The event source mapping.
    let player = rt.block_on(support::Player::new(&client, &queue_url, port));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut invocations = 0;
    loop {
        let (done, counts) = rt.block_on(support::delivered(&pool, ORDERS));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {counts}");
        invocations += usize::from(rt.block_on(player.play_once()) > 0);
    }

    rt.block_on(support::assert_delivered_once_in_order(&pool, ORDERS));
    assert!(invocations > 0);
    assert_emf_lines(&emf_path, 3 * ORDERS);

    // Wrong event shapes: the runtime refuses the invocation (the emulator
    // answers 500, AWS a function error) and the function keeps serving.
    for wrong in [r#"{"Records": "nope"}"#, "[]", "not json"] {
        let response = post_json(port, "/2015-03-31/functions/_/invocations", wrong);
        assert_eq!(response.status, 500, "{wrong}: {response:?}");
    }
    // A record that is not an envelope is poison: dead-lettered, not retried.
    let response = invoke(
        port,
        &serde_json::json!({ "Records": [{
            "messageId": "m-garbage",
            "body": "{\"id\": 42",
            "attributes": { "MessageGroupId": "g", "ApproximateReceiveCount": "1" },
        }]}),
    );
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([]),
        "{response}"
    );
    let dead: Vec<(String, String)> = rt.block_on(async {
        sqlx::query_as("SELECT body, error FROM outbox_dead_letters")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, r#"{"id": 42"#);
    assert!(dead[0].1.starts_with("malformed envelope at `"), "{dead:?}");

    rt.block_on(pool.close());
}
