//! The typed model of a `#[handler]` function, and its checks.

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::{FnArg, GenericParam, ItemFn, LitStr, Path, ReturnType, Safety, Type};

use crate::attr::{self, HandlerAttrs};
use crate::ctxt::Ctxt;
use crate::message::default_crate;

/// A handler that passed every check.
pub(crate) struct Handler<'a> {
    pub(crate) func: &'a ItemFn,
    /// The handler's name, as a suffix of `module_path!()` or in full.
    pub(crate) name: HandlerName,
    pub(crate) max_attempts: Option<u32>,
    /// `publishes = [...]`: the types it may publish.
    pub(crate) publishes: Option<Vec<Type>>,
    /// `on_dead_letter = "hold_group"`.
    pub(crate) holds_group: bool,
    pub(crate) message_ty: &'a Type,
    /// The type of the context parameter, if the handler takes one.
    pub(crate) context_ty: Option<&'a Type>,
    pub(crate) output_ty: &'a Type,
    pub(crate) krate: Path,
}

pub(crate) enum HandlerName {
    /// `name = "..."`
    Given(LitStr),
    /// The function's path: `module_path!()` + `::` + the function's name.
    Path(String),
}

impl<'a> Handler<'a> {
    pub(crate) fn from_fn(args: TokenStream, func: &'a ItemFn) -> Result<Self, syn::Error> {
        let mut cx = Ctxt::new();
        let HandlerAttrs {
            name,
            max_attempts,
            publishes,
            holds_group,
            krate,
        } = attr::handler_attrs(args, &mut cx);
        if let Some(name) = &name
            && name.value().trim().is_empty()
        {
            cx.error_spanned_by(name, "the handler name must not be empty");
        }

        let sig = &func.sig;
        if sig.asyncness.is_none() {
            cx.error_spanned_by(
                sig.fn_token,
                "a handler must be an `async fn`; add `async` before `fn`",
            );
        }
        if let Some(constness) = sig.constness {
            cx.error_spanned_by(constness, "a handler cannot be a `const fn`");
        }
        if let Safety::Unsafe(unsafety) = sig.safety {
            cx.error_spanned_by(
                unsafety,
                "a handler cannot be `unsafe`; wrap the unsafe code in a safe function",
            );
        }
        if let Some(abi) = &sig.abi {
            cx.error_spanned_by(abi, "a handler cannot declare an ABI; remove it");
        }
        let type_or_const_params = sig
            .generics
            .params
            .iter()
            .any(|p| !matches!(p, GenericParam::Lifetime(_)));
        if type_or_const_params {
            cx.error_spanned_by(
                &sig.generics,
                "a handler cannot be generic: it is registered for one concrete message type; write one handler per type",
            );
        } else if let Some(clause) = &sig.generics.where_clause {
            cx.error_spanned_by(clause, "a handler cannot have a `where` clause");
        }

        let mut message_ty = None;
        let mut context_ty = None;
        let mut position = 0;
        for input in &sig.inputs {
            let FnArg::Typed(typed) = input else {
                cx.error_spanned_by(
                    input,
                    "a handler cannot take `self`; make it a free function that takes the message",
                );
                continue;
            };
            match position {
                0 => message_ty = Some(check_message_param(&typed.ty, &mut cx)),
                1 => context_ty = Some(check_context_param(&typed.ty, &mut cx)),
                _ => cx.error_spanned_by(
                    input,
                    "a handler takes at most two parameters: the message, then `&mut HandlerContext<'_>`; reach other values through `ctx.state::<T>()`",
                ),
            }
            position += 1;
        }
        if position == 0 && sig.receiver().is_none() {
            cx.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a handler takes the message as its first parameter, such as `async fn on_order(msg: OrderPlaced)`",
            ));
        }
        if let Some(variadic) = &sig.variadic {
            cx.error_spanned_by(variadic, "a handler cannot be variadic");
        }

        let output_ty = match &sig.output {
            ReturnType::Type(_, ty) => Some(&**ty),
            ReturnType::Default => {
                cx.push(syn::Error::new(
                    sig.paren_token.span.close(),
                    "a handler must return `Result<(), E>`; add a return type such as `-> anyhow::Result<()>`",
                ));
                None
            }
        };

        cx.finish()?;
        let (Some(message_ty), Some(output_ty)) = (message_ty, output_ty) else {
            unreachable!("the checks above report a missing message or return type");
        };
        Ok(Handler {
            func,
            name: match name {
                Some(name) => HandlerName::Given(name),
                None => HandlerName::Path(format!("::{}", sig.ident.unraw())),
            },
            max_attempts,
            publishes,
            holds_group: holds_group.unwrap_or(false),
            message_ty,
            context_ty,
            output_ty,
            krate: krate.unwrap_or_else(default_crate),
        })
    }
}

fn check_message_param<'a>(ty: &'a Type, cx: &mut Ctxt) -> &'a Type {
    match ty {
        Type::Reference(reference) => cx.error_spanned_by(
            reference.and_token,
            "a handler takes its message by value; remove the `&`",
        ),
        Type::ImplTrait(_) | Type::Infer(_) => cx.error_spanned_by(
            ty,
            "a handler's first parameter must name a concrete message type, such as `msg: OrderPlaced`",
        ),
        _ => {}
    }
    ty
}

fn check_context_param<'a>(ty: &'a Type, cx: &mut Ctxt) -> &'a Type {
    const FIX: &str = "the second parameter of a handler must be `&mut HandlerContext<'_>`";
    match ty {
        Type::Reference(reference) if reference.mutability.is_none() => {
            cx.error_spanned_by(reference.and_token, format_args!("{FIX}: add `mut`"));
        }
        Type::Reference(reference) => {
            let is_context = match &*reference.elem {
                Type::Path(path) => path
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "HandlerContext"),
                _ => false,
            };
            if !is_context {
                cx.error_spanned_by(&reference.elem, FIX);
            }
        }
        _ => cx.error_spanned_by(ty, FIX),
    }
    ty
}
