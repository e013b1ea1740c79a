//! DynamoWave's server: the gateway around the chat core. It does not know which store it runs
//! on: it is given a `Backend` (the core's port; `dynamowave-store-sqlite`'s `SqliteBackend` for
//! the single binary) and opens it with its hub as the fan-out.
//!
//! # Layout
//!
//! - [`app`]: [`AppState`], [`router`] (every route in one place), [`Server`] (open the
//!   backend's store, then serve a listener until a shutdown future resolves) and [`run`], both
//!   steps in one. `main` and the tests both use them.
//! - [`config`]: [`ServerConfig`] and its TOML form.
//! - [`gateway`]: `GET /ws`: the upgrade (identity, mode, limits) and the connection task that
//!   reads frames into the core's handlers and writes the outbound queue to the socket.
//! - [`upgrade`]: the WebSocket handshake, done here so the connection task owns the socket.
//! - [`hub`]: the in-process fan-out: room membership, one bounded queue per connection, and
//!   delivery of each commit's messages encoded once per room, one queue item per member; also
//!   this node's connections as a peer reaches them (`LocalConnections`).
//! - [`wire`]: server frames encoded once (header and payload) and written many per `writev`.
//! - [`identity`]: who may open a WebSocket, before the upgrade: the origin check and
//!   authentication (JWT on `$connect`: its `sub` is the user, its `rooms` claim the rooms).
//! - [`api`]: the management API: `/@connections/{id}` as in API Gateway (this node's hub
//!   first, then the peers in a cluster), `/rooms/{room}/...`, `/dlq/...`, its admin guard and
//!   its JSON errors.
//! - [`dlq`]: the dead-letter queue ([`dlq::DeadLetterQueue`]): posts the server accepted and
//!   could not deliver, kept durably by the store's `DeadLetters` for replay.
//! - [`limits`]: `[limits]`: connection caps and rates checked before the upgrade, the
//!   per-connection frame rate, and the reserved `$connect`/`$disconnect` capacity.
//! - [`listener`]: the accept loop: IP allow/deny lists, TLS or plaintext per connection,
//!   require-tls, the handshake timeout, graceful shutdown of HTTP connections.
//! - [`tls`]: the rustls server config and its certificate, reloadable while serving.
//! - [`telemetry`]: `GET /metrics` (Prometheus).
//! - [`instruments`]: the metric handles the gateway and the hub record into, and the
//!   descriptions of every metric (the store records its own).
//! - [`hooks`]: the join hook (`--join-hook-url`): the product's backend allows or refuses a
//!   `join` (and `$connect`) over HTTP.
//! - [`webhooks`]: the events for the product's backend (`--webhook-url`): the dispatcher that
//!   POSTs the store's outbox in signed batches, with retries and dead letters.
//! - [`health`]: `GET /healthz` (the process is up) and `GET /readyz` (not shutting down, the
//!   store writable: its `StoreLifecycle::probe`).
//! - [`web`]: the browser chat page at `/`, embedded in the binary (`web/`).

pub mod api;
pub mod app;
pub mod config;
pub mod dlq;
pub mod gateway;
pub mod health;
pub mod hooks;
pub mod hub;
pub mod identity;
pub mod instruments;
pub mod limits;
pub mod listener;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod web;
pub mod webhooks;
pub mod wire;

pub use app::{AppState, Server, ServerError, router, run};
pub use config::ServerConfig;
