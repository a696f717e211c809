//! The typed model of a `#[derive(OutboxMessage)]` input, and its checks.

use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, Ident, Index, LitStr, Member, Path, Type};

use crate::attr::{self, GroupAttr, MessageAttrs};
use crate::ctxt::Ctxt;

/// A message type that passed every check.
pub(crate) struct Message<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) name: LitStr,
    pub(crate) version: u32,
    pub(crate) group: Group<'a>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) upcast_from: Option<Type>,
    pub(crate) krate: Path,
}

/// A derive that failed: every error, and the crate path for the fallback
/// impl (`crate = ...` if it parsed, else `::outbox_runtime`).
pub(crate) struct Rejected {
    pub(crate) errors: syn::Error,
    pub(crate) krate: Path,
}

/// Where the group key comes from, resolved against the type's fields.
pub(crate) enum Group<'a> {
    PerType,
    Field { member: Member, ty: &'a Type },
    Function(Path),
    Constant(LitStr),
}

impl<'a> Message<'a> {
    /// Builds the model, or returns every error found.
    pub(crate) fn from_input(input: &'a DeriveInput) -> Result<Self, Rejected> {
        let mut cx = Ctxt::new();
        let attrs = attr::message_attrs(&input.attrs, &mut cx);

        if let Data::Union(data) = &input.data {
            cx.error_spanned_by(
                data.union_token,
                "an outbox message must be a struct or an enum, not a union",
            );
        }
        if !input.generics.params.is_empty() {
            cx.error_spanned_by(
                &input.generics,
                "an outbox message cannot be generic: it is registered once, under one name; declare a concrete type",
            );
        } else if let Some(clause) = &input.generics.where_clause {
            cx.error_spanned_by(clause, "an outbox message cannot have a `where` clause");
        }

        let MessageAttrs {
            name,
            version,
            group,
            queue,
            upcast_from,
            krate,
        } = attrs;
        if let Some(from) = &upcast_from {
            check_upcast_source(input, from, &mut cx);
        }

        let name = name
            .unwrap_or_else(|| LitStr::new(&input.ident.unraw().to_string(), input.ident.span()));
        check_name(&name, &mut cx);
        if let Some(queue) = &queue {
            check_queue(queue, &mut cx);
        }
        let group = match group {
            None => Group::PerType,
            Some(group) => resolve_group(input, group, &mut cx),
        };

        let krate = krate.unwrap_or_else(default_crate);
        if let Err(errors) = cx.finish() {
            return Err(Rejected { errors, krate });
        }
        Ok(Message {
            ident: &input.ident,
            name,
            version: version.unwrap_or(1),
            group,
            queue,
            upcast_from,
            krate,
        })
    }
}

/// A type cannot replace itself.
fn check_upcast_source(input: &DeriveInput, from: &Type, cx: &mut Ctxt) {
    if let Type::Path(path) = from
        && path.qself.is_none()
        && (path.path.is_ident("Self") || path.path.is_ident(&input.ident))
    {
        cx.error_spanned_by(
            from,
            format_args!(
                "`{}` cannot upcast from itself; name the type of the version it replaces, such as `upcast_from = {}V1`",
                input.ident, input.ident
            ),
        );
    }
}

pub(crate) fn default_crate() -> Path {
    syn::parse_quote!(::outbox_runtime)
}

