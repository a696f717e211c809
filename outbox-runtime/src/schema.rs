//! The contracts: JSON Schemas of the wire format and an AsyncAPI document,
//! checked in and checked for drift and compatibility, and the message-flow
//! graph.
//!
//! [`write()`] puts one file per registered message name and version
//! (`<name>.v<version>.schema.json`), `envelope.schema.json` and
//! `asyncapi.yaml` ([`asyncapi`]) in a directory; [`check()`] compares the
//! directory with what the code generates and reports every file that
//! drifted. [`mermaid`] draws the flow as a Mermaid flowchart. [`incompatibilities`] compares two
//! schemas of one message version: a removed property, a newly required
//! property or a changed type breaks consumers of that version, so it needs
//! a version bump instead.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dispatch::{DispatchTable, MessageEntry};
use crate::envelope::Envelope;

/// The file name of a message's schema.
pub fn file_name(name: &str, version: u32) -> String {
    format!("{name}.v{version}.schema.json")
}

/// The application the AsyncAPI document describes.
#[derive(Clone, Copy, Debug)]
pub struct Application<'a> {
    /// Its name: the document's `info.title`.
    pub title: &'a str,
    /// Its version: `info.version`.
    pub version: &'a str,
}

/// The name of the AsyncAPI document [`write()`] puts beside the schemas.
pub const ASYNCAPI_FILE: &str = "asyncapi.yaml";

/// Every file the code defines: (file name, text with a final newline): the
/// JSON Schemas, pretty-printed (`envelope.schema.json` and
/// [`file_name`]`(name, version)` per message), and the AsyncAPI document
/// ([`ASYNCAPI_FILE`], [`asyncapi_yaml`]).
pub fn generate(table: &DispatchTable, app: &Application<'_>) -> Vec<(String, String)> {
    let mut files = vec![(
        String::from("envelope.schema.json"),
        pretty(&Envelope::json_schema()),
    )];
    for entry in table.entries() {
        let r = entry.registration();
        files.push((file_name(r.name, r.version), pretty(&(r.schema)())));
    }
    files.push((ASYNCAPI_FILE.to_owned(), asyncapi_yaml(table, app)));
    files
}

fn pretty(schema: &schemars::Schema) -> String {
    serde_json::to_string_pretty(schema).unwrap_or_else(|_| String::from("{}")) + "\n"
}

/// Writes every schema into `dir` (created if missing). Returns the files written.
pub fn write(
    table: &DispatchTable,
    app: &Application<'_>,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in generate(table, app) {
        let path = dir.join(name);
        fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// Compares `dir` with the schemas the code generates.
///
/// A message schema that changed compatibly is drift (regenerate and commit
/// it); one that changed incompatibly at the same version is an error that
/// asks for a version bump. A version whose messages would no longer reach
/// a handler is an error too: one checked in that the code no longer has,
/// or one with neither a handler nor an upcast path while other versions
/// of its name have handlers.
pub fn check(
    table: &DispatchTable,
    app: &Application<'_>,
    dir: &Path,
) -> Result<(), SchemaCheckError> {
    let mut problems = Vec::new();
    for (name, generated) in generate(table, app) {
        let path = dir.join(&name);
        let Ok(checked_in) = fs::read_to_string(&path) else {
            problems.push(format!(
                "{name}: missing; run the schema generator and commit it"
            ));
            continue;
        };
        if checked_in == generated {
            continue;
        }
        if name == ASYNCAPI_FILE {
            problems.push(format!("{name}: out of date; regenerate and commit it"));
            continue;
        }
        let (Ok(old), Ok(new)) = (
            serde_json::from_str::<Value>(&checked_in),
            serde_json::from_str::<Value>(&generated),
        ) else {
            problems.push(format!("{name}: not valid JSON; regenerate it"));
            continue;
        };
        let breaks = incompatibilities(&old, &new);
        if breaks.is_empty() {
            problems.push(format!(
                "{name}: out of date (compatible change); regenerate and commit it"
            ));
        } else {
            problems.push(format!(
                "{name}: changed incompatibly without a version bump ({}); keep the old version and add a new one with `#[outbox(version = ...)]`",
                breaks.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ));
        }
    }
    problems.extend(lost_versions(table, dir));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaCheckError { problems })
    }
}

