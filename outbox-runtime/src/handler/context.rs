//! [`HandlerContext`]: what a handler can reach besides its message.

use std::any::{Any, type_name};
use std::fmt;

use uuid::Uuid;

use crate::envelope::{Envelope, OutgoingEnvelope};
use crate::handler::State;
use crate::message::{EncodeError, MessageType, OutboxMessage};

/// The second, optional parameter of a `#[handler]`: the envelope being
/// handled, application [`State`], the store's transaction, and `publish` for
/// follow-up messages.
///
/// When a handler runs under a store-backed consumer, its transaction is the
/// one that also records the message as handled (the inbox row) and inserts
/// the messages it publishes, so the handler's writes, the inbox row and the
/// cascaded messages commit together or not at all. It is shared with the
/// other runs of the consumer's batch (up to
/// [`ConsumerConfig::runs_per_transaction`](crate::consume::ConsumerConfig::runs_per_transaction)), each
/// run's effects rolled back to a savepoint when it fails: under the default
/// [`Savepoints::OnFailure`](crate::consume::Savepoints) the runs before it are
/// rolled back too and run again, so a handler may run more than once per
/// delivery while its database effects commit once. Effects outside the
/// database (an HTTP call) are not rolled back: make them idempotent, or
/// run each handler under its own savepoint with
/// [`Savepoints::EveryRun`](crate::consume::Savepoints::EveryRun).
///
/// ```
/// use outbox_runtime::{handler, Envelope, HandlerContext, OutboxMessage, handler::State};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct OrderPlaced { order_id: i64 }
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// struct SendReceipt { order_id: i64 }
///
/// struct Mailer { from: &'static str }
///
/// #[handler]
/// async fn on_order_placed(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
///     let mailer = ctx.state::<Mailer>()?;
///     assert_eq!(mailer.from, "shop@example.com");
///     ctx.publish(&SendReceipt { order_id: msg.order_id })?;
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // Handlers stay plain functions: call one directly in a unit test.
/// let envelope = Envelope::from_message(&OrderPlaced { order_id: 1 })?;
/// let state = State::new().with(Mailer { from: "shop@example.com" });
/// let mut ctx = HandlerContext::new(&envelope, &state);
/// on_order_placed(OrderPlaced { order_id: 1 }, &mut ctx).await?;
/// assert_eq!(ctx.published()[0].envelope.message_type, "SendReceipt");
/// assert_eq!(ctx.published()[0].envelope.headers.causation_id, Some(envelope.id));
/// # Ok::<(), anyhow::Error>(())
/// # }).unwrap();
/// ```
pub struct HandlerContext<'c> {
    envelope: &'c Envelope,
    state: &'c State,
    handler: &'static str,
    attempt: u32,
    transaction: Option<Transaction<'c>>,
    published: Vec<OutgoingEnvelope>,
    max_message_bytes: usize,
    /// `#[handler(publishes = [...])]`: the types it may publish.
    publishes: Option<&'static [MessageType]>,
    /// The first publish of a type `publishes` does not list.
    undeclared: Option<UndeclaredPublish>,
}

struct Transaction<'c> {
    value: &'c mut (dyn Any + Send),
    type_name: &'static str,
}

impl<'c> HandlerContext<'c> {
    /// A context for handling `envelope`, with no transaction. Use it to call a
    /// handler directly in a test; consumers build their own.
    pub fn new(envelope: &'c Envelope, state: &'c State) -> Self {
        HandlerContext {
            envelope,
            state,
            handler: "",
            attempt: 1,
            transaction: None,
            published: Vec::new(),
            max_message_bytes: crate::envelope::DEFAULT_MAX_MESSAGE_BYTES,
            publishes: None,
            undeclared: None,
        }
    }

    /// Allows [`publish`](Self::publish) only the message types in `types`,
    /// as `#[handler(publishes = [...])]` declares them (the dispatcher sets
    /// it from the handler's registration). Use it to check the declaration
    /// when you call a handler directly in a test.
    #[must_use]
    pub fn with_publishes(mut self, types: &'static [MessageType]) -> Self {
        self.publishes = Some(types);
        self
    }

    /// Sets what the handler declares it publishes; `None` allows any type.
    pub(crate) fn set_publishes(&mut self, types: Option<&'static [MessageType]>) {
        self.publishes = types;
    }

    /// The first publish of a type the handler did not declare, if any.
    /// The dispatcher fails such a run even when the handler ignored the
    /// error [`publish`](Self::publish) returned.
    pub fn undeclared_publish(&self) -> Option<&UndeclaredPublish> {
        self.undeclared.as_ref()
    }

    /// Sets the largest envelope [`publish`](Self::publish) accepts: the
    /// consumer's store's
    /// [`max_message_bytes`](crate::store::Store::max_message_bytes); otherwise
    /// [`DEFAULT_MAX_MESSAGE_BYTES`](crate::envelope::DEFAULT_MAX_MESSAGE_BYTES).
    #[must_use]
    pub(crate) fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Gives the handler a transaction, reachable through
    /// [`transaction`](Self::transaction) as the same type `T` (for a sqlx
    /// store, `sqlx::Transaction<'static, DB>`).
    #[must_use]
    pub fn with_transaction<T: Any + Send>(mut self, transaction: &'c mut T) -> Self {
        self.transaction = Some(Transaction {
            value: transaction,
            type_name: type_name::<T>(),
        });
        self
    }

