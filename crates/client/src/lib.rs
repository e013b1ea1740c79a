//! A DynamoWave client: the v1 protocol with typed frames, and the AWS-sample compat protocol.
//! The tests, the terminal chat and the load generator are built on it.
//!
//! # Layout
//!
//! - [`Client`]: a v1 connection (`dynamowave.v1` subprotocol). [`Client::connect`] returns
//!   after the server's `connected` frame ([`Client::connect_with_token`] sends a JWT as
//!   `Authorization: Bearer`, [`Client::connect_request`] any headers of the caller's); the `send_*`/`join`/... methods write one frame;
//!   [`Client::next`] reads the next [`ServerFrame`].
//! - [`CompatClient`]: a connection without subprotocol, exactly what `wscat` does.
//! - [`FrameSender`] / [`FrameReceiver`]: either client split in two, to write from one task and
//!   read from another without copying frames (the load generator).
//! - [`ClientError`]: what can go wrong, with the close code when the server closed.
//!
//! `wss://` URLs work too (rustls, trusting the webpki roots); `connect_with` takes a
//! [`Connector`] for other trust, e.g. a test's self-signed certificate.

use std::time::Duration;

use dynamowave_core::protocol::{SUBPROTOCOL_V1, ServerFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use dynamowave_core::protocol;
pub use tokio_tungstenite::Connector;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Small read buffers: a load generator holds thousands of mostly idle connections, and
/// tungstenite allocates the whole read buffer up front.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket error: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The server closed the connection (or the stream ended: code 1006).
    #[error("closed by the server: {code} {reason}")]
    Closed { code: u16, reason: String },
    #[error("unexpected frame from the server: {0}")]
    Protocol(String),
    #[error("no frame within {0:?}")]
    Timeout(Duration),
}

/// A v1 connection.
pub struct Client {
    socket: Socket,
    /// The server's `connected` frame.
    pub connected: ServerFrame,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws?name=alice`) with the v1 subprotocol and
    /// waits for the `connected` frame.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, None).await
    }

    /// [`Client::connect`] with a TLS connector of the caller's for `wss://` (`None`: the
    /// default, webpki roots).
    pub async fn connect_with(url: &str, tls: Option<Connector>) -> Result<Self, ClientError> {
        Self::connect_request(url.into_client_request()?, tls).await
    }

    /// [`Client::connect`] with `Authorization: Bearer TOKEN`, for a server with `auth = jwt`.
    pub async fn connect_with_token(url: &str, token: &str) -> Result<Self, ClientError> {
        let mut request = url.into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ClientError::Protocol(format!("the token cannot be a header: {e}")))?;
        request
            .headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, bearer);
        Self::connect_request(request, None).await
    }

    /// Connects with a request the caller built (headers such as `Origin` or `Authorization`,
    /// more subprotocols such as `dynamowave.token.<JWT>`): `dynamowave.v1` is offered first.
    pub async fn connect_request(
        mut request: tungstenite::handshake::client::Request,
        tls: Option<Connector>,
    ) -> Result<Self, ClientError> {
        let offered = request
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let protocols = if offered.split(',').any(|p| p.trim() == SUBPROTOCOL_V1) {
            HeaderValue::from_str(offered)
        } else if offered.is_empty() {
            Ok(HeaderValue::from_static(SUBPROTOCOL_V1))
        } else {
            HeaderValue::from_str(&format!("{SUBPROTOCOL_V1}, {offered}"))
        }
        .map_err(|e| ClientError::Protocol(format!("bad Sec-WebSocket-Protocol: {e}")))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols);
        let (socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, Some(config()), true, tls)
                .await?;
        let mut client = Client {
            socket,
            connected: ServerFrame::Left {
                room: dynamowave_core::RoomId::default_room(),
            },
        };
        match client.next().await? {
            hello @ ServerFrame::Connected { .. } => client.connected = hello,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected connected, got {other:?}"
                )));
            }
        }
        Ok(client)
    }

    /// The connection id the server gave.
    pub fn connection_id(&self) -> &str {
        match &self.connected {
            ServerFrame::Connected { connection_id, .. } => connection_id.as_str(),
            _ => "",
        }
    }

    /// Sends any text frame as is (for testing how the server treats bad input).
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.socket.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Sends a binary frame (the server refuses them; for tests).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.socket.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// The underlying socket, for sending frames the methods here never would.
    pub fn socket_mut(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.socket
    }

    pub async fn send_message(
        &mut self,
        room: &str,
        data: &str,
        id: &str,
    ) -> Result<(), ClientError> {
        self.send_json(json!({"action": "sendmessage", "room": room, "data": data, "id": id}))
            .await
    }

    pub async fn join(&mut self, room: &str, after: Option<u64>) -> Result<(), ClientError> {
        let mut frame = json!({"action": "join", "room": room});
        if let Some(after) = after {
            frame["after"] = after.into();
        }
        self.send_json(frame).await
    }

    pub async fn leave(&mut self, room: &str) -> Result<(), ClientError> {
        self.send_json(json!({"action": "leave", "room": room}))
            .await
    }

    /// Asks for a page of history; `before` and `after` are exclusive of each other.
    pub async fn history(
        &mut self,
        room: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut frame = json!({"action": "history", "room": room});
        for (key, value) in [("before", before), ("after", after), ("limit", limit)] {
            if let Some(v) = value {
                frame[key] = v.into();
            }
        }
        self.send_json(frame).await
    }

    pub async fn members(&mut self, room: &str) -> Result<(), ClientError> {
        self.send_json(json!({"action": "members", "room": room}))
            .await
    }

    /// Replaces the text of this user's message `seq`.
    pub async fn edit(
        &mut self,
        room: &str,
        seq: u64,
        data: &str,
        id: &str,
    ) -> Result<(), ClientError> {
        self.send_json(json!({"action": "edit", "room": room, "seq": seq, "data": data, "id": id}))
            .await
    }

    /// Deletes this user's message `seq`.
    pub async fn delete(&mut self, room: &str, seq: u64, id: &str) -> Result<(), ClientError> {
        self.send_json(json!({"action": "delete", "room": room, "seq": seq, "id": id}))
            .await
    }

    /// Sets (`on`) or takes back a reaction to message `seq`.
    pub async fn react(
        &mut self,
        room: &str,
        seq: u64,
        emoji: &str,
        on: bool,
        id: &str,
    ) -> Result<(), ClientError> {
        self.send_json(
            json!({"action": "react", "room": room, "seq": seq, "emoji": emoji, "on": on, "id": id}),
        )
        .await
    }

    /// Marks the room read through `seq`.
    pub async fn read(&mut self, room: &str, seq: u64) -> Result<(), ClientError> {
        self.send_json(json!({"action": "read", "room": room, "seq": seq}))
            .await
    }

    /// Tells the room this user is typing.
    pub async fn typing(&mut self, room: &str) -> Result<(), ClientError> {
        self.send_json(json!({"action": "typing", "room": room}))
            .await
    }

    async fn send_json(&mut self, frame: serde_json::Value) -> Result<(), ClientError> {
        self.send_raw(frame.to_string()).await
    }

    /// The next frame from the server. A close becomes [`ClientError::Closed`].
    pub async fn next(&mut self) -> Result<ServerFrame, ClientError> {
        let text = next_text(&mut self.socket).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{e}: {text}")))
    }

    /// The next text frame as the server sent it, unparsed (e.g. a `POST /@connections` body).
    pub async fn next_raw(&mut self) -> Result<String, ClientError> {
        next_text(&mut self.socket).await
    }

    /// [`next`](Self::next) with a deadline.
    pub async fn next_within(&mut self, limit: Duration) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    /// Sends a message and reads until its ack, returning the ack and every other frame read
    /// on the way (in order).
    pub async fn send_and_ack(
        &mut self,
        room: &str,
        data: &str,
        id: &str,
    ) -> Result<(ServerFrame, Vec<ServerFrame>), ClientError> {
        self.send_message(room, data, id).await?;
        let mut others = Vec::new();
        loop {
            match self.next().await? {
                ack @ ServerFrame::Ack { .. } if matches!(&ack, ServerFrame::Ack { id: got, .. } if got == id) =>
                {
                    return Ok((ack, others));
                }
                err @ ServerFrame::Error { .. } => {
                    return Err(ClientError::Protocol(format!(
                        "error instead of ack: {err:?}"
                    )));
                }
                other => others.push(other),
            }
        }
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        self.socket.close(None).await?;
        Ok(())
    }

    /// Separate halves, to write and read from different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        split(self.socket)
    }
}

