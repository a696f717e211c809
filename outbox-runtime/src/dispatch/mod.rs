//! The [`Dispatcher`]: runs an envelope's handlers through the table.

use std::fmt;

use futures_util::future::Either;
use tracing::Instrument;

use crate::envelope::{Envelope, OutgoingEnvelope};
use crate::handler::{CatchPanic, HandlerContext, HandlerError, State};
use crate::message::{DecodeError, UpcastError};
use crate::registry::HandlerRegistration;

mod table;

use table::Miss;
pub use table::{DispatchTable, MessageEntry, PublishEdge, TableError, TableProblem};

/// Routes envelopes to their handlers.
///
/// ```standalone_crate
/// use outbox_runtime::{handler, Dispatcher, Envelope, OutboxMessage};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct Ping { n: u32 }
///
/// #[handler]
/// async fn on_ping(msg: Ping) -> anyhow::Result<()> {
///     anyhow::ensure!(msg.n < 10, "ping {} is too big", msg.n);
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dispatcher = Dispatcher::from_registry()?;
///
/// let report = dispatcher.dispatch(&Envelope::from_message(&Ping { n: 1 })?).await?;
/// assert!(report.succeeded());
///
/// let report = dispatcher.dispatch(&Envelope::from_message(&Ping { n: 99 })?).await?;
/// assert_eq!(report.failures().count(), 1);
///
/// let unknown = Envelope::from_json(
///     r#"{"id":"0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69","type":"Pong","version":1,
///         "group":"g","payload":{},"created_at":"2026-11-28T10:00:00Z"}"#,
/// )?;
/// let err = dispatcher.dispatch(&unknown).await.unwrap_err();
/// assert!(err.is_poison());
/// assert_eq!(err.to_string(), "unknown message type `Pong`");
/// # Ok::<(), anyhow::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Dispatcher {
    table: DispatchTable,
    state: State,
    /// The test harness's faults, asked before each handler run.
    #[cfg(feature = "testing")]
    hook: Option<RunHook>,
}

/// What a test's [`RunHook`] makes of one handler run.
#[cfg(feature = "testing")]
pub(crate) enum Injected {
    /// Run the handler.
    Run,
    /// Fail the run with this error, as the handler would.
    Fail(String),
    /// Never finish: the worker running it is being stopped.
    Hang,
}

/// Asked before each handler run with the handler's name, the envelope and
/// the attempt (`testing::Faults`).
#[cfg(feature = "testing")]
#[derive(Clone)]
pub(crate) struct RunHook(pub(crate) std::sync::Arc<HookFn>);

#[cfg(feature = "testing")]
type HookFn = dyn Fn(&str, &Envelope, u32) -> Injected + Send + Sync;

#[cfg(feature = "testing")]
impl fmt::Debug for RunHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunHook")
    }
}

impl Dispatcher {
    /// A dispatcher over `table`, with no application state.
    pub fn new(table: DispatchTable) -> Self {
        Dispatcher {
            table,
            state: State::new(),
            #[cfg(feature = "testing")]
            hook: None,
        }
    }

