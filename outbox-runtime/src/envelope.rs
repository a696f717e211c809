//! The [`Envelope`]: one message on the wire, as stored in the outbox and sent
//! as an SQS message body.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::message::{EncodeError, OutboxMessage};

/// One message on the wire.
///
/// The JSON form is documented by `schemas/envelope.schema.json`:
///
/// ```json
/// {
///   "id": "0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69",
///   "type": "orders.status_changed",
///   "version": 1,
///   "group": "customer-42",
///   "payload": { "order_id": 7, "customer_id": "customer-42" },
///   "created_at": "2026-11-28T10:00:00Z",
///   "headers": { "correlation_id": "0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69" }
/// }
/// ```
///
/// Build one from a message with [`Envelope::from_message`]; parse one from
/// untrusted input with [`Envelope::from_json`], which says where the input
/// is wrong.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "Envelope",
    description = "One outbox message on the wire: the body of an SQS message. `payload` is the message's serde representation, described by the schema of its `type` at its `version`."
)]
pub struct Envelope {
    /// Unique id, time-ordered (UUID v7). Also the SQS deduplication id and the
    /// inbox key.
    pub id: Uuid,
    /// The message name (`OutboxMessage::NAME`).
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub message_type: String,
    /// The schema version of the payload (`OutboxMessage::VERSION`), from 1.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// The message group: order is kept within a group.
    #[schemars(length(min = 1, max = 128))]
    pub group: String,
    /// The message itself, as its serde representation.
    #[schemars(with = "serde_json::Value")]
    pub payload: Box<RawValue>,
    /// When the message was created (enqueued), UTC.
    pub created_at: DateTime<Utc>,
    /// Tracing and correlation headers.
    #[serde(default)]
    pub headers: Headers,
}

/// Envelope headers: correlation, causation and W3C trace context, plus any
/// custom string headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Headers {
    /// The id shared by every message of one conversation: the id of the first
    /// message when it has no parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the message whose handler published this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C trace context of the producer: its trace and span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C trace context of the producer: vendor-specific state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// W3C baggage of the producer: its key-value pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// Other headers.
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

impl Headers {
    /// With feature `otel`: the current `tracing` span's OpenTelemetry
    /// context (and baggage), written by the global propagator
    /// (`opentelemetry::global::set_text_map_propagator`; the W3C
    /// `TraceContextPropagator` and `BaggagePropagator` write `traceparent`,
    /// `tracestate` and `baggage`). Without the feature, or outside a span
    /// an OpenTelemetry layer records, nothing.
    #[must_use]
    pub fn with_current_trace(self) -> Self {
        #[cfg(feature = "otel")]
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let mut headers = self;
            let context = tracing::Span::current().context();
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.inject_context(&context, &mut headers);
            });
            headers
        }
        #[cfg(not(feature = "otel"))]
        self
    }

    /// With feature `otel`: the producer's OpenTelemetry context, read from
    /// these headers by the global propagator.
    #[cfg(feature = "otel")]
    pub fn trace_context(&self) -> opentelemetry::Context {
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(self))
    }

    /// The producer's context when it names a valid span; `None` without
    /// any header a propagator could have written (no parsing then).
    #[cfg(feature = "otel")]
    pub(crate) fn producer_trace(&self) -> Option<opentelemetry::Context> {
        use opentelemetry::trace::TraceContextExt;
        if self.traceparent.is_none() && self.extra.is_empty() {
            return None;
        }
        let context = self.trace_context();
        context.span().span_context().is_valid().then_some(context)
    }
}

/// The propagator writes the trace fields, and any other key into `extra`.
#[cfg(feature = "otel")]
impl opentelemetry::propagation::Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            "baggage" => self.baggage = Some(value),
            other => {
                self.extra.insert(other.to_owned(), value);
            }
        }
    }
}

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            "baggage" => self.baggage.as_deref(),
            other => self.extra.get(other).map(String::as_str),
        }
    }

    fn keys(&self) -> Vec<&str> {
        let trace = [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
            ("baggage", &self.baggage),
        ];
        trace
            .into_iter()
            .filter(|(_, value)| value.is_some())
            .map(|(key, _)| key)
            .chain(self.extra.keys().map(String::as_str))
            .collect()
    }
}

impl Envelope {
    /// Wraps a message in a new envelope with a fresh time-ordered id.
    ///
    /// Fails when the message does not serialize or its group key is not a
    /// valid SQS message group (1 to 128 ASCII letters, digits, punctuation). The
    /// correlation id is the envelope's own id; use [`Envelope::caused_by`] for a
    /// message published while handling another.
    ///
    /// ```
    /// # use outbox_runtime::{Envelope, OutboxMessage};
    /// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
    /// struct Ping { n: u32 }
    ///
    /// let envelope = Envelope::from_message(&Ping { n: 1 })?;
    /// assert_eq!(envelope.message_type, "Ping");
    /// assert_eq!(envelope.group, "Ping");
    /// assert_eq!(envelope.payload.get(), r#"{"n":1}"#);
    /// # Ok::<(), outbox_runtime::message::EncodeError>(())
    /// ```
    pub fn from_message<M: OutboxMessage>(message: &M) -> Result<Self, EncodeError> {
        let group = message.group_key().into_owned();
        if let Err(reason) = check_group(&group) {
            return Err(EncodeError::InvalidGroup {
                message: M::NAME,
                group,
                reason,
            });
        }
        let id = Uuid::now_v7();
        Ok(Envelope {
            id,
            message_type: M::NAME.to_owned(),
            version: M::VERSION,
            group,
            payload: message.encode()?,
            created_at: Utc::now(),
            headers: Headers {
                correlation_id: Some(id),
                ..Headers::default()
            }
            .with_current_trace(),
        })
    }

