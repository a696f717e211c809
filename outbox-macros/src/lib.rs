//! Derive and attribute macros of the outbox toolkit.
//!
//! Use them through `outbox-runtime`, which re-exports them and documents
//! them: `outbox_runtime::OutboxMessage` and `outbox_runtime::handler`. The
//! expansions refer only to `<crate>::__private`, where `<crate>` is
//! `::outbox_runtime` or the `crate = ...` key's path.
//!
//! Layout, after thiserror's: this file holds the entry points; `attr.rs`
//! parses the macro keys; `message.rs` and `handler.rs` are typed models of
//! the input with their validation pass; `expand.rs` generates code;
//! `fallback.rs` emits stubs next to errors so one mistake does not cascade.

mod attr;
mod ctxt;
mod expand;
mod fallback;
mod handler;
mod message;

#[cfg(test)]
mod snapshots;

use proc_macro::TokenStream;

/// Derives `OutboxMessage`.
#[proc_macro_derive(OutboxMessage, attributes(outbox))]
pub fn derive_outbox_message(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive_message(&input).into()
}

/// Registers an async fn as a message handler.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::handler(args.into(), input.into()).into()
}
