//! One invocation: an API Gateway WebSocket event in, the core's route handler, its effects out.
//!
//! A Lambda function has no socket and no task per connection, so what the server keeps in
//! memory is read from DynamoDB per invocation: the connection's row and rooms rebuild the
//! [`Session`]; the room index answers who gets a message. The core's handlers run unchanged
//! against [`DynamoStore`] and two adapters defined here: [`CallerOutbox`] (replies, posted to
//! the caller in order) and [`InvocationRooms`] (membership is the connections table; presence
//! and commits are collected and posted when the handler returns, by [`crate::fanout`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue};
use dynamowave_core::error::{ChatError, ErrorCode};
use dynamowave_core::handlers::{self, Services, Session, send_error};
use dynamowave_core::ports::{CommitListener, Disconnected, Outbox, RoomMembership, StoreError};
use dynamowave_core::protocol::{
    ChatMessage, Identity, Member, Mode, PresenceEvent, SUBPROTOCOL_V1, ServerFrame,
};
use dynamowave_core::types::{ConnectionId, RoomId, UserName, now_ms};
use dynamowave_server::identity::{Verifier, find_token};

use crate::config::Config;
use crate::connections_api::ConnectionsApi;
use crate::dead_letters::SqsDeadLetters;
use crate::dynamo::DynamoStore;
use crate::fanout::{Fanout, PostOutcome};

/// What an execution environment keeps across invocations: clients and settings.
#[derive(Clone)]
pub struct Handler {
    dynamodb: aws_sdk_dynamodb::Client,
    api: ConnectionsApi,
    dlq: Option<SqsDeadLetters>,
    config: Arc<Config>,
    verifier: Option<Arc<Verifier>>,
}

impl Handler {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        let dlq = config
            .dlq_url
            .clone()
            .map(|url| SqsDeadLetters::new(aws_sdk_sqs::Client::new(sdk), url));
        if dlq.is_none() {
            tracing::info!("DLQ_URL is not set: posts that keep failing are logged and dropped");
        }
        let verifier = config
            .jwt_secret
            .as_ref()
            .map(|secret| Arc::new(Verifier::hs256(secret.as_bytes(), 30)));
        Handler {
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            api: ConnectionsApi::new(sdk.clone()),
            dlq,
            config: Arc::new(config),
            verifier,
        }
    }

    /// Handles one event. Errors a client caused are answered (a status on `$connect`, an
    /// `error` frame on a message); a failure of ours is returned, and API Gateway tells the
    /// client `Internal server error`.
    pub async fn handle(
        &self,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, HandlerFailure> {
        let ctx = &event.request_context;
        let id = ctx
            .connection_id
            .as_deref()
            .and_then(|id| ConnectionId::parse(id).ok())
            .ok_or(HandlerFailure::Event(
                "requestContext.connectionId is missing or invalid",
            ))?;
        let endpoint = match (&self.config.endpoint, &ctx.domain_name, &ctx.stage) {
            (Some(endpoint), _, _) => endpoint.clone(),
            (None, Some(domain), Some(stage)) => format!("https://{domain}/{stage}"),
            _ => {
                return Err(HandlerFailure::Event(
                    "requestContext lacks domainName or stage (and DYNAMOWAVE_CONNECTIONS_ENDPOINT is not set)",
                ));
            }
        };
        let invocation = Invocation::new(self, id, endpoint);
        match ctx.event_type.as_deref() {
            Some("CONNECT") => invocation.connect(&event).await,
            Some("DISCONNECT") => invocation.disconnect().await,
            Some("MESSAGE") => invocation.message(&event).await,
            _ => Err(HandlerFailure::Event(
                "requestContext.eventType is not CONNECT, MESSAGE or DISCONNECT",
            )),
        }
    }
}

/// Who a `$connect` is, and the rooms its token allows (`None`: any).
type Admitted = (UserName, Option<Vec<RoomId>>);

