//! End to end on the AWS path, on real parts: the sample's binary runs as
//! two Lambda functions under cargo-lambda's Lambda runtime emulator. The
//! `api` function gets function URL events (through `lambda_http`); its
//! transactions commit orders and outbox rows in PostgreSQL and pump the
//! local SQS server. The `consumer` function gets SQS events; this test
//! plays the SQS event source mapping (receive
//! up to 10, invoke, delete the successes, leave the failures to the
//! visibility timeout). The function drains the outbox on the pump,
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
use outbox_runtime::{PgStore, Store};
use sqlx::PgPool;

use support::{Process, TempDatabase, post_json};

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

/// Invokes the function on `port` with `event`; returns its response.
fn invoke(port: u16, event: &serde_json::Value) -> serde_json::Value {
    let response = post_json(
        port,
        "/2015-03-31/functions/_/invocations",
        &event.to_string(),
    );
    assert_eq!(response.status, 200, "the invocation failed: {response:?}");
    response.json()
}

/// What a Lambda function URL sends for an HTTP request (payload format 2.0).
fn function_url_event(method: &str, path: &str, body: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abc123.lambda-url.us-east-1.on.aws",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abc123",
            "domainName": "abc123.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "lambda_e2e",
            },
            "requestId": uuid::Uuid::now_v7().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:09:00:00 +0000",
            "timeEpoch": 1_795_856_400_000_i64,
        },
        "body": body,
        "isBase64Encoded": false,
    })
}

/// Sends an HTTP request through the api function; returns (status, JSON body).
fn api_call(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let response = invoke(port, &function_url_event(method, path, body));
    let status = response["statusCode"].as_u64().expect("a status code") as u16;
    let body = response["body"].as_str().unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    (status, json)
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
    for i in 0..ORDERS {
        let customer = format!("customer-{}", i % 3);
        let (status, order) = api_call(
            api,
            "POST",
            "/orders",
            &serde_json::json!({ "customer_id": customer }).to_string(),
        );
        assert_eq!(status, 201, "{order}");
        let id = order["id"].as_i64().expect("an id");
        let (status, order) = api_call(api, "POST", &format!("/orders/{id}/submit"), "");
        assert_eq!(status, 200, "{order}");
        assert_eq!(order["status"], "submitted");
    }
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
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut invocations = 0;
    loop {
        let (history, notifications): (i64, i64) = rt.block_on(async {
            sqlx::query_as("SELECT (SELECT count(*) FROM order_status_history), (SELECT count(*) FROM notifications)")
                .fetch_one(&pool)
                .await
                .unwrap()
        });
        if history == 2 * ORDERS && notifications == ORDERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {history} history rows, {notifications} notifications"
        );
        invocations += usize::from(rt.block_on(support::play_once(&client, &queue_url, port)) > 0);
    }

    let (history, stats) = rt.block_on(async {
        let history: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT h.order_id, h.status, o.customer_id FROM order_status_history h JOIN orders o ON o.id = h.order_id ORDER BY h.id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let stats = PgStore::new(pool.clone()).stats().await.unwrap();
        (history, stats)
    });
    // Exactly once: two history rows per order, distinct.
    let mut seen = std::collections::HashSet::new();
    for (order, status, _) in &history {
        assert!(
            seen.insert((order, status.clone())),
            "handled twice: order {order} {status}"
        );
    }
    // In group order: per customer, orders and their statuses as committed.
    for customer in 0..3 {
        let customer = format!("customer-{customer}");
        let mine: Vec<(i64, &str)> = history
            .iter()
            .filter(|h| h.2 == customer)
            .map(|h| (h.0, h.1.as_str()))
            .collect();
        let mut expected = mine.clone();
        expected.sort_by_key(|(order, status)| (*order, *status != "created"));
        assert_eq!(mine, expected, "{customer} out of order");
    }
    // The cascade: every submission published a confirmation, all delivered.
    assert_eq!(stats.pending, 0);
    assert_eq!(
        stats.published as i64,
        3 * ORDERS,
        "status changes and the confirmations they cascaded into"
    );
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
