//! Child processes for tests: a free port to give one, waiting until it
//! listens (or reading the port it announces), and killing it when the test
//! is done with it, however the test ends; whether the local AWS stand-ins
//! run (`stand_in`). The one copy for every test
//! binary of the workspace: `outbox-runtime`'s through `support/mod.rs`,
//! `sample-app`'s through its `tests/support/mod.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout};
use std::time::{Duration, Instant};

/// Kills a child process (and waits for it) when dropped.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binds")
        .local_addr()
        .expect("has an address")
        .port()
}

/// Waits up to 30 s until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_for_port`] for async tests: sleeps on the runtime between tries,
/// so the test's other tasks go on meanwhile (a connection to 127.0.0.1 is
/// accepted or refused at once).
pub async fn wait_for_port_async(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the child's stdout until a line starts with `prefix`; returns the
/// rest of that line (a process that picks its own port says where).
pub fn read_line_starting(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).expect("reads stdout");
        assert!(n > 0, "the process exited before printing `{prefix}`");
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

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
