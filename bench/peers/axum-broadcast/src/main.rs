//! Benchmark peer for DynamoWave: a plain axum chat server written the way the axum chat
//! example and most tutorials do it: one `tokio::sync::broadcast` channel for everyone, and one
//! task per socket that forwards what comes from the channel and reads the client's frames.
//!
//! It speaks the AWS serverless-chat sample's protocol: a client sends
//! `{"action":"sendmessage","data":"..."}` (or `"message"` instead of `"data"`) and the server
//! sends that string, as is, to every connected client, the sender included. Other frames are
//! ignored. Listens on 127.0.0.1:$PORT (default 8083), path /ws.

use axum::{
    Router,
    extract::{
        State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::IntoResponse,
    routing::get,
};
use serde::Deserialize;
use tokio::sync::broadcast;

#[derive(Clone)]
struct AppState {
    tx: broadcast::Sender<String>,
}

#[derive(Deserialize)]
struct Incoming {
    action: String,
    data: Option<String>,
    message: Option<String>,
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8083);
    let (tx, _rx) = broadcast::channel(1024);
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .with_state(AppState { tx });

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    println!("axum-broadcast chat on ws://127.0.0.1:{port}/ws");
    axum::serve(listener, app).await.unwrap();
}

async fn ws_handler(ws: WebSocketUpgrade, State(state): State<AppState>) -> impl IntoResponse {
    ws.on_upgrade(move |socket| handle_socket(socket, state))
}

async fn handle_socket(mut socket: WebSocket, state: AppState) {
    let mut rx = state.tx.subscribe();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(incoming) = serde_json::from_str::<Incoming>(&text) {
                        if incoming.action == "sendmessage" {
                            if let Some(data) = incoming.data.or(incoming.message) {
                                let _ = state.tx.send(data);
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
