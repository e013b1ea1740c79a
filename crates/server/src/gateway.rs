//! `GET /ws`: the WebSocket gateway.
//!
//! [`upgrade`] decides who the client is and which protocol it speaks, then hands the socket to
//! [`serve_connection`], one task per connection, which
//! - reads frames and runs them through the core's [`dispatch`] (replies are written in order);
//! - drains the connection's bounded outbound queue (fan-out) to the socket: the frames are
//!   encoded already (`crate::wire`), and everything queued leaves in one write;
//! - closes with the right code when asked (slow consumer, `DELETE /@connections`, shutdown,
//!   oversized frames) and runs `$disconnect` however it ends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dynamowave_core::error::close_code;
use dynamowave_core::handlers::{
    HandlerError, PendingSend, Session, connect, disconnect, dispatch_ahead, send_error, settle,
};
use dynamowave_core::ports::{
    DeadLetterKind, Disconnected, GateEvent, GateRequest, NewDeadLetter, Outbox,
};
use dynamowave_core::protocol::{Identity, Mode, SUBPROTOCOL_V1};
use dynamowave_core::types::now_ms;
use dynamowave_core::{ChatError, ConnectionId, RoomId, Seq};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::api::ApiError;
use crate::app::AppState;
use crate::hub::{ConnectionHandle, Outgoing, Posted};
use crate::instruments::instruments;
use crate::limits::{ConnectionPermit, FrameGate, Verdict, frame_id};
use crate::upgrade::{Handshake, Socket, requested_protocols};
use crate::wire::{self, FrameWriter};

/// Queue items (a room's commit each, or a direct frame) gathered into one write when the
/// outbound queue has a backlog.
const WRITE_BATCH: usize = 64;
/// tungstenite's read buffer per connection, allocated at the upgrade.
const READ_BUFFER_BYTES: usize = 256;
/// A handler's replies (a long replay) are written out once this much is buffered.
const WRITE_AHEAD_BYTES: usize = 64 * 1024;
/// Sends a connection may have queued to the log and not committed yet; past this the
/// connection reads no more frames until the oldest commits (backpressure on the client).
const MAX_SENDS_IN_FLIGHT: usize = 32;
/// How long a closing connection waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Takes the WebSocket upgrade. A browser's `Origin` must be allowed, then the client is who its
/// token says (`auth = jwt`) or who `?name=` says (a guest name otherwise; `auth = none`), all
/// before the upgrade (`crate::identity`); offering the `dynamowave.v1` subprotocol selects v1
/// mode, anything else is compat mode. Only `dynamowave.v1` is ever selected, never a token.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Handshake,
) -> Response {
    if *state.shutting_down.borrow() {
        return ApiError(ChatError::new(
            dynamowave_core::ErrorCode::Unavailable,
            "the server is shutting down; reconnect in a moment",
        ))
        .into_response();
    }
    // Connection caps and the per-IP rate first: an attempt refused later (origin, token)
    // still spends its token. The permit gives the counts back when dropped, however the
    // connection ends (or the upgrade fails).
    let permit = match state.limiter.admit(peer.ip()) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    let mode = if requested_protocols(&headers).any(|p| p == SUBPROTOCOL_V1) {
        Mode::V1
    } else {
        Mode::Compat
    };
    // The origin check, then who the client is: a verified token (auth = jwt) or `?name=`.
    let offered: Vec<&str> = requested_protocols(&headers).collect();
    let admitted = match state.guard.admit(&headers, &params, &offered, mode) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let identity = Identity {
        source_ip: peer.ip().to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    };
    let mut session = Session::new(ConnectionId::generate(), admitted.user, mode, identity);
    if let Some(rooms) = admitted.rooms {
        session.restrict_rooms(rooms);
    }
    // The product's backend may refuse the connection (`--join-hook-on-connect`): a 403 with
    // its reason, before the upgrade, as API Gateway refuses a `$connect`.
    if let Some(gate) = state
        .services
        .join_gate
        .as_ref()
        .filter(|g| g.checks_connect())
        && let Err(refusal) = gate
            .check(GateRequest {
                event: GateEvent::Connect,
                room: None,
                user: &session.user,
                connection: &session.id,
                source_ip: &session.identity.source_ip,
            })
            .await
    {
        return ApiError(refusal).into_response();
    }
    let config = &state.config;
    let socket_config = WebSocketConfig::default()
        .max_frame_size(Some(config.max_frame_bytes))
        .max_message_size(Some(config.max_message_bytes))
        // A small read buffer keeps idle connections cheap (it grows for large messages), and
        // tungstenite zeroes it on every read attempt, once per loop iteration here. 256 bytes
        // hold a chat frame; a client sending many at once takes a few more reads.
        .read_buffer_size(READ_BUFFER_BYTES);
    // Only dynamowave.v1 is ever selected, never a token.
    let protocol = (mode == Mode::V1).then_some(SUBPROTOCOL_V1);
    ws.accept(protocol, socket_config, move |socket| {
        serve_connection(socket, state, session, permit)
    })
}

