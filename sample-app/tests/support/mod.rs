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
pub use lambda::{emulator, play_once};
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
