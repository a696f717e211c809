//! What the test binaries share, one copy each: the fault report, child
//! processes on ports, and throwaway PostgreSQL databases. A binary takes
//! it with
//!
//! ```ignore
//! #[path = "../support/mod.rs"] // from a binary's directory, `tests/NAME/main.rs`
//! mod support;
//! ```
//!
//! (`"support/mod.rs"` from a single-file binary). `sample-app`'s tests
//! include `process.rs`, `database.rs` and `fault_report.rs` from here by
//! `#[path]` too.

#![allow(dead_code, unreachable_pub)] // each test binary uses a part

#[cfg(feature = "postgres")]
pub mod database;
pub mod fault_report;
pub mod http;
#[cfg(feature = "sqs")]
pub mod lambda;
pub mod process;
