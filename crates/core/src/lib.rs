//! DynamoWave's chat core: everything that is the same in every deployment shape.
//!
//! # Layout
//!
//! - [`types`]: domain types with their validation (`RoomId`, `Seq`, `ConnectionId`, `UserName`)
//!   and clock helpers.
//! - [`protocol`]: the wire format. [`protocol::ClientFrame`] is what a client sends (chosen by
//!   its `action`, like API Gateway's `$request.body.action`), [`protocol::ServerFrame`] what the
//!   server sends in v1 mode.
//! - [`error`]: [`ErrorCode`] and [`ChatError`], grouped by the `error` frame code, the WebSocket
//!   close code and the HTTP status they produce.
//! - [`ports`]: the traits every deployment shape implements: [`ports::MessageLog`] (durable,
//!   idempotent, ordered per room), [`ports::ConnectionStore`] (the connections table),
//!   [`ports::RoomMembership`] (the fan-out index) and [`ports::Outbox`] (one socket's writer).
//! - [`handlers`]: one file per route (`$connect`, `$disconnect`, `sendmessage`, `$default`,
//!   `join`, `leave`, `history`, `members`) and [`handlers::dispatch`] that routes a text frame.
//! - [`retry`]: [`retry::RetryingLog`], retries of transient store failures with exponential
//!   backoff and full jitter, within a bound.
//! - [`memory`]: in-memory adapters, for unit tests and as the reference the conformance suite is
//!   written against.
//! - [`webhook`]: the events for the product's backend (`--webhook-url`), as JSON, the same
//!   in every store.
//! - `conformance` (feature `conformance`): the suite every store adapter must pass.

pub mod error;
pub mod handlers;
pub mod memory;
pub mod ports;
pub mod protocol;
pub mod retry;
pub mod types;
pub mod webhook;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{ChatError, ErrorCode};
pub use types::{ConnectionId, RoomId, Seq, UserName};