/// Message names: 1 to 200 characters of ASCII letters, digits and `.`, `_`,
/// `-`, `:`, `/`, so they read the same in logs, SQS attributes and URLs.
fn check_name(name: &LitStr, cx: &mut Ctxt) {
    let value = name.value();
    if value.is_empty() {
        cx.error_spanned_by(name, "the message name must not be empty");
    } else if value.len() > 200 {
        cx.error_spanned_by(name, "the message name must be at most 200 characters");
    } else if let Some(c) = value.chars().find(|c| !is_name_char(*c)) {
        cx.error_spanned_by(
            name,
            format_args!(
                "the message name contains {c:?}; use ASCII letters, digits and `.` `_` `-` `:` `/`, such as \"orders.created\""
            ),
        );
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

/// Logical queue names follow SQS queue names: 1 to 80 ASCII letters, digits,
/// `-` and `_`.
fn check_queue(queue: &LitStr, cx: &mut Ctxt) {
    let value = queue.value();
    if value.is_empty() || value.len() > 80 {
        cx.error_spanned_by(queue, "the queue name must be 1 to 80 characters");
    } else if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
    {
        cx.error_spanned_by(
            queue,
            format_args!("the queue name contains {c:?}; use ASCII letters, digits, `-` and `_`"),
        );
    }
}

/// A constant group must satisfy the SQS `MessageGroupId` rules.
fn check_constant_group(group: &LitStr, cx: &mut Ctxt) {
    let value = group.value();
    if value.is_empty() || value.len() > 128 {
        cx.error_spanned_by(group, "a message group must be 1 to 128 characters");
    } else if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        cx.error_spanned_by(
            group,
            format_args!(
                "a message group cannot contain {c:?}; use ASCII letters, digits and punctuation"
            ),
        );
    }
}

fn resolve_group<'a>(input: &'a DeriveInput, group: GroupAttr, cx: &mut Ctxt) -> Group<'a> {
    let fields = match &input.data {
        Data::Struct(data) => Some(&data.fields),
        Data::Enum(_) | Data::Union(_) => None,
    };
    match group {
        GroupAttr::Constant(lit) => {
            check_constant_group(&lit, cx);
            Group::Constant(lit)
        }
        GroupAttr::Function(path) => Group::Function(path),
        GroupAttr::Ident(ident) => match fields {
            Some(Fields::Named(named)) => {
                let found = named
                    .named
                    .iter()
                    .find(|f| f.ident.as_ref().is_some_and(|i| i.unraw() == ident.unraw()));
                if let Some(field) = found {
                    Group::Field {
                        member: Member::Named(ident),
                        ty: &field.ty,
                    }
                } else {
                    let names: Vec<String> = named
                        .named
                        .iter()
                        .filter_map(|f| f.ident.as_ref())
                        .map(|i| format!("`{}`", i.unraw()))
                        .collect();
                    cx.error_spanned_by(
                        &ident,
                        format_args!(
                            "`{}` has no field `{ident}`; the fields are {}. To group by a function, write a path: `group = self::{ident}`",
                            input.ident,
                            names.join(", ")
                        ),
                    );
                    Group::PerType
                }
            }
            _ => {
                cx.error_spanned_by(
                    &ident,
                    format_args!(
                        "`{}` has no named fields to group by; use a function path (`group = self::{ident}` or `group = Self::{ident}`) or a string (`group = \"all\"`)",
                        input.ident
                    ),
                );
                Group::PerType
            }
        },
        GroupAttr::Index(lit) => {
            let index = lit.base10_parse::<u32>().ok();
            match (fields, index) {
                (Some(Fields::Unnamed(unnamed)), Some(i))
                    if (i as usize) < unnamed.unnamed.len() =>
                {
                    Group::Field {
                        member: Member::Unnamed(Index {
                            index: i,
                            span: lit.span(),
                        }),
                        ty: &unnamed.unnamed[i as usize].ty,
                    }
                }
                (Some(Fields::Unnamed(unnamed)), _) => {
                    cx.error_spanned_by(
                        &lit,
                        format_args!(
                            "`{}` has {} field(s); the group index must be below that",
                            input.ident,
                            unnamed.unnamed.len()
                        ),
                    );
                    Group::PerType
                }
                _ => {
                    cx.error_spanned_by(
                        &lit,
                        "a numeric group names a tuple struct's field; this type has none. Use a field name, a function path or a string",
                    );
                    Group::PerType
                }
            }
        }
    }
}

/// Whether a fallback impl can stand in for a failed derive: only for
/// concrete structs and enums, where the stub is well-formed.
pub(crate) fn fallback_possible(input: &DeriveInput) -> bool {
    input.generics.params.is_empty()
        && input.generics.where_clause.is_none()
        && !matches!(input.data, Data::Union(_))
}
