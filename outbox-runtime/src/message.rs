//! The [`OutboxMessage`] trait: what a type must say about itself to travel
//! through the outbox.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// A message that can be written to the outbox and routed to handlers.
///
/// Implement it with `#[derive(OutboxMessage)]`; the derive also registers the
/// type in the dispatch table at link time. A hand-written impl is possible but
/// is not registered, so envelopes of that type are reported as unknown.
///
/// ```
/// use outbox_runtime::OutboxMessage;
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// #[outbox(name = "orders.status_changed", version = 2, group = customer_id)]
/// struct OrderStatusChanged {
///     order_id: i64,
///     customer_id: String,
/// }
///
/// let msg = OrderStatusChanged { order_id: 7, customer_id: "c-1".into() };
/// assert_eq!(OrderStatusChanged::NAME, "orders.status_changed");
/// assert_eq!(OrderStatusChanged::VERSION, 2);
/// assert_eq!(msg.group_key(), "c-1");
/// ```
///
/// A type that is not serializable cannot be a message:
///
/// ```compile_fail
/// use outbox_runtime::OutboxMessage;
///
/// #[derive(OutboxMessage)]
/// struct NotSerializable {
///     id: i64,
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an outbox message",
    label = "not an outbox message",
    note = "derive it: `#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]`"
)]
pub trait OutboxMessage:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + 'static
{
    /// The stable message name written to every envelope (`type`).
    const NAME: &'static str;
    /// The schema version written to every envelope; starts at 1.
    const VERSION: u32;
    /// The logical queue this message is published to, if not the default one.
    const QUEUE: Option<&'static str> = None;

    /// The message group: messages with the same group are delivered in order,
    /// different groups in parallel. Maps to the SQS `MessageGroupId`.
    fn group_key(&self) -> Cow<'_, str>;

    /// Serializes the message into an envelope payload.
    fn encode(&self) -> Result<Box<RawValue>, EncodeError> {
        serde_json::value::to_raw_value(self).map_err(|source| EncodeError::Serialize {
            message: Self::NAME,
            source,
        })
    }

    /// Deserializes an envelope payload into the message.
    ///
    /// The error names the JSON path that failed (`items[2].sku`), so a poison
    /// message can be diagnosed from its dead-letter record alone.
    fn decode(payload: &RawValue) -> Result<Self, DecodeError> {
        decode_payload(Self::NAME, Self::VERSION, payload)
    }

    /// The JSON Schema of the payload.
    fn payload_schema() -> schemars::Schema {
        schemars::schema_for!(Self)
    }
}

/// Decodes on the fast path with plain `serde_json`; only when that fails is
/// the payload decoded a second time to find the path of the error.
fn decode_payload<T: DeserializeOwned>(
    name: &'static str,
    version: u32,
    payload: &RawValue,
) -> Result<T, DecodeError> {
    serde_json::from_str(payload.get()).map_err(|plain| {
        let mut de = serde_json::Deserializer::from_str(payload.get());
        let (path, source) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(err) => (err.path().to_string(), err.into_inner()),
            Ok(_) => (String::from("."), plain),
        };
        DecodeError {
            message: name,
            version,
            path,
            source,
        }
    })
}

/// A message type named at compile time, as `#[handler(publishes = [...])]`
/// and `#[outbox(upcast_from = ...)]` name them.
#[derive(Clone, Copy, Debug)]
pub struct MessageType {
    /// `OutboxMessage::NAME`.
    pub name: &'static str,
    /// `OutboxMessage::VERSION`.
    pub version: u32,
    /// The Rust type, with its module path.
    pub rust_type: fn() -> &'static str,
    /// The Rust type's id.
    pub type_id: fn() -> std::any::TypeId,
}

impl MessageType {
    /// The message type `M`.
    pub const fn of<M: OutboxMessage>() -> Self {
        MessageType {
            name: M::NAME,
            version: M::VERSION,
            rust_type: std::any::type_name::<M>,
            type_id: std::any::TypeId::of::<M>,
        }
    }