    /// Names the handler and the attempt number; set by the dispatcher.
    #[must_use]
    pub fn for_handler(mut self, handler: &'static str, attempt: u32) -> Self {
        self.handler = handler;
        self.attempt = attempt;
        self
    }

    /// The envelope being handled.
    pub fn envelope(&self) -> &'c Envelope {
        self.envelope
    }

    /// The id the message is handled under, its inbox key: the envelope's
    /// id, or for a replayed dead letter the id of the message it replays
    /// ([`Envelope::original_id`]). Use it as an idempotency key for effects
    /// outside the store.
    pub fn message_id(&self) -> Uuid {
        self.envelope.original_id()
    }

    /// The name of the handler running (empty when called outside a dispatcher).
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Which attempt this is, from 1: 1 + this handler's failed runs of this
    /// message, as the store counted them. Deliveries that did not run the
    /// handler (held back behind a failure in its group, an outage of the
    /// store or the queue) do not count; a replayed dead letter starts
    /// again from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Application state of type `T`, registered at start-up.
    ///
    /// The returned reference does not borrow the context, so a handler can
    /// hold it while it uses the transaction.
    pub fn state<T: Any + Send + Sync>(&self) -> Result<&'c T, ContextError> {
        self.state.get::<T>().ok_or(ContextError::MissingState {
            type_name: type_name::<T>(),
        })
    }

    /// The transaction this handler runs in, as type `T`.
    ///
    /// Writes made through it commit together with the record that this
    /// handler has handled this message, and with the messages it publishes.
    pub fn transaction<T: Any + Send>(&mut self) -> Result<&mut T, ContextError> {
        let handler = self.handler;
        let transaction = self
            .transaction
            .as_mut()
            .ok_or(ContextError::NoTransaction { handler })?;
        let actual = transaction.type_name;
        transaction
            .value
            .downcast_mut::<T>()
            .ok_or(ContextError::WrongTransaction {
                requested: type_name::<T>(),
                actual,
            })
    }

    /// The connection of this handler's transaction on database `DB`, for
    /// sqlx queries: `sqlx::query("...").execute(ctx.db::<sqlx::Postgres>()?)`.
    ///
    /// Writes through it commit together with the inbox record and the
    /// messages this handler publishes.
    pub fn db<DB: sqlx::Database>(&mut self) -> Result<&mut DB::Connection, ContextError> {
        Ok(&mut **self.transaction::<sqlx::Transaction<'static, DB>>()?)
    }

    /// Publishes a follow-up message. It is written to the outbox in this
    /// handler's transaction, so it is sent if and only if the handler commits.
    /// Its causation id is this message's id; correlation id and trace context
    /// are carried over.
    ///
    /// Fails, publishing nothing, when the message does not encode, is too
    /// large for the transport ([`EncodeError::TooLarge`]), or is of a type
    /// the handler's `#[handler(publishes = [...])]` does not list
    /// ([`PublishError::Undeclared`]; the run then fails whatever the
    /// handler returns).
    pub fn publish<M: OutboxMessage>(&mut self, message: &M) -> Result<(), PublishError> {
        self.publish_outgoing(message, |outgoing| outgoing)
    }

    /// Publishes a follow-up message that is not published before `when`
    /// (a `chrono::DateTime<Utc>` or a `std::time::SystemTime`,
    /// [`NotBefore`](crate::envelope::NotBefore), compared with the
    /// database's clock); see
    /// [`StoreExt::enqueue_at`](crate::store::StoreExt::enqueue_at) for how a
    /// delayed message holds its group. Fails as [`publish`](Self::publish)
    /// does.
    pub fn publish_at<M: OutboxMessage>(
        &mut self,
        message: &M,
        when: impl crate::envelope::NotBefore,
    ) -> Result<(), PublishError> {
        let when = when.to_utc();
        self.publish_outgoing(message, |outgoing| outgoing.with_not_before(when))
    }

    /// Publishes a follow-up message that is not published before `delay`
    /// from now, like [`publish_at`](Self::publish_at).
    pub fn publish_after<M: OutboxMessage>(
        &mut self,
        message: &M,
        delay: std::time::Duration,
    ) -> Result<(), PublishError> {
        self.publish_outgoing(message, |outgoing| outgoing.with_delay(delay))
    }

    fn publish_outgoing<M: OutboxMessage>(
        &mut self,
        message: &M,
        schedule: impl FnOnce(OutgoingEnvelope) -> OutgoingEnvelope,
    ) -> Result<(), PublishError> {
        if let Some(declared) = self.publishes
            && !declared.iter().any(MessageType::is::<M>)
        {
            let undeclared = UndeclaredPublish {
                handler: self.handler,
                message: MessageType::of::<M>(),
                declared,
            };
            self.undeclared.get_or_insert_with(|| undeclared.clone());
            return Err(PublishError::Undeclared(undeclared));
        }
        let mut outgoing = schedule(OutgoingEnvelope::new(message)?);
        outgoing.envelope = outgoing.envelope.caused_by(self.envelope);
        outgoing.envelope.check_size(self.max_message_bytes)?;
        self.published.push(outgoing);
        Ok(())
    }

    /// The messages published so far.
    pub fn published(&self) -> &[OutgoingEnvelope] {
        &self.published
    }

    /// Takes the messages published, leaving none.
    pub fn take_published(&mut self) -> Vec<OutgoingEnvelope> {
        std::mem::take(&mut self.published)
    }
}

