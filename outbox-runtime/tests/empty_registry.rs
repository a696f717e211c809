//! A binary with no messages: the table refuses to start empty, because that
//! is what a binary looks like when the linker dropped the crate holding its
//! registrations.

use outbox_runtime::dispatch::{DispatchTable, TableProblem};

#[test]
fn an_empty_registry_is_an_error_that_names_the_linker_caveat() {
    let err = DispatchTable::from_registry().unwrap_err();
    assert_eq!(err.problems(), [TableProblem::Empty]);
    assert!(
        err.to_string()
            .contains("make sure the crates that define them are linked"),
        "{err}"
    );
    assert!(
        DispatchTable::from_registrations([], [])
            .unwrap()
            .is_empty()
    );
}
