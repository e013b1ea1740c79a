//! Wiring: the shared state, the router, and `run`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use dynamowave_core::error::close_code;
use dynamowave_core::handlers::Services;
use dynamowave_core::ports::{ConnectionStore, StoreError};
use dynamowave_core::protocol::Limits;
use dynamowave_core::retry::{RetryPolicy, RetryingLog};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, ServerConfig};
use crate::dlq::DeadLetters;
use crate::hub::Hub;
use crate::store::sqlite::{OpenError, SqliteStore};
use crate::{api, gateway, web};

/// What every request and connection task shares.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub hub: Arc<Hub>,
    pub dead_letters: Arc<DeadLetters>,
    pub config: Arc<ServerConfig>,
    /// Turns true when the server starts shutting down.
    pub shutting_down: watch::Receiver<bool>,
}

impl AppState {
    pub fn limits(config: &ServerConfig) -> Limits {
        Limits {
            max_frame_bytes: config.max_frame_bytes,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(gateway::upgrade))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(api::routes(state.clone()))
        .merge(web::routes())
        .with_state(state)
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the store failed at start: {0}")]
    Store(#[from] StoreError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves chat on `listener` until `shutdown` resolves: [`Server::open`] then [`Server::serve`].
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::open(config).await?.serve(listener, shutdown).await
}

/// A server whose store is open and clean, ready to serve.
pub struct Server {
    store: Arc<SqliteStore>,
    hub: Arc<Hub>,
    config: ServerConfig,
}

impl Server {
    /// Validates the config, opens the store (taking the data directory's lock) and purges the
    /// connections a previous process left behind. No client can connect before this is done.
    pub async fn open(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let hub = Arc::new(Hub::default());
        let store = Arc::new(SqliteStore::open(&config.data_dir, hub.clone())?);
        let purged = store.purge_stale().await?;
        if purged > 0 {
            tracing::info!(purged, "removed connections left by a previous process");
        }
        Ok(Server { store, hub, config })
    }

    /// Serves chat on `listener` until `shutdown` resolves, then closes every socket with 1001,
    /// waits for the connection tasks, and commits what the store still has queued.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server { store, hub, config } = self;
        crate::telemetry::prometheus();
        let (stop, shutting_down) = watch::channel(false);
        let state = AppState {
            services: Services {
                log: Arc::new(RetryingLog::new(store.clone(), RetryPolicy::default())),
                connections: store.clone(),
                rooms: hub.clone(),
                limits: AppState::limits(&config),
            },
            hub: hub.clone(),
            dead_letters: Arc::new(DeadLetters::new(store.clone(), hub.clone())),
            config: Arc::new(config),
            shutting_down,
        };
        let grace = state.config.shutdown_grace();
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
        // Chat frames are small and latency-bound: Nagle's algorithm would hold them back.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .await?;

        // Every connection task holds a receiver; they are all gone when the tasks have ended.
        if tokio::time::timeout(grace, stop.closed()).await.is_err() {
            tracing::warn!(
                left = hub.connection_count(),
                "connections still open after the grace period"
            );
        }
        store.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}
