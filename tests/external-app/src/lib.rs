//! Two messages and three handlers in different modules, and no
//! registration list anywhere.

pub mod handlers;
pub mod messages;

use std::sync::Mutex;

/// What the handlers did, shared with them through the dispatcher's state.
#[derive(Default)]
pub struct Journal(Mutex<Vec<String>>);

impl Journal {
    pub fn record(&self, entry: String) {
        self.0.lock().expect("journal lock").push(entry);
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().expect("journal lock").clone()
    }
}
