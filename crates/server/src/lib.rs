//! DynamoWave's server: the gateway around the chat core.
//!
//! # Layout
//!
//! - [`app`]: [`AppState`], [`router`] (every route in one place), [`Server`] (open the store,
//!   then serve a listener until a shutdown future resolves) and [`run`], both steps in one.
//!   `main` and the tests both use them.
//! - [`config`]: [`ServerConfig`] and its TOML form.
//! - [`gateway`]: `GET /ws`: the upgrade (identity, mode, limits) and the connection task that
//!   reads frames into the core's handlers and writes the outbound queue to the socket.
//! - [`hub`]: the in-process fan-out: room membership, one bounded queue per connection, and
//!   delivery of each committed message serialized once.
//! - [`api`]: the management API: `/@connections/{id}` as in API Gateway, `/rooms/{room}/...`,
//!   `/dlq/...`, its admin guard and its JSON errors.
//! - [`dlq`]: dead letters: posts the server accepted and could not deliver, kept durably for
//!   replay.
//! - [`telemetry`]: `GET /metrics` (Prometheus).
//! - [`store`]: store adapters; [`store::sqlite`] is the embedded, group-committing store.
//! - [`web`]: the browser chat page at `/`, embedded in the binary (`web/`).

pub mod api;
pub mod app;
pub mod config;
pub mod dlq;
pub mod gateway;
pub mod hub;
pub mod store;
pub mod telemetry;
pub mod web;

pub use app::{AppState, Server, ServerError, router, run};
pub use config::ServerConfig;
