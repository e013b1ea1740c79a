//! Wiring: the shared state, the router, and `run`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use dynamowave_core::error::close_code;
use dynamowave_core::handlers::Services;
use dynamowave_core::ports::{Backend, Fanout, OpenError, PeerConnections, StoreError, Stores};
use dynamowave_core::protocol::Limits;
use dynamowave_core::retry::{RetryPolicy, RetryingLog};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, ServerConfig};
use crate::dlq::DeadLetterQueue;
use crate::hub::Hub;
use crate::{api, gateway, health, web};

/// What every request and connection task shares.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    /// This node's connections and the fan-out to them.
    pub hub: Arc<Hub>,
    /// Connections on other nodes (a cluster store); `None` on a single node.
    pub peers: Option<Arc<dyn PeerConnections>>,
    pub dead_letters: Arc<DeadLetterQueue>,
    pub config: Arc<ServerConfig>,
    /// Turns true when the server starts shutting down.
    pub shutting_down: watch::Receiver<bool>,
    /// `[limits]`: connection caps, rates and the reserved capacity (see [`crate::limits`]).
    pub limiter: Arc<crate::limits::Limiter>,
    /// Origin check and authentication of `GET /ws` (keys read at start).
    pub guard: Arc<crate::identity::Guard>,
    /// `GET /readyz`: the store's write probe (see [`crate::health`]).
    pub readiness: Arc<crate::health::Readiness>,
}

impl AppState {
    pub fn limits(config: &ServerConfig) -> Limits {
        Limits {
            max_frame_bytes: config.max_frame_bytes,
            max_message_bytes: config.max_message_bytes,
            max_rooms_per_connection: config.limits.max_rooms_per_connection,
        }
    }

    /// For unit tests of routes: in-memory stores, and `lifecycle` for the readiness probe.
    #[cfg(test)]
    pub(crate) fn for_tests(
        config: ServerConfig,
        shutting_down: watch::Receiver<bool>,
        lifecycle: Arc<dyn dynamowave_core::ports::StoreLifecycle>,
    ) -> Self {
        use dynamowave_core::memory::{MemoryConnections, MemoryDeadLetters, MemoryLog};
        let hub = Arc::new(Hub::default());
        AppState {
            services: Services {
                log: Arc::new(MemoryLog::new(hub.clone())),
                connections: Arc::new(MemoryConnections::default()),
                rooms: hub.clone(),
                limits: AppState::limits(&config),
                typing: Arc::default(),
                join_gate: None,
            },
            peers: None,
            dead_letters: Arc::new(DeadLetterQueue::new(
                Arc::new(MemoryDeadLetters::default()),
                hub.clone(),
            )),
            readiness: Arc::new(health::Readiness::new(lifecycle)),
            hub,
            limiter: Arc::new(crate::limits::Limiter::new(&config.limits)),
            config: Arc::new(config),
            shutting_down,
            guard: Arc::new(crate::identity::Guard::open()),
        }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(gateway::upgrade))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(api::routes(state.clone()))
        .merge(web::routes())
        .with_state(state)
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend could not open its store; its message says what to fix.
    #[error(transparent)]
    Open(OpenError),
    #[error("the store failed at start: {0}")]
    Store(#[from] StoreError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Serves chat on `listener` until `shutdown` resolves: [`Server::open`] then [`Server::serve`].
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    backend: Box<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::open(config, backend)
        .await?
        .serve(listener, shutdown)
        .await
}

/// A server whose store is open and clean, ready to serve.
pub struct Server {
    stores: Stores,
    hub: Arc<Hub>,
    config: ServerConfig,
    /// IP lists, TLS (its certificate read at open), require-tls, handshake timeout.
    gate: crate::listener::Gate,
    /// Origin check and authentication of `GET /ws`; its keys are read at open.
    guard: Arc<crate::identity::Guard>,
}

impl Server {
    /// Validates the config, opens the backend's store with this node's hub as its fan-out
    /// (the SQLite backend takes the data directory's lock) and purges the connections a
    /// previous process left behind. No client can connect before this is done.
    pub async fn open(
        config: ServerConfig,
        backend: Box<dyn Backend>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        // Before the store: a certificate that does not load stops the start.
        let gate = crate::listener::Gate::new(&config)?;
        // Also before the store: a key file that does not load stops the start.
        let guard = Arc::new(crate::identity::Guard::from_config(&config)?);
        // The store records its metrics from its first write on (the purge below).
        crate::telemetry::prometheus();
        let hub = Arc::new(Hub::default());
        let fanout = Fanout {
            listener: hub.clone(),
            rooms: hub.clone(),
            local: hub.clone(),
        };
        let stores = backend.open(fanout).await.map_err(ServerError::Open)?;
        if config.hooks.webhook_url.is_some() && stores.outbox.is_none() {
            return Err(ServerError::Open(
                format!(
                    "webhook-url is set but the {} store was not opened with an outbox for the events",
                    stores.kind
                )
                .into(),
            ));
        }
        let purged = stores.connections.purge_stale().await?;
        if purged > 0 {
            tracing::info!(purged, "removed connections left by a previous process");
        }
        Ok(Server {
            stores,
            hub,
            config,
            gate,
            guard,
        })
    }

