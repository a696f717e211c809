//! The [`DispatchTable`]: every registered message type and its handlers,
//! indexed by (name, version). Built once at start-up.

use std::collections::HashMap;
use std::fmt;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::message::{MessageType, OutboxMessage};
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

/// One message type in the table: its registration, its handlers, and, for
/// a version without handlers that a later version declares it replaces,
/// the upcast path to the version whose handlers run.
pub struct MessageEntry {
    registration: &'static MessageRegistration,
    handlers: Vec<&'static HandlerRegistration>,
    /// The later versions a message of this one is converted through, the
    /// last being the one whose handlers run; empty when it runs its own.
    upcast_path: Vec<&'static MessageRegistration>,
    /// The index of the last of `upcast_path`.
    upcast_target: Option<usize>,
}

impl MessageEntry {
    /// The message's registration: name, version, group, queue, Rust type.
    pub fn registration(&self) -> &'static MessageRegistration {
        self.registration
    }

    /// Its own handlers, ordered by name.
    pub fn handlers(&self) -> &[&'static HandlerRegistration] {
        &self.handlers
    }

    /// The versions a message of this version is converted through before
    /// it is handled, in order, each declaring it replaces the one before
    /// (`#[outbox(upcast_from = ...)]`), the last being the first on that
    /// chain with handlers. Empty when this version has handlers of its
    /// own, or when no version with handlers replaces it, directly or
    /// through a chain.
    pub fn upcast_path(&self) -> &[&'static MessageRegistration] {
        &self.upcast_path
    }
}

/// A handler, the message it handles, and a message type it declares it
/// publishes.
#[derive(Clone, Copy, Debug)]
pub struct PublishEdge {
    /// The handler.
    pub handler: &'static HandlerRegistration,
    /// The message it handles.
    pub from: &'static MessageRegistration,
    /// A type it may publish.
    pub to: MessageType,
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
                    upcast_path: Vec::new(),
                    upcast_target: None,
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
            if let Some(published) = handler.publishes {
                for declared in published {
                    if !entries.iter().any(|e| is_type(e, declared)) {
                        problems.push(TableProblem::UnregisteredPublish {
                            handler: handler.name,
                            message_type: (declared.rust_type)(),
                        });
                    }
                }
            }
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
        upcast_paths(&mut entries, &mut problems);

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

    /// The entry whose handlers run for a message of `entry`'s version: the
    /// last of its [`upcast_path`](MessageEntry::upcast_path), or `entry`.
    pub fn handled_by<'t>(&'t self, entry: &'t MessageEntry) -> &'t MessageEntry {
        let r = entry.registration;
        match self.lookup(r.name, r.version) {
            Ok(own) if std::ptr::eq(own.registration, r) => {
                own.upcast_target.map_or(own, |at| &self.entries[at])
            }
            // Not an entry of this table.
            _ => entry,
        }
    }

