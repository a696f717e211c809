//! The HTTP API as a client sees it: the built binary's `serve`, on a real
//! port on 127.0.0.1, with every endpoint and every kind of bad request.
//! Client mistakes get a problem document (RFC 9457) with a 4xx status,
//! never a 500.

mod support;

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Process, Response, TempDatabase, get, post_json, request};

/// `sample-app serve` on a free port; returns the process and the port.
fn serve(database_url: &str) -> (Process, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sample-app"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("sample-app starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let process = Process(child);
    let addr = support::read_line_starting(&mut stdout, "listening on http://");
    let port = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"));
    (process, port)
}

/// Asserts a problem response: status, content type, and a body whose
/// `status` matches and whose `detail` contains `detail`.
fn assert_problem(response: &Response, status: u16, detail: &str) -> serde_json::Value {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{response:?}"
    );
    let problem = response.json();
    assert_eq!(problem["status"], status, "{problem}");
    assert!(problem["title"].is_string(), "{problem}");
    assert!(problem["type"].is_string(), "{problem}");
    let text = problem["detail"].as_str().unwrap_or_default();
    assert!(
        text.contains(detail),
        "detail {text:?} lacks {detail:?}: {problem}"
    );
    problem
}

/// Polls `GET /orders/{id}` until its history has `n` entries (the handler
/// ran, after the outbox delivered the message).
fn wait_for_history(port: u16, id: i64, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let order = get(port, &format!("/orders/{id}")).json();
        if order["history"].as_array().map_or(0, Vec::len) >= n {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "history of order {id} never reached {n}: {order}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_api_creates_submits_and_shows_orders_and_refuses_bad_requests_clearly() {
    let dir = support::TempDir::new();
    let url = dir.sqlite_url("orders.db");
    let (_server, port) = serve(&url);

    let health = get(port, "/health");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "ok");

    // Create: 201, Location, the order; its `created` message is handled.
    let created = post_json(port, "/orders", r#"{"customer_id": "c-1"}"#);
    assert_eq!(created.status, 201, "{created:?}");
    let order = created.json();
    let id = order["id"].as_i64().expect("an id");
    assert_eq!(
        created.header("location"),
        Some(format!("/orders/{id}").as_str())
    );
    assert_eq!(order["customer_id"], "c-1");
    assert_eq!(order["status"], "created");
    let shown = wait_for_history(port, id, 1);
    assert_eq!(shown["history"][0]["status"], "created");

    // Submit: 200; the second message is handled too.
    let submitted = post_json(port, &format!("/orders/{id}/submit"), "");
    assert_eq!(submitted.status, 200, "{submitted:?}");
    assert_eq!(submitted.json()["status"], "submitted");
    let shown = wait_for_history(port, id, 2);
    assert_eq!(shown["history"][1]["status"], "submitted");

    // Submitting twice is an invalid transition: 409.
    let again = post_json(port, &format!("/orders/{id}/submit"), "");
    let problem = assert_problem(
        &again,
        409,
        "an order that is submitted cannot become submitted",
    );
    assert_eq!(problem["type"], "/problems/invalid-transition");

    // Unknown orders: 404, on read and on submit.
    assert_problem(
        &get(port, "/orders/999999"),
        404,
        "order 999999 does not exist",
    );
    let problem = assert_problem(
        &post_json(port, "/orders/999999/submit", ""),
        404,
        "order 999999 does not exist",
    );
    assert_eq!(problem["type"], "/problems/order-not-found");

    // Malformed requests: 400, with what is wrong.
    assert_problem(&get(port, "/orders/abc"), 400, "whole number");
    assert_problem(
        &post_json(port, "/orders/1.5/submit", ""),
        400,
        "whole number",
    );
    assert_problem(
        &post_json(port, "/orders", r#"{"customer_id":"#),
        400,
        "EOF",
    );
    assert_problem(&post_json(port, "/orders", "[1, 2]"), 400, "");
    assert_problem(
        &post_json(port, "/orders", r#"{"customer": "c-1"}"#),
        400,
        "unknown field `customer`",
    );
    assert_problem(
        &post_json(port, "/orders", r#"{"customer_id": 7}"#),
        400,
        "invalid type",
    );
    let problem = assert_problem(
        &post_json(port, "/orders", r#"{"customer_id": "has space"}"#),
        400,
        "customer id \"has space\" is invalid",
    );
    assert_eq!(problem["type"], "/problems/invalid-customer-id");
    assert_problem(
        &post_json(
            port,
            "/orders",
            &format!(r#"{{"customer_id": "{}"}}"#, "x".repeat(65)),
        ),
        400,
        "is invalid",
    );
    // Not JSON at all: 415.
    assert_problem(
        &request(port, "POST", "/orders", &[], r#"{"customer_id": "c-1"}"#),
        415,
        "Content-Type",
    );
    // Too large: 413.
    let huge = format!(r#"{{"customer_id": "{}"}}"#, "x".repeat(20 * 1024));
    assert_problem(&post_json(port, "/orders", &huge), 413, "");

    // Routes and methods that do not exist.
    assert_problem(&get(port, "/nope"), 404, "no such route");
    assert_problem(&request(port, "DELETE", "/orders", &[], ""), 405, "method");
    assert_problem(&get(port, "/orders"), 405, "method");

    // The outbox view: counts and rows, filtered; bad filters are 400.
    let outbox = get(port, "/outbox");
    assert_eq!(outbox.status, 200, "{outbox:?}");
    let outbox = outbox.json();
    let rows = outbox["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "created, submitted, confirmation: {outbox}");
    assert!(rows.iter().all(|r| r["attempts"] == 0), "{outbox}");
    assert_eq!(outbox["stats"]["dead_letters"], 0, "{outbox}");
    let published = get(port, "/outbox?status=published&limit=2").json();
    let rows = published["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{published}");
    assert!(
        rows.iter().all(|r| r["status"] == "published"),
        "{published}"
    );
    assert_eq!(
        get(port, "/outbox?status=dead").json()["rows"],
        serde_json::json!([])
    );
    assert_problem(&get(port, "/outbox?status=lost"), 400, "unknown variant");
    assert_problem(
        &get(port, "/outbox?limit=0"),
        400,
        "limit must be from 1 to 500",
    );
    assert_problem(
        &get(port, "/outbox?limit=501"),
        400,
        "limit must be from 1 to 500",
    );
    assert_problem(&get(port, "/outbox?limit=many"), 400, "limit");
    assert_problem(&get(port, "/outbox?order=asc"), 400, "unknown field");

    // Still serving after all that.
    assert_eq!(get(port, "/health").status, 200);
}

#[test]
fn a_database_outage_is_a_503_or_500_problem_and_the_server_keeps_running() {
    let db = TempDatabase::create("outbox_http");
    let (_server, port) = serve(&db.url);
    let created = post_json(port, "/orders", r#"{"customer_id": "c-9"}"#);
    assert_eq!(created.status, 201, "{created:?}");

    db.drop_now();

    let health = get(port, "/health");
    let problem = assert_problem(&health, 503, "the database does not answer");
    assert_eq!(problem["type"], "about:blank");
    let failed = post_json(port, "/orders", r#"{"customer_id": "c-9"}"#);
    assert_problem(&failed, 500, "the server failed; the error is in its log");
    assert!(
        !failed.body.contains("database"),
        "internals stay in the log: {}",
        failed.body
    );
    // A client mistake is still a client mistake, database or not.
    assert_problem(&post_json(port, "/orders", "{"), 400, "EOF");
}

/// The value of the Prometheus sample `series` (name and labels, exactly as
/// rendered) in a `/metrics` scrape, or 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Creates and submits `n` orders and waits until each is confirmed.
fn place_orders(port: u16, n: usize) {
    for i in 0..n {
        let created = post_json(port, "/orders", &format!(r#"{{"customer_id": "c-{i}"}}"#));
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.json()["id"].as_i64().expect("an id");
        let submitted = post_json(port, &format!("/orders/{id}/submit"), "");
        assert_eq!(submitted.status, 200, "{submitted:?}");
        wait_for_history(port, id, 2);
    }
}

#[test]
fn metrics_are_scraped_in_prometheus_format_and_move_with_the_traffic() {
    let dir = support::TempDir::new();
    let (_server, port) = serve(&dir.sqlite_url("orders.db"));

    place_orders(port, 2);
    let scrape = get(port, "/metrics");
    assert_eq!(scrape.status, 200, "{scrape:?}");
    let first = scrape.body;
    assert!(
        first.contains("# HELP outbox_handler_duration_seconds One handler run"),
        "{first}"
    );
    assert!(
        first.contains("# TYPE outbox_commit_to_publish_seconds histogram"),
        "{first}"
    );
    let status_runs = r#"outbox_handler_duration_seconds_count{handler="orders.record_status"}"#;
    assert_eq!(sample(&first, status_runs), 4.0, "{first}");
    assert!(sample(&first, "outbox_published_total") >= 4.0, "{first}");
    assert!(
        sample(&first, "outbox_commit_to_publish_seconds_count") >= 4.0,
        "{first}"
    );
    assert!(
        sample(&first, "outbox_publish_to_handle_seconds_count") >= 4.0,
        "{first}"
    );

    place_orders(port, 3);
    let second = get(port, "/metrics").body;
    assert_eq!(sample(&second, status_runs), 10.0, "{second}");
    for histogram in [
        "outbox_commit_to_publish_seconds_count",
        "outbox_publish_to_handle_seconds_count",
        "outbox_commit_to_publish_seconds_sum",
    ] {
        assert!(
            sample(&second, histogram) > sample(&first, histogram),
            "{histogram} did not move: {second}"
        );
    }
    assert!(
        sample(&second, "outbox_handled_total") > sample(&first, "outbox_handled_total"),
        "{second}"
    );
    // The workers read the outbox's stats as soon as they start.
    assert!(
        second.contains(r#"outbox_pending{store="SQLite"} "#),
        "{second}"
    );
}

#[test]
fn sigterm_stops_serve_cleanly() {
    let dir = support::TempDir::new();
    let (mut server, port) = serve(&dir.sqlite_url("orders.db"));
    place_orders(port, 1);
    let pid = server.0.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "serve exited with {status}");
}
