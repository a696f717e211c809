//! Parses the keys of `#[outbox(...)]` and `#[handler(...)]`. Unknown and
//! duplicate keys are errors on the key itself; value checks that need the
//! rest of the input live in `message.rs` and `handler.rs`.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, LitInt, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;

/// `#[outbox(...)]` on a message type.
#[derive(Default)]
pub(crate) struct MessageAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<u32>,
    pub(crate) group: Option<GroupAttr>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) upcast_from: Option<Type>,
    pub(crate) krate: Option<Path>,
}

/// The value of `group = ...`, before it is checked against the fields.
pub(crate) enum GroupAttr {
    /// `group = "constant"`
    Constant(LitStr),
    /// `group = field` (one identifier)
    Ident(Ident),
    /// `group = 0` (a tuple struct's field)
    Index(LitInt),
    /// `group = path::to::function`
    Function(Path),
}

/// `#[handler(...)]` arguments.
#[derive(Default)]
pub(crate) struct HandlerAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) publishes: Option<Vec<Type>>,
    /// `on_dead_letter = "hold_group"`: `true`; `"move_on"`: `false`.
    pub(crate) holds_group: Option<bool>,
    pub(crate) krate: Option<Path>,
}

const MESSAGE_KEYS: &str = "`name`, `version`, `group`, `queue`, `upcast_from`, `crate`";
const HANDLER_KEYS: &str = "`name`, `max_attempts`, `publishes`, `on_dead_letter`, `crate`";

pub(crate) fn message_attrs(attrs: &[Attribute], cx: &mut Ctxt) -> MessageAttrs {
    let mut out = MessageAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("outbox")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = if meta.path.is_ident("name") {
                meta.value()?
                    .parse()
                    .map(|lit| set_once(&meta, &mut out.name, lit))
            } else if meta.path.is_ident("version") {
                positive_u32(&meta).map(|n| set_once(&meta, &mut out.version, n))
            } else if meta.path.is_ident("group") {
                group_value(&meta).map(|g| set_once(&meta, &mut out.group, g))
            } else if meta.path.is_ident("queue") {
                meta.value()?
                    .parse()
                    .map(|lit| set_once(&meta, &mut out.queue, lit))
            } else if meta.path.is_ident("upcast_from") {
                upcast_value(&meta).map(|t| set_once(&meta, &mut out.upcast_from, t))
            } else if meta.path.is_ident("crate") {
                crate_path(&meta).map(|p| set_once(&meta, &mut out.krate, p))
            } else {
                skip_value(&meta)?;
                Err(unknown_key(&meta, "#[outbox(...)]", MESSAGE_KEYS))
            };
            record(key, cx)
        });
        if let Err(err) = result {
            cx.push(err);
        }
    }
    out
}

pub(crate) fn handler_attrs(args: TokenStream, cx: &mut Ctxt) -> HandlerAttrs {
    let mut out = HandlerAttrs::default();
    let parser = syn::meta::parser(|meta| {
        let key = if meta.path.is_ident("name") {
            meta.value()?
                .parse()
                .map(|lit| set_once(&meta, &mut out.name, lit))
        } else if meta.path.is_ident("max_attempts") {
            positive_u32(&meta).map(|n| set_once(&meta, &mut out.max_attempts, n))
        } else if meta.path.is_ident("publishes") {
            publishes_value(&meta).map(|t| set_once(&meta, &mut out.publishes, t))
        } else if meta.path.is_ident("on_dead_letter") {
            on_dead_letter_value(&meta).map(|h| set_once(&meta, &mut out.holds_group, h))
        } else if meta.path.is_ident("crate") {
            crate_path(&meta).map(|p| set_once(&meta, &mut out.krate, p))
        } else {
            skip_value(&meta)?;
            Err(unknown_key(&meta, "#[handler(...)]", HANDLER_KEYS))
        };
        record(key, cx)
    });
    if let Err(err) = parser.parse2(args) {
        cx.push(err);
    }
    out
}

/// Records a key's error and goes on to the next key, so every bad key is
/// reported in one compile. The value was consumed, so parsing can resume.
fn record(key: syn::Result<syn::Result<()>>, cx: &mut Ctxt) -> syn::Result<()> {
    match key {
        Ok(Ok(())) => {}
        Ok(Err(err)) | Err(err) => cx.push(err),
    }
    Ok(())
}

/// Consumes `= value` or `(...)` after an unknown key.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|nested| skip_value(&nested))?;
    }
    Ok(())
}

/// Stores a key's value; a key given twice is an error on the second.
fn set_once<T>(meta: &ParseNestedMeta<'_>, slot: &mut Option<T>, value: T) -> syn::Result<()> {
    if slot.is_some() {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(meta.error(format_args!("duplicate key `{key}`; give it once")));
    }
    *slot = Some(value);
    Ok(())
}

