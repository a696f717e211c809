//! The [`DispatchTable`]: every registered message type and its handlers,
//! indexed by (name, version). Built once at start-up.

use std::collections::HashMap;
use std::fmt;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::message::OutboxMessage;
use crate::registry::{HANDLERS, HandlerRegistration, MESSAGES, MessageRegistration};
use foldhash::fast::RandomState;

/// The routing table from (message name, version) to handlers.
///
/// Built from the link-time registrations with
/// [`from_registry`](Self::from_registry), which checks them all and reports
/// every problem at once. Read-only afterwards: inspect it with
/// [`entries`](Self::entries) (each serializes to JSON), or print it
/// (`Display` renders a table).
///
/// ```standalone_crate
/// use outbox_runtime::{handler, OutboxMessage, dispatch::DispatchTable};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// #[outbox(name = "greeting", version = 2, group = to)]
/// struct Greeting { to: String }
///
/// #[handler]
/// async fn greet(msg: Greeting) -> anyhow::Result<()> {
///     println!("hello, {}", msg.to);
///     Ok(())
/// }
///
/// let table = DispatchTable::from_registry()?;
/// let greeting = table.message("greeting", 2).unwrap();
/// assert_eq!(greeting.handlers().len(), 1);
/// assert!(greeting.handlers()[0].name.ends_with("::greet"));
/// # Ok::<(), outbox_runtime::dispatch::TableError>(())
/// ```
pub struct DispatchTable {
    entries: Vec<MessageEntry>,
    /// name -> (version, index into `entries`); a name has few versions, so a
    /// scan beats a second hash.
    index: HashMap<&'static str, Vec<(u32, usize)>, RandomState>,
}

/// One message type in the table: its registration and its handlers.
pub struct MessageEntry {
    registration: &'static MessageRegistration,
    handlers: Vec<&'static HandlerRegistration>,
}

impl MessageEntry {
    /// The message's registration: name, version, group, queue, Rust type.
    pub fn registration(&self) -> &'static MessageRegistration {
        self.registration
    }

    /// Its handlers, ordered by name.
    pub fn handlers(&self) -> &[&'static HandlerRegistration] {
        &self.handlers
    }
}

/// How a lookup by name and version failed.
#[derive(Debug)]
pub(crate) enum Miss {
    UnknownType,
    UnsupportedVersion { supported: Vec<u32> },
}

impl DispatchTable {
    /// Builds the table from every `#[derive(OutboxMessage)]` and `#[handler]`
    /// linked into this binary.
    ///
    /// Fails, listing every problem, when two message types share a name and
    /// version, a handler's message type is not registered, two handlers of
    /// one message share a name, or nothing is registered at all (see the
    /// linker caveat in [`registry`](crate::registry)).
    pub fn from_registry() -> Result<Self, TableError> {
        let table = Self::from_registrations(MESSAGES.iter(), HANDLERS.iter())?;
        if table.entries.is_empty() {
            return Err(TableError {
                problems: vec![TableProblem::Empty],
            });
        }
        Ok(table)
    }

