//! Link-time registration: the records that `#[derive(OutboxMessage)]` and
//! `#[handler]` place in two `linkme` distributed slices.
//!
//! Each expansion adds one `static` to a slice; the linker gathers them into
//! one contiguous array per binary. Nothing runs before `main`, and the user
//! writes no registration list. [`DispatchTable`](crate::dispatch::DispatchTable) reads
//! the slices once at start-up.
//!
//! # The linker caveat
//!
//! The linker only sees registrations in crates that are linked. A library
//! crate that holds messages or handlers but that the binary never references
//! is dropped whole, and its registrations with it. Reference such a crate from
//! the binary (`use my_messages as _;` is not enough; call anything in it, or
//! use [`DispatchTable::require`](crate::dispatch::DispatchTable::require) with one of its
//! types), and check the table at start-up: `DispatchTable::from_registry`
//! refuses an empty table. LTO keeps registrations: the statics are marked
//! used and live in a named link section.

use std::any::TypeId;
use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;

use crate::handler::HandlerContext;
use crate::handler::HandlerError;
use crate::message::{GroupSpec, MessageType, OutboxMessage, UpcastError};

/// Every message type registered by `#[derive(OutboxMessage)]` in this binary.
#[linkme::distributed_slice]
pub static MESSAGES: [MessageRegistration];

/// Every handler registered by `#[handler]` in this binary.
#[linkme::distributed_slice]
pub static HANDLERS: [HandlerRegistration];

/// The future a type-erased handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A handler with its message type erased: decodes the payload, then runs the
/// user's function.
pub type HandlerFn = for<'a, 'c> fn(&'a RawValue, &'a mut HandlerContext<'c>) -> HandlerFuture<'a>;

/// What `#[derive(OutboxMessage)]` registers for one message type.
#[derive(Debug)]
pub struct MessageRegistration {
    /// `OutboxMessage::NAME`.
    pub name: &'static str,
    /// `OutboxMessage::VERSION`.
    pub version: u32,
    /// `OutboxMessage::QUEUE`.
    pub queue: Option<&'static str>,
    /// How the group is chosen.
    pub group: GroupSpec,
    /// The Rust type, with its module path.
    pub rust_type: fn() -> &'static str,
    /// The Rust type's id, to match handlers to messages.
    pub type_id: fn() -> TypeId,
    /// The JSON Schema of the payload.
    pub schema: fn() -> schemars::Schema,
    /// `#[outbox(upcast_from = ...)]`: the version this one replaces, and
    /// how a message of it becomes one of this.
    pub upcast_from: Option<Upcast>,
}

/// How a message version is made from the one it replaces: declared with
/// `#[outbox(upcast_from = Previous)]`, converted with `From<Previous>`.
#[derive(Clone, Copy, Debug)]
pub struct Upcast {
    /// The replaced version.
    pub from: MessageType,
    /// Decodes a payload of the replaced version, converts and encodes it
    /// ([`message::upcast`](crate::message::upcast)).
    pub convert: fn(&RawValue) -> Result<Box<RawValue>, UpcastError>,
}

impl Upcast {
    /// `M` made from `P` with `From<P>`. Used by the derive.
    pub const fn of<M: OutboxMessage + From<P>, P: OutboxMessage>() -> Self {
        Upcast {
            from: MessageType::of::<P>(),
            convert: crate::message::upcast::<P, M>,
        }
    }
}

impl MessageRegistration {
    /// The registration of `M`. Used by the derive.
    pub const fn of<M: OutboxMessage>(group: GroupSpec) -> Self {
        MessageRegistration {
            name: M::NAME,
            version: M::VERSION,
            queue: M::QUEUE,
            group,
            rust_type: std::any::type_name::<M>,
            type_id: TypeId::of::<M>,
            schema: M::payload_schema,
            upcast_from: None,
        }
    }

    /// This registration, made from another version with `upcast`. Used by
    /// the derive.
    #[must_use]
    pub const fn upcasting(mut self, upcast: Upcast) -> Self {
        self.upcast_from = Some(upcast);
        self
    }
}

/// What `#[handler]` registers for one handler function.
#[derive(Debug)]
pub struct HandlerRegistration {
    /// The handler's name: its inbox key, stable across deployments.
    pub name: &'static str,
    /// The name of the message it handles.
    pub message_name: &'static str,
    /// The version of the message it handles.
    pub message_version: u32,
    /// The Rust type of the message it handles.
    pub message_type: fn() -> &'static str,
    /// The id of that type.
    pub message_type_id: fn() -> TypeId,
    /// `#[handler(max_attempts = N)]`, if given.
    pub max_attempts: Option<u32>,
    /// `#[handler(publishes = [...])]`, if given: the only message types it
    /// may publish. `None` allows any.
    pub publishes: Option<&'static [MessageType]>,
    /// `#[handler(on_dead_letter = "hold_group")]`: when this handler gives
    /// up on a message, the later messages of its group wait for it (see
    /// [`crate::admin::release_group`]). `false` (`"move_on"`, the
    /// default): they go on.
    pub holds_group: bool,
    /// The type-erased handler.
    pub call: HandlerFn,
}

impl HandlerRegistration {
    /// The registration of a handler for `M`. Used by `#[handler]`.
    pub const fn of<M: OutboxMessage>(
        name: &'static str,
        max_attempts: Option<u32>,
        call: HandlerFn,
    ) -> Self {
        HandlerRegistration {
            name,
            message_name: M::NAME,
            message_version: M::VERSION,
            message_type: std::any::type_name::<M>,
            message_type_id: TypeId::of::<M>,
            max_attempts,
            publishes: None,
            holds_group: false,
            call,
        }
    }

    /// This registration, allowed to publish only `types`. Used by
    /// `#[handler(publishes = [...])]`.
    #[must_use]
    pub const fn publishing(mut self, types: &'static [MessageType]) -> Self {
        self.publishes = Some(types);
        self
    }

    /// This registration, holding its group when it gives up. Used by
    /// `#[handler(on_dead_letter = "hold_group")]`.
    #[must_use]
    pub const fn holding_group(mut self) -> Self {
        self.holds_group = true;
        self
    }
}
