//! `/rooms/{room}/...`: server-side publish into the same log (same seq, same fan-out), history,
//! deletion (the author's `delete` entry, as from the socket) and members.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dynamowave_core::ports::{Deletion, NewEvent, NewMessage, StoreError};
use dynamowave_core::protocol::{EntryEvent, HistoryQuery};
use dynamowave_core::types::MAX_MESSAGE_ID_LEN;
use dynamowave_core::types::random_token;
use dynamowave_core::{ChatError, RoomId, Seq, UserName};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, read_body};
use crate::app::AppState;

/// The body of `POST /rooms/{room}/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    data: String,
    id: Option<String>,
    user: Option<String>,
}

pub async fn post_message(
    State(state): State<AppState>,
    Path(room): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(&room)?;
    let bytes = read_body(body, state.config.max_message_bytes).await?;
    let req: PostMessage = serde_json::from_slice(&bytes).map_err(|e| {
        ChatError::bad_request(format!(
            "the body must be JSON like {{\"data\":\"hello\",\"id\":\"optional-key\",\"user\":\"optional-name\"}}: {e}"
        ))
    })?;
    if let Some(id) = &req.id
        && (id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN)
    {
        return Err(ChatError::bad_request(format!(
            "`id` must be 1 to {MAX_MESSAGE_ID_LEN} bytes long"
        ))
        .into());
    }
    let user = UserName::parse(req.user.as_deref().unwrap_or("server"))?;
    let appended = state
        .services
        .log
        .append(NewMessage::message(
            room,
            req.id.unwrap_or_else(|| random_token(16)),
            user,
            req.data,
        ))
        .await?;
    let m = &appended.message;
    let status = if appended.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({ "room": m.room, "seq": m.seq, "id": m.id, "ts": m.ts, "duplicate": appended.duplicate });
    Ok((status, Json(body)).into_response())
}

/// Query of `GET /rooms/{room}/messages`; numbers are parsed here to say which one is wrong.
#[derive(Deserialize)]
pub struct HistoryParams {
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

fn number(name: &str, value: Option<&str>) -> Result<Option<u64>, ChatError> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ChatError::bad_request(format!(
                    "`{name}` must be a non-negative integer, got {v:?}"
                ))
            })
        })
        .transpose()
}

pub async fn list_messages(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(&room)?;
    let query = HistoryQuery::from_params(
        number("before", params.before.as_deref())?,
        number("after", params.after.as_deref())?,
        number("limit", params.limit.as_deref())?,
    )?;
    let log = &state.services.log;
    if log.head(&room).await?.is_none() {
        return Err(ChatError::not_found(format!("room {room} does not exist")).into());
    }
    let page = log.read(&room, query).await?;
    Ok(Json(json!({ "room": room, "messages": page.messages, "more": page.more })).into_response())
}

/// `DELETE /rooms/{room}/messages/{seq}`: deletes the message as its author would from the
/// socket: a `delete` entry in the room's log, so members get `deleted`, resumes replay it and
/// the product's backend gets a `delete` webhook. The row and the deletion time stay for
/// point-in-time restore. Deleting again answers the first deletion's time.
pub async fn delete_message(
    State(state): State<AppState>,
    Path((room, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(&room)?;
    let seq = match number("seq", Some(&seq))? {
        Some(n) if n > 0 => Seq(n),
        _ => return Err(ChatError::bad_request("`seq` must be a positive integer").into()),
    };
    let log = &state.services.log;
    let live = log
        .read(
            &room,
            HistoryQuery::After {
                seq: Seq(seq.0 - 1),
                limit: 1,
            },
        )
        .await?
        .messages
        .into_iter()
        .find(|m| m.seq == seq);
    if let Some(message) = live {
        let entry = NewMessage {
            room: room.clone(),
            // One id per message: two DELETEs at once make one entry.
            id: format!("api-delete-{seq}"),
            user: message.user.clone(),
            data: String::new(),
            event: Some(NewEvent::Delete { target: seq }),
        };
        match log.append(entry).await {
            Ok(done)
                if matches!(done.message.event.as_deref(),
                    Some(EntryEvent::Delete { target }) if *target == seq) =>
            {
                return Ok(deleted(&room, seq, done.message.ts, done.duplicate));
            }
            // The author had used that id for something else, the message was deleted in
            // between, or the store keeps no event entries: the tombstone
            // below still deletes it, or says when it was.
            Ok(_) | Err(StoreError::Refused(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (at, already) = match log.delete(&room, seq).await? {
        Deletion::Deleted { at } => (at, false),
        Deletion::AlreadyDeleted { at } => (at, true),
        Deletion::NotFound => {
            return Err(ChatError::not_found(format!("room {room} has no message {seq}")).into());
        }
    };
    Ok(deleted(&room, seq, at, already))
}

fn deleted(room: &RoomId, seq: Seq, at: u64, already: bool) -> Response {
    let body = json!({ "room": room, "seq": seq, "deletedAt": at, "alreadyDeleted": already });
    Json(body).into_response()
}

pub async fn members(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(&room)?;
    if state.services.log.head(&room).await?.is_none() {
        return Err(ChatError::not_found(format!("room {room} does not exist")).into());
    }
    let members = state.services.rooms.members(&room).await?;
    Ok(Json(json!({ "room": room, "members": members })).into_response())
}