    /// Every declared publish edge: a handler, the message it handles and
    /// a type it declares with `#[handler(publishes = [...])]`. Handlers
    /// without the attribute have none (they may publish anything).
    pub fn publish_edges(&self) -> impl Iterator<Item = PublishEdge> + '_ {
        self.entries.iter().flat_map(|entry| {
            entry.handlers.iter().flat_map(move |&handler| {
                handler
                    .publishes
                    .unwrap_or(&[])
                    .iter()
                    .map(move |&to| PublishEdge {
                        handler,
                        from: entry.registration,
                        to,
                    })
            })
        })
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

/// Whether `entry` registers the Rust type `declared` names.
fn is_type(entry: &MessageEntry, declared: &MessageType) -> bool {
    (entry.registration.type_id)() == (declared.type_id)()
}

/// Links each version to the one that declares it replaces it, refuses a
/// version replaced twice, a cycle and an unregistered source, and gives
/// each version without handlers its path along that chain to the first
/// version with handlers.
fn upcast_paths(entries: &mut [MessageEntry], problems: &mut Vec<TableProblem>) {
    // next[i]: the entry that declares it replaces entry i.
    let mut next: Vec<Option<usize>> = vec![None; entries.len()];
    for (at, entry) in entries.iter().enumerate() {
        let Some(upcast) = entry.registration.upcast_from else {
            continue;
        };
        let Some(from) = entries.iter().position(|e| is_type(e, &upcast.from)) else {
            problems.push(TableProblem::UnregisteredUpcastSource {
                message_type: (entry.registration.rust_type)(),
                replaced: (upcast.from.rust_type)(),
            });
            continue;
        };
        match next[from] {
            Some(first) => problems.push(TableProblem::UpcastConflict {
                replaced: (entries[from].registration.rust_type)(),
                first: (entries[first].registration.rust_type)(),
                second: (entry.registration.rust_type)(),
            }),
            None => next[from] = Some(at),
        }
    }
    let mut cyclic = false;
    for start in 0..entries.len() {
        let mut members = vec![start];
        let mut at = start;
        while let Some(following) = next[at] {
            if following == start {
                // Reported once, from the cycle's lowest entry.
                if members.iter().min() == Some(&start) {
                    problems.push(TableProblem::UpcastCycle {
                        types: members
                            .iter()
                            .map(|&i| (entries[i].registration.rust_type)())
                            .collect(),
                    });
                }
                cyclic = true;
                break;
            }
            if members.contains(&following) {
                break;
            }
            members.push(following);
            at = following;
        }
    }
    if cyclic {
        return;
    }
    for start in 0..entries.len() {
        let mut path = Vec::new();
        let mut at = start;
        while entries[at].handlers.is_empty()
            && let Some(following) = next[at]
        {
            path.push(entries[following].registration);
            at = following;
        }
        if !path.is_empty() && !entries[at].handlers.is_empty() {
            entries[start].upcast_path = path;
            entries[start].upcast_target = Some(at);
        }
    }
}

impl fmt::Debug for DispatchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

/// The entry as JSON: `name`, `version`, `rust_type`, `group`, `queue`,
/// `upcast_from` (the type it replaces, or null), `upcast_path` (the
/// versions a message of it is converted through before it is handled)
/// and `handlers` (each with `name`, `max_attempts`, `publishes`, the
/// declared types or null, and `on_dead_letter`, `"move_on"` or
/// `"hold_group"`), as `sample-app table --json` prints it.
impl Serialize for MessageEntry {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        #[derive(serde::Serialize)]
        struct Type {
            name: &'static str,
            version: u32,
            rust_type: &'static str,
        }
        impl From<MessageType> for Type {
            fn from(t: MessageType) -> Self {
                Type {
                    name: t.name,
                    version: t.version,
                    rust_type: (t.rust_type)(),
                }
            }
        }
        impl From<&MessageRegistration> for Type {
            fn from(m: &MessageRegistration) -> Self {
                Type {
                    name: m.name,
                    version: m.version,
                    rust_type: (m.rust_type)(),
                }
            }
        }
        #[derive(serde::Serialize)]
        struct Handler {
            name: &'static str,
            max_attempts: Option<u32>,
            publishes: Option<Vec<Type>>,
            on_dead_letter: &'static str,
        }
        let r = self.registration;
        let mut entry = serializer.serialize_struct("MessageEntry", 8)?;
        entry.serialize_field("name", r.name)?;
        entry.serialize_field("version", &r.version)?;
        entry.serialize_field("rust_type", (r.rust_type)())?;
        entry.serialize_field("group", &r.group)?;
        entry.serialize_field("queue", &r.queue)?;
        entry.serialize_field("upcast_from", &r.upcast_from.map(|u| Type::from(u.from)))?;
        let path: Vec<Type> = self.upcast_path.iter().map(|&m| Type::from(m)).collect();
        entry.serialize_field("upcast_path", &path)?;
        let handlers: Vec<Handler> = self
            .handlers
            .iter()
            .map(|h| Handler {
                name: h.name,
                max_attempts: h.max_attempts,
                publishes: h
                    .publishes
                    .map(|types| types.iter().copied().map(Type::from).collect()),
                on_dead_letter: if h.holds_group {
                    "hold_group"
                } else {
                    "move_on"
                },
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
            .field(
                "upcast_path",
                &self
                    .upcast_path
                    .iter()
                    .map(|m| m.version)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Renders the table for people, one line per handler.
/// A handler as the table's text shows it: its name, and whether it holds
/// its group when it gives up.
fn shown(handler: &&HandlerRegistration) -> String {
    if handler.holds_group {
        format!("{} (holds group)", handler.name)
    } else {
        handler.name.to_owned()
    }
}

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
                let target = self.handled_by(entry);
                let handlers: Vec<String> = if target.handlers.is_empty() {
                    vec![String::from("(none)")]
                } else if !std::ptr::eq(target, entry) {
                    let t = target.registration;
                    let via = if t.name == m.name {
                        format!("upcast to v{}", t.version)
                    } else {
                        format!("upcast to {} v{}", t.name, t.version)
                    };
                    target
                        .handlers
                        .iter()
                        .map(|h| format!("({via}) {}", shown(h)))
                        .collect()
                } else {
                    entry.handlers.iter().map(shown).collect()
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

struct Cycle<'a>(&'a [&'static str]);

impl fmt::Display for Cycle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in self.0 {
            write!(f, "`{t}` → ")?;
        }
        match self.0.first() {
            Some(first) => write!(f, "`{first}`"),
            None => Ok(()),
        }
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
    /// A handler declares it publishes a type that is not registered (a
    /// hand-written `OutboxMessage` impl).
    #[error(
        "handler `{handler}` declares it publishes `{message_type}`, which is not a registered message; derive `OutboxMessage` for it"
    )]
    UnregisteredPublish {
        /// The handler.
        handler: &'static str,
        /// The type it declares.
        message_type: &'static str,
    },
    /// A message declares it replaces a type that is not registered.
    #[error(
        "`{message_type}` declares `upcast_from = {replaced}`, which is not a registered message; derive `OutboxMessage` for it"
    )]
    UnregisteredUpcastSource {
        /// The message that declares it.
        message_type: &'static str,
        /// The type it names.
        replaced: &'static str,
    },
    /// Two messages declare they replace the same version: two paths.
    #[error(
        "`{first}` and `{second}` both declare `upcast_from = {replaced}`; a version is replaced by one later version: chain them (`{second}` upcast from `{first}`) instead"
    )]
    UpcastConflict {
        /// The replaced type.
        replaced: &'static str,
        /// One type that replaces it.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// `upcast_from` declarations form a cycle.
    #[error(
        "the upcasts form a cycle: {}; remove `upcast_from` from one of them",
        Cycle(types)
    )]
    UpcastCycle {
        /// The types in the cycle, each replaced by the next, the last by
        /// the first.
        types: Vec<&'static str>,
    },
    /// Nothing is registered.
    #[error(
        "no message types are registered in this binary; derive `OutboxMessage` on your messages, and make sure the crates that define them are linked (see the linker caveat in the `outbox_runtime::registry` docs)"
    )]
    Empty,
}
