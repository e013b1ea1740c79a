//! `GET /metrics`: Prometheus text exposition through the `metrics` crates.
//!
//! The recorder is process-global (the `metrics` macros write to it from anywhere), so it is
//! installed once; several servers in one process (tests) share it.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::api::ApiError;
use crate::app::AppState;

/// The installed recorder's handle; `None` when another recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .as_ref()
}

/// `GET /metrics`. Gauges read from the store are refreshed first, so a scrape sees this
/// server's values.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.dead_letters.depth().await?;
    let body = prometheus().map(|h| {
        h.run_upkeep();
        h.render()
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body.unwrap_or_default(),
    )
        .into_response())
}