/// Writes to the socket for the handlers and the fan-out. Frames are gathered in `frames` and
/// leave in one write per [`flush`](Self::flush); the loop flushes once per wake-up.
struct SocketOutbox {
    socket: Socket,
    /// The fan-out's queue for this connection (the hub holds the sender).
    outbound: mpsc::Receiver<Outgoing>,
    frames: FrameWriter,
    write_timeout: Duration,
    /// Posted payloads fed since the last successful flush: not known to be written yet, so
    /// dead-lettered if the connection ends now. Empty (no allocation) for chat traffic.
    unflushed_posts: Vec<String>,
    /// Room messages fed since the last successful flush, and the commit time of the oldest:
    /// counted and sampled once per flush (`crate::instruments`), not per frame.
    unflushed_live: u64,
    oldest_live: Option<std::time::Instant>,
    /// For the "connection closed" log line: text and binary frames read, frames written.
    frames_in: u64,
    frames_out: u64,
    /// How the connection was closed, when known: `(by, code, reason)`, `by` the server or the
    /// client. A client's reason is not kept (it is the client's text).
    closed_with: Option<(&'static str, u16, String)>,
}

impl SocketOutbox {
    /// Gathers a queued item's frames for the next flush: of a room's commit, the messages this
    /// connection has not had (a replay may have sent some); posted payloads are remembered
    /// until a flush succeeds.
    fn feed_item(&mut self, session: &mut Session, item: Outgoing) {
        match item {
            Outgoing::Live(batch) => {
                if let Some(delivered) = session.accept_live_run(&batch.room, batch.last_seq()) {
                    let (frames, count) = batch.frames_after(session.mode, delivered);
                    self.frames.push(frames);
                    self.frames_out += count as u64;
                    self.unflushed_live += count as u64;
                    self.oldest_live.get_or_insert(batch.committed_at);
                }
            }
            Outgoing::Direct(frame) => {
                self.frames.push(Bytes::clone(&frame));
                self.frames_out += 1;
            }
            Outgoing::Posted(posted) => {
                let Posted { text, frame } = *posted;
                self.frames.push(frame);
                self.unflushed_posts.push(text);
                self.frames_out += 1;
            }
        }
    }

    /// Writes everything gathered, in one `writev` where it fits.
    async fn flush(&mut self) -> Result<(), Disconnected> {
        let (socket, frames) = (&mut self.socket, &mut self.frames);
        let write = async {
            // tungstenite may hold a pong or a close reply: it leaves whole first, so that no
            // frame of ours can split it.
            socket.flush().await.map_err(drop)?;
            frames.write_to(socket.get_mut()).await.map_err(drop)
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => {
                self.unflushed_posts.clear();
                if let Some(oldest) = self.oldest_live.take() {
                    instruments().delivered(std::mem::take(&mut self.unflushed_live), oldest);
                }
                Ok(())
            }
            _ => Err(Disconnected),
        }
    }

    async fn ping(&mut self) -> Result<(), Disconnected> {
        match tokio::time::timeout(
            self.write_timeout,
            self.socket.send(Message::Ping(Default::default())),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(Disconnected),
        }
    }