/// Versions whose messages would be acknowledged without their handlers
/// running: a checked-in version the code no longer has, and a version
/// with neither a handler nor an upcast path while another version of its
/// name has handlers.
fn lost_versions(table: &DispatchTable, dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let handled = |name: &str| {
        table
            .entries()
            .iter()
            .any(|e| e.registration().name == name && !table.handled_by(e).handlers().is_empty())
    };
    let mut removed: Vec<(String, u32)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| parse_file_name(&entry.ok()?.file_name().into_string().ok()?))
        .filter(|(name, version)| table.message(name, *version).is_none())
        .collect();
    removed.sort();
    for (name, version) in removed {
        problems.push(format!(
            "{}: `{name}` v{version} is gone from the code, so its messages still in queues or outboxes would be dead-lettered as an unsupported version; keep the type with a handler, or as the `upcast_from` of a later version, until none can be in flight, then delete this file",
            file_name(&name, version)
        ));
    }
    for entry in table.entries() {
        let r = entry.registration();
        if entry.handlers().is_empty() && entry.upcast_path().is_empty() && handled(r.name) {
            problems.push(format!(
                "{}: `{}` v{} (`{}`) has no handler and no upcast path while other versions of `{}` have handlers, so its messages would be acknowledged without any handler running; handle it, or let a version with handlers declare `#[outbox(upcast_from = ...)]` naming it, with a `From` impl",
                file_name(r.name, r.version),
                r.name,
                r.version,
                (r.rust_type)(),
                r.name
            ));
        }
    }
    problems
}

/// The message name and version of a schema file's name.
fn parse_file_name(file: &str) -> Option<(String, u32)> {
    let stem = file.strip_suffix(".schema.json")?;
    let (name, version) = stem.rsplit_once(".v")?;
    // Only what `file_name` writes: digits, no sign, no leading zero.
    if version.is_empty()
        || version.starts_with('0')
        || !version.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((name.to_owned(), version.parse().ok()?))
}

