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
//! - [`identity`]: who may open a WebSocket, before the upgrade: the origin check and
//!   authentication (JWT on `$connect`: its `sub` is the user, its `rooms` claim the rooms).
//! - [`api`]: the management API: `/@connections/{id}` as in API Gateway, `/rooms/{room}/...`,
//!   `/dlq/...`, its admin guard and its JSON errors.
//! - [`dlq`]: dead letters: posts the server accepted and could not deliver, kept durably for
//!   replay.
//! - [`limits`]: `[limits]`: connection caps and rates checked before the upgrade, the
//!   per-connection frame rate, and the reserved `$connect`/`$disconnect` capacity.
//! - [`listener`]: the accept loop: IP allow/deny lists, TLS or plaintext per connection,
//!   require-tls, the handshake timeout, graceful shutdown of HTTP connections.
//! - [`tls`]: the rustls server config and its certificate, reloadable while serving.
//! - [`telemetry`]: `GET /metrics` (Prometheus).
//! - [`instruments`]: the metric handles the gateway, the hub and the store record into.
//! - [`health`]: `GET /healthz` (the process is up) and `GET /readyz` (not shutting down, the
//!   store writable).
//! - [`store`]: store adapters; [`store::sqlite`] is the embedded, group-committing store.
//! - [`web`]: the browser chat page at `/`, embedded in the binary (`web/`).

pub mod api;
pub mod app;
pub mod config;
pub mod dlq;
pub mod gateway;
pub mod health;
pub mod hub;
pub mod identity;
pub mod instruments;
pub mod limits;
pub mod listener;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use app::{AppState, Server, ServerError, router, run};
pub use config::ServerConfig;