/// A compat-mode connection: what `wscat -c ws://host/ws` is.
pub struct CompatClient {
    socket: Socket,
}

impl CompatClient {
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, None).await
    }

    /// [`CompatClient::connect`] with a TLS connector of the caller's for `wss://`.
    pub async fn connect_with(url: &str, tls: Option<Connector>) -> Result<Self, ClientError> {
        let (socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(config()), true, tls)
                .await?;
        Ok(CompatClient { socket })
    }

    /// Sends `{"action":"sendmessage","data":...}` as in the AWS sample.
    pub async fn send_message(&mut self, data: &str) -> Result<(), ClientError> {
        self.send_raw(json!({"action": "sendmessage", "data": data}).to_string())
            .await
    }

    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.socket.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// The next text frame, as the server sent it.
    pub async fn next(&mut self) -> Result<String, ClientError> {
        next_text(&mut self.socket).await
    }

    pub async fn next_within(&mut self, limit: Duration) -> Result<String, ClientError> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        self.socket.close(None).await?;
        Ok(())
    }

    /// Separate halves, to write and read from different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        split(self.socket)
    }
}

fn split(socket: Socket) -> (FrameSender, FrameReceiver) {
    let (sink, stream) = socket.split();
    (FrameSender { sink }, FrameReceiver { stream })
}

/// The writing half of a connection.
pub struct FrameSender {
    sink: SplitSink<Socket, Message>,
}

impl FrameSender {
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), ClientError> {
        self.sink.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        self.sink.close().await?;
        Ok(())
    }
}

/// The reading half of a connection.
pub struct FrameReceiver {
    stream: SplitStream<Socket>,
}

impl FrameReceiver {
    /// The next text frame, without copying it. A close becomes [`ClientError::Closed`].
    pub async fn next_text(&mut self) -> Result<Utf8Bytes, ClientError> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(dropped()),
            }
        }
    }
}

fn closed(frame: Option<tungstenite::protocol::CloseFrame>) -> ClientError {
    let (code, reason) = frame
        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
        .unwrap_or((u16::from(CloseCode::Status), String::new()));
    ClientError::Closed { code, reason }
}

fn dropped() -> ClientError {
    ClientError::Closed {
        code: 1006,
        reason: "connection dropped".into(),
    }
}

async fn next_text(socket: &mut Socket) -> Result<String, ClientError> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(dropped()),
        }
    }
}