/// The AsyncAPI 3.0 document of the table's messages.
///
/// - One channel per logical queue (`#[outbox(queue = ...)]`, `default`
///   otherwise), with the SQS channel binding of a FIFO queue; its URL is
///   deployment configuration (`aws::QueueConfig`, feature `aws`).
/// - One message per name and version: its payload is a `$ref` to the
///   JSON Schema file [`write()`] puts beside the document; its group
///   ([`GroupSpec`](crate::message::GroupSpec)) is the extension
///   `x-outbox-group`, since the SQS message binding is reserved empty.
/// - One `send` operation per channel (the relay publishes every message of
///   the queue), and one `receive` operation per handler, with its name,
///   attempts, declared publishes and `on_dead_letter = "hold_group"` as
///   `x-outbox-*` extensions.
pub fn asyncapi(table: &DispatchTable, app: &Application<'_>) -> Value {
    use serde_json::{Map, json};
    let entries = table.entries();
    let ids = message_keys(entries);
    let queue_of = |at: usize| entries[at].registration().queue.unwrap_or("default");
    let message_ref =
        |at: usize| json!({"$ref": format!("#/channels/{}/messages/{}", queue_of(at), ids[at])});
    let mut channels = Map::new();
    let mut messages = Map::new();
    let mut operations = Map::new();
    for (at, entry) in entries.iter().enumerate() {
        let r = entry.registration();
        let id = &ids[at];
        let mut message = json!({
            "name": r.name,
            "title": format!("{} v{}", r.name, r.version),
            "summary": format!("Rust type `{}`", (r.rust_type)()),
            "contentType": "application/json",
            "payload": {"$ref": format!("./{}", file_name(r.name, r.version))},
            "x-outbox-version": r.version,
            "x-outbox-group": r.group,
        });
        if let Some(upcast) = r.upcast_from {
            message["x-outbox-upcast-from"] =
                json!(format!("{} v{}", upcast.from.name, upcast.from.version));
        }
        messages.insert(id.clone(), message);
        let queue = queue_of(at);
        let channel = channels.entry(queue).or_insert_with(|| {
            json!({
                "address": queue,
                "description": format!("The logical queue `{queue}`: an SQS FIFO queue, its URL set at deployment."),
                "messages": {},
                "bindings": {"sqs": {"bindingVersion": "0.2.0", "queue": {"name": queue, "fifoQueue": true}}},
            })
        });
        channel["messages"][id] = json!({"$ref": format!("#/components/messages/{id}")});
    }
    for (channel, value) in &channels {
        let refs: Vec<Value> = value["messages"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys())
            .map(|id| json!({"$ref": format!("#/channels/{channel}/messages/{id}")}))
            .collect();
        operations.insert(
            format!("send.{channel}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{channel}")},
                "summary": "The relay publishes the messages committed to the outbox, by the app or by handlers, in group order.",
                "messages": refs,
            }),
        );
    }
    // A receive operation per handler and per queue its messages arrive
    // on: its version's, and those of the versions upcast to it.
    for (at, entry) in entries.iter().enumerate() {
        let mut arriving: Vec<usize> = vec![at];
        arriving.extend((0..entries.len()).filter(|&other| {
            other != at && std::ptr::eq(table.handled_by(&entries[other]), entry)
        }));
        for handler in entry.handlers() {
            let mut queues: Vec<&str> = arriving.iter().map(|&i| queue_of(i)).collect();
            queues.sort_unstable();
            queues.dedup();
            for queue in queues {
                let received: Vec<Value> = arriving
                    .iter()
                    .filter(|&&i| queue_of(i) == queue)
                    .map(|&i| message_ref(i))
                    .collect();
                let mut operation = json!({
                    "action": "receive",
                    "channel": {"$ref": format!("#/channels/{queue}")},
                    "summary": format!("Handler `{}`", handler.name),
                    "messages": received,
                    "x-outbox-handler": handler.name,
                });
                if let Some(max) = handler.max_attempts {
                    operation["x-outbox-max-attempts"] = json!(max);
                }
                if handler.holds_group {
                    operation["x-outbox-on-dead-letter"] = json!("hold_group");
                }
                if let Some(declared) = handler.publishes {
                    let published: Vec<&str> = declared
                        .iter()
                        .filter_map(|t| {
                            entries.iter().position(|e| {
                                let r = e.registration();
                                (r.name, r.version) == (t.name, t.version)
                            })
                        })
                        .map(|i| ids[i].as_str())
                        .collect();
                    operation["x-outbox-publishes"] = json!(published);
                }
                let name = format!("receive.{}.{}", key(handler.name), ids[at]);
                let name = if queue == queue_of(at) {
                    name
                } else {
                    format!("{name}.from.{queue}")
                };
                operations.insert(name, operation);
            }
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": app.title,
            "version": app.version,
            "description": "Messages of the transactional outbox: written in the app's transaction, published to SQS FIFO queues in group order, handled once per handler. Generated from the dispatch table by outbox_runtime::schema::asyncapi.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    })
}

/// [`asyncapi`] as YAML, as [`write()`] writes it.
pub fn asyncapi_yaml(table: &DispatchTable, app: &Application<'_>) -> String {
    yaml(&asyncapi(table, app))
}

/// Each entry's message id in the AsyncAPI document, `<name>.v<version>`
/// as a component key ([`key`]), made unique with a `-2`, `-3`... suffix
/// where two names map to one key (`a:b` and `a_b`).
fn message_keys(entries: &[MessageEntry]) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    entries
        .iter()
        .map(|entry| {
            let r = entry.registration();
            let base = key(&format!("{}.v{}", r.name, r.version));
            let mut id = base.clone();
            let mut n = 1;
            while !taken.insert(id.clone()) {
                n += 1;
                id = format!("{base}-{n}");
            }
            id
        })
        .collect()
}