    /// Builds a table from explicit registrations, with the same checks as
    /// [`from_registry`](Self::from_registry) except that an empty table is
    /// allowed.
    pub fn from_registrations(
        messages: impl IntoIterator<Item = &'static MessageRegistration>,
        handlers: impl IntoIterator<Item = &'static HandlerRegistration>,
    ) -> Result<Self, TableError> {
        let mut problems = Vec::new();

        let mut messages: Vec<_> = messages.into_iter().collect();
        messages.sort_by_key(|m| (m.name, m.version, (m.rust_type)()));
        let mut entries: Vec<MessageEntry> = Vec::with_capacity(messages.len());
        for registration in messages {
            match entries.last() {
                Some(prev)
                    if prev.registration.name == registration.name
                        && prev.registration.version == registration.version =>
                {
                    problems.push(TableProblem::DuplicateMessage {
                        name: registration.name,
                        version: registration.version,
                        first: (prev.registration.rust_type)(),
                        second: (registration.rust_type)(),
                    });
                }
                _ => entries.push(MessageEntry {
                    registration,
                    handlers: Vec::new(),
                }),
            }
        }

        let mut handlers: Vec<_> = handlers.into_iter().collect();
        handlers.sort_by_key(|h| (h.name, (h.message_type)()));
        for handler in handlers {
            let found = entries.binary_search_by(|e| {
                (e.registration.name, e.registration.version)
                    .cmp(&(handler.message_name, handler.message_version))
            });
            let Ok(at) = found else {
                problems.push(TableProblem::UnregisteredMessage {
                    handler: handler.name,
                    message_type: (handler.message_type)(),
                });
                continue;
            };
            let entry = &mut entries[at];
            if (entry.registration.type_id)() != (handler.message_type_id)() {
                problems.push(TableProblem::MessageMismatch {
                    handler: handler.name,
                    handler_type: (handler.message_type)(),
                    name: handler.message_name,
                    version: handler.message_version,
                    registered_type: (entry.registration.rust_type)(),
                });
                continue;
            }
            if entry.handlers.iter().any(|h| h.name == handler.name) {
                problems.push(TableProblem::DuplicateHandler {
                    handler: handler.name,
                    message_type: (handler.message_type)(),
                });
                continue;
            }
            entry.handlers.push(handler);
        }

        if !problems.is_empty() {
            return Err(TableError { problems });
        }

        let mut index: HashMap<&'static str, Vec<(u32, usize)>, RandomState> = HashMap::default();
        for (at, entry) in entries.iter().enumerate() {
            let r = entry.registration;
            index.entry(r.name).or_default().push((r.version, at));
        }
        Ok(DispatchTable { entries, index })
    }

    /// Checks that `M` is in the table, for a binary that must handle it.
    ///
    /// Naming the type here also makes the binary reference the crate that
    /// defines it, so the linker cannot drop that crate's registrations.
    pub fn require<M: OutboxMessage>(&self) -> Result<&Self, TableError> {
        match self.message(M::NAME, M::VERSION) {
            Some(entry) if (entry.registration.type_id)() == std::any::TypeId::of::<M>() => {
                Ok(self)
            }
            _ => Err(TableError {
                problems: vec![TableProblem::Missing {
                    message_type: std::any::type_name::<M>(),
                    name: M::NAME,
                    version: M::VERSION,
                }],
            }),
        }
    }

    /// The entry for a message name and version.
    pub fn message(&self, name: &str, version: u32) -> Option<&MessageEntry> {
        self.lookup(name, version).ok()
    }

    pub(crate) fn lookup(&self, name: &str, version: u32) -> Result<&MessageEntry, Miss> {
        let versions = self.index.get(name).ok_or(Miss::UnknownType)?;
        match versions.iter().find(|(v, _)| *v == version) {
            Some((_, at)) => Ok(&self.entries[*at]),
            None => Err(Miss::UnsupportedVersion {
                supported: versions.iter().map(|(v, _)| *v).collect(),
            }),
        }
    }

    /// Every message type, ordered by name then version.
    pub fn entries(&self) -> &[MessageEntry] {
        &self.entries
    }

    /// How many message types are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message type is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for DispatchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

/// The entry as JSON: `name`, `version`, `rust_type`, `group`, `queue` and
/// `handlers` (each with `name` and `max_attempts`), as `sample-app table
/// --json` prints it.
impl Serialize for MessageEntry {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        #[derive(serde::Serialize)]
        struct Handler {
            name: &'static str,
            max_attempts: Option<u32>,
        }
        let r = self.registration;
        let mut entry = serializer.serialize_struct("MessageEntry", 6)?;
        entry.serialize_field("name", r.name)?;
        entry.serialize_field("version", &r.version)?;
        entry.serialize_field("rust_type", (r.rust_type)())?;
        entry.serialize_field("group", &r.group)?;
        entry.serialize_field("queue", &r.queue)?;
        let handlers: Vec<Handler> = self
            .handlers
            .iter()
            .map(|h| Handler {
                name: h.name,
                max_attempts: h.max_attempts,
            })
            .collect();
        entry.serialize_field("handlers", &handlers)?;
        entry.end()
    }
}

