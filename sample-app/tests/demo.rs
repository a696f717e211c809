//! The README's main command, run as a user runs it: the built binary, on
//! the embedded default and on PostgreSQL.

mod support;

/// Runs the binary; whether it succeeded, and all it printed.
fn sample_app(args: &[&str]) -> (bool, String) {
    let run = support::sample_app(args, &[]);
    (run.ok, run.text())
}

#[test]
fn the_demo_handles_every_message_on_the_embedded_default() {
    let (ok, out) = sample_app(&["demo", "--orders", "40"]);
    assert!(ok, "{out}");
    assert!(out.contains("store: SQLite"), "{out}");
    assert!(out.contains("queue: in-process"), "{out}");
    assert!(
        out.contains(
            "messages:     120 published, 120 handled, 0 duplicates suppressed, 0 dead letters"
        ),
        "{out}"
    );
    assert!(
        out.contains("app tables:   80 status history rows, 40 notifications"),
        "{out}"
    );
    assert!(
        out.contains("latency:      enqueue to handler p50"),
        "{out}"
    );
}

#[test]
fn the_demo_runs_on_postgres_with_no_code_change() {
    let db = support::TempDatabase::create("outbox_demo");
    let (ok, out) = sample_app(&["demo", "--orders", "30", "--database-url", &db.url]);
    assert!(ok, "{out}");
    assert!(out.contains("store: PostgreSQL"), "{out}");
    assert!(
        out.contains("messages:     90 published, 90 handled"),
        "{out}"
    );
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let (ok, out) = sample_app(&["demo", "--orders", "many"]);
    assert!(!ok);
    assert!(
        out.contains("invalid value 'many' for '--orders <ORDERS>'"),
        "{out}"
    );
    let (ok, out) = sample_app(&["demo", "--database-url", "mysql://nope"]);
    assert!(!ok);
    assert!(
        out.contains("unsupported database URL `mysql://nope`: use sqlite://FILE or postgres://"),
        "{out}"
    );
}

#[test]
fn the_table_lists_the_samples_messages() {
    let (ok, out) = sample_app(&["table", "--json"]);
    assert!(ok, "{out}");
    let table: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<_> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders.status_changed", "orders.submitted"]);
}

#[test]
fn the_demo_runs_through_an_sqs_endpoint_with_no_code_change() {
    let Some(endpoint) = support::stand_in("AWS_ENDPOINT_URL") else {
        return;
    };
    let (ok, out) = sample_app(&["demo", "--orders", "20", "--sqs-endpoint", &endpoint]);
    assert!(ok, "{out}");
    assert!(out.contains("queue: SQS ("), "{out}");
    assert!(
        out.contains("messages:     60 published, 60 handled"),
        "{out}"
    );
}

#[test]
fn checked_in_schemas_match_the_code_and_breaking_edits_are_caught() {
    let (ok, out) = sample_app(&["schemas", "--check"]);
    assert!(ok, "{out}");

    // A copy in which the code appears to have removed a property and made
    // another newly required, at the same version.
    let temp = support::TempDir::new();
    let dir = &temp.0;
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let file = dir.join("orders.submitted.v1.schema.json");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    schema["properties"]["gift_wrap"] = serde_json::json!({"type": "boolean"});
    schema["required"] = serde_json::json!(["order_id"]);
    std::fs::write(&file, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
    std::fs::remove_file(dir.join("orders.status_changed.v1.schema.json")).unwrap();
    // A version an earlier build had, gone from this one.
    std::fs::write(dir.join("orders.placed.v1.schema.json"), "{}\n").unwrap();
    let asyncapi = dir.join("asyncapi.yaml");
    let edited = std::fs::read_to_string(&asyncapi)
        .unwrap()
        .replace("fifoQueue: true", "fifoQueue: false");
    std::fs::write(&asyncapi, edited).unwrap();

    let (ok, out) = sample_app(&["schemas", "--check", "--dir", dir.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("orders.status_changed.v1.schema.json: missing"),
        "{out}"
    );
    assert!(
        out.contains("orders.submitted.v1.schema.json: changed incompatibly without a version bump (`customer_id` became required; `gift_wrap` was removed)"),
        "{out}"
    );
    assert!(
        out.contains("orders.placed.v1.schema.json: `orders.placed` v1 is gone from the code"),
        "{out}"
    );
    assert!(
        out.contains("asyncapi.yaml: out of date; regenerate and commit it"),
        "{out}"
    );
}

#[test]
fn the_readme_shows_the_flow_graph_the_table_prints() {
    let (ok, graph) = sample_app(&["table", "--graph"]);
    assert!(ok, "{graph}");
    assert!(graph.starts_with("flowchart LR\n"), "{graph}");
    assert!(
        graph.contains("h0_0 -- publishes --> m1"),
        "the declared edge is drawn: {graph}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block =
        format!("<!-- table --graph -->\n```mermaid\n{graph}```\n<!-- end table --graph -->");
    assert!(
        readme.contains(&block),
        "README's graph differs from `sample-app table --graph`; paste this:\n{block}"
    );
}

#[test]
fn status_reports_undelivered_messages_per_group() {
    let dir = support::TempDir::new();
    let url = dir.sqlite_url("orders.db");
    let (ok, out) = sample_app(&["enqueue", "--orders", "3", "--database-url", &url]);
    assert!(ok, "{out}");
    let (ok, out) = sample_app(&["status", "--database-url", &url, "--json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["outbox"]["pending"], 3);
    assert_eq!(
        status["groups"].as_array().unwrap().len(),
        3,
        "customer-0, -1 and -2"
    );
    let (ok, out) = sample_app(&["status", "--database-url", &url]);
    assert!(ok, "{out}");
    assert!(out.starts_with("undelivered: 3   oldest: "), "{out}");
    assert!(out.contains("customer-1"), "{out}");
}
