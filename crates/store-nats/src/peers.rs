//! Reaching a connection on another node: `@connections/{id}` on any node. The node that holds
//! the connection answers requests on `dw.node.<node>.connections`; the others find that node
//! in the connections bucket ([`Presence::owner`]) and ask it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dynamowave_core::ConnectionId;
use dynamowave_core::ports::{ConnectionDescription, LocalConnections, PeerConnections, PostError};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::names::Names;
use crate::presence::Presence;
use crate::{StoreError, backend};

/// How long a node waits for another's answer.

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Post {
        id: ConnectionId,
        text: String,
    },
    Describe {
        id: ConnectionId,
    },
    Close {
        id: ConnectionId,
        code: u16,
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Posted(Result<(), PostError>),
    Described(Option<ConnectionDescription>),
    Closed(bool),
}

pub struct Peers {
    client: async_nats::Client,
    names: Names,
    presence: Arc<Presence>,
}

impl Peers {
    pub fn new(client: async_nats::Client, names: Names, presence: Arc<Presence>) -> Self {
        Peers {
            client,
            names,
            presence,
        }
    }

    /// `None`: no live node holds the connection.
    async fn ask(&self, id: &ConnectionId, request: Request) -> Result<Option<Reply>, StoreError> {
        let Some(node) = self.presence.owner(id) else {
            return Ok(None);
        };
        if node == self.presence.node() {
            // Its row is here but the hub does not have it: it is ending.
            return Ok(None);
        }
        let body = serde_json::to_vec(&request).map_err(|e| StoreError::Backend(e.to_string()))?;
        // Bounded by the client's request timeout (`NatsConfig::request_timeout`).
        let asked = self
            .client
            .request(self.names.node_inbox(&node), body.into())
            .await;
        match asked {
            Ok(reply) => serde_json::from_slice(&reply.payload)
                .map(Some)
                .map_err(|e| StoreError::Backend(format!("bad reply from node {node}: {e}"))),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                // The node is gone (its rows will be reaped): so is the connection.
                match self.presence.is_alive(&node) {
                    true => Err(StoreError::Backend(format!("node {node} does not answer"))),
                    false => Ok(None),
                }
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => Err(
                StoreError::Backend(format!("node {node} did not answer in time")),
            ),
            Err(e) => Err(backend("asking the connection's node", e)),
        }
    }
}

#[async_trait]
impl PeerConnections for Peers {
    async fn post(
        &self,
        id: &ConnectionId,
        text: String,
    ) -> Result<Result<(), PostError>, StoreError> {
        let request = Request::Post {
            id: id.clone(),
            text,
        };
        Ok(match self.ask(id, request).await? {
            Some(Reply::Posted(r)) => r,
            _ => Err(PostError::Gone),
        })
    }

    async fn describe(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<ConnectionDescription>, StoreError> {
        Ok(
            match self.ask(id, Request::Describe { id: id.clone() }).await? {
                Some(Reply::Described(d)) => d,
                _ => None,
            },
        )
    }

    async fn close(&self, id: &ConnectionId, code: u16, reason: &str) -> Result<bool, StoreError> {
        let request = Request::Close {
            id: id.clone(),
            code,
            reason: reason.to_owned(),
        };
        Ok(matches!(
            self.ask(id, request).await?,
            Some(Reply::Closed(true))
        ))
    }
}

/// Answers other nodes' requests for this node's connections; runs until the process ends.
pub async fn serve(
    client: async_nats::Client,
    names: Names,
    node: String,
    local: Arc<dyn LocalConnections>,
) {
    loop {
        let mut requests = match client.subscribe(names.node_inbox(&node)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to this node's inbox; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(message) = requests.next().await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let reply = match serde_json::from_slice::<Request>(&message.payload) {
                Ok(Request::Post { id, text }) => Reply::Posted(local.post(&id, text)),
                Ok(Request::Describe { id }) => Reply::Described(local.describe(&id)),
                Ok(Request::Close { id, code, reason }) => {
                    Reply::Closed(local.close(&id, code, &reason))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a malformed request from another node");
                    continue;
                }
            };
            let Ok(body) = serde_json::to_vec(&reply) else {
                continue;
            };
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "could not answer another node");
            }
        }
    }
}