    /// Whether this is `M`.
    pub fn is<M: OutboxMessage>(&self) -> bool {
        (self.type_id)() == std::any::TypeId::of::<M>()
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` v{} (`{}`)",
            self.name,
            self.version,
            (self.rust_type)()
        )
    }
}

/// Decodes a payload of `P`, converts it into `M` with `From`, and encodes
/// the result: one step of an upcast (`#[outbox(upcast_from = P)]` on `M`).
/// A panic in the user's code it calls (the conversion, or a hand-written
/// `Deserialize` or `Serialize`) is an error, not a crash.
pub fn upcast<P: OutboxMessage, M: OutboxMessage + From<P>>(
    payload: &RawValue,
) -> Result<Box<RawValue>, UpcastError> {
    // Nothing the closure touches is observed after a panic: its values
    // are dropped with it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let previous = P::decode(payload)?;
        Ok(M::from(previous).encode()?)
    }))
    .unwrap_or_else(|panic| Err(UpcastError::Panicked(panic_text(&*panic))))
}

/// A panic's message, when it is a string.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("a non-string panic payload")
    }
}

/// One step of an upcast failed. The message is poison.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The payload does not decode into the version it claims.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The converted message does not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The conversion (or the old version's decoding, or the new one's
    /// encoding) panicked.
    #[error("the conversion panicked: {0}")]
    Panicked(String),
}

/// A payload did not decode into its message type. The message is poison: it
/// will never decode, so retrying it is pointless.
#[derive(Debug, thiserror::Error)]
#[error("payload of `{message}` v{version} does not decode at `{path}`: {source}")]
pub struct DecodeError {
    /// The message name.
    pub message: &'static str,
    /// The message version.
    pub version: u32,
    /// Where in the payload decoding failed, as `field.list[3].name` (`.` is the root).
    pub path: String,
    /// What serde reported.
    pub source: serde_json::Error,
}

/// A message could not be turned into an envelope. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// serde could not serialize it (for example a map with non-string keys).
    #[error("message `{message}` cannot be serialized to JSON: {source}")]
    Serialize {
        /// The message name.
        message: &'static str,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// Its group key breaks the SQS rules for a `MessageGroupId`.
    #[error("message `{message}` has an invalid group {group:?}: it {reason}")]
    InvalidGroup {
        /// The message name.
        message: &'static str,
        /// The group key the message produced.
        group: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Its envelope is larger than the transport takes.
    #[error(
        "message `{message}` is {bytes} bytes as an envelope; the limit is {limit} (the transport's: SQS takes 256 KiB by default). Store large data elsewhere and send a reference"
    )]
    TooLarge {
        /// The message name.
        message: String,
        /// The envelope's size as JSON.
        bytes: usize,
        /// The largest envelope accepted.
        limit: usize,
    },
}

/// A value that can be a message group, used by `#[outbox(group = field)]`.
///
/// Implemented for strings and integers and [`uuid::Uuid`]. Implement it for
/// your own id types, or use `#[outbox(group = path::to::function)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a message group",
    label = "this field is the message group",
    note = "implement `outbox_runtime::message::GroupKey` for `{Self}`, or use a function: `#[outbox(group = self::group_of)]` with `fn group_of(msg: &Self) -> String`"
)]
pub trait GroupKey {
    /// The group as a string.
    fn group_key(&self) -> Cow<'_, str>;
}

impl GroupKey for str {
    fn group_key(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl GroupKey for String {
    fn group_key(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl GroupKey for Cow<'_, str> {
    fn group_key(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl<T: GroupKey + ?Sized> GroupKey for &T {
    fn group_key(&self) -> Cow<'_, str> {
        (**self).group_key()
    }
}

impl<T: GroupKey + ?Sized> GroupKey for Box<T> {
    fn group_key(&self) -> Cow<'_, str> {
        (**self).group_key()
    }
}

impl GroupKey for uuid::Uuid {
    fn group_key(&self) -> Cow<'_, str> {
        Cow::Owned(self.hyphenated().to_string())
    }
}

macro_rules! group_key_display {
    ($($t:ty)*) => {$(
        impl GroupKey for $t {
            fn group_key(&self) -> Cow<'_, str> {
                Cow::Owned(self.to_string())
            }
        }
    )*};
}

group_key_display!(i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize char);

/// How a message type chooses its group, as declared in `#[outbox(group = ...)]`.
/// Shown by the dispatch table (`Display`, and its entries as JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupSpec {
    /// No `group` key: every message of the type is in one group named after the type.
    PerType,
    /// A field of the message.
    Field(&'static str),
    /// A function of the message.
    Function(&'static str),
    /// A constant group.
    Constant(&'static str),
}

impl fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupSpec::PerType => f.write_str("per type"),
            GroupSpec::Field(field) => write!(f, "field `{field}`"),
            GroupSpec::Function(path) => write!(f, "fn `{path}`"),
            GroupSpec::Constant(group) => write!(f, "constant {group:?}"),
        }
    }
}
