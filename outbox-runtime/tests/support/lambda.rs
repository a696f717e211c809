//! Lambda as the tests run it: cargo-lambda's runtime emulator, and the SQS
//! event source mapping played by hand (receive up to 10 messages, make an
//! SQS event of them, invoke, delete what the response does not list as
//! failed). The one copy for the runtime's `trace` and `sqs` tests and the
//! sample's `lambda_e2e`.

use std::process::{Command, Stdio};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};

use super::http::post_json;
use super::process::{Process, free_port, wait_for_port};

/// cargo-lambda's Lambda runtime API on a free port, for one function
/// process, which it serves under the name `_`; it reads the Cargo project
/// in `project_dir`. Returns it and the port.
pub fn emulator(cargo_lambda: &str, project_dir: &str) -> (Process, u16) {
    let port = free_port();
    let process = Process(
        Command::new(cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .current_dir(project_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo-lambda starts"),
    );
    wait_for_port(port, "cargo lambda watch");
    (process, port)
}

/// Up to 10 messages of the queue at `url`, with every system attribute,
/// after waiting up to a second.
pub async fn receive(client: &Client, url: &str) -> Vec<Message> {
    client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receives")
        .messages
        .unwrap_or_default()
}

/// The records of an SQS event for `messages`, as Lambda sends them.
pub fn records(messages: &[Message], arn: &str) -> Vec<serde_json::Value> {
    messages
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
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            })
        })
        .collect()
}

/// Deletes the messages whose ids `failed` does not name.
pub async fn delete_done(client: &Client, url: &str, messages: &[Message], failed: &[String]) {
    for m in messages {
        if !failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().expect("a receipt"))
                .send()
                .await
                .expect("deletes");
        }
    }
}

/// One round of the event source mapping against the function under the
/// emulator on `port`: receive, invoke, delete what succeeded. Returns how
/// many messages it delivered (0: none was waiting).
pub async fn play_once(client: &Client, url: &str, port: u16) -> usize {
    let messages = receive(client, url).await;
    if messages.is_empty() {
        return 0;
    }
    let event = serde_json::json!({
        "Records": records(&messages, "arn:aws:sqs:us-east-1:123456789012:outbox.fifo"),
    })
    .to_string();
    // The client blocks: off the runtime's threads.
    let response = tokio::task::spawn_blocking(move || {
        post_json(port, "/2015-03-31/functions/_/invocations", &event)
    })
    .await
    .expect("invokes");
    assert_eq!(response.status, 200, "the invocation failed: {response:?}");
    let failed: Vec<String> = response.json()["batchItemFailures"]
        .as_array()
        .expect("a partial batch response")
        .iter()
        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
        .collect();
    delete_done(client, url, &messages, &failed).await;
    messages.len()
}
