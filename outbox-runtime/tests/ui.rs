//! Compile-time behaviour of the macros: every misuse fails with a message
//! that names the fix (`tests/ui/fail`, each with its reviewed `.stderr`),
//! and every supported form compiles and registers (`tests/ui/pass`).
//!
//! Refresh the `.stderr` files with `TRYBUILD=overwrite` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
