//! End to end on the AWS path, on real parts: the app's transactions commit
//! orders and outbox rows in PostgreSQL and pump the local SQS server; the
//! sample's binary runs as a Lambda function under cargo-lambda's Lambda
//! runtime emulator; this test plays the SQS event source mapping (receive
//! up to 10, invoke, delete the successes, leave the failures to the
//! visibility timeout). The function drains the outbox on the pump,
//! publishes the envelopes to the queue with their groups, and handles them
//! when they come back: effects in PostgreSQL, exactly once, in group order.
//!
//! Needs what `scripts/test` sets up: `AWS_ENDPOINT_URL` (moto),
//! `OUTBOX_CARGO_LAMBDA` (cargo-lambda) and PostgreSQL.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use outbox_runtime::{Envelope, Headers, Outgoing, PgStore, Pump, SqsPump, Store};
use sqlx::PgPool;

/// Kills a child process when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run scripts/test, which installs and starts the local AWS stand-ins"
        )
    })
}

/// POSTs `body` to the emulator and returns (status, body).
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    // A chunked body: keep the JSON between the chunk sizes.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()))
            .collect::<Vec<_>>()
            .join("")
    } else {
        body.to_owned()
    };
    (status, body)
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An envelope the app would write for `orders.status_changed`.
fn status_changed(order_id: i64, status: &str, customer: &str) -> Outgoing {
    let id = uuid::Uuid::now_v7();
    let payload =
        serde_json::json!({"order_id": order_id, "status": status, "customer_id": customer});
    Outgoing {
        envelope: Envelope {
            id,
            message_type: "orders.status_changed".into(),
            version: 1,
            group: customer.into(),
            payload: serde_json::value::to_raw_value(&payload).unwrap(),
            created_at: chrono::Utc::now(),
            headers: Headers {
                correlation_id: Some(id),
                ..Headers::default()
            },
        },
        queue: None,
    }
}

#[test]
fn orders_flow_through_sqs_and_the_lambda_binary_exactly_once_in_order() {
    let endpoint = required("AWS_ENDPOINT_URL");
    let cargo_lambda = required("OUTBOX_CARGO_LAMBDA");
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(b, _)| b)
        .to_owned();
    let database = format!("outbox_lambda_{}", std::process::id());
    let database_url = format!("{base}/{database}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (client, queue_url) = rt.block_on(async {
        let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .unwrap();
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

    // The Lambda runtime API, and the function's process polling it.
    let port = free_port();
    let _emulator = Process(
        Command::new(&cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            // It reads the Cargo project it runs in; with
            // `--only-lambda-apis` it serves an externally started function
            // under the name `_`.
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo-lambda starts"),
    );
    wait_for_port(port, "cargo lambda watch");
    let _function = Process(
        Command::new(env!("CARGO_BIN_EXE_sample-app"))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "sample-app")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("SAMPLE_APP_ROLE", "consumer")
            .env("DATABASE_URL", &database_url)
            .env("OUTBOX_QUEUE_URL", &queue_url)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env(
                "RUST_LOG",
                std::env::var("OUTBOX_E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("the function starts"),
    );

    let pool = rt.block_on(async {
        let pool = PgPool::connect(&database_url).await.unwrap();
        // The function migrates at cold start; wait for the app's tables.
        let deadline = Instant::now() + Duration::from_secs(30);
        while sqlx::query("SELECT 1 FROM orders LIMIT 1")
            .execute(&pool)
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the function never migrated the database"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pool
    });

    // The app: each order committed with its outbox messages, then a pump.
    const ORDERS: i64 = 12;
    rt.block_on(async {
        let store = PgStore::new(pool.clone());
        let pump = SqsPump::new(client.clone(), &queue_url);
        for i in 0..ORDERS {
            let customer = format!("customer-{}", i % 3);
            let mut tx = pool.begin().await.unwrap();
            let (order_id,): (i64,) = sqlx::query_as(
                "INSERT INTO orders (customer_id, status, created_at) VALUES ($1, 'submitted', 0) RETURNING id",
            )
            .bind(&customer)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            let messages = [
                status_changed(order_id, "created", &customer),
                status_changed(order_id, "submitted", &customer),
            ];
            store.enqueue_all(&mut tx, &messages).await.unwrap();
            tx.commit().await.unwrap();
            pump.pump().await.unwrap();
        }
    });

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
        let messages = rt.block_on(async {
            client
                .receive_message()
                .queue_url(&queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default()
        });
        if messages.is_empty() {
            continue;
        }
        let records: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let attributes: serde_json::Map<String, serde_json::Value> = m
                    .attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone().into()))
                    .collect();
                serde_json::json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders.fifo",
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let event = serde_json::json!({ "Records": records }).to_string();
        let (status, body) = post(port, "/2015-03-31/functions/_/invocations", &event);
        invocations += 1;
        assert_eq!(status, 200, "the invocation failed: {body}");
        let response: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        let failed: Vec<&str> = response["batchItemFailures"]
            .as_array()
            .expect("a partial batch response")
            .iter()
            .filter_map(|f| f["itemIdentifier"].as_str())
            .collect();
        rt.block_on(async {
            for m in &messages {
                if !failed.contains(&m.message_id().unwrap_or_default()) {
                    client
                        .delete_message()
                        .queue_url(&queue_url)
                        .receipt_handle(m.receipt_handle().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
        });
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

    drop(pool);
    rt.block_on(async {
        let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
    });
}