    /// Sends a close frame, then reads until the client answers it (or [`CLOSE_LINGER`]).
    /// Reading what the client still had in flight matters: closing a TCP socket with unread
    /// input makes the kernel send a reset, and the client would lose the close frame.
    async fn close(&mut self, code: u16, reason: &str) {
        self.closed_with = Some(("server", code, reason.to_owned()));
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let sent = tokio::time::timeout(
            self.write_timeout,
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                while let Some(Ok(frame)) = self.socket.next().await {
                    if matches!(frame, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

#[async_trait]
impl Outbox for SocketOutbox {
    async fn send_text(&mut self, text: String) -> Result<(), Disconnected> {
        self.frames.push(wire::text_frame(&text));
        self.frames_out += 1;
        // A long reply (a replay of many pages) is written as it goes, not held whole.
        if self.frames.buffered() >= WRITE_AHEAD_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Once the queue is half full: takes everything queued, writes what is for other rooms
    /// (and direct frames), and drops `room`'s live messages, which the replay reads from the
    /// log instead (the last seq dropped is returned). A busy room then cannot overflow the
    /// queue of a connection that is catching up on it, however long the replay.
    async fn pace_replay(
        &mut self,
        session: &mut Session,
        room: &RoomId,
    ) -> Result<Option<Seq>, Disconnected> {
        if self.outbound.len() < self.outbound.max_capacity() / 2 {
            return Ok(None);
        }
        let mut dropped = None;
        while let Ok(item) = self.outbound.try_recv() {
            match item {
                Outgoing::Live(batch) if batch.room == *room => {
                    dropped = Some(batch.last_seq());
                }
                item => self.feed_item(session, item),
            }
        }
        self.flush().await?;
        Ok(dropped)
    }
}

/// True when a read error is tungstenite refusing a frame or message over the limits.
fn is_too_large(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Capacity(_))
}

/// One connection's task: `$connect`, the read/write loop, `$disconnect`. `permit` is the
/// connection's share of the connection caps, given back when this returns.
///
/// Written as a function returning an `async move` block rather than an `async fn`: an async
/// fn moves its arguments into locals and keeps both copies in the task for its whole life
/// (rust-lang/rust#62958), which idle connections would pay for (the socket alone is ~370 bytes).
pub fn serve_connection(
    socket: Socket,
    state: AppState,
    mut session: Session,
    permit: ConnectionPermit,
) -> impl Future<Output = ()> + Send {
    let (queue, outbound) = mpsc::channel(state.config.outbound_queue);
    let handle = Arc::new(ConnectionHandle::new(&session, queue));
    state.hub.register(handle.clone());
    let mut shutting_down = state.shutting_down.clone();
    let mut out = SocketOutbox {
        socket,
        outbound,
        frames: FrameWriter::default(),
        write_timeout: state.config.write_timeout(),
        unflushed_posts: Vec::new(),
        unflushed_live: 0,
        oldest_live: None,
        frames_in: 0,
        frames_out: 0,
        closed_with: None,
    };
    async move {
        // dynamowave_connects_total now, dynamowave_disconnects_total when dropped.
        let _open = instruments().connection_opened(session.mode);
        let services = &state.services;
        let opened = std::time::Instant::now();
        tracing::info!(
            connection = %session.id,
            user = %session.user,
            mode = session.mode.as_str(),
            source_ip = %session.identity.source_ip,
            "connection opened"
        );

        // `$connect` and `$disconnect` run on their own budget (connect-concurrency), never behind
        // frame handling.
        let connected = {
            let _reserved = state.limiter.connect_permit().await;
            // Boxed, as are the other steps run once: only the loop's state stays for the
            // connection's life.
            Box::pin(connect::handle(&mut session, services, &mut out)).await
        };
        match connected {
            Ok(()) if out.flush().await.is_ok() => {
                if *shutting_down.borrow() {
                    out.close(close_code::GOING_AWAY, "server shutting down")
                        .await;
                } else {
                    read_write_loop(&mut session, &state, &handle, &mut out, &mut shutting_down)
                        .await;
                }
            }
            Ok(()) | Err(HandlerError::Disconnected) => {}
            Err(HandlerError::Chat(e)) => {
                tracing::warn!(connection = %session.id, error = %e, "$connect failed");
                let _ = send_error(&mut out, None, &e).await;
                out.close(
                    e.code.close_code(),
                    "could not register the connection; try again",
                )
                .await;
            }
        }

        Box::pin(dead_letter_unsent(&state, &handle, &mut out)).await;
        let disconnected = {
            let _reserved = state.limiter.connect_permit().await;
            Box::pin(disconnect::handle(&mut session, services)).await
        };
        if let Err(e) = disconnected {
            // The row is purged at the next start; nothing else depends on it.
            tracing::warn!(connection = %session.id, error = %e, "$disconnect could not delete the row");
        }
        state.hub.unregister(&session.id);
        drop(permit);
        // Never the frames' contents: ids, counts and the close code only.
        let (closed_by, close_code, close_reason) = match &out.closed_with {
            Some((by, code, reason)) => (*by, Some(*code), reason.as_str()),
            // No close frame either way: the socket ended, or a write or ping failed.
            None => ("none", None, ""),
        };
        tracing::info!(
            connection = %session.id,
            user = %session.user,
            duration_ms = opened.elapsed().as_millis() as u64,
            closed_by,
            close_code,
            close_reason,
            frames_in = out.frames_in,
            frames_out = out.frames_out,
            "connection closed"
        );
    }
}

/// Dead-letters the posted payloads this connection accepted and did not deliver: those not
/// known to be flushed, and those still queued. Closing the queue first means no post can be
/// accepted after this look.
async fn dead_letter_unsent(state: &AppState, handle: &ConnectionHandle, out: &mut SocketOutbox) {
    out.outbound.close();
    let mut unsent = std::mem::take(&mut out.unflushed_posts);
    while let Ok(item) = out.outbound.try_recv() {
        if let Outgoing::Posted(posted) = item {
            unsent.push(posted.text);
        }
    }
    if unsent.is_empty() {
        return;
    }
    let reason = match handle.close_requested() {
        Some((code, reason)) => format!("connection closed ({code}: {reason}) before delivery"),
        None => "connection ended before delivery".to_owned(),
    };
    for payload in unsent {
        let entry = NewDeadLetter {
            kind: DeadLetterKind::PostToConnection,
            target: handle.id.as_str().to_owned(),
            user: Some(handle.user.as_str().to_owned()),
            reason: reason.clone(),
            payload: payload.as_str().into(),
        };
        // Logged inside; nothing more to do here when even that fails.
        let _ = state.dead_letters.add(entry).await;
    }
}

/// Writes everything already queued (at shutdown or a requested close), the acks of the sends
/// in flight first.
async fn drain(
    session: &mut Session,
    out: &mut SocketOutbox,
    in_flight: &mut VecDeque<PendingSend>,
) -> Result<(), Disconnected> {
    settle(in_flight, out).await?;
    while let Ok(item) = out.outbound.try_recv() {
        out.feed_item(session, item);
        // A long backlog is written as it goes.
        if out.frames.buffered() >= WRITE_AHEAD_BYTES {
            out.flush().await?;
        }
    }
    out.flush().await
}

/// Closes as asked: with what is queued delivered first, unless the queue is the problem.
async fn close_on_request(
    session: &mut Session,
    out: &mut SocketOutbox,
    in_flight: &mut VecDeque<PendingSend>,
    code: u16,
    reason: &str,
) {
    if code != close_code::TRY_AGAIN_LATER && drain(session, out, in_flight).await.is_err() {
        return;
    }
    out.close(code, reason).await;
}

async fn read_write_loop(
    session: &mut Session,
    state: &AppState,
    handle: &ConnectionHandle,
    out: &mut SocketOutbox,
    shutting_down: &mut tokio::sync::watch::Receiver<bool>,
) {
    let services = &state.services;
    // Created once, not per iteration: each creation would register a new waiter.
    let closed = handle.closed();
    let stopping = shutting_down.changed();
    let config = &state.config;
    let max_age = tokio::time::sleep(Duration::from_millis(config.max_connection_ms));
    tokio::pin!(closed, stopping, max_age);
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + config.ping_interval(),
        config.ping_interval(),
    );
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The connection's frame rate (messages-per-second): one atomic and a strike count.
    let mut gate: FrameGate = state.limiter.frame_gate();
    let frames_received = instruments().frames_received(session.mode);
    // Sends queued to the log, oldest first (`dispatch_ahead`).
    let mut in_flight: VecDeque<PendingSend> = VecDeque::new();
    loop {
        // A close requested while this task was busy (say, a slow consumer blocked in a write)
        // goes before anything else; select! alone would pick among ready branches at random.
        if let Some((code, reason)) = handle.close_requested() {
            Box::pin(close_on_request(
                session,
                out,
                &mut in_flight,
                code,
                &reason,
            ))
            .await;
            return;
        }
        // Biased, in this order: a wake-up for the fan-out (the common one) polls two branches,
        // not half of seven. Writing comes before reading: a client that sends without pause
        // must not keep its own queue from draining (it would be closed with 1013); its frames
        // wait in TCP instead, which is backpressure. Each write takes everything queued, so
        // reading comes next unless more was committed meanwhile. Closes and shutdown are also
        // seen at the top of the loop.
        tokio::select! {
            biased;
            committed = async { in_flight.front_mut().expect("not empty").commit().as_mut().await }, if !in_flight.is_empty() => {
                let sent = in_flight.pop_front().expect("not empty");
                if sent.finish(committed, out).await.is_err() || out.flush().await.is_err() {
                    return;
                }
            }
            item = out.outbound.recv() => {
                let Some(item) = item else { return };
                out.feed_item(session, item);
                // Whatever else is queued leaves in the same write.
                for _ in 1..WRITE_BATCH {
                    match out.outbound.try_recv() {
                        Ok(item) => out.feed_item(session, item),
                        Err(_) => break,
                    }
                }
                if out.flush().await.is_err() {
                    return;
                }
            }
            frame = out.socket.next(), if in_flight.len() < MAX_SENDS_IN_FLIGHT => {
                // Text and binary frames take a token; pings, pongs and closes do not. A frame
                // over the rate is not handled: the client is told when to send it again.
                if let Some(Ok(data @ (Message::Text(_) | Message::Binary(_)))) = &frame {
                    frames_received.increment(1);
                    out.frames_in += 1;
                    match gate.check() {
                        Verdict::Pass => {}
                        Verdict::Limited { retry_after_ms } => {
                            session.touch();
                            let id = match data {
                                Message::Text(text) => frame_id(text.as_str()),
                                _ => None,
                            };
                            let e = state.limiter.rate_limited(retry_after_ms);
                            if settle(&mut in_flight, out).await.is_err()
                                || send_error(out, id.as_deref(), &e).await.is_err()
                                || out.flush().await.is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        Verdict::Abuse => {
                            let reason = state.limiter.abuse_close_reason();
                            tracing::info!(connection = %session.id, source_ip = %session.identity.source_ip, %reason, "closing an abusive connection");
                            out.close(close_code::POLICY_VIOLATION, &reason).await;
                            return;
                        }
                    }
                }
                let result = match frame {
                    Some(Ok(Message::Text(text))) => {
                        // Frame handling has its own budget (message-concurrency), apart from
                        // $connect/$disconnect.
                        let _permit = state.limiter.message_permit().await;
                        // Boxed: the handlers' futures are the largest state of this loop,
                        // and inline every idle connection would carry their size.
                        Box::pin(dispatch_ahead(session, services, text.as_str(), out, &mut in_flight)).await
                    }
                    Some(Ok(Message::Binary(_))) => {
                        session.touch();
                        if settle(&mut in_flight, out).await.is_err() {
                            return;
                        }
                        let e = ChatError::bad_request(
                            "binary frames are not supported: send JSON text frames like {\"action\":\"sendmessage\",\"data\":\"hi\"}",
                        );
                        send_error(out, None, &e).await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        session.touch();
                        Ok(())
                    }
                    // tungstenite only returns whole messages when reading.
                    Some(Ok(Message::Frame(_))) => Ok(()),
                    Some(Ok(Message::Close(frame))) => {
                        out.closed_with = Some((
                            "client",
                            // 1005: no status code in the client's close frame.
                            frame.map_or(1005, |f| u16::from(f.code)),
                            String::new(),
                        ));
                        // tungstenite queued the close reply; send it so the client sees a
                        // clean close.
                        let _ = out.flush().await;
                        return;
                    }
                    None => return,
                    Some(Err(e)) => {
                        if is_too_large(&e) {
                            let limits = services.limits;
                            let reason = format!(
                                "too large: frames are limited to {} bytes, messages to {}",
                                limits.max_frame_bytes, limits.max_message_bytes
                            );
                            out.close(close_code::MESSAGE_TOO_BIG, &reason).await;
                        } else {
                            tracing::debug!(connection = %session.id, error = %e, "read failed");
                        }
                        return;
                    }
                };
                if result.is_err() || out.flush().await.is_err() {
                    return;
                }
            }
            (code, reason) = &mut closed => {
                Box::pin(close_on_request(session, out, &mut in_flight, code, &reason)).await;
                return;
            }
            _ = &mut stopping => {
                if Box::pin(drain(session, out, &mut in_flight)).await.is_ok() {
                    out.close(close_code::GOING_AWAY, "server shutting down").await;
                }
                return;
            }
            _ = &mut max_age, if config.max_connection_ms > 0 => {
                Box::pin(close_on_request(session, out, &mut in_flight, close_code::GOING_AWAY, "maximum connection duration reached; reconnect")).await;
                return;
            }
            _ = keepalive.tick() => {
                // Pongs and any other frame update last_active; a peer that answers nothing
                // for the idle timeout is gone (or idle as API Gateway counts it) and is closed.
                let silent_ms = now_ms().saturating_sub(session.last_active.load(Ordering::Relaxed));
                if silent_ms >= config.idle_timeout_ms {
                    let reason = format!("idle timeout: nothing received for {} s", silent_ms / 1000);
                    Box::pin(close_on_request(session, out, &mut in_flight, close_code::GOING_AWAY, &reason)).await;
                    return;
                }
                if silent_ms >= config.ping_interval_ms / 2 && out.ping().await.is_err() {
                    return;
                }
            }
        }
    }
}
