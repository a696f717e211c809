//! The handler's side: its [`HandlerContext`], the application [`State`] it
//! reads, what it may return and how a failure is classified.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::message::DecodeError;

mod context;
mod state;

pub use context::{ContextError, HandlerContext, PublishError, UndeclaredPublish};
pub use state::State;

/// The error type a handler's error is converted into.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why one handler did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The payload does not decode into the handler's message type. The message
    /// is poison; retrying cannot help.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The handler returned an error. Retried up to the handler's attempt limit.
    #[error("handler failed: {0}")]
    Failed(#[source] BoxError),
    /// The handler panicked. Counted as a failure of this message only.
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// The handler published a type its `#[handler(publishes = [...])]`
    /// does not list. Retrying runs the same code: permanent.
    #[error(transparent)]
    Undeclared(#[from] UndeclaredPublish),
}

impl HandlerError {
    /// Whether retrying the message cannot succeed: a payload that does not
    /// decode, or a publish the handler did not declare.
    pub fn is_permanent(&self) -> bool {
        matches!(self, HandlerError::Decode(_) | HandlerError::Undeclared(_))
    }
}

/// The return types a `#[handler]` may have: `Result<(), E>` for any error
/// that converts into `Box<dyn Error + Send + Sync>` (so `anyhow::Result<()>`,
/// `Result<(), std::io::Error>`, your own `thiserror` enums).
#[diagnostic::on_unimplemented(
    message = "a handler must return `Result<(), E>`, not `{Self}`",
    label = "this return type is not a handler result",
    note = "`E` can be any error that converts into `Box<dyn std::error::Error + Send + Sync>`, such as `anyhow::Error`"
)]
pub trait IntoHandlerResult {
    /// Converts into the dispatcher's result.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl<E> IntoHandlerResult for Result<(), E>
where
    E: Into<BoxError>,
{
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(|err| HandlerError::Failed(err.into()))
    }
}

/// Runs a future and turns a panic in it into [`HandlerError::Panicked`].
pub(crate) struct CatchPanic<F>(pub(crate) F);

impl<F> Future for CatchPanic<F>
where
    F: Future<Output = Result<(), HandlerError>> + Unpin,
{
    type Output = Result<(), HandlerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The inner future is dropped after a panic and never polled again, so
        // no broken invariant of it can be observed.
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(HandlerError::Panicked(crate::message::panic_text(
                &*panic,
            )))),
        }
    }
}

impl<F> fmt::Debug for CatchPanic<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CatchPanic")
    }
}
