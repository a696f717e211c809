//! The sample run from the deploy rehearsal's stack: `scripts/rehearse-stack.py
//! --describe` creates sample-app/template.yaml in moto (translated by the
//! SAM translator) with its database secret pointing at a fresh PostgreSQL
//! database, and describes what came out. This test starts the sample's
//! binary as both functions under cargo-lambda's runtime emulator with
//! exactly the environment the stack gives each function (nothing of the
//! test's own, but what Lambda itself sets: the runtime API, the function's
//! name, region and credentials, and the endpoint of the local server),
//! sends orders through the api function, and plays the event source
//! mapping with the stack's own settings (batch size, batch item failures)
//! through `outbox_runtime::lambda::event_source`. A variable the code needs
//! that the template forgets stops a function at its start, and this test
//! fails, naming the function and printing its log.
//!
//! Needs what `scripts/test` sets up: `AWS_ENDPOINT_URL` (moto),
//! `OUTBOX_CARGO_LAMBDA`, `OUTBOX_SAM_PYTHON` (the SAM CLI's venv) and
//! PostgreSQL.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outbox_runtime::lambda::event_source::{EventSourceMapping, LocalFunction};
use serde::Deserialize;
use sqlx::PgPool;

use support::{Process, TempDatabase, TempDir};

/// What `scripts/rehearse-stack.py --describe` prints.
#[derive(Debug, Deserialize)]
struct Stack {
    stack: String,
    queue_url: String,
    queue_arn: String,
    functions: std::collections::BTreeMap<String, Function>,
    event_source_mapping: Mapping,
}

#[derive(Debug, Deserialize)]
struct Function {
    name: String,
    environment: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Mapping {
    function: String,
    queue_arn: String,
    batch_size: i32,
    function_response_types: Vec<String>,
    enabled: bool,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// Creates the stack in the emulator, its secret pointing at `database_url`.
fn rehearse(python: &str, database_url: &str) -> Stack {
    let output = Command::new(python)
        .arg("scripts/rehearse-stack.py")
        .args(["--describe", "--database-url", database_url])
        .current_dir(workspace())
        .output()
        .expect("runs scripts/rehearse-stack.py");
    assert!(
        output.status.success(),
        "the rehearsal failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the stack's description")
}

/// A function of the stack, started with its environment under an emulator
/// of its own; its stderr goes to `log`.
struct Running {
    name: String,
    port: u16,
    log: PathBuf,
    process: Process,
    _emulator: Process,
}

impl Running {
    fn start(cargo_lambda: &str, endpoint: &str, function: &Function, log: PathBuf) -> Self {
        let (emulator, port) = support::emulator(cargo_lambda, env!("CARGO_MANIFEST_DIR"));
        let process = Process(
            Command::new(env!("CARGO_BIN_EXE_sample-app"))
                .env_clear()
                .envs(&function.environment)
                // What Lambda sets for every function.
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{port}/.rt"),
                )
                .env("AWS_LAMBDA_FUNCTION_NAME", &function.name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                // The local server instead of AWS.
                .env("AWS_ENDPOINT_URL", endpoint)
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).expect("a log")))
                .spawn()
                .expect("the function starts"),
        );
        Running {
            name: function.name.clone(),
            port,
            log,
            process,
            _emulator: emulator,
        }
    }

    /// Panics, with the function's log, if it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.process.0.try_wait().expect("polls the function") {
            panic!(
                "the function {} exited ({status}) with the stack's environment:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn local(&self) -> LocalFunction {
        LocalFunction::emulator(self.port).timeout(Duration::from_secs(30))
    }
}

#[test]
fn the_sample_runs_from_the_rehearsed_stacks_own_configuration_exactly_once_in_order() {
    let (Some(endpoint), Some(cargo_lambda), Some(python)) = (
        support::stand_in("AWS_ENDPOINT_URL"),
        support::stand_in("OUTBOX_CARGO_LAMBDA"),
        support::stand_in("OUTBOX_SAM_PYTHON"),
    ) else {
        return;
    };
    let db = TempDatabase::create("outbox_stack");
    let stack = rehearse(&python, &db.url);
    let mapping = &stack.event_source_mapping;
    assert!(mapping.enabled, "{stack:?}");
    assert_eq!(mapping.function, "ConsumerFunction", "{stack:?}");
    assert_eq!(mapping.queue_arn, stack.queue_arn, "{stack:?}");

    let logs = TempDir::new();
    let mut api = Running::start(
        &cargo_lambda,
        &endpoint,
        &stack.functions["ApiFunction"],
        logs.0.join("api.log"),
    );
    let mut consumer = Running::start(
        &cargo_lambda,
        &endpoint,
        &stack.functions[&mapping.function],
        logs.0.join("consumer.log"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Each function connects to the database (through the secret) and
    // migrates it before it takes its first invocation.
    let started = Instant::now() + Duration::from_secs(60);
    let health = support::function_url_event("GET", "/health", "");
    loop {
        api.assert_running();
        consumer.assert_running();
        let answer = rt.block_on(
            LocalFunction::emulator(api.port)
                .timeout(Duration::from_secs(2))
                .invoke::<_, serde_json::Value>(&health),
        );
        match answer {
            Ok(response) => {
                assert_eq!(response["statusCode"], 200, "{response}");
                break;
            }
            Err(err) => assert!(
                Instant::now() < started,
                "the api function did not answer /health: {err}; its log:\n{}",
                std::fs::read_to_string(&api.log).unwrap_or_default()
            ),
        }
    }
    let pool = rt.block_on(async { PgPool::connect(&db.url).await.unwrap() });

    const ORDERS: i64 = 9;
    support::place_orders(api.port, ORDERS);

    // The event source mapping as the stack set it up.
    let sqs =
        rt.block_on(async { aws_sdk_sqs::Client::new(&outbox_runtime::aws::sdk_config().await) });
    let player = EventSourceMapping::new(sqs, &stack.queue_url, &mapping.queue_arn)
        .batch_size(mapping.batch_size)
        .report_batch_item_failures(
            mapping
                .function_response_types
                .iter()
                .any(|t| t == "ReportBatchItemFailures"),
        );
    let function = consumer.local();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (done, counts) = rt.block_on(support::delivered(&pool, ORDERS));
        if done {
            break;
        }
        consumer.assert_running();
        assert!(
            Instant::now() < deadline,
            "not delivered: {counts}; the consumer's log:\n{}",
            std::fs::read_to_string(&consumer.log).unwrap_or_default()
        );
        rt.block_on(player.play_once(|event| function.invoke_sqs(event)))
            .unwrap_or_else(|err| {
                panic!(
                    "{err}; the consumer's log:\n{}",
                    std::fs::read_to_string(&consumer.log).unwrap_or_default()
                )
            });
    }
    rt.block_on(support::assert_delivered_once_in_order(&pool, ORDERS));
    rt.block_on(pool.close());
    println!("stack {}: {ORDERS} orders delivered", stack.stack);
}