/// A name as an AsyncAPI component key: ASCII letters, digits, `.`, `-`
/// and `_`; anything else becomes `_`.
fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `value` as block YAML: maps and lists indented, every string
/// double-quoted (YAML reads JSON's string escapes), keys plain when they
/// are safe.
fn yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_value(value, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn yaml_value(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&yaml_key(k));
                out.push(':');
                yaml_nested(v, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the rest below it.
                        let mut nested = String::new();
                        yaml_value(item, indent + 2, &mut nested);
                        out.push(' ');
                        out.push_str(&nested[indent + 2..]);
                    }
                    _ => yaml_nested(item, indent, out),
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

/// A scalar as YAML: a JSON number, boolean or null as is; a string
/// double-quoted with JSON's escapes, plus escapes for the characters YAML
/// does not allow unescaped (DEL, C1 controls, line and paragraph
/// separators).
fn yaml_scalar(value: &Value) -> String {
    let Value::String(text) = value else {
        return value.to_string();
    };
    let json = Value::String(text.clone()).to_string();
    if !json
        .chars()
        .any(|c| matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}'))
    {
        return json;
    }
    json.chars()
        .map(|c| match c {
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => format!("\\u{:04x}", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}

/// A value after `key:` or `-`: a scalar or empty collection on the same
/// line, a collection on the lines below.
fn yaml_nested(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml_value(value, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            yaml_value(value, indent + 2, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

/// A key, plain when YAML reads it back as this string (it starts with a
/// letter, `$` or `_`, has no character YAML gives a meaning, and is not a
/// word YAML reads as a boolean or null), double-quoted otherwise.
fn yaml_key(key: &str) -> String {
    const WORDS: [&str; 9] = ["true", "false", "null", "yes", "no", "on", "off", "y", "n"];
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '$' | '_'))
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '$' | '/'))
        && !WORDS.iter().any(|w| key.eq_ignore_ascii_case(w));
    if plain {
        key.to_owned()
    } else {
        yaml_scalar(&Value::String(key.to_owned()))
    }
}

/// The message flow as a Mermaid flowchart: messages (name, version, group)
/// inside their queue, the handlers each one runs (through its upcast path
/// for old versions), and the messages each handler declares it publishes
/// (`#[handler(publishes = [...])]`). Messages no declared edge produces
/// come from `app`; a handler without `publishes` may publish anything and
/// has no outgoing edge.
pub fn mermaid(table: &DispatchTable) -> String {
    use std::fmt::Write as _;
    let entries = table.entries();
    // Ids by position (`m3`, `h3_0`): names map to ids one to one.
    let message_at = |name: &str, version: u32| {
        entries.iter().position(|e| {
            let r = e.registration();
            (r.name, r.version) == (name, version)
        })
    };
    let label = |text: &str| text.replace('"', "#quot;").replace('`', "");
    let published: BTreeSet<usize> = table
        .publish_edges()
        .filter_map(|e| message_at(e.to.name, e.to.version))
        .collect();
    let mut out = String::from("flowchart LR\n");
    if (0..entries.len()).any(|at| !published.contains(&at)) {
        out.push_str("    app([app])\n");
    }
    let mut queues: Vec<&str> = entries
        .iter()
        .map(|e| e.registration().queue.unwrap_or("default"))
        .collect();
    queues.sort_unstable();
    queues.dedup();
    for (q, queue) in queues.iter().enumerate() {
        let _ = writeln!(out, "    subgraph q{q}[\"queue {}\"]", label(queue));
        for (at, entry) in entries.iter().enumerate() {
            let r = entry.registration();
            if r.queue.unwrap_or("default") == *queue {
                let _ = writeln!(
                    out,
                    "        m{at}[\"{} v{}<br/>group: {}\"]",
                    label(r.name),
                    r.version,
                    label(&r.group.to_string())
                );
            }
        }
        out.push_str("    end\n");
    }
    for (at, entry) in entries.iter().enumerate() {
        for (k, handler) in entry.handlers().iter().enumerate() {
            let _ = writeln!(out, "    h{at}_{k}[[\"{}\"]]", label(handler.name));
        }
    }
    for (at, entry) in entries.iter().enumerate() {
        let r = entry.registration();
        if !published.contains(&at) {
            let _ = writeln!(out, "    app --> m{at}");
        }
        if let Some(upcast) = r.upcast_from
            && let Some(from) = message_at(upcast.from.name, upcast.from.version)
        {
            let _ = writeln!(out, "    m{from} -. upcast .-> m{at}");
        }
        for k in 0..entry.handlers().len() {
            let _ = writeln!(out, "    m{at} --> h{at}_{k}");
        }
    }
    for (at, entry) in entries.iter().enumerate() {
        for (k, handler) in entry.handlers().iter().enumerate() {
            for to in handler.publishes.unwrap_or(&[]) {
                if let Some(to) = message_at(to.name, to.version) {
                    let _ = writeln!(out, "    h{at}_{k} -- publishes --> m{to}");
                }
            }
        }
    }
    out
}

/// The checked-in schemas do not match the code.
#[derive(Debug, thiserror::Error)]
pub struct SchemaCheckError {
    /// One line per file.
    pub problems: Vec<String>,
}

impl fmt::Display for SchemaCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schemas do not match the code:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// A change that breaks readers of the old schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incompatibility {
    /// A property the old schema had is gone.
    Removed(String),
    /// A property is required now and was not before.
    NewlyRequired(String),
    /// A property's type changed.
    TypeChanged {
        /// The property's path.
        path: String,
        /// Its old type(s).
        old: String,
        /// Its new type(s).
        new: String,
    },
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incompatibility::Removed(path) => write!(f, "`{path}` was removed"),
            Incompatibility::NewlyRequired(path) => write!(f, "`{path}` became required"),
            Incompatibility::TypeChanged { path, old, new } => {
                write!(f, "`{path}` changed type from {old} to {new}")
            }
        }
    }
}

