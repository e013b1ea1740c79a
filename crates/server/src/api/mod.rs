//! The management API: API Gateway's `@connections` calls, the room endpoints and the
//! dead-letter queue (docs/openapi.yaml describes them). Every route is behind [`auth::require_admin`].

pub mod auth;
pub mod connections;
pub mod dlq;
pub mod rooms;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dynamowave_core::ChatError;

use crate::app::AppState;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/@connections/{id}",
            post(connections::post)
                .get(connections::get)
                .delete(connections::delete),
        )
        .route(
            "/rooms/{room}/messages",
            post(rooms::post_message).get(rooms::list_messages),
        )
        .route(
            "/rooms/{room}/messages/{seq}",
            axum::routing::delete(rooms::delete_message),
        )
        .route("/rooms/{room}/members", get(rooms::members))
        .route("/dlq", get(dlq::list).delete(dlq::purge))
        .route("/dlq/replay", post(dlq::replay_all))
        .route("/dlq/{id}", get(dlq::show).delete(dlq::purge_one))
        .route("/dlq/{id}/replay", post(dlq::replay))
        .route("/metrics", get(crate::telemetry::metrics))
        .route_layer(middleware::from_fn_with_state(state, auth::require_admin))
}

/// A [`ChatError`] as an HTTP response: the status its code maps to, and
/// `{"code": "...", "message": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub ChatError);

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        ApiError(e)
    }
}

impl From<dynamowave_core::ports::StoreError> for ApiError {
    fn from(e: dynamowave_core::ports::StoreError) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({ "code": self.0.code, "message": self.0.message });
        if let Some(ms) = self.0.retry_after_ms {
            body["retryAfterMs"] = ms.into();
        }
        (status, Json(body)).into_response()
    }
}

/// Reads a request body up to `limit` bytes, answering 413 with the limit when it is larger.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError(ChatError::too_large(format!(
            "the body is larger than {limit} bytes (max-message-bytes)"
        )))
    })
}