/// Why an invocation failed (API Gateway answers `Internal server error`).
#[derive(Debug, thiserror::Error)]
pub enum HandlerFailure {
    #[error("not an API Gateway WebSocket event: {0}")]
    Event(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<HandlerFailure> for lambda_runtime::Diagnostic {
    /// What the Runtime API's `/error` gets (and CloudWatch shows); the client only learns
    /// `Internal server error`.
    fn from(e: HandlerFailure) -> Self {
        tracing::error!(error = %e, "invocation failed");
        let kind = match e {
            HandlerFailure::Event(_) => "InvalidEvent",
            HandlerFailure::Store(_) => "StoreUnavailable",
        };
        lambda_runtime::Diagnostic {
            error_type: kind.into(),
            error_message: e.to_string(),
        }
    }
}

/// Everything one invocation touches.
struct Invocation<'a> {
    handler: &'a Handler,
    id: ConnectionId,
    effects: Arc<Effects>,
    store: DynamoStore,
    services: Services,
    fanout: Fanout,
}

impl<'a> Invocation<'a> {
    fn new(handler: &'a Handler, id: ConnectionId, endpoint: String) -> Self {
        let effects = Arc::new(Effects::default());
        let store = DynamoStore::new(
            handler.dynamodb.clone(),
            handler.config.tables.clone(),
            effects.clone(),
        );
        let fanout = Fanout {
            api: handler.api.clone(),
            dlq: handler.dlq.clone(),
            store: store.clone(),
            endpoint: endpoint.into(),
            concurrency: handler.config.fanout_concurrency,
            attempts: handler.config.post_attempts,
            backoff: handler.config.post_backoff,
        };
        let services = Services {
            log: Arc::new(store.clone()),
            connections: Arc::new(store.clone()),
            rooms: Arc::new(InvocationRooms {
                store: store.clone(),
                effects: effects.clone(),
            }),
            limits: handler.config.limits,
            // One gate per execution environment: typing is throttled per warm instance.
            typing: TYPING.clone(),
            join_gate: None,
        };
        Invocation {
            handler,
            id,
            effects,
            store,
            services,
            fanout,
        }
    }

    /// `$connect`: who the client is, its row (and the default room for compat), the chosen
    /// subprotocol. Nothing is posted: the connection does not exist until this returns.
    async fn connect(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, HandlerFailure> {
        let offered = offered_protocols(&event.headers);
        let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
        let mode = if offered.contains(&SUBPROTOCOL_V1) {
            Mode::V1
        } else {
            Mode::Compat
        };
        let query: HashMap<String, String> = event
            .query_string_parameters
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (user, rooms) = match self.admit(&event.headers, &query, &offered, mode) {
            Ok(admitted) => admitted,
            Err((code, e)) => return Ok(status(code, &e)),
        };
        let ctx = &event.request_context;
        let identity = Identity {
            source_ip: ctx.identity.source_ip.clone().unwrap_or_default(),
            user_agent: ctx.identity.user_agent.clone().unwrap_or_default(),
        };
        let mut session = Session::new(self.id.clone(), user, mode, identity);
        if ctx.connected_at > 0 {
            session.connected_at = ctx.connected_at as u64;
        }
        // The v1 hello cannot be posted yet; the first frame's invocation sends it.
        let mut discard = Discard;
        match handlers::connect::handle(&mut session, &self.services, &mut discard).await {
            Ok(()) => {}
            Err(handlers::HandlerError::Chat(e)) => return Ok(status(e.code.http_status(), &e)),
            Err(handlers::HandlerError::Disconnected) => {}
        }
        if let Some(rooms) = rooms {
            self.store.restrict_rooms(&self.id, &rooms).await?;
        }
        let mut response = ok();
        if mode == Mode::V1 {
            response.headers.insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL_V1),
            );
        }
        Ok(response)
    }

