//! The operator's commands against a real PostgreSQL: a handler fails while
//! its provider is down, its messages go to dead letters, the operator
//! inspects them, the provider comes back, the operator replays, and each
//! message is handled, by that handler only.

mod support;

use support::{TempDatabase, sample_app};

const OUTAGE: (&str, &str) = ("SAMPLE_APP_NOTIFY_OUTAGE", "1");

#[test]
fn replayed_dead_letters_are_handled_once_the_handler_works_again() {
    let db = TempDatabase::create("outbox_admin");
    let url = db.url.as_str();
    let run = |args: &[&str]| sample_app(args, &[]);

    let enqueued = run(&[
        "enqueue",
        "--orders",
        "3",
        "--submit",
        "--database-url",
        url,
    ]);
    assert!(enqueued.ok, "{}", enqueued.text());

    // The provider is down: every confirmation fails its five attempts.
    let worked = sample_app(
        &["work", "--database-url", url, "--retry-initial-ms", "10"],
        &[OUTAGE],
    );
    assert!(worked.ok, "{}", worked.text());
    let metrics: serde_json::Value = serde_json::from_str(worked.stdout.trim()).expect("JSON");
    assert_eq!(metrics["dead_lettered"], 3, "{metrics}");
    assert_eq!(db.scalar("SELECT count(*) FROM notifications"), 0);
    assert_eq!(db.scalar("SELECT count(*) FROM order_status_history"), 6);

    // Inspect: as JSON, as a table, one in full.
    let listed = run(&["dead-letters", "--database-url", url, "list", "--json"]);
    assert!(listed.ok, "{}", listed.text());
    let letters: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).expect("JSON");
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["handler"], "notifications.order_confirmation");
        assert_eq!(letter["message_type"], "orders.submitted");
        assert_eq!(letter["attempts"], 5);
        assert!(
            letter["error"]
                .as_str()
                .is_some_and(|e| e.contains("the notification provider is unavailable")),
            "{letter}"
        );
    }
    let table = run(&["dead-letters", "--database-url", url, "list"]);
    assert!(table.ok, "{}", table.text());
    assert!(table.stdout.starts_with("    id  type"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 4, "{}", table.stdout);
    let first = letters[0]["id"].as_i64().expect("an id").to_string();
    let shown = run(&["dead-letters", "--database-url", url, "show", &first]);
    assert!(shown.ok, "{}", shown.text());
    assert!(
        shown
            .stdout
            .contains("handler       notifications.order_confirmation"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains(r#""type":"orders.submitted""#),
        "{}",
        shown.stdout
    );
    let status = run(&["status", "--database-url", url, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(status["outbox"]["dead_letters"], 3, "{status}");

    // Mistakes are refused with the reason.
    let missing = run(&["dead-letters", "--database-url", url, "replay", "999999"]);
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("dead letter 999999 does not exist"),
        "{}",
        missing.text()
    );
    let nothing = run(&["dead-letters", "--database-url", url, "purge"]);
    assert!(!nothing.ok);
    assert!(nothing.stderr.contains("required"), "{}", nothing.text());
    let not_dead = run(&["outbox", "--database-url", url, "requeue", "1"]);
    assert!(!not_dead.ok);
    assert!(
        not_dead.stderr.contains("outbox row 1 is not dead"),
        "{}",
        not_dead.text()
    );

    // The provider is back: replay all, and work.
    let replayed = run(&["dead-letters", "--database-url", url, "replay", "--all"]);
    assert!(replayed.ok, "{}", replayed.text());
    assert_eq!(
        replayed
            .stdout
            .matches("(for notifications.order_confirmation)")
            .count(),
        3,
        "{}",
        replayed.stdout
    );
    let pending = run(&[
        "outbox",
        "--database-url",
        url,
        "rows",
        "--status",
        "pending",
        "--json",
    ]);
    let pending: Vec<serde_json::Value> = serde_json::from_str(&pending.stdout).expect("JSON");
    assert_eq!(pending.len(), 3, "{pending:?}");
    let worked = run(&["work", "--database-url", url, "--retry-initial-ms", "10"]);
    assert!(worked.ok, "{}", worked.text());

    assert_eq!(db.scalar("SELECT count(*) FROM notifications"), 3);
    assert_eq!(
        db.scalar("SELECT count(*) FROM order_status_history"),
        6,
        "the status handler did not run again"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM outbox_dead_letters"), 0);
    let listed = run(&["dead-letters", "--database-url", url, "list", "--json"]);
    assert_eq!(listed.stdout.trim(), "[]");

    // The sample's handlers move on when they give up: no group is held.
    let held = run(&["dead-letters", "--database-url", url, "held", "--json"]);
    assert!(held.ok, "{}", held.text());
    assert_eq!(held.stdout.trim(), "[]");
    let release = run(&[
        "dead-letters",
        "--database-url",
        url,
        "release",
        "notifications.order_confirmation",
        "customer-1",
    ]);
    assert!(!release.ok);
    assert!(
        release.stderr.contains(
            "group `customer-1` is not held for handler `notifications.order_confirmation`"
        ),
        "{}",
        release.text()
    );
}

#[test]
fn purged_dead_letters_are_gone() {
    let db = TempDatabase::create("outbox_purge");
    let url = db.url.as_str();
    assert!(
        sample_app(
            &[
                "enqueue",
                "--orders",
                "1",
                "--submit",
                "--database-url",
                url
            ],
            &[]
        )
        .ok
    );
    let worked = sample_app(
        &["work", "--database-url", url, "--retry-initial-ms", "10"],
        &[OUTAGE],
    );
    assert!(worked.ok, "{}", worked.text());
    assert_eq!(db.scalar("SELECT count(*) FROM outbox_dead_letters"), 1);
    let purged = sample_app(
        &["dead-letters", "--database-url", url, "purge", "--all"],
        &[],
    );
    assert!(purged.ok, "{}", purged.text());
    assert!(
        purged.stdout.starts_with("purged dead letter "),
        "{}",
        purged.stdout
    );
    assert_eq!(db.scalar("SELECT count(*) FROM outbox_dead_letters"), 0);
}

/// In the fault suite (`scripts/fault-tests.filter` selects every test under
/// a module named `faults`).
mod faults {
    use super::{TempDatabase, sample_app};

    /// `dead-letters import` moves what the SQS queue gave up on (its DLQ) into
    /// the dead letters, where `list` shows it and `replay` takes it.
    #[test]
    fn the_queues_dead_letters_are_imported_and_listed() {
        if super::support::stand_in("AWS_ENDPOINT_URL").is_none() {
            return;
        }
        let db = TempDatabase::create("outbox_import");
        let url = db.url.as_str();
        assert!(sample_app(&["enqueue", "--orders", "1", "--database-url", url], &[]).ok);
        let body = r#"{"id":"01a22b82-21e6-7401-b6a0-a8b739783085","type":"orders.status_changed","version":1,"group":"customer-9","payload":{"order_id":1,"status":"created","customer_id":"customer-9"},"created_at":"2026-11-30T08:00:00Z","headers":{}}"#;
        let dlq = tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let sqs = aws_sdk_sqs::Client::new(&outbox_runtime::aws::sdk_config().await);
                let dlq = sqs
                    .create_queue()
                    .queue_name(format!("import-{}-dlq.fifo", uuid::Uuid::now_v7().simple()))
                    .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
                    .send()
                    .await
                    .expect("queue created")
                    .queue_url
                    .expect("a URL");
                sqs.send_message()
                    .queue_url(&dlq)
                    .message_body(body)
                    .message_group_id("customer-9")
                    .message_deduplication_id("d-1")
                    .send()
                    .await
                    .expect("sent");
                dlq
            });

        let imported = sample_app(
            &[
                "dead-letters",
                "--database-url",
                url,
                "import",
                "--queue-url",
                &dlq,
            ],
            &[],
        );
        assert!(imported.ok, "{}", imported.text());
        assert_eq!(
            imported.stdout.trim(),
            "imported 1 message(s) from the queue's dead-letter queue"
        );
        let listed = sample_app(
            &["dead-letters", "--database-url", url, "list", "--json"],
            &[],
        );
        let letters: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).expect("JSON");
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(
            letters[0]["message_id"],
            "01a22b82-21e6-7401-b6a0-a8b739783085"
        );
        assert_eq!(letters[0]["group"], "customer-9");
        assert_eq!(letters[0]["handler"], serde_json::Value::Null);
        let replayed = sample_app(
            &["dead-letters", "--database-url", url, "replay", "--all"],
            &[],
        );
        assert!(replayed.ok, "{}", replayed.text());
    }
}
