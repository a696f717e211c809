//! JSON Schemas of the wire format, checked in and checked for drift and
//! compatibility.
//!
//! [`write()`] puts one file per registered message name and version
//! (`<name>.v<version>.schema.json`) and `envelope.schema.json` in a
//! directory; [`check()`] compares the directory with what the code generates
//! and reports every file that drifted. [`incompatibilities`] compares two
//! schemas of one message version: a removed property, a newly required
//! property or a changed type breaks consumers of that version, so it needs
//! a version bump instead.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dispatch::DispatchTable;
use crate::envelope::Envelope;

/// The file name of a message's schema.
pub fn file_name(name: &str, version: u32) -> String {
    format!("{name}.v{version}.schema.json")
}

/// Every schema the code defines: (file name, pretty JSON with a final newline).
pub fn generate(table: &DispatchTable) -> Vec<(String, String)> {
    let mut files = vec![(
        String::from("envelope.schema.json"),
        pretty(&Envelope::json_schema()),
    )];
    for entry in table.entries() {
        let r = entry.registration();
        files.push((file_name(r.name, r.version), pretty(&(r.schema)())));
    }
    files
}

fn pretty(schema: &schemars::Schema) -> String {
    serde_json::to_string_pretty(schema).unwrap_or_else(|_| String::from("{}")) + "\n"
}

/// Writes every schema into `dir` (created if missing). Returns the files written.
pub fn write(table: &DispatchTable, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in generate(table) {
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
pub fn check(table: &DispatchTable, dir: &Path) -> Result<(), SchemaCheckError> {
    let mut problems = Vec::new();
    for (name, generated) in generate(table) {
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
                "{}: `{}` v{} (`{}`) has no handler and no upcast path while other versions of `{}` have handlers, so its messages would be acknowledged without any handler running; give the next version `#[outbox(upcast_from = ...)]` naming it, with a `From` impl",
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
    Some((name.to_owned(), version.parse().ok()?))
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
