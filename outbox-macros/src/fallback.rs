//! What a macro emits next to its errors, so that one mistake does not
//! cascade (after thiserror's `fallback.rs` and tokio-macros' `entry.rs`).

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{DeriveInput, Path};

/// A stub `OutboxMessage` impl for a type whose derive failed, so that
/// handlers of it report no "not an outbox message" errors on top. It
/// registers nothing and its `group_key` is never reached: the crate does not
/// compile. It reaches the runtime through `krate`, as the real impl would.
pub(crate) fn message(input: &DeriveInput, krate: &Path) -> TokenStream {
    let ident = &input.ident;
    let name = ident.unraw().to_string();
    quote! {
        #[automatically_derived]
        impl #krate::__private::OutboxMessage for #ident {
            const NAME: &'static str = #name;
            const VERSION: u32 = 1;
            fn group_key(&self) -> #krate::__private::Cow<'_, str> {
                ::core::unreachable!()
            }
        }
    }
}

/// The user's item unchanged, followed by the errors, so that IDEs and the
/// rest of the crate still see the function.
pub(crate) fn keep_input(input: TokenStream, errors: syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    quote! {
        #input
        #errors
    }
}
