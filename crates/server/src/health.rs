//! `GET /healthz` and `GET /readyz`, unauthenticated, for load balancers and orchestrators.
//!
//! - `/healthz`: the process is up and answers HTTP. Always 200 `{"status":"ok"}`.
//! - `/readyz`: the server should get traffic: it is not shutting down, and the store is
//!   writable (the store's write probe, [`StoreLifecycle::probe`]: in SQLite, a write through
//!   the writer's priority lane, commits within [`PROBE_TIMEOUT`]). 200
//!   `{"status":"ready",...}`, else 503 `{"status":"not_ready","reason":"..."}`. A probe's
//!   outcome is reused for [`CACHE_FOR`], so a burst of checks costs one commit.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dynamowave_core::ports::StoreLifecycle;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::app::AppState;

/// How long the store's write probe may take before the server counts as not ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe's outcome is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// The store's write probe, its last outcome cached for [`CACHE_FOR`].
pub struct Readiness {
    store: Arc<dyn StoreLifecycle>,
    /// When the last probe ended and what it found (`Err`: why the store is not writable).
    /// Held across a probe: concurrent checks wait for the one running.
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub fn new(store: Arc<dyn StoreLifecycle>) -> Self {
        Readiness {
            store,
            last: Mutex::new(None),
        }
    }

    /// `Ok` when the store committed a write probe within [`PROBE_TIMEOUT`] (or did less than
    /// [`CACHE_FOR`] ago); else why not.
    pub async fn store_writable(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = &*last
            && at.elapsed() < CACHE_FOR
        {
            return outcome.clone();
        }
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, self.store.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the store is not writable: {e}")),
            Err(_) => Err(format!(
                "the store did not commit a write within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        };
        if let Err(reason) = &outcome {
            tracing::warn!(%reason, "not ready");
        }
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    no_store(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /readyz`: not shutting down and the store writable.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if *state.shutting_down.borrow() {
        return not_ready("the server is shutting down");
    }
    if let Err(reason) = state.readiness.store_writable().await {
        return not_ready(&reason);
    }
    // Checked again: shutdown may have started during the probe.
    if *state.shutting_down.borrow() {
        return not_ready("the server is shutting down");
    }
    no_store(
        StatusCode::OK,
        json!({
            "status": "ready",
            "store": "writable",
            "connections": state.hub.connection_count(),
        }),
    )
}

fn not_ready(reason: &str) -> Response {
    no_store(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"status": "not_ready", "reason": reason}),
    )
}

fn no_store(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::Request;
    use dynamowave_core::ports::StoreError;
    use tower::ServiceExt;

    use super::*;
    use crate::app::router;
    use crate::config::ServerConfig;

    /// A store that commits its probe until it is shut down, as the port asks.
    #[derive(Default)]
    struct TestStore {
        shut_down: AtomicBool,
    }

    #[async_trait]
    impl StoreLifecycle for TestStore {
        async fn probe(&self) -> Result<(), StoreError> {
            match self.shut_down.load(Ordering::SeqCst) {
                false => Ok(()),
                true => Err(StoreError::Closed),
            }
        }

        async fn shutdown(&self) {
            self.shut_down.store(true, Ordering::SeqCst);
        }
    }

    /// The router on a fresh store; the caller keeps the store and the shutdown flag's sender.
    fn app(
        shutting_down: bool,
    ) -> (
        axum::Router,
        Arc<TestStore>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let (stop, flag) = tokio::sync::watch::channel(shutting_down);
        let store = Arc::new(TestStore::default());
        let state = AppState::for_tests(ServerConfig::default(), flag, store.clone());
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        (router(state).layer(MockConnectInfo(peer)), store, stop)
    }

    async fn get(app: &axum::Router, path: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn ready_when_the_store_commits() {
        let (app, _store, _stop) = app(false);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn not_ready_once_shutdown_started() {
        let (app, _store, stop) = app(false);
        stop.send_replace(true);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not_ready");
        assert!(body["reason"].as_str().unwrap().contains("shutting down"));
        // Still alive.
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn not_ready_when_the_store_is_closed() {
        let (app, store, _stop) = app(false);
        store.shutdown().await;
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not_ready");
        assert!(
            body["reason"].as_str().unwrap().contains("not writable"),
            "{body}"
        );
    }
}
