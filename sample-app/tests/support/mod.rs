//! What the sample's binary-level tests share: a throwaway PostgreSQL
//! database, child processes killed on drop, and a small HTTP/1.1 client
//! that sends exactly the bytes a test gives it (malformed requests too).

#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

// Child processes and throwaway databases: the workspace's one copy of
// each, in outbox-runtime's test support.
#[path = "../../../outbox-runtime/tests/support/database.rs"]
mod database;
#[path = "../../../outbox-runtime/tests/support/process.rs"]
mod process;

#[allow(unused_imports)] // each test binary uses a part
pub use database::{TempDatabase, postgres_server};
#[allow(unused_imports)]
pub use process::{Process, free_port, read_line_starting, wait_for_port};

/// A variable that `scripts/services.sh` exports for the local AWS
/// stand-ins (`AWS_ENDPOINT_URL`, `OUTBOX_CARGO_LAMBDA`), or `None` after
/// saying on the terminal why the test skips: a plain `cargo test` has no
/// stand-ins. Under `scripts/test` (`OUTBOX_SERVICES=required`) a missing
/// variable fails the test instead.
pub fn stand_in(var: &str) -> Option<String> {
    if let Ok(value) = std::env::var(var) {
        return Some(value);
    }
    assert!(
        std::env::var_os("OUTBOX_SERVICES").is_none_or(|v| v != "required"),
        "{var} is not set, though scripts/services.sh started the stand-ins"
    );
    // Written to the process's stderr, past the test harness's capture.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {var} is not set; scripts/test installs and starts the local AWS stand-ins"
    );
    None
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

/// Sends `method path` with `headers` and `body` to 127.0.0.1:`port` over a
/// fresh connection and reads the whole response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("sets a timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("writes");
    stream.write_all(body.as_bytes()).expect("writes");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reads");
    parse_response(&String::from_utf8_lossy(&raw))
}

/// POSTs JSON.
pub fn post_json(port: u16, path: &str, body: &str) -> Response {
    request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[], "")
}

fn parse_response(raw: &str) -> Response {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

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