impl fmt::Debug for HandlerContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("message_id", &self.envelope.id)
            .field("message_type", &self.envelope.message_type)
            .field("handler", &self.handler)
            .field("attempt", &self.attempt)
            .field(
                "transaction",
                &self.transaction.as_ref().map(|t| t.type_name),
            )
            .field("published", &self.published.len())
            .finish_non_exhaustive()
    }
}

/// [`HandlerContext::publish`] refused a message. Nothing was published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The message cannot be turned into an envelope.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The handler declares what it publishes, and not this type.
    #[error(transparent)]
    Undeclared(UndeclaredPublish),
}

/// A handler published a message type its `#[handler(publishes = [...])]`
/// does not list.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "handler `{handler}` published {message}, which its `#[handler(publishes = [...])]` does not list (it lists {}); add the type to `publishes`",
    Listed(declared)
)]
pub struct UndeclaredPublish {
    /// The handler.
    pub handler: &'static str,
    /// The type it published.
    pub message: MessageType,
    /// The types it declares.
    pub declared: &'static [MessageType],
}

struct Listed<'a>(&'a [MessageType]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{}`", (t.rust_type)())?;
        }
        Ok(())
    }
}

/// A handler asked its context for something it does not have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// No state of the requested type was registered.
    #[error(
        "no state of type `{type_name}` was registered; add it at start-up with `State::with(value)`"
    )]
    MissingState {
        /// The requested type.
        type_name: &'static str,
    },
    /// The handler runs without a store, so there is no transaction.
    #[error(
        "handler `{handler}` asked for a transaction, but it runs without a store; run it through a store-backed consumer, or give one with `HandlerContext::with_transaction`"
    )]
    NoTransaction {
        /// The handler's name.
        handler: &'static str,
    },
    /// The transaction is of another type (another database backend).
    #[error(
        "asked for a transaction of type `{requested}`, but this store's is `{actual}`: name the store's database, `ctx.db::<sqlx::Postgres>()` on a PgStore, `ctx.db::<sqlx::Sqlite>()` on a SqliteStore"
    )]
    WrongTransaction {
        /// What the handler asked for.
        requested: &'static str,
        /// What the store provides.
        actual: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    struct Note {
        text: String,
    }

    impl OutboxMessage for Note {
        const NAME: &'static str = "note";
        const VERSION: u32 = 1;
        fn group_key(&self) -> std::borrow::Cow<'_, str> {
            std::borrow::Cow::Borrowed("notes")
        }
    }

    #[test]
    fn publishing_a_message_too_large_for_the_transport_fails_and_publishes_nothing() {
        let parent = Envelope::from_message(&Note { text: "hi".into() }).expect("encodes");
        let state = State::new();
        let mut ctx = HandlerContext::new(&parent, &state).with_max_message_bytes(1000);
        let err = ctx
            .publish(&Note {
                text: "x".repeat(1000),
            })
            .expect_err("too large");
        assert!(
            matches!(err, PublishError::Encode(EncodeError::TooLarge { limit: 1000, bytes, .. }) if bytes > 1000),
            "{err}"
        );
        assert!(ctx.published().is_empty());
        ctx.publish(&Note { text: "ok".into() }).expect("fits");
        assert_eq!(ctx.published().len(), 1);
    }

    #[test]
    fn a_delayed_publish_carries_its_time() {
        let parent = Envelope::from_message(&Note { text: "hi".into() }).expect("encodes");
        let state = State::new();
        let mut ctx = HandlerContext::new(&parent, &state);
        let when = chrono::Utc::now() + chrono::Duration::hours(1);
        ctx.publish_at(&Note { text: "at".into() }, when)
            .expect("publishes");
        let before = chrono::Utc::now();
        ctx.publish_after(
            &Note {
                text: "after".into(),
            },
            std::time::Duration::from_secs(60),
        )
        .expect("publishes");
        ctx.publish(&Note { text: "now".into() })
            .expect("publishes");
        let times: Vec<_> = ctx.published().iter().map(|o| o.not_before).collect();
        assert_eq!(times[0], Some(when));
        let after = times[1].expect("delayed");
        assert!(
            after >= before + chrono::Duration::seconds(60),
            "{after} vs {before}"
        );
        assert_eq!(times[2], None);
        assert_eq!(
            ctx.published()[1].envelope.headers.causation_id,
            Some(parent.id),
            "a cascade like any other"
        );
    }
}