    /// As the server's `Guard::admit` without origins (API Gateway is cross-origin by design):
    /// a token when `DYNAMOWAVE_JWT_SECRET` is set, else `?name=` or a guest name.
    fn admit(
        &self,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        offered: &[&str],
        mode: Mode,
    ) -> Result<Admitted, (u16, ChatError)> {
        let Some(verifier) = &self.handler.verifier else {
            return match query.get("name") {
                Some(name) => UserName::parse(name)
                    .map(|user| (user, None))
                    .map_err(|e| (400, e)),
                None => Ok((UserName::guest(), None)),
            };
        };
        let now = now_ms() / 1000;
        let claims = find_token(headers, query, offered)
            .and_then(|token| verifier.verify(token, now))
            .map_err(|f| (401, ChatError::new(ErrorCode::Unauthorized, f.message)))?;
        let general = RoomId::default_room();
        if mode == Mode::Compat
            && let Some(rooms) = &claims.rooms
            && !rooms.contains(&general)
        {
            let e = ChatError::new(
                ErrorCode::Forbidden,
                format!(
                    "this token does not allow room {general}, and a compat connection (no \
                     {SUBPROTOCOL_V1} subprotocol) is always in {general}: connect in v1 mode"
                ),
            );
            return Err((403, e));
        }
        Ok((claims.user, claims.rooms))
    }

    /// A frame: the core's dispatch, replies posted to the caller, then the fan-out.
    async fn message(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, HandlerFailure> {
        let mut out = CallerOutbox {
            fanout: &self.fanout,
            id: self.id.clone(),
            user: None,
        };
        let Some(stored) = self.store.connection(&self.id).await? else {
            // Its $connect did not record it, or the row expired: it cannot be served.
            let e = ChatError::new(
                ErrorCode::Gone,
                "this connection is not recorded (its $connect failed or it outlived 2 hours): reconnect",
            );
            let _ = send_error(&mut out, None, &e).await;
            return Ok(ok());
        };
        out.user = Some(stored.record.user.clone());
        let mut session = Session::restore(stored.record, stored.rooms);
        if let Some(rooms) = stored.allowed_rooms {
            session.restrict_rooms(rooms);
        }
        if session.mode == Mode::V1 && !stored.greeted && self.store.mark_greeted(&self.id).await? {
            let hello = ServerFrame::Connected {
                connection_id: session.id.clone(),
                user: session.user.clone(),
                protocol: SUBPROTOCOL_V1.to_owned(),
                default_room: RoomId::default_room(),
                limits: self.services.limits,
            };
            if out.send_text(hello.to_json()).await.is_err() {
                return Ok(ok());
            }
        }
        let body = event.body.as_deref().unwrap_or("");
        if event.is_base64_encoded {
            let e = ChatError::bad_request(
                "binary frames are not supported: send JSON text frames, e.g. {\"action\":\"sendmessage\",\"message\":\"hi\"}",
            );
            let _ = send_error(&mut out, None, &e).await;
            return Ok(ok());
        }
        // A gone caller (Disconnected) still gets its committed messages fanned out.
        let _ = handlers::dispatch(&mut session, &self.services, body, &mut out).await;
        self.flush(&self.id).await;
        Ok(ok())
    }

    /// `$disconnect`: leave every room (telling the others) and delete the rows.
    async fn disconnect(&self) -> Result<ApiGatewayProxyResponse, HandlerFailure> {
        let Some(stored) = self.store.connection(&self.id).await? else {
            return Ok(ok());
        };
        let mut session = Session::restore(stored.record, stored.rooms);
        handlers::disconnect::handle(&mut session, &self.services).await?;
        self.flush(&self.id).await;
        Ok(ok())
    }

    /// Posts what the handler caused: committed messages to their rooms, then presence.
    async fn flush(&self, caller: &ConnectionId) {
        let committed = std::mem::take(&mut *lock(&self.effects.committed));
        for message in committed {
            self.fanout.message(&message).await;
        }
        let presence = std::mem::take(&mut *lock(&self.effects.presence));
        for p in presence {
            let frame = ServerFrame::Presence {
                room: p.room.clone(),
                event: p.event,
                user: p.user,
                connection_id: p.connection.clone(),
            };
            self.fanout
                .signal(&p.room, Some(caller), frame.to_json())
                .await;
        }
        let signals = std::mem::take(&mut *lock(&self.effects.signals));
        for (room, frame, except) in signals {
            self.fanout.signal(&room, except.as_ref(), frame).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ok() -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = 200;
    response
}

/// A refused `$connect`: API Gateway returns this status to the client and no socket opens.
fn status(code: u16, e: &ChatError) -> ApiGatewayProxyResponse {
    let body = serde_json::json!({"code": e.code, "message": e.message}).to_string();
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(code);
    response.body = Some(Body::Text(body));
    response
        .headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    if code == 401 {
        response.headers.insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"dynamowave\""),
        );
    }
    response
}

/// The subprotocols a `$connect` request offers, in order.
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Who had a `typing` forwarded when, shared by the invocations of this execution environment.
static TYPING: std::sync::LazyLock<Arc<dynamowave_core::handlers::typing::TypingGate>> =
    std::sync::LazyLock::new(Arc::default);

/// What a handler caused that others must hear, collected during the invocation.
#[derive(Default)]
struct Effects {
    committed: Mutex<Vec<Arc<ChatMessage>>>,
    presence: Mutex<Vec<Presence>>,
    /// Frames for the room's v1 members (read receipts, typing), but the connection given.
    signals: Mutex<Vec<(RoomId, String, Option<ConnectionId>)>>,
}

struct Presence {
    room: RoomId,
    event: PresenceEvent,
    user: UserName,
    connection: ConnectionId,
}

impl CommitListener for Effects {
    fn committed(&self, messages: &[Arc<ChatMessage>]) {
        lock(&self.committed).extend_from_slice(messages);
    }
}

/// Membership as the handlers see it on AWS: the connections table is the index (the store's
/// `add_membership` writes it), so join and leave have nothing more to do.
struct InvocationRooms {
    store: DynamoStore,
    effects: Arc<Effects>,
}

#[async_trait]
impl RoomMembership for InvocationRooms {
    fn join(&self, _: &ConnectionId, _: &RoomId) {}