/// The incompatible differences from `old` to `new` (two JSON Schemas of one
/// message version), following `$ref`s into each schema's `$defs`.
pub fn incompatibilities(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    compare(old, old, new, new, "", &mut out, 0);
    out
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    for _ in 0..16 {
        let Some(reference) = current.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(name) = reference.strip_prefix("#/$defs/") else {
            break;
        };
        match root.get("$defs").and_then(|d| d.get(name)) {
            Some(target) => current = target,
            None => break,
        }
    }
    current
}

fn types(schema: &Value) -> BTreeSet<String> {
    match schema.get("type") {
        Some(Value::String(t)) => BTreeSet::from([t.clone()]),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn compare(
    old_root: &Value,
    old: &Value,
    new_root: &Value,
    new: &Value,
    path: &str,
    out: &mut Vec<Incompatibility>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    let (old, new) = (resolve(old_root, old), resolve(new_root, new));
    let (old_types, new_types) = (types(old), types(new));
    // A type set that lost a member rejects values the old one accepted.
    if !old_types.is_empty() && !new_types.is_empty() && !old_types.is_subset(&new_types) {
        out.push(Incompatibility::TypeChanged {
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
            old: old_types.into_iter().collect::<Vec<_>>().join("|"),
            new: new_types.into_iter().collect::<Vec<_>>().join("|"),
        });
        return;
    }
    let required = |s: &Value| -> BTreeSet<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old_required, new_required) = (required(old), required(new));
    for name in new_required.difference(&old_required) {
        out.push(Incompatibility::NewlyRequired(join(path, name)));
    }
    let empty = serde_json::Map::new();
    let old_props = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, old_prop) in old_props {
        match new_props.get(name) {
            None => out.push(Incompatibility::Removed(join(path, name))),
            Some(new_prop) => compare(
                old_root,
                old_prop,
                new_root,
                new_prop,
                &join(path, name),
                out,
                depth + 1,
            ),
        }
    }
    if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
        compare(
            old_root,
            old_items,
            new_root,
            new_items,
            &format!("{path}[]"),
            out,
            depth + 1,
        );
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_quotes_keys_it_would_read_otherwise_and_escapes_what_it_forbids() {
        let doc = json!({
            "007": 1,
            "true": "x",
            "On": [],
            "a b": {},
            "$ref": "#/x",
            "plain.key-1": [[1, 2], {"k": "v", "n": null}],
            "s": "del\u{7f} ls\u{2028} quote\" nl\n",
        });
        assert_eq!(
            yaml(&doc),
            "$ref: \"#/x\"\n\
             \"007\": 1\n\
             \"On\": []\n\
             \"a b\": {}\n\
             plain.key-1:\n  -\n    - 1\n    - 2\n  - k: \"v\"\n    \"n\": null\n\
             s: \"del\\u007f ls\\u2028 quote\\\" nl\\n\"\n\
             \"true\": \"x\"\n"
        );
    }

    #[test]
    fn compatible_and_incompatible_changes_are_told_apart() {
        let old = json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "address": {"$ref": "#/$defs/Address"}
            },
            "required": ["id"],
            "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}}
        });
        let mut added_optional = old.clone();
        added_optional["properties"]["note"] = json!({"type": ["string", "null"]});
        assert_eq!(incompatibilities(&old, &added_optional), []);

        let mut broken = old.clone();
        broken["properties"].as_object_mut().unwrap().remove("name");
        broken["required"] = json!(["id", "address"]);
        broken["$defs"]["Address"]["properties"]["city"] = json!({"type": "integer"});
        assert_eq!(
            incompatibilities(&old, &broken),
            [
                Incompatibility::NewlyRequired("address".into()),
                Incompatibility::TypeChanged {
                    path: "address.city".into(),
                    old: "string".into(),
                    new: "integer".into()
                },
                Incompatibility::Removed("name".into()),
            ]
        );

        let mut widened = old.clone();
        widened["properties"]["id"] = json!({"type": ["integer", "null"]});
        assert_eq!(
            incompatibilities(&old, &widened),
            [],
            "accepting more is compatible"
        );
    }
}
