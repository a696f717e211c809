//! Code generation. Every path is absolute through `<crate>::__private`, and
//! every generated item sits inside `const _: () = { ... };`, so nothing
//! leaks into the user's namespace.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, ItemFn, Member};

use crate::fallback;
use crate::handler::{Handler, HandlerName};
use crate::message::{self, Group, Message};

/// `#[derive(OutboxMessage)]`
pub(crate) fn derive_message(input: &DeriveInput) -> TokenStream {
    match Message::from_input(input) {
        Ok(message) => message_impl(&message),
        Err(rejected) => {
            let mut tokens = rejected.errors.to_compile_error();
            if message::fallback_possible(input) {
                tokens.extend(fallback::message(input, &rejected.krate));
            }
            tokens
        }
    }
}

fn message_impl(message: &Message<'_>) -> TokenStream {
    let ident = message.ident;
    let krate = &message.krate;
    let private = quote!(#krate::__private);
    let name = &message.name;
    let version = Literal::u32_unsuffixed(message.version);
    let queue = message.queue.as_ref().map(|queue| {
        quote! {
            const QUEUE: ::core::option::Option<&'static str> = ::core::option::Option::Some(#queue);
        }
    });

    let (group_key, group_spec) = match &message.group {
        Group::PerType => (
            quote!(#private::Cow::Borrowed(<Self as #private::OutboxMessage>::NAME)),
            quote!(#private::GroupSpec::PerType),
        ),
        Group::Field { member, ty } => {
            let field = match member {
                Member::Named(ident) => ident.to_string(),
                Member::Unnamed(index) => index.index.to_string(),
            };
            (
                quote_spanned!(ty.span()=> #private::GroupKey::group_key(&self.#member)),
                quote!(#private::GroupSpec::Field(#field)),
            )
        }
        Group::Function(path) => {
            let shown = path.to_token_stream().to_string().replace(' ', "");
            (
                quote_spanned! {path.span()=>
                    #private::Cow::Owned(::core::convert::Into::<#private::String>::into(#path(self)))
                },
                quote!(#private::GroupSpec::Function(#shown)),
            )
        }
        Group::Constant(lit) => (
            quote!(#private::Cow::Borrowed(#lit)),
            quote!(#private::GroupSpec::Constant(#lit)),
        ),
    };

    // A missing `From<Previous>` or a `Previous` that is not a message is
    // reported at the user's `upcast_from = Previous`.
    let upcast = message.upcast_from.as_ref().map(|from| {
        // The type's name again, spanned at `upcast_from`: the error for a
        // missing `From` names both types there.
        let mut this = ident.clone();
        this.set_span(from.span());
        quote_spanned! {from.span()=>
            .upcasting(#private::Upcast::of::<#this, #from>())
        }
    });

    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #private::OutboxMessage for #ident {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                #queue

                #[inline]
                fn group_key(&self) -> #private::Cow<'_, str> {
                    #group_key
                }
            }

            #[#private::linkme::distributed_slice(#private::MESSAGES)]
            #[linkme(crate = #private::linkme)]
            static __OUTBOX_MESSAGE: #private::MessageRegistration =
                #private::MessageRegistration::of::<#ident>(#group_spec)#upcast;
        };
    }
}

/// `#[handler]`
pub(crate) fn handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(input.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new_spanned(
                &input,
                "`#[handler]` goes on an `async fn` that takes a message",
            );
            return fallback::keep_input(input, error);
        }
    };
    match Handler::from_fn(args, &func) {
        Ok(handler) => {
            let registration = handler_registration(&handler);
            quote! {
                #func
                #registration
            }
        }
        Err(errors) => fallback::keep_input(func.into_token_stream(), errors),
    }
}

fn handler_registration(handler: &Handler<'_>) -> TokenStream {
    let krate = &handler.krate;
    let private = quote!(#krate::__private);
    let fn_ident = &handler.func.sig.ident;
    let message_ty = handler.message_ty;

    let name = match &handler.name {
        HandlerName::Given(lit) => lit.to_token_stream(),
        HandlerName::Path(suffix) => quote!(::core::concat!(::core::module_path!(), #suffix)),
    };
    let max_attempts = match handler.max_attempts {
        Some(n) => {
            let n = Literal::u32_unsuffixed(n);
            quote!(::core::option::Option::Some(#n))
        }
        None => quote!(::core::option::Option::None),
    };

    // Spans point errors at the user's code: a wrong return type at the
    // signature from the name to the return type, a wrong context type at the
    // context parameter, a non-`Send` future at the name.
    let (ctx_param, call) = match handler.context_ty {
        Some(ty) => {
            let ctx = quote_spanned!(ty.span()=> ctx);
            ("ctx", quote!(#fn_ident(message, #ctx)))
        }
        None => ("_ctx", quote!(#fn_ident(message))),
    };
    let ctx_param = syn::Ident::new(ctx_param, proc_macro2::Span::call_site());
    let result = quote_spanned! {handler.output_ty.span()=>
        #private::IntoHandlerResult::into_handler_result(#call.await)
    };
    let body = quote! {
        let message = <#message_ty as #private::OutboxMessage>::decode(payload)?;
        #result
    };
    // A non-`Send` future fails the coercion to `HandlerFuture` at this
    // expression. Its span runs from its first token to its last, both
    // spanned here at the name; a leading call-site crate path would move the
    // error to `#[handler]`.
    let future = quote_spanned! {fn_ident.span()=>
        <#private::Box<_>>::pin(async move { #body })
    };

    // `publishes = [A, B]`: a static list the registration points at; a type
    // that is not a message is reported at its place in the list.
    let (publishing, publishes) = match &handler.publishes {
        None => (None, None),
        Some(types) => {
            let len = proc_macro2::Literal::usize_unsuffixed(types.len());
            let items = types.iter().map(|ty| {
                quote_spanned! {ty.span()=> #private::MessageType::of::<#ty>() }
            });
            (
                Some(quote!(.publishing(&__OUTBOX_PUBLISHES))),
                Some(quote! {
                    static __OUTBOX_PUBLISHES: [#private::MessageType; #len] = [#(#items),*];
                }),
            )
        }
    };

    let holding = handler.holds_group.then(|| quote!(.holding_group()));

    quote! {
        #[doc(hidden)]
        const _: () = {
            #[#private::linkme::distributed_slice(#private::HANDLERS)]
            #[linkme(crate = #private::linkme)]
            static __OUTBOX_HANDLER: #private::HandlerRegistration =
                #private::HandlerRegistration::of::<#message_ty>(#name, #max_attempts, __outbox_handler)#publishing #holding;
            #publishes

            fn __outbox_handler<'a, 'c>(
                payload: &'a #private::RawValue,
                #ctx_param: &'a mut #private::HandlerContext<'c>,
            ) -> #private::HandlerFuture<'a> {
                #future
            }
        };
    }
}