fn unknown_key(meta: &ParseNestedMeta<'_>, attr: &str, keys: &str) -> syn::Error {
    let key = quote::ToTokens::to_token_stream(&meta.path)
        .to_string()
        .replace(' ', "");
    syn::Error::new_spanned(
        &meta.path,
        format_args!("unknown key `{key}` in `{attr}`; expected one of {keys}"),
    )
}

fn positive_u32(meta: &ParseNestedMeta<'_>) -> syn::Result<u32> {
    let key = meta
        .path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    let value = meta.value()?;
    let lit: LitInt = value.parse().map_err(|err| {
        syn::Error::new(
            err.span(),
            format_args!("`{key}` takes a whole number from 1, such as `{key} = 2`"),
        )
    })?;
    let span = lit.span();
    match lit.base10_parse::<u32>() {
        Ok(0) | Err(_) => Err(syn::Error::new(
            span,
            format_args!("`{key}` must be a whole number from 1 to {}", u32::MAX),
        )),
        Ok(value) => Ok(value),
    }
}

fn group_value(meta: &ParseNestedMeta<'_>) -> syn::Result<GroupAttr> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        return value.parse().map(GroupAttr::Constant);
    }
    if value.peek(LitInt) {
        return value.parse().map(GroupAttr::Index);
    }
    let path: Path = value.parse().map_err(|err| {
        syn::Error::new(
            err.span(),
            "`group` takes a field (`group = customer_id`), a function path (`group = self::group_of`) or a string (`group = \"all\"`)",
        )
    })?;
    match path.get_ident() {
        Some(ident) => Ok(GroupAttr::Ident(ident.clone())),
        None => Ok(GroupAttr::Function(path)),
    }
}

fn upcast_value(meta: &ParseNestedMeta<'_>) -> syn::Result<Type> {
    const USAGE: &str = "`upcast_from` takes the message type this version replaces, such as `upcast_from = OrderPlacedV1`";
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        return Err(syn::Error::new(lit.span(), USAGE));
    }
    value
        .parse::<Type>()
        .map_err(|err| syn::Error::new(err.span(), USAGE))
}

/// `publishes = [A, B]`: a bracketed list of message types, none twice.
fn publishes_value(meta: &ParseNestedMeta<'_>) -> syn::Result<Vec<Type>> {
    const USAGE: &str = "`publishes` takes a list of message types, such as `publishes = [OrderConfirmed, OrderShipped]` (`[]` for none)";
    let value = meta.value()?;
    if !value.peek(syn::token::Bracket) {
        let bad: syn::Expr = value.parse()?;
        return Err(syn::Error::new_spanned(bad, USAGE));
    }
    let content;
    syn::bracketed!(content in value);
    let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)
        .map_err(|err| syn::Error::new(err.span(), USAGE))?;
    let mut out: Vec<Type> = Vec::with_capacity(types.len());
    for ty in types {
        let shown = quote::ToTokens::to_token_stream(&ty).to_string();
        if out
            .iter()
            .any(|t| quote::ToTokens::to_token_stream(t).to_string() == shown)
        {
            return Err(syn::Error::new_spanned(
                &ty,
                format_args!(
                    "`{}` is listed twice in `publishes`",
                    shown.replace(' ', "")
                ),
            ));
        }
        out.push(ty);
    }
    Ok(out)
}

/// `on_dead_letter = "hold_group"` (`true`) or `"move_on"` (`false`).
fn on_dead_letter_value(meta: &ParseNestedMeta<'_>) -> syn::Result<bool> {
    const USAGE: &str = "`on_dead_letter` takes \"move_on\" (the default: later messages of the group go on) or \"hold_group\" (they wait until an operator releases the group)";
    let value = meta.value()?;
    if !value.peek(LitStr) {
        let bad: syn::Expr = value.parse()?;
        return Err(syn::Error::new_spanned(bad, USAGE));
    }
    let lit: LitStr = value.parse()?;
    match lit.value().as_str() {
        "hold_group" => Ok(true),
        "move_on" => Ok(false),
        _ => Err(syn::Error::new(lit.span(), USAGE)),
    }
}

fn crate_path(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let value = meta.value()?;
    // Accept `crate = path` and serde's `crate = "path"`.
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        lit.parse_with(Path::parse_mod_style)
            .map_err(|_| syn::Error::new(lit.span(), "`crate` takes a path such as `my::outbox`"))
    } else {
        Path::parse_mod_style(value)
            .map_err(|err| syn::Error::new(err.span(), "`crate` takes a path such as `my::outbox`"))
    }
}