    fn leave(&self, _: &ConnectionId, _: &RoomId) {}

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, StoreError> {
        Ok(self
            .store
            .room_members(room)
            .await?
            .into_iter()
            .map(|m| Member {
                connection_id: m.connection_id,
                user: m.user,
                last_read: dynamowave_core::Seq::ZERO,
            })
            .collect())
    }

    fn presence(
        &self,
        room: &RoomId,
        event: PresenceEvent,
        user: &UserName,
        connection: &ConnectionId,
    ) {
        lock(&self.effects.presence).push(Presence {
            room: room.clone(),
            event,
            user: user.clone(),
            connection: connection.clone(),
        });
    }

    fn signal(&self, room: &RoomId, frame: &str, except: Option<&ConnectionId>) {
        lock(&self.effects.signals).push((room.clone(), frame.to_owned(), except.cloned()));
    }
}

/// Replies to the caller, posted at once and in order (each waits for the previous one).
struct CallerOutbox<'a> {
    fanout: &'a Fanout,
    id: ConnectionId,
    user: Option<UserName>,
}

#[async_trait]
impl Outbox for CallerOutbox<'_> {
    async fn send_text(&mut self, text: String) -> Result<(), Disconnected> {
        let user = self.user.as_ref().map(UserName::as_str);
        match self.fanout.post(&self.id, user, text.as_bytes()).await {
            PostOutcome::Gone => Err(Disconnected),
            PostOutcome::Delivered | PostOutcome::DeadLettered => Ok(()),
        }
    }
}

/// `$connect`'s outbox: nothing can be posted to a connection that is still being accepted.
struct Discard;

#[async_trait]
impl Outbox for Discard {
    async fn send_text(&mut self, _: String) -> Result<(), Disconnected> {
        Ok(())
    }
}
