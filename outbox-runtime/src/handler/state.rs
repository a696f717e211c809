//! [`State`]: the application values handlers reach through their context,
//! registered once at start-up.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;

/// Application state for handlers, one value per type: an HTTP client, a
/// configuration struct, a connection pool. Registered at start-up, read with
/// [`HandlerContext::state`](crate::HandlerContext::state). No globals.
///
/// ```
/// use outbox_runtime::handler::State;
///
/// struct Config { greeting: &'static str }
///
/// let state = State::new().with(Config { greeting: "hello" });
/// assert_eq!(state.get::<Config>().unwrap().greeting, "hello");
/// assert!(state.get::<String>().is_none());
/// ```
#[derive(Default)]
pub struct State {
    values: HashMap<TypeId, (&'static str, Box<dyn Any + Send + Sync>)>,
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        State::default()
    }

    /// Adds a value, replacing any earlier value of the same type.
    #[must_use]
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// Adds a value, returning the earlier value of the same type if any.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        let previous = self
            .values
            .insert(TypeId::of::<T>(), (type_name::<T>(), Box::new(value)))?;
        previous.1.downcast().ok().map(|boxed| *boxed)
    }

    /// The value of type `T`, if one was added.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>())?.1.downcast_ref()
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.values.values().map(|(name, _)| *name).collect();
        names.sort_unstable();
        f.debug_struct("State").field("types", &names).finish()
    }
}
