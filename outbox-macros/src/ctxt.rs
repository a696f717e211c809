//! The error collector of one macro input (serde_derive's `Ctxt`).

use std::fmt::Display;
use std::thread;

use quote::ToTokens;

/// Collects the errors found in one macro input, so the user sees all of
/// them in one compile instead of only the first. `finish` returns them
/// combined; dropping a `Ctxt` without calling `finish` panics, so a path
/// that would lose its errors fails the tests.
pub(crate) struct Ctxt {
    /// `None` once `finish` has taken the errors.
    errors: Option<Vec<syn::Error>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self {
            errors: Some(Vec::new()),
        }
    }

    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors
            .as_mut()
            .expect("`finish` consumes the Ctxt")
            .push(error);
    }

    /// Records an error spanning `tokens`.
    pub(crate) fn error_spanned_by(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn finish(mut self) -> syn::Result<()> {
        let mut errors = self
            .errors
            .take()
            .expect("`finish` consumes the Ctxt")
            .into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                first.extend(errors);
                Err(first)
            }
        }
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !thread::panicking() && self.errors.is_some() {
            panic!("Ctxt dropped without `finish()`: its errors would be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;

    use super::Ctxt;

    #[test]
    fn finish_combines_the_errors() {
        let mut cx = Ctxt::new();
        cx.push(syn::Error::new(Span::call_site(), "first"));
        cx.push(syn::Error::new(Span::call_site(), "second"));
        let messages: Vec<String> = cx
            .finish()
            .expect_err("two errors")
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(messages, ["first", "second"]);
        assert!(Ctxt::new().finish().is_ok());
    }

    #[test]
    #[should_panic(expected = "dropped without `finish()`")]
    fn dropping_unfinished_panics() {
        let mut cx = Ctxt::new();
        cx.push(syn::Error::new(Span::call_site(), "lost"));
        drop(cx);
    }

    #[test]
    fn dropping_unfinished_during_a_panic_keeps_that_panic() {
        let payload = std::panic::catch_unwind(|| {
            let _cx = Ctxt::new();
            panic!("the original panic");
        })
        .expect_err("panics");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the original panic"));
    }
}
