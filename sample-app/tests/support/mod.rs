//! What the sample's binary-level tests share: a throwaway PostgreSQL
//! database, child processes killed on drop, and a small HTTP/1.1 client
//! that sends exactly the bytes a test gives it (malformed requests too).

#![allow(dead_code, unreachable_pub)] // each test binary uses a part

// Child processes, throwaway databases and the HTTP client: the
// workspace's one copy of each, in outbox-runtime's test support.
#[path = "../../../outbox-runtime/tests/support/database.rs"]
mod database;
#[path = "../../../outbox-runtime/tests/support/http.rs"]
mod http;
#[path = "../../../outbox-runtime/tests/support/lambda.rs"]
mod lambda;
#[path = "../../../outbox-runtime/tests/support/process.rs"]
mod process;

#[allow(unused_imports)] // each test binary uses a part
pub use database::{TempDatabase, postgres_server};
#[allow(unused_imports)]
pub use http::{Response, get, post_json, request};
#[allow(unused_imports)]
pub use lambda::{Player, emulator};
#[allow(unused_imports)]
pub use process::{Process, free_port, read_line_starting, stand_in, wait_for_port};

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("outbox-sample-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&path).expect("creates a temp dir");
        TempDir(path)
    }

    /// An SQLite URL for a database file in it.
    pub fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite://{}", self.0.join(file).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a run of the sample's binary did.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs the sample's binary with `args` and extra environment `env`, without
/// the caller's `DATABASE_URL`.
pub fn sample_app(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sample-app"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .output()
        .expect("sample-app runs");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Invokes the function on `port` with `event`; returns its response.
pub fn invoke(port: u16, event: &serde_json::Value) -> serde_json::Value {
    let response = post_json(
        port,
        "/2015-03-31/functions/_/invocations",
        &event.to_string(),
    );
    assert_eq!(response.status, 200, "the invocation failed: {response:?}");
    response.json()
}

/// What a Lambda function URL sends for an HTTP request (payload format 2.0).
pub fn function_url_event(method: &str, path: &str, body: &str) -> serde_json::Value {
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
pub fn api_call(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let response = invoke(port, &function_url_event(method, path, body));
    let status = response["statusCode"].as_u64().expect("a status code") as u16;
    let body = response["body"].as_str().unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    (status, json)
}

/// Creates and submits `orders` orders through the api function on `port`,
/// for three customers in turn (the message groups).
pub fn place_orders(port: u16, orders: i64) {
    for i in 0..orders {
        let customer = format!("customer-{}", i % 3);
        let (status, order) = api_call(
            port,
            "POST",
            "/orders",
            &serde_json::json!({ "customer_id": customer }).to_string(),
        );
        assert_eq!(status, 201, "{order}");
        let id = order["id"].as_i64().expect("an id");
        let (status, order) = api_call(port, "POST", &format!("/orders/{id}/submit"), "");
        assert_eq!(status, 200, "{order}");
        assert_eq!(order["status"], "submitted");
    }
}

/// Whether the effects of `orders` placed orders are all there (two status
/// rows and one notification each), and the counts.
pub async fn delivered(pool: &sqlx::PgPool, orders: i64) -> (bool, String) {
    let (history, notifications): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM order_status_history), (SELECT count(*) FROM notifications)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (
        history == 2 * orders && notifications == orders,
        format!("{history} history rows, {notifications} notifications"),
    )
}

/// Every message of `orders` placed orders handled exactly once, per
/// customer in commit order, and the outbox empty: the status changes and
/// the confirmations they cascaded into all published.
pub async fn assert_delivered_once_in_order(pool: &sqlx::PgPool, orders: i64) {
    use outbox_runtime::Store as _;

    let history: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT h.order_id, h.status, o.customer_id FROM order_status_history h JOIN orders o ON o.id = h.order_id ORDER BY h.id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let stats = outbox_runtime::PgStore::new(pool.clone())
        .stats()
        .await
        .unwrap();
    // Exactly once: two history rows per order, distinct.
    let mut seen = std::collections::HashSet::new();
    for (order, status, _) in &history {
        assert!(
            seen.insert((order, status.clone())),
            "handled twice: order {order} {status}"
        );
    }
    assert_eq!(history.len() as i64, 2 * orders, "{history:?}");
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
    assert_eq!(stats.pending, 0);
    assert_eq!(
        stats.published as i64,
        3 * orders,
        "status changes and the confirmations they cascaded into"
    );
}
