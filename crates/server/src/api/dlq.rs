//! `/dlq/...`: list, show, replay and purge dead letters (see [`crate::dlq`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dynamowave_core::ports::Purge;
use dynamowave_core::{ChatError, ConnectionId, ErrorCode};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::app::AppState;
use crate::dlq::{ReplayError, Replayed};

/// Most entries one `GET /dlq` returns.
const MAX_PAGE: usize = 1000;
/// `POST /dlq/{id}/replay`'s body is at most `{"connectionId": "..."}`.
const REPLAY_BODY_LIMIT: usize = 4096;

fn id_of(raw: &str) -> Result<u64, ApiError> {
    raw.parse().ok().filter(|&id| id > 0).ok_or_else(|| {
        ApiError(ChatError::bad_request(format!(
            "a dead letter id is a positive integer, got {raw:?}"
        )))
    })
}

/// Which entries a list or purge is about.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Which {
    Pending,
    Replayed,
    All,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    after: Option<u64>,
    limit: Option<usize>,
    state: Option<Which>,
}

/// `GET /dlq?after=&limit=&state=pending|all`: entries oldest first, with the depth.
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let pending_only = match params.state.unwrap_or(Which::All) {
        Which::Pending => true,
        Which::All => false,
        Which::Replayed => {
            return Err(ChatError::bad_request(
                "`state` lists `pending` or `all` entries (replayed ones show in `all`)",
            )
            .into());
        }
    };
    let dlq = &state.dead_letters;
    let mut entries = dlq
        .list(params.after.unwrap_or(0), limit + 1, pending_only)
        .await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let depth = dlq.depth().await?;
    Ok(Json(json!({ "depth": depth, "entries": entries, "more": more })).into_response())
}

/// `GET /dlq/{id}`.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    match state.dead_letters.get(id).await? {
        Some(entry) => Ok(Json(entry).into_response()),
        None => Err(ChatError::not_found(format!("dead letter {id} does not exist")).into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReplayBody {
    /// Deliver to this connection instead of the original one.
    connection_id: Option<String>,
}

/// `POST /dlq/{id}/replay`, optionally `{"connectionId": "..."}`.
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    let bytes = axum::body::to_bytes(body, REPLAY_BODY_LIMIT)
        .await
        .map_err(|_| {
            ChatError::too_large(format!(
                "the body is larger than {REPLAY_BODY_LIMIT} bytes; it only names a connection"
            ))
        })?;
    let req: ReplayBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ChatError::bad_request(format!(
                "the body is empty or JSON like {{\"connectionId\":\"...\"}}: {e}"
            ))
        })?
    };
    let to = req
        .connection_id
        .map(|c| ConnectionId::parse(&c))
        .transpose()?;
    match state.dead_letters.replay(id, to).await {
        Ok(Replayed::Delivered { to }) => {
            Ok(Json(json!({ "id": id, "replayed": true, "to": to })).into_response())
        }
        Ok(Replayed::Already { at, to }) => Ok(Json(
            json!({ "id": id, "replayed": false, "alreadyReplayedAt": at, "to": to }),
        )
        .into_response()),
        Err(e) => Err(replay_error(e)),
    }
}

fn replay_error(e: ReplayError) -> ApiError {
    let message = e.to_string();
    ApiError(match e {
        ReplayError::NotFound(_) => ChatError::not_found(message),
        ReplayError::Gone(_) => ChatError::new(ErrorCode::Gone, message),
        ReplayError::Full(_) => {
            ChatError::new(ErrorCode::Unavailable, message).with_retry_after(1000)
        }
        ReplayError::NotForAConnection(_) => ChatError::bad_request(message),
        ReplayError::NoWebhook(_) => ChatError::new(ErrorCode::Unavailable, message),
        ReplayError::Webhook(..) => {
            ChatError::new(ErrorCode::Unavailable, message).with_retry_after(1000)
        }
        ReplayError::Store(e) => e.into(),
    })
}

/// `POST /dlq/replay`: replays every pending entry to its original connection.
pub async fn replay_all(State(state): State<AppState>) -> Result<Response, ApiError> {
    let dlq = &state.dead_letters;
    let (mut replayed, mut failed, mut after) = (0u64, 0u64, 0u64);
    loop {
        let page = dlq.list(after, MAX_PAGE, true).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for entry in page {
            match dlq.replay(entry.id, None).await {
                Ok(Replayed::Delivered { .. }) => replayed += 1,
                Ok(Replayed::Already { .. }) | Err(ReplayError::NotFound(_)) => {}
                Err(
                    ReplayError::Gone(_)
                    | ReplayError::Full(_)
                    | ReplayError::NoWebhook(_)
                    | ReplayError::Webhook(..),
                ) => failed += 1,
                Err(ReplayError::NotForAConnection(_)) => {}
                Err(ReplayError::Store(e)) => return Err(e.into()),
            }
        }
    }
    let depth = dlq.depth().await?;
    Ok(Json(json!({ "replayed": replayed, "failed": failed, "depth": depth })).into_response())
}

/// `DELETE /dlq/{id}`.
pub async fn purge_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    match state.dead_letters.purge(Purge::One(id)).await? {
        0 => Err(ChatError::not_found(format!("dead letter {id} does not exist")).into()),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeParams {
    state: Option<Which>,
}

/// `DELETE /dlq?state=replayed|all`: the state is required, so a bare DELETE purges nothing.
pub async fn purge(
    State(state): State<AppState>,
    Query(params): Query<PurgeParams>,
) -> Result<Response, ApiError> {
    let which = match params.state {
        Some(Which::Replayed) => Purge::Replayed,
        Some(Which::All) => Purge::All,
        Some(Which::Pending) | None => {
            return Err(ChatError::bad_request(
                "say which entries to purge: ?state=replayed or ?state=all",
            )
            .into());
        }
    };
    let purged = state.dead_letters.purge(which).await?;
    let depth = state.dead_letters.depth().await?;
    Ok(Json(json!({ "purged": purged, "depth": depth })).into_response())
}