    /// Marks this envelope as published while handling `parent`: the
    /// causation id is the parent's id and the correlation id and trace context
    /// are carried over.
    #[must_use]
    pub fn caused_by(mut self, parent: &Envelope) -> Self {
        self.headers.causation_id = Some(parent.id);
        self.headers.correlation_id = Some(parent.headers.correlation_id.unwrap_or(parent.id));
        if self.headers.traceparent.is_none() {
            self.headers
                .traceparent
                .clone_from(&parent.headers.traceparent);
            self.headers
                .tracestate
                .clone_from(&parent.headers.tracestate);
            self.headers.baggage.clone_from(&parent.headers.baggage);
        }
        self
    }

    /// Parses an envelope from JSON received from the outside (an SQS body, an
    /// HTTP request). The error names where the input is wrong.
    ///
    /// ```
    /// # use outbox_runtime::Envelope;
    /// let err = Envelope::from_json(r#"{"id": "nope"}"#).unwrap_err();
    /// assert!(err.to_string().starts_with("malformed envelope at `id`"), "{err}");
    /// ```
    pub fn from_json(json: &str) -> Result<Self, EnvelopeError> {
        let mut de = serde_json::Deserializer::from_str(json);
        let envelope: Envelope =
            serde_path_to_error::deserialize(&mut de).map_err(|err| EnvelopeError::Malformed {
                path: err.path().to_string(),
                source: err.into_inner(),
            })?;
        de.end().map_err(|source| EnvelopeError::Malformed {
            path: String::from("."),
            source,
        })?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// The size of [`to_json`](Self::to_json)'s output, counted without
    /// building it.
    pub fn wire_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // As in `to_json`: serialization cannot fail, and counting never does.
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }

    /// Fails with [`EncodeError::TooLarge`] when the envelope is larger than
    /// `limit` bytes as JSON.
    pub fn check_size(&self, limit: usize) -> Result<(), EncodeError> {
        let bytes = self.wire_len();
        if bytes > limit {
            return Err(EncodeError::TooLarge {
                message: self.message_type.clone(),
                bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Serializes the envelope to its JSON wire form.
    pub fn to_json(&self) -> String {
        // Every field is a string, number, UUID, timestamp or already-valid
        // JSON, so serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|err| unreachable!("envelope serializes: {err}"))
    }

    /// Checks what the type system cannot: the invariants of the wire format.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        let invalid =
            |field: &'static str, reason: String| EnvelopeError::Invalid { field, reason };
        if self.message_type.is_empty() {
            return Err(invalid("type", "must not be empty".into()));
        }
        if self.version == 0 {
            return Err(invalid("version", "must be 1 or more".into()));
        }
        if let Err(reason) = check_group(&self.group) {
            return Err(invalid("group", reason));
        }
        Ok(())
    }

    /// The id the message is handled under: for a replay of a dead letter,
    /// the id of the message it replays ([`REPLAY_OF_HEADER`]); otherwise its
    /// own. It keys the inbox and the handlers' attempts, so a replay never
    /// runs a handler that already committed the original.
    ///
    /// The header is trusted as received: whoever can send to the queue can
    /// name another message's id in it, and that message's handlers then
    /// count as done for the sender's message. Only the outbox should write
    /// to the queue (the sample's template grants `sqs:SendMessage` to its
    /// two functions and its schedule only).
    pub fn original_id(&self) -> Uuid {
        self.headers
            .extra
            .get(REPLAY_OF_HEADER)
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or(self.id)
    }

    /// The message that replays this one (see [`crate::admin`]): a fresh
    /// id and time, the same type, version, group and payload, this id as
    /// causation id, the same correlation id (or this id), and the headers
    /// [`REPLAY_OF_HEADER`] (the [original id](Self::original_id)) and, for
    /// one handler's give-up, [`ONLY_HANDLER_HEADER`].
    #[must_use]
    pub fn replay(&self, handler: Option<&str>) -> Envelope {
        let mut envelope = Envelope {
            id: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            ..self.clone()
        };
        envelope.headers.causation_id = Some(self.id);
        envelope.headers.correlation_id = Some(self.headers.correlation_id.unwrap_or(self.id));
        // A replay of a replay still names the first message: its inbox key.
        envelope
            .headers
            .extra
            .insert(REPLAY_OF_HEADER.to_owned(), self.original_id().to_string());
        envelope.headers.extra.remove(RELEASE_HEADER);
        match handler {
            Some(handler) => envelope
                .headers
                .extra
                .insert(ONLY_HANDLER_HEADER.to_owned(), handler.to_owned()),
            None => envelope.headers.extra.remove(ONLY_HANDLER_HEADER),
        };
        envelope
    }

    /// The JSON Schema of the envelope, as checked in at `schemas/envelope.schema.json`.
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(Envelope)
    }
}

/// The largest envelope (as JSON) a store accepts unless told otherwise:
/// 256 KiB, what an SQS queue takes by default. See
/// [`Store::max_message_bytes`](crate::store::Store::max_message_bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Header of a replayed message: the id of the message it replays (the first
/// one, when a replay is replayed again). The replay is handled under that
/// id: its inbox key and [`Envelope::original_id`].
pub const REPLAY_OF_HEADER: &str = "outbox-replay-of";

/// Header of a replayed message: the only handler to run (the one that gave
/// up). Without it, every handler of the message runs.
pub const ONLY_HANDLER_HEADER: &str = "outbox-only-handler";

/// The header of a replay sent by a group's release
/// ([`admin::release_group`](crate::admin::release_group)): the release's
/// id. While a group is held, only these replays run its holding handler.
pub const RELEASE_HEADER: &str = "outbox-release";

/// An envelope on its way into the outbox, with the logical queue it is
/// published to (`OutboxMessage::QUEUE`; `None` is the default queue) and,
/// for a delayed message, the time before which it is not published.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OutgoingEnvelope {
    /// The envelope.
    pub envelope: Envelope,
    /// Its logical queue.
    pub queue: Option<&'static str>,
    /// Held in the outbox until this time (the database's clock), and the
    /// messages after it in its group with it; `None`: publish at once.
    pub not_before: Option<DateTime<Utc>>,
}

impl OutgoingEnvelope {
    /// Wraps a message for the outbox; see [`Envelope::from_message`].
    pub fn new<M: OutboxMessage>(message: &M) -> Result<Self, EncodeError> {
        Ok(OutgoingEnvelope {
            envelope: Envelope::from_message(message)?,
            queue: M::QUEUE,
            not_before: None,
        })
    }

