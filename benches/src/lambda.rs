//! Scenario 6: the Lambda artefact. Its size (the binary, and zipped as
//! Lambda takes it) and its cold start: from starting the process to the
//! answer to its first invocation, under cargo-lambda's Lambda runtime
//! emulator, as the sample's consumer function (which connects to
//! PostgreSQL, checks its migrations and builds its dispatch table first).
//!
//! Reads `OUTBOX_BENCH_LAMBDA_BINARY` (the built `bootstrap`, or any build of
//! the sample's binary) and `OUTBOX_CARGO_LAMBDA` (cargo-lambda);
//! `scripts/bench` sets both.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Sizes;
use crate::db::Scratch;
use crate::report::{Section, count, ms};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow::anyhow!(
            "{name} is not set: run scripts/bench, which builds the artefact and sets it"
        )
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// POSTs `body` and returns the status code.
fn post(port: u16, path: &str, body: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response:?}"))
}

/// The zipped size, as `cargo lambda deploy` would upload it.
fn zipped(path: &str) -> anyhow::Result<u64> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import io,sys,zipfile\nb=io.BytesIO()\nz=zipfile.ZipFile(b,'w',zipfile.ZIP_DEFLATED)\nz.write(sys.argv[1],'bootstrap')\nz.close()\nprint(len(b.getvalue()))",
            path,
        ])
        .output()?;
    anyhow::ensure!(output.status.success(), "python3 could not zip {path}");
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    let binary = var("OUTBOX_BENCH_LAMBDA_BINARY")?;
    let cargo_lambda = var("OUTBOX_CARGO_LAMBDA")?;
    let size = std::fs::metadata(&binary)
        .map_err(|err| anyhow::anyhow!("{binary}: {err}"))?
        .len();
    let zip = zipped(&binary)?;
    let scratch = Scratch::create(server, "lambda").await?;

    let port = free_port()?;
    let _emulator = Kill(
        Command::new(&cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-app"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the emulator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Process start to the first invocation's answer, `runs` times, with
    // the database at `url`.
    let cold_starts = |url: String, runs: usize| -> anyhow::Result<Vec<Duration>> {
        let mut starts = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let function = Kill(
                Command::new(&binary)
                    .env(
                        "AWS_LAMBDA_RUNTIME_API",
                        format!("http://127.0.0.1:{port}/.rt"),
                    )
                    .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                    .env("SAMPLE_APP_ROLE", "consumer")
                    .env("DATABASE_URL", &url)
                    .env(
                        "OUTBOX_QUEUE_URL",
                        "http://127.0.0.1:9/000000000000/unused.fifo",
                    )
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_ACCESS_KEY_ID", "bench")
                    .env("AWS_SECRET_ACCESS_KEY", "bench")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env("RUST_LOG", "error")
                    .stdout(Stdio::null())
                    .spawn()?,
            );
            let status = post(
                port,
                "/2015-03-31/functions/_/invocations",
                r#"{"Records":[]}"#,
            )?;
            anyhow::ensure!(status == 200, "the first invocation answered {status}");
            starts.push(started.elapsed());
            drop(function);
        }
        Ok(starts)
    };
    // The first start also migrates the database; the rest are cold starts
    // against a migrated one, as on AWS after the first deploy.
    let mut plain = cold_starts(
        format!("{}?sslmode=disable", scratch.url),
        sizes.cold_starts + 1,
    )?;
    let first = plain.remove(0);
    let tls = cold_starts(format!("{}?sslmode=prefer", scratch.url), sizes.cold_starts)?;
    let median = |mut starts: Vec<Duration>| {
        starts.sort();
        starts[starts.len() / 2]
    };
    let runs = plain.len();
    let (plain, tls) = (median(plain), median(tls));

    let mut section = Section::new(
        "6. The Lambda artefact",
        "The sample's binary as deployed (`cargo lambda build --release`, x86_64; arm64 builds \
         on a machine with its target installed). Cold start: process start to the answer to a \
         first invocation (an empty SQS batch) under cargo-lambda's emulator, as the consumer \
         function, which connects to PostgreSQL, checks its migrations and builds its dispatch \
         table first; once without TLS to PostgreSQL (`sslmode=disable`) and once with it if \
         the server offers it (`sslmode=prefer`; an RDS secret's URL says `require`). No \
         baseline: the numbers are the product's own.",
        &[
            "binary",
            "size",
            "zipped",
            "cold start (median)",
            "cold start, TLS to PostgreSQL (median)",
            "first start (migrates)",
            "starts each",
        ],
    );
    section.row(vec![
        format!(
            "`{}`",
            binary
                .rsplit('/')
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("/")
        ),
        format!("{} bytes", count(size as f64)),
        format!("{} bytes", count(zip as f64)),
        ms(plain),
        ms(tls),
        ms(first),
        runs.to_string(),
    ]);
    section.verdict = format!(
        "Goals: a zip of at most 5 MB ({}), a cold start of at most 25 ms ({} without TLS to \
         the database; {} with it, see Analysis).",
        if zip <= 5_000_000 { "met" } else { "missed" },
        if plain <= Duration::from_millis(25) {
            "met"
        } else {
            "missed"
        },
        if tls <= Duration::from_millis(25) {
            "met"
        } else {
            "missed"
        },
    );
    scratch.drop_db().await?;
    Ok(section)
}
