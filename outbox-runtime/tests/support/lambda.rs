//! Lambda as the tests run it: cargo-lambda's runtime emulator, and the SQS
//! event source mapping played by the toolkit's player (receive up to 10
//! messages, make an SQS event of them, invoke, delete what the response
//! does not list as failed). The one copy for the runtime's `trace` test
//! and the sample's `lambda_e2e`.

use std::process::{Command, Stdio};

use aws_sdk_sqs::Client;
use outbox_runtime::lambda::event_source::{EventSourceMapping, LocalFunction};

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

/// The event source mapping (the toolkit's own player,
/// `outbox_runtime::lambda::event_source`) from the queue at `url` to the
/// function under the emulator on `port`; the queue's ARN is read once.
pub struct Player {
    mapping: EventSourceMapping,
    function: LocalFunction,
}

impl Player {
    pub async fn new(client: &Client, url: &str, port: u16) -> Self {
        Player {
            mapping: EventSourceMapping::for_queue(client.clone(), url)
                .await
                .expect("reads the queue's ARN"),
            function: LocalFunction::emulator(port),
        }
    }

    /// One round: receive, invoke, delete what succeeded. Returns how many
    /// messages it delivered (0: none arrived within a second).
    pub async fn play_once(&self) -> usize {
        self.mapping
            .play_once(|event| self.function.invoke_sqs(event))
            .await
            .expect("plays the event source mapping")
            .received
    }
}