impl fmt::Debug for MessageEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.registration;
        let handlers: Vec<_> = self.handlers.iter().map(|h| h.name).collect();
        f.debug_struct("MessageEntry")
            .field("name", &r.name)
            .field("version", &r.version)
            .field("rust_type", &(r.rust_type)())
            .field("group", &r.group)
            .field("queue", &r.queue)
            .field("handlers", &handlers)
            .finish()
    }
}

/// Renders the table for people, one line per handler.
impl fmt::Display for DispatchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 5]> = self
            .entries
            .iter()
            .flat_map(|entry| {
                let m = entry.registration;
                let head = [
                    m.name.to_owned(),
                    format!("v{}", m.version),
                    m.group.to_string(),
                    m.queue.unwrap_or("default").to_owned(),
                ];
                let handlers: Vec<String> = if entry.handlers.is_empty() {
                    vec![String::from("(none)")]
                } else {
                    entry.handlers.iter().map(|h| h.name.to_owned()).collect()
                };
                handlers.into_iter().enumerate().map(move |(i, handler)| {
                    let [a, b, c, d] = if i == 0 {
                        head.clone()
                    } else {
                        Default::default()
                    };
                    [a, b, c, d, handler]
                })
            })
            .collect();
        let header = ["message", "version", "group", "queue", "handler"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 5]| {
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    writeln!(f, "{cell}")?;
                } else {
                    write!(f, "{cell:<w$}  ")?;
                }
            }
            Ok(())
        };
        line(f, header)?;
        for row in &rows {
            line(f, [&row[0], &row[1], &row[2], &row[3], &row[4]])?;
        }
        Ok(())
    }
}

/// The registrations do not form a valid table. Lists every problem found.
#[derive(Debug, thiserror::Error)]
pub struct TableError {
    problems: Vec<TableProblem>,
}

impl TableError {
    /// Every problem found.
    pub fn problems(&self) -> &[TableProblem] {
        &self.problems
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid dispatch table: {one}"),
            many => {
                write!(f, "invalid dispatch table ({} problems):", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// One problem with the registrations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableProblem {
    /// Two Rust types declare the same message name and version.
    #[error(
        "message `{name}` v{version} is declared by both `{first}` and `{second}`; give one of them another `#[outbox(name = ...)]` or `version`"
    )]
    DuplicateMessage {
        /// The shared name.
        name: &'static str,
        /// The shared version.
        version: u32,
        /// One Rust type.
        first: &'static str,
        /// The other Rust type.
        second: &'static str,
    },
    /// A handler's message type implements `OutboxMessage` by hand and is not
    /// registered.
    #[error(
        "handler `{handler}` takes `{message_type}`, which is not a registered message; derive `OutboxMessage` for it"
    )]
    UnregisteredMessage {
        /// The handler.
        handler: &'static str,
        /// Its message type.
        message_type: &'static str,
    },
    /// A handler's message name and version belong to another Rust type.
    #[error(
        "handler `{handler}` takes `{handler_type}`, but message `{name}` v{version} is registered by `{registered_type}`"
    )]
    MessageMismatch {
        /// The handler.
        handler: &'static str,
        /// Its message type.
        handler_type: &'static str,
        /// The message name.
        name: &'static str,
        /// The message version.
        version: u32,
        /// The type registered under that name and version.
        registered_type: &'static str,
    },
    /// Two handlers of one message share a name, so the inbox could not tell
    /// them apart.
    #[error(
        "two handlers of `{message_type}` are named `{handler}`; give one of them another `#[handler(name = ...)]`"
    )]
    DuplicateHandler {
        /// The shared handler name.
        handler: &'static str,
        /// The message type.
        message_type: &'static str,
    },
    /// A type the binary requires is not in the table.
    #[error(
        "message `{name}` v{version} (`{message_type}`) is not in the dispatch table; is the crate that derives it linked into this binary?"
    )]
    Missing {
        /// The required Rust type.
        message_type: &'static str,
        /// Its name.
        name: &'static str,
        /// Its version.
        version: u32,
    },
    /// Nothing is registered.
    #[error(
        "no message types are registered in this binary; derive `OutboxMessage` on your messages, and make sure the crates that define them are linked (see the linker caveat in the `outbox_runtime::registry` docs)"
    )]
    Empty,
}