    /// The certificate files when TLS is on, to reload them (`dynamowave serve` does on SIGHUP).
    pub fn tls(&self) -> Option<crate::tls::TlsFiles> {
        self.gate.tls().cloned()
    }

    /// Serves chat on `listener` until `shutdown` resolves, then closes every socket with 1001,
    /// waits for the connection tasks, and commits what the store still has queued.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            stores,
            hub,
            config,
            gate,
            guard,
        } = self;
        crate::telemetry::prometheus();
        let (stop, shutting_down) = watch::channel(false);
        let webhook = crate::webhooks::WebhookClient::from_config(&config.hooks).map(Arc::new);
        let state = AppState {
            services: Services {
                log: Arc::new(RetryingLog::new(stores.log.clone(), RetryPolicy::default())),
                connections: stores.connections.clone(),
                rooms: stores.rooms.clone(),
                limits: AppState::limits(&config),
                typing: Arc::default(),
                join_gate: crate::hooks::HttpJoinGate::from_config(&config.hooks)
                    .map(|g| Arc::new(g) as Arc<dyn dynamowave_core::ports::JoinGate>),
            },
            hub: hub.clone(),
            peers: stores.peers.clone(),
            dead_letters: Arc::new(
                DeadLetterQueue::new(stores.dead_letters.clone(), hub.clone())
                    .with_webhook(webhook.clone()),
            ),
            readiness: Arc::new(crate::health::Readiness::new(stores.lifecycle.clone())),
            limiter: Arc::new(crate::limits::Limiter::new(&config.limits)),
            config: Arc::new(config),
            shutting_down,
            guard,
        };
        let grace = state.config.shutdown_grace();
        if let (Some(client), Some(outbox)) = (webhook, stores.outbox.clone()) {
            let hooks = &state.config.hooks;
            let dispatcher = crate::webhooks::Dispatcher {
                outbox,
                client,
                dead_letters: state.dead_letters.clone(),
                batch_max: hooks.webhook_batch_max,
                max_attempts: hooks.webhook_max_attempts,
                backoff: RetryPolicy {
                    attempts: hooks.webhook_max_attempts,
                    base: std::time::Duration::from_millis(200),
                    cap: std::time::Duration::from_secs(30),
                },
            };
            tokio::spawn(dispatcher.run(state.shutting_down.clone()));
        }
        let app = router(state.clone());
        drop(state);

        let stop = Arc::new(stop);
        let signal = {
            let stop = stop.clone();
            let hub = hub.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: closing connections");
                let _ = stop.send(true);
                hub.close_all(close_code::GOING_AWAY, "server shutting down");
            }
        };
        // IP lists, TLS or plaintext, TCP_NODELAY, the handshake timeout: crate::listener.
        let deadline = crate::listener::serve(listener, app, gate, grace, signal).await?;

        // Every connection task holds a receiver; they are all gone when the tasks have ended.
        if tokio::time::timeout_at(deadline, stop.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                left = hub.connection_count(),
                "connections still open after the grace period"
            );
        }
        stores.lifecycle.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}
