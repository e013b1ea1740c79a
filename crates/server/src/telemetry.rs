//! `GET /metrics`: Prometheus text exposition through the `metrics` crates.
//!
//! The recorder is process-global (the `metrics` macros write to it from anywhere), so it is
//! installed once; several servers in one process (tests) share it.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::api::ApiError;
use crate::app::AppState;

/// The installed recorder's handle; `None` when another recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match builder().install_recorder() {
            Ok(handle) => {
                metrics::gauge!("dynamowave_build_info", "version" => env!("CARGO_PKG_VERSION"))
                    .set(1.0);
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .as_ref()
}

/// Bucket bounds of the `*_seconds` histograms: 0.5 ms to 2.5 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bucket bounds of `dynamowave_store_batch_size` (the writer takes at most 1024 commands).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The recorder's settings: histograms render as Prometheus histograms (`_bucket{le=...}`),
/// not summaries.
fn builder() -> PrometheusBuilder {
    let buckets = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("dynamowave_store_batch_size".into()),
                BATCH_BUCKETS,
            )
        });
    // Only an empty bucket list is an error, and these are constants.
    buckets.unwrap_or_else(|_| PrometheusBuilder::new())
}

/// `GET /metrics`. Gauges read from the store are refreshed first, so a scrape sees this
/// server's values.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.dead_letters.depth().await?;
    // Sampled here rather than counted on the fan-out path (see `crate::instruments`).
    crate::instruments::instruments()
        .outbound_queue_depth
        .set(state.hub.queued_entries() as f64);
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