    /// This envelope, held in the outbox until `when`.
    #[must_use]
    pub fn with_not_before(mut self, when: DateTime<Utc>) -> Self {
        self.not_before = Some(when);
        self
    }

    /// This envelope, held in the outbox until `delay` from now (this
    /// process's clock; a delay past the year 262143 saturates there).
    #[must_use]
    pub fn with_delay(self, delay: std::time::Duration) -> Self {
        let when = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|delay| Utc::now().checked_add_signed(delay))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.with_not_before(when)
    }
}

/// A time before which a delayed message is not published
/// (`StoreExt::enqueue_at`, `HandlerContext::publish_at`): a
/// `chrono::DateTime<Utc>`, or a `std::time::SystemTime`, which saturates
/// at the ends of chrono's range instead of panicking.
pub trait NotBefore {
    /// The time, in UTC.
    fn to_utc(&self) -> DateTime<Utc>;
}

impl NotBefore for DateTime<Utc> {
    fn to_utc(&self) -> DateTime<Utc> {
        *self
    }
}

impl NotBefore for std::time::SystemTime {
    fn to_utc(&self) -> DateTime<Utc> {
        let utc = match self.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs())
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, after.subsec_nanos())),
            Err(before) => {
                let before = before.duration();
                i64::try_from(before.as_secs()).ok().and_then(|secs| {
                    DateTime::from_timestamp(-secs, 0).map(|t| {
                        t - chrono::Duration::nanoseconds(i64::from(before.subsec_nanos()))
                    })
                })
            }
        };
        utc.unwrap_or(if *self > std::time::UNIX_EPOCH {
            DateTime::<Utc>::MAX_UTC
        } else {
            DateTime::<Utc>::MIN_UTC
        })
    }
}

/// The rules SQS applies to a `MessageGroupId`: 1 to 128 characters, ASCII
/// letters, digits and punctuation.
pub(crate) fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("must not be empty".into());
    }
    if group.len() > 128 {
        return Err(format!("is {} bytes long, the limit is 128", group.len()));
    }
    if let Some(c) = group.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "contains {c:?}; only ASCII letters, digits and punctuation are allowed"
        ));
    }
    if group.starts_with(RESERVED_GROUP_PREFIX) {
        return Err(format!(
            "starts with `{RESERVED_GROUP_PREFIX}`, which the toolkit reserves for its own messages (the relay's pump)"
        ));
    }
    Ok(())
}

/// Message groups starting with this are the toolkit's own (the pump's).
pub(crate) const RESERVED_GROUP_PREFIX: &str = "__outbox";

/// An envelope received from outside is unusable. Such a message is poison.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not the envelope's shape.
    #[error("malformed envelope at `{path}`: {source}")]
    Malformed {
        /// Where the input is wrong, as `headers.causation_id` (`.` is the root).
        path: String,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// Well-formed, but a field breaks a rule of the wire format.
    #[error("invalid envelope: `{field}` {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
