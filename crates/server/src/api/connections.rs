//! `/@connections/{id}`, as API Gateway's management API: post to a connection, describe it,
//! or close it. An id that is not connected answers 410 Gone.
//!
//! The id is looked up in this node's hub first; in a cluster (`AppState::peers`) an id the hub
//! does not have is asked of the other nodes, and their answer is this one's.

use axum::Json;
use axum::body::Body;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dynamowave_core::ports::{DeadLetterKind, NewDeadLetter, PostError};
use dynamowave_core::{ChatError, ConnectionId, ErrorCode};
use serde_json::json;

use super::{ApiError, read_body};
use crate::app::AppState;
use crate::hub::SendError;

fn gone(id: &str) -> ApiError {
    ApiError(ChatError::new(
        ErrorCode::Gone,
        format!("connection {id} is not connected"),
    ))
}

fn full(id: &str) -> ApiError {
    ApiError(
        ChatError::new(
            ErrorCode::Unavailable,
            format!("connection {id} is not reading (its outbound queue is full); try later"),
        )
        .with_retry_after(1000),
    )
}

/// `POST /@connections/{id}`: the body, as one text frame. A payload for a connection that is
/// gone is dead-lettered (the 410 names the entry); one accepted here and not delivered before
/// the connection ends is dead-lettered by the connection's task.
pub async fn post(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    // A malformed id was never a connection: nothing to keep.
    let parsed = ConnectionId::parse(&id).map_err(|_| gone(&id))?;
    let bytes = read_body(body, state.config.max_message_bytes).await?;
    let text = Utf8Bytes::try_from(bytes).map_err(|_| {
        ChatError::bad_request("the body must be UTF-8 text; it is sent as one text frame")
    })?;
    let Some(handle) = state.hub.connection(&parsed) else {
        let Some(peers) = &state.peers else {
            return dead_letter_gone(&state, &id, text).await;
        };
        return match peers.post(&parsed, text.as_str().to_owned()).await? {
            Ok(()) => Ok(StatusCode::OK.into_response()),
            Err(PostError::Full) => Err(full(&id)),
            Err(PostError::Gone) => dead_letter_gone(&state, &id, text).await,
        };
    };
    match handle.post(text.as_str()) {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        Err(SendError::Gone) => dead_letter_gone(&state, &id, text).await,
        Err(SendError::Full) => Err(full(&id)),
    }
}

/// 410 Gone, after keeping the payload as a dead letter (docs/reliability.md).
async fn dead_letter_gone(
    state: &AppState,
    id: &str,
    payload: Utf8Bytes,
) -> Result<Response, ApiError> {
    let entry = NewDeadLetter {
        kind: DeadLetterKind::PostToConnection,
        target: id.to_owned(),
        user: None,
        reason: "gone: the connection was not connected when the post arrived".to_owned(),
        payload: payload.as_str().into(),
    };
    let dead_letter = state.dead_letters.add(entry).await?;
    let body = json!({
        "code": ErrorCode::Gone,
        "message": format!("connection {id} is not connected; the payload is kept as dead letter {dead_letter}"),
        "deadLetterId": dead_letter,
    });
    Ok((StatusCode::GONE, Json(body)).into_response())
}

/// `GET /@connections/{id}`: API Gateway's fields, then who and how
/// ([`dynamowave_core::ports::ConnectionDescription`]).
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let parsed = ConnectionId::parse(&id).map_err(|_| gone(&id))?;
    let description = match state.hub.connection(&parsed) {
        Some(h) => h.describe(),
        None => match &state.peers {
            Some(peers) => peers.describe(&parsed).await?.ok_or_else(|| gone(&id))?,
            None => return Err(gone(&id)),
        },
    };
    Ok(Json(description).into_response())
}

/// `DELETE /@connections/{id}`: closes the socket with 1000.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const CODE: u16 = 1000;
    const REASON: &str = "closed by the management API";
    let parsed = ConnectionId::parse(&id).map_err(|_| gone(&id))?;
    match state.hub.connection(&parsed) {
        Some(h) => {
            h.close(CODE, REASON);
        }
        None => match &state.peers {
            Some(peers) if peers.close(&parsed, CODE, REASON).await? => {}
            _ => return Err(gone(&id)),
        },
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
