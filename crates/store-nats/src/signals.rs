//! Frames that are not stored (read receipts, typing notices) to a room's v1 members on every
//! node: a core NATS publish on `dw.signal.<room>` (no JetStream: like presence, a lost one is
//! corrected by the next), and one subscriber per node that hands them to its hub.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use dynamowave_core::ports::RoomMembership;
use dynamowave_core::{ConnectionId, RoomId};
use futures_util::StreamExt as _;

use crate::names::{self, Names};

/// Publishes this node's signals to the other nodes.
pub struct Signals {
    client: async_nats::Client,
    names: Names,
    node: String,
}

impl Signals {
    pub fn new(client: async_nats::Client, names: Names, node: String) -> Self {
        Signals {
            client,
            names,
            node,
        }
    }

    /// Sends `frame` to the other nodes' members of `room` (this node's hub delivers its own).
    /// Called from a handler that must not wait on NATS, so the publish is queued to the
    /// client's writer, which sends in order.
    pub fn publish(&self, room: &RoomId, frame: &str, except: Option<&ConnectionId>) {
        let mut headers = HeaderMap::new();
        headers.insert(names::NODE, self.node.as_str());
        if let Some(except) = except {
            headers.insert(names::EXCEPT, except.as_str());
        }
        let client = self.client.clone();
        let subject = self.names.signal(room);
        let payload = Bytes::copy_from_slice(frame.as_bytes());
        tokio::spawn(async move {
            if let Err(e) = client.publish_with_headers(subject, headers, payload).await {
                tracing::debug!(error = %e, "a signal was not published");
            }
        });
    }
}

/// Delivers the other nodes' signals to this node's members. Runs until the process ends.
pub async fn serve(
    client: async_nats::Client,
    names: Names,
    node: String,
    local: Arc<dyn RoomMembership>,
) {
    loop {
        let mut signals = match client.subscribe(names.all_signals()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to signals; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(signal) = signals.next().await {
            let headers = signal.headers.unwrap_or_default();
            if headers.get(names::NODE).map(|v| v.as_str()) == Some(node.as_str()) {
                continue;
            }
            let (Some(room), Ok(frame)) = (
                names.parse_signal(&signal.subject),
                std::str::from_utf8(&signal.payload),
            ) else {
                continue;
            };
            let except = headers
                .get(names::EXCEPT)
                .and_then(|v| ConnectionId::parse(v.as_str()).ok());
            local.signal(&room, frame, except.as_ref());
        }
    }
}