    /// Asks `hook` before each handler run of a consumer.
    #[cfg(feature = "testing")]
    pub(crate) fn with_hook(mut self, hook: RunHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// What the test's hook makes of this run.
    #[cfg(feature = "testing")]
    pub(crate) fn injected(&self, handler: &str, envelope: &Envelope, attempt: u32) -> Injected {
        self.hook
            .as_ref()
            .map_or(Injected::Run, |hook| (hook.0)(handler, envelope, attempt))
    }

    /// A dispatcher over every registration linked into this binary; see
    /// [`DispatchTable::from_registry`].
    pub fn from_registry() -> Result<Self, TableError> {
        DispatchTable::from_registry().map(Self::new)
    }

    /// Adds application state that handlers read with
    /// [`HandlerContext::state`].
    #[must_use]
    pub fn with_state<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Replaces the application state.
    #[must_use]
    pub fn with_state_map(mut self, state: State) -> Self {
        self.state = state;
        self
    }

    /// The dispatch table.
    pub fn table(&self) -> &DispatchTable {
        &self.table
    }

    /// The application state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Finds the table entry for an envelope.
    ///
    /// Unknown types and unsupported versions are poison
    /// ([`DispatchError::is_poison`]).
    pub fn route(&self, envelope: &Envelope) -> Result<&MessageEntry, DispatchError> {
        self.table
            .lookup(&envelope.message_type, envelope.version)
            .map_err(|miss| match miss {
                Miss::UnknownType => DispatchError::UnknownType {
                    message_type: envelope.message_type.clone(),
                },
                Miss::UnsupportedVersion { supported } => DispatchError::UnsupportedVersion {
                    message_type: envelope.message_type.clone(),
                    version: envelope.version,
                    supported,
                },
            })
    }

    /// Routes `envelope` to the entry whose handlers run for it, upcasting it
    /// first when its version has no handlers of its own and a version with
    /// handlers replaces it, directly or through a chain
    /// ([`MessageEntry::upcast_path`]): the payload is converted one version
    /// at a time, and the envelope's type and version become the handling
    /// version's. Its id, group and headers are kept.
    ///
    /// Fails as [`route`](Self::route) does, or when a conversion fails
    /// ([`DispatchError::Upcast`]); all of them are poison.
    pub fn resolve(&self, envelope: &mut Envelope) -> Result<&MessageEntry, DispatchError> {
        let entry = self.route(envelope)?;
        self.upcast(entry, envelope)
    }

    /// [`resolve`](Self::resolve) for an envelope already routed to `entry`.
    /// The envelope changes only when every step succeeded.
    pub(crate) fn upcast<'t>(
        &'t self,
        entry: &'t MessageEntry,
        envelope: &mut Envelope,
    ) -> Result<&'t MessageEntry, DispatchError> {
        let target = self.table.handled_by(entry);
        if std::ptr::eq(target, entry) {
            return Ok(entry);
        }
        let mut payload: Option<Box<serde_json::value::RawValue>> = None;
        let mut at = entry.registration();
        for step in entry.upcast_path() {
            let Some(upcast) = step.upcast_from else {
                unreachable!("every version on an upcast path declares upcast_from");
            };
            let from = payload.as_deref().unwrap_or(&envelope.payload);
            payload = Some(
                (upcast.convert)(from).map_err(|source| DispatchError::Upcast {
                    from: format!("{} v{}", at.name, at.version),
                    to: format!("{} v{}", step.name, step.version),
                    source,
                })?,
            );
            at = step;
        }
        tracing::debug!(
            message.id = %envelope.id,
            from = %format_args!("{} v{}", envelope.message_type, envelope.version),
            to = %format_args!("{} v{}", at.name, at.version),
            "upcast"
        );
        if let Some(payload) = payload {
            envelope.payload = payload;
        }
        at.name.clone_into(&mut envelope.message_type);
        envelope.version = at.version;
        Ok(target)
    }

    /// Runs every handler of the envelope's message type, without a store (no
    /// transaction, no inbox), each on its first attempt. A handler's failure
    /// does not stop the others; the report says which failed and what each
    /// published.
    ///
    /// Fails only when the envelope itself is poison: unknown type, unsupported
    /// version, an upcast that fails, or a payload that does not decode.
    pub async fn dispatch(&self, envelope: &Envelope) -> Result<DispatchReport, DispatchError> {
        let routed = self.route(envelope)?;
        let upcast;
        let (entry, envelope) = if routed.upcast_path().is_empty() {
            (routed, envelope)
        } else {
            let mut copy = envelope.clone();
            let target = self.upcast(routed, &mut copy)?;
            upcast = copy;
            (target, &upcast)
        };
        let span = span_if_wanted!(
            INFO,
            "outbox.dispatch",
            message.id = %envelope.id,
            message.type = %envelope.message_type,
            message.version = envelope.version,
            message.group = %envelope.group,
        );
        continue_trace(&span, envelope);
        let run = async {
            let mut outcomes = Outcomes::default();
            for &handler in entry.handlers() {
                let mut ctx =
                    HandlerContext::new(envelope, &self.state).for_handler(handler.name, 1);
                let result = run_handler(handler, envelope, &mut ctx).await;
                if let Err(HandlerError::Decode(err)) = result {
                    return Err(DispatchError::Decode(err));
                }
                outcomes.push(HandlerOutcome {
                    handler: handler.name,
                    result,
                    published: ctx.take_published(),
                });
            }
            Ok(DispatchReport { outcomes })
        };
        in_span(span, run).await
    }
}

