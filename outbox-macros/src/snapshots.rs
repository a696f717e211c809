//! Expansion snapshots: each `tests/expand/*.rs` input is expanded by the
//! same functions the macros call, pretty-printed, and compared with the
//! `.expanded.rs` file beside it, which shows what `cargo expand` shows.
//! Refresh with `OUTBOX_BLESS=1 cargo test -p outbox-macros`, then review
//! the diff like any other code change.

use std::fs;
use std::path::Path;

use quote::ToTokens;
use syn::{Item, parse_quote};

fn expand_file(source: &str) -> String {
    let file: syn::File = syn::parse_str(source).expect("snapshot input parses");
    let mut out: Vec<Item> = Vec::new();
    for item in file.items {
        match item {
            Item::Fn(mut func) => {
                let at = func.attrs.iter().position(|a| a.path().is_ident("handler"));
                let Some(at) = at else {
                    out.push(Item::Fn(func));
                    continue;
                };
                let attr = func.attrs.remove(at);
                let args = match attr.meta {
                    syn::Meta::List(list) => list.tokens,
                    _ => proc_macro2::TokenStream::new(),
                };
                let expanded = crate::expand::handler(args, func.into_token_stream());
                let expanded: syn::File = syn::parse2(expanded).expect("expansion parses");
                out.extend(expanded.items);
            }
            Item::Struct(_) | Item::Enum(_) => {
                let input: syn::DeriveInput =
                    syn::parse2(item.to_token_stream()).expect("derive input");
                let mut shown = item;
                strip_outbox_derive(&mut shown);
                out.push(shown);
                let expanded: syn::File =
                    syn::parse2(crate::expand::derive_message(&input)).expect("expansion parses");
                out.extend(expanded.items);
            }
            other => out.push(other),
        }
    }
    prettyplease::unparse(&parse_quote!(#(#out)*))
}

/// `cargo expand` shows the item without the derive it expanded.
fn strip_outbox_derive(item: &mut Item) {
    let attrs = match item {
        Item::Struct(s) => &mut s.attrs,
        Item::Enum(e) => &mut e.attrs,
        _ => return,
    };
    attrs.retain(|a| !a.path().is_ident("outbox"));
    for attr in attrs.iter_mut() {
        if !attr.path().is_ident("derive") {
            continue;
        }
        let paths = attr
            .parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
            .expect("derive list parses");
        let kept = paths.into_iter().filter(|p| !p.is_ident("OutboxMessage"));
        *attr = parse_quote!(#[derive(#(#kept),*)]);
    }
}

#[test]
fn expansions_match_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand");
    let bless = std::env::var_os("OUTBOX_BLESS").is_some();
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .expect("tests/expand exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "rs")
                && !p.to_string_lossy().ends_with(".expanded.rs")
        })
        .collect();
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "no snapshot inputs in {}",
        dir.display()
    );

    let mut mismatched = Vec::new();
    for input in &inputs {
        let actual = expand_file(&fs::read_to_string(input).expect("read input"));
        let snapshot = input.with_extension("expanded.rs");
        if bless {
            fs::write(&snapshot, &actual).expect("write snapshot");
            continue;
        }
        let expected = fs::read_to_string(&snapshot).unwrap_or_default();
        if expected != actual {
            mismatched.push(format!(
                "--- {} (expected)\n{expected}\n--- actual\n{actual}",
                snapshot.display()
            ));
        }
    }
    assert!(
        mismatched.is_empty(),
        "expansions changed; review and rerun with OUTBOX_BLESS=1:\n{}",
        mismatched.join("\n")
    );
}