/// A span at `tracing::Level::$level`, built only when something records it
/// ([`span_wanted`]); otherwise `Span::none()`, and its fields are never
/// formatted.
macro_rules! span_if_wanted {
    ($level:ident, $($span:tt)*) => {
        if $crate::dispatch::span_wanted(::tracing::Level::$level) {
            ::tracing::span!(::tracing::Level::$level, $($span)*)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub(crate) use span_if_wanted;

/// With feature `otel`, makes `span` a child of the trace the envelope's
/// producer was in (read by the global propagator); otherwise nothing.
pub(crate) fn continue_trace(span: &tracing::Span, envelope: &Envelope) {
    #[cfg(feature = "otel")]
    if !span.is_disabled()
        && let Some(context) = envelope.headers.producer_trace()
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if let Err(err) = span.set_parent(context) {
            tracing::debug!(error = %err, "the trace of message {} is not continued", envelope.id);
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, envelope);
}

/// Whether a span at `level` would be recorded: by the `tracing` subscriber
/// (its maximum level), or, while no subscriber is set, by a `log` logger.
/// Without this check a disabled span still costs its creation, and with
/// tracing's `log` feature on (sqlx turns it on) its fields are recorded for
/// `log` even when no logger is installed.
pub(crate) fn span_wanted(level: tracing::Level) -> bool {
    if tracing::dispatcher::has_been_set() {
        tracing::level_enabled!(level)
    } else {
        log::max_level() >= log_level(level)
    }
}

fn log_level(level: tracing::Level) -> log::LevelFilter {
    match level {
        tracing::Level::ERROR => log::LevelFilter::Error,
        tracing::Level::WARN => log::LevelFilter::Warn,
        tracing::Level::INFO => log::LevelFilter::Info,
        tracing::Level::DEBUG => log::LevelFilter::Debug,
        tracing::Level::TRACE => log::LevelFilter::Trace,
    }
}

/// `future` in `span`, or bare when the span is disabled: an `Instrumented`
/// future enters and leaves even a disabled span on every poll. A plain
/// function, not an `async fn`, so the future is no larger than `future`'s
/// own or its instrumented form.
pub(crate) fn in_span<F: Future>(
    span: tracing::Span,
    future: F,
) -> Either<F, tracing::instrument::Instrumented<F>> {
    if span.is_disabled() {
        Either::Left(future)
    } else {
        Either::Right(future.instrument(span))
    }
}

/// Runs one handler on one envelope in `ctx`: decodes the payload, calls the
/// handler, turns a panic into [`HandlerError::Panicked`] and a publish the
/// handler did not declare into [`HandlerError::Undeclared`]. Consumers with a
/// store call this once per handler, inside the handler's transaction.
pub async fn run_handler(
    handler: &'static HandlerRegistration,
    envelope: &Envelope,
    ctx: &mut HandlerContext<'_>,
) -> Result<(), HandlerError> {
    let span = span_if_wanted!(
        DEBUG,
        "outbox.handler",
        handler = handler.name,
        attempt = ctx.attempt()
    );
    ctx.set_publishes(handler.publishes);
    let mut result = in_span(span, CatchPanic((handler.call)(&envelope.payload, ctx))).await;
    if let Some(undeclared) = ctx.undeclared_publish() {
        // Whatever the handler made of `publish`'s error.
        result = Err(HandlerError::Undeclared(undeclared.clone()));
    }
    if let Err(err) = &result {
        tracing::warn!(
            handler = handler.name,
            message.id = %envelope.id,
            error = %err,
            "handler failed"
        );
    }
    result
}

/// What happened to each handler of one envelope.
#[derive(Debug)]
pub struct DispatchReport {
    outcomes: Outcomes,
}

/// A report's outcomes; one handler's (the common case) without a `Vec`.
#[derive(Debug, Default)]
enum Outcomes {
    #[default]
    None,
    One(HandlerOutcome),
    Many(Vec<HandlerOutcome>),
}

impl Outcomes {
    fn push(&mut self, outcome: HandlerOutcome) {
        *self = match std::mem::take(self) {
            Outcomes::None => Outcomes::One(outcome),
            Outcomes::One(first) => Outcomes::Many(vec![first, outcome]),
            Outcomes::Many(mut all) => {
                all.push(outcome);
                Outcomes::Many(all)
            }
        };
    }

    fn as_slice(&self) -> &[HandlerOutcome] {
        match self {
            Outcomes::None => &[],
            Outcomes::One(outcome) => std::slice::from_ref(outcome),
            Outcomes::Many(all) => all,
        }
    }
}

impl DispatchReport {
    /// One outcome per handler, in the table's handler order.
    pub fn outcomes(&self) -> &[HandlerOutcome] {
        self.outcomes.as_slice()
    }

    /// Whether every handler succeeded (also true for a message with no handlers).
    pub fn succeeded(&self) -> bool {
        self.outcomes().iter().all(|o| o.result.is_ok())
    }

    /// The handlers that failed.
    pub fn failures(&self) -> impl Iterator<Item = &HandlerOutcome> {
        self.outcomes().iter().filter(|o| o.result.is_err())
    }

    /// Every message the handlers published, in order.
    pub fn published(&self) -> impl Iterator<Item = &OutgoingEnvelope> {
        self.outcomes().iter().flat_map(|o| &o.published)
    }
}

/// What happened to one handler.
#[derive(Debug)]
pub struct HandlerOutcome {
    /// The handler's name.
    pub handler: &'static str,
    /// Its result.
    pub result: Result<(), HandlerError>,
    /// The messages it published (discarded by a store-backed consumer when
    /// the handler fails).
    pub published: Vec<OutgoingEnvelope>,
}

/// An envelope cannot be dispatched. Every variant is poison: redelivering
/// the same envelope to the same binary fails the same way, so it belongs in
/// dead letters, not in a retry loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// No message type of that name is registered.
    #[error("unknown message type `{message_type}`")]
    UnknownType {
        /// The envelope's type.
        message_type: String,
    },
    /// The name is known but not at this version.
    #[error(
        "unsupported version {version} of message `{message_type}` (this binary handles {})",
        Versions(supported)
    )]
    UnsupportedVersion {
        /// The envelope's type.
        message_type: String,
        /// The envelope's version.
        version: u32,
        /// The versions this binary has.
        supported: Vec<u32>,
    },
    /// The payload does not decode into the registered type.
    #[error(transparent)]
    Decode(DecodeError),
    /// A step of the envelope's upcast failed.
    #[error("cannot upcast {from} to {to}: {source}")]
    Upcast {
        /// The envelope's type and version.
        from: String,
        /// The version the failed step converts into.
        to: String,
        /// What failed.
        source: UpcastError,
    },
}

impl DispatchError {
    /// Whether retrying cannot help. True for every current variant; check it
    /// rather than matching, as later variants may be transient.
    pub fn is_poison(&self) -> bool {
        match self {
            DispatchError::UnknownType { .. }
            | DispatchError::UnsupportedVersion { .. }
            | DispatchError::Decode(_)
            | DispatchError::Upcast { .. } => true,
        }
    }
}

struct Versions<'a>(&'a [u32]);

impl fmt::Display for Versions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "v{v}")?;
        }
        Ok(())
    }
}
