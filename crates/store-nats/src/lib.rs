//! DynamoWave's cluster store: the core's ports on NATS JetStream, so that several DynamoWave
//! nodes behind a load balancer are one chat (docs/cluster.md).
//!
//! # Layout
//!
//! - [`NatsConfig`] and [`NatsBackend`]: how to reach NATS, and the [`Backend`] the server
//!   opens at start (it connects, creates the streams and buckets it needs, and starts the
//!   node's background tasks).
//! - [`names`]: every subject, key and header this store writes.
//! - [`log`]: the message log on the `DW_MESSAGES` stream (per-room seq by optimistic
//!   concurrency, idempotency by `Nats-Msg-Id` and the `DW_IDS` bucket, tombstones, edits and
//!   reactions by atomic batches), read positions in `DW_READ`, and the
//!   fan-out consumer that hands every commit to this node's hub.
//! - [`presence`]: connections, memberships and node liveness in the `DW_CONNECTIONS` KV bucket
//!   (per-key TTL on each node's heartbeat key): cluster-wide `members` and presence events.
//! - [`peers`]: `@connections` requests to the node that holds the connection.
//! - [`dead_letters`]: the dead-letter queue in the `DW_DEADLETTERS` KV bucket.
//! - [`signals`]: read receipts and typing notices to every node's members (core NATS).
//! - [`webhooks`]: the webhook outbox (`dw.hook.>` in the messages stream) and the lease that
//!   makes one node at a time deliver it.
//!
//! Needs nats-server 2.12 or newer: per-key TTL (2.11) and atomic batch publish (2.12).

pub mod dead_letters;
pub mod log;
pub mod names;
pub mod peers;
pub mod presence;
pub mod signals;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
pub use dynamowave_core::ports::StoreError;
use dynamowave_core::ports::{Backend, Fanout, OpenError, StoreLifecycle, Stores, WebhookOutbox};
use dynamowave_core::types::random_token;

use crate::dead_letters::KvDeadLetters;
use crate::log::JetStreamLog;
use crate::names::Names;
use crate::presence::{ClusterRooms, Presence};
use crate::webhooks::{HookEvents, StreamOutbox};

/// How to reach NATS and shape the cluster's streams.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port`; several, comma-separated, for a NATS cluster.
    pub url: String,
    /// This node's id: `[A-Za-z0-9_-]`, unique in the cluster.
    pub node_id: String,
    /// Replicas of every stream and bucket (1, or 3 on a three-server NATS cluster).
    pub replicas: usize,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds_file: Option<PathBuf>,
    /// Root certificate for `tls://` servers whose certificate is not publicly trusted.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key, for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Names the streams (`<PREFIX>_MESSAGES`, ...) and subjects (`<prefix>.msg.>`).
    pub prefix: String,
    /// How long message ids are remembered for idempotency (the `DW_IDS` bucket's max age).
    pub id_ttl: Duration,
    /// JetStream's own duplicate window on the messages stream.
    pub duplicate_window: Duration,
    /// How long a node's key lives without a heartbeat (heartbeats every third of it).
    pub node_ttl: Duration,
    /// How long a JetStream request (publish ack, get) may take before it fails.
    pub request_timeout: Duration,
    /// Queue the product's backend's events (`--webhook-url`): [`webhooks`].
    pub webhooks: bool,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            node_id: random_node_id(),
            replicas: 1,
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            prefix: "DW".into(),
            id_ttl: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            node_ttl: Duration::from_secs(15),
            request_timeout: Duration::from_secs(2),
            webhooks: false,
        }
    }
}

/// A random node id, for `--node-id`'s default.
pub fn random_node_id() -> String {
    format!("node-{}", random_token(8).to_ascii_lowercase())
}

fn now_ms_string() -> String {
    dynamowave_core::types::now_ms().to_string()
}

/// A NATS failure as a store failure (the text goes to logs, clients get `unavailable`).
fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

/// Why the cluster store could not open.
#[derive(Debug, thiserror::Error)]
pub enum NatsOpenError {
    #[error(
        "invalid --node-id {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ - (unique in the cluster)"
    )]
    NodeId(String),
    #[error("cannot connect to NATS at {url}: {error}. Is nats-server running there (with -js)?")]
    Connect { url: String, error: String },
    #[error(
        "NATS at {url} does not support what the cluster needs ({what}: {error}); use nats-server 2.12 or newer with JetStream enabled (-js)"
    )]
    JetStream {
        url: String,
        what: String,
        error: String,
    },
}

/// The cluster shape: [`Backend::open`] connects and starts this node's tasks.
pub struct NatsBackend {
    pub config: NatsConfig,
}

impl NatsBackend {
    pub fn new(config: NatsConfig) -> Self {
        NatsBackend { config }
    }
}

async fn connect(c: &NatsConfig) -> Result<async_nats::Client, NatsOpenError> {
    let fail = |e: &dyn std::fmt::Display| NatsOpenError::Connect {
        url: c.url.clone(),
        error: e.to_string(),
    };
    let mut options = match &c.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| fail(&e))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&c.user, &c.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &c.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &c.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&c.tls_cert_file, &c.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if c.url.contains("tls://") {
        options = options.require_tls(true);
    }
    let node = c.node_id.clone();
    options = options
        .name(format!("dynamowave {node}"))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(c.request_timeout))
        // Reconnect forever: the node keeps serving (and answering `unavailable`) meanwhile.
        .max_reconnects(None)
        .event_callback(move |event| {
            let node = node.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(node, "connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(node, "lost NATS; reconnecting")
                    }
                    other => tracing::info!(node, event = %other, "NATS"),
                }
            }
        });
    // A comma-separated list is several servers of one NATS cluster (async-nats takes a list,
    // not one string with commas).
    let servers = c
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    options.connect(servers).await.map_err(|e| fail(&e))
}

/// How long a starting node waits for JetStream to answer. A NATS cluster that has just started
/// answers only once it has elected its meta leader (seconds); a server without JetStream never.
const JETSTREAM_WAIT: Duration = Duration::from_secs(20);

/// Waits until JetStream answers an account-info request, for at most [`JETSTREAM_WAIT`]; the
/// last error when it never does.
async fn wait_for_jetstream(js: &jetstream::Context) -> Result<(), impl std::fmt::Display> {
    let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
    let mut said = false;
    loop {
        match js.query_account().await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                if !said {
                    tracing::info!(error = %e, "JetStream does not answer yet (a new NATS cluster elects its leader first); waiting");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[async_trait]
impl Backend for NatsBackend {
    async fn open(self: Box<Self>, fanout: Fanout) -> Result<Stores, OpenError> {
        let c = self.config;
        let valid_id = (1..=64).contains(&c.node_id.len())
            && c.node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_id {
            return Err(NatsOpenError::NodeId(c.node_id).into());
        }
        let client = connect(&c).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(c.request_timeout);
        let names = Names::new(&c.prefix);
        let unsupported = |what: &str, e: &dyn std::fmt::Display| NatsOpenError::JetStream {
            url: c.url.clone(),
            what: what.to_owned(),
            error: e.to_string(),
        };

        wait_for_jetstream(&js)
            .await
            .map_err(|e| unsupported("reaching JetStream ($JS.API.INFO)", &e))?;
        let stream_config = stream::Config {
            name: names.messages_stream(),
            description: Some("DynamoWave room logs: dw.msg.<room>.<seq>".into()),
            subjects: vec![
                names.all_messages(),
                format!("{}.probe.>", names.root),
                names.all_hooks(),
            ],
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            // Entry n of a room is alone on its subject; a tombstone replaces it.
            max_messages_per_subject: 1,
            duplicate_window: c.duplicate_window,
            allow_direct: true,
            // An edit, deletion or reaction is stored with its target's rewrite atomically.
            allow_atomic_publish: true,
            ..Default::default()
        };
        let stream = js
            .create_or_update_stream(stream_config)
            .await
            .map_err(|e| unsupported("creating the messages stream", &e))?;
        tracing::info!(
            stream = %stream.config.name,
            replicas = stream.config.num_replicas,
            "JetStream messages stream ready"
        );
        if !stream.config.allow_atomic_publish {
            // A server before 2.12 ignores the setting, and would store batches piecemeal.
            return Err(unsupported(
                "atomic batch publish on the messages stream",
                &"the server did not keep allow_atomic (nats-server 2.12 or newer has it)",
            )
            .into());
        }
        let stream = js
            .get_stream(names.messages_stream())
            .await
            .map_err(|e| unsupported("opening the messages stream", &e))?;
        let ids = js
            .create_or_update_key_value(kv::Config {
                bucket: names.ids_bucket(),
                description: "DynamoWave message ids (room.user.id -> seq), for idempotent retries"
                    .into(),
                history: 1,
                max_age: c.id_ttl,
                num_replicas: c.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unsupported("creating the id bucket", &e))?;
        let read_positions = js
            .create_or_update_key_value(kv::Config {
                bucket: names.read_bucket(),
                description: "DynamoWave read positions (room.user -> seq)".into(),
                history: 1,
                num_replicas: c.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unsupported("creating the read-position bucket", &e))?;
        let connections = js
            .create_or_update_key_value(kv::Config {
                bucket: names.connections_bucket(),
                description: "DynamoWave connections, memberships and node heartbeats".into(),
                history: 1,
                num_replicas: c.replicas,
                storage: stream::StorageType::File,
                // Per-key TTLs (node heartbeats) and markers when they expire: nats-server 2.11.
                limit_markers: Some(Duration::from_secs(60)),
                ..Default::default()
            })
            .await
            .map_err(|e| unsupported("creating the connections bucket (per-key TTL)", &e))?;
        let dead_letters = js
            .create_or_update_key_value(kv::Config {
                bucket: names.dead_letters_bucket(),
                description: "DynamoWave dead letters".into(),
                history: 1,
                num_replicas: c.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unsupported("creating the dead-letter bucket", &e))?;

        let log = Arc::new(JetStreamLog::new(
            client.clone(),
            js.clone(),
            stream.clone(),
            ids,
            read_positions,
            names.clone(),
            c.webhooks,
        ));
        let presence = Arc::new(Presence::new(
            js.clone(),
            connections,
            &names,
            c.node_id.clone(),
            c.node_ttl,
            fanout.rooms.clone(),
            c.webhooks
                .then(|| HookEvents::new(js.clone(), names.clone(), c.node_id.clone())),
        ));
        presence
            .heartbeat()
            .await
            .map_err(|e| unsupported("writing this node's heartbeat (per-key TTL)", &e))?;
        tokio::spawn(log::fan_out(
            client.clone(),
            stream.clone(),
            names.clone(),
            log.clone(),
            fanout.listener.clone(),
        ));
        tokio::spawn(presence.clone().run());
        tokio::spawn(peers::serve(
            client.clone(),
            names.clone(),
            c.node_id.clone(),
            fanout.local.clone(),
        ));
        tokio::spawn(signals::serve(
            client.clone(),
            names.clone(),
            c.node_id.clone(),
            fanout.rooms.clone(),
        ));
        let outbox: Option<Arc<dyn WebhookOutbox>> = if c.webhooks {
            let lease = js
                .create_or_update_key_value(kv::Config {
                    bucket: names.webhooks_bucket(),
                    description: "DynamoWave: which node delivers webhooks, and until when".into(),
                    history: 1,
                    num_replicas: c.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| unsupported("creating the webhook lease bucket", &e))?;
            Some(Arc::new(StreamOutbox::new(
                client.clone(),
                stream.clone(),
                names.clone(),
                lease,
                c.node_id.clone(),
                c.node_ttl,
            )))
        } else {
            None
        };
        tracing::info!(node = %c.node_id, url = %c.url, "cluster node joined");
        let lifecycle = Arc::new(Lifecycle {
            js,
            client: client.clone(),
            probe_subject: names.probe(&c.node_id),
            log: log.clone(),
            presence: presence.clone(),
        });
        Ok(Stores {
            kind: "nats",
            log,
            connections: presence.clone(),
            rooms: Arc::new(ClusterRooms(
                presence.clone(),
                signals::Signals::new(client.clone(), names.clone(), c.node_id.clone()),
            )),
            dead_letters: Arc::new(KvDeadLetters::new(dead_letters)),
            lifecycle,
            peers: Some(Arc::new(peers::Peers::new(client, names, presence))),
            outbox,
        })
    }
}

/// `/readyz`'s probe (a real JetStream write) and graceful shutdown.
struct Lifecycle {
    js: jetstream::Context,
    client: async_nats::Client,
    probe_subject: String,
    log: Arc<JetStreamLog>,
    presence: Arc<Presence>,
}

#[async_trait]
impl StoreLifecycle for Lifecycle {
    async fn probe(&self) -> Result<(), StoreError> {
        log::connected(&self.client)?;
        self.js
            .publish(self.probe_subject.clone(), now_ms_string().into())
            .await
            .map_err(|e| backend("NATS is not reachable", e))?
            .await
            .map_err(|e| backend("JetStream did not commit a write", e))?;
        Ok(())
    }

    async fn shutdown(&self) {
        self.log.close();
        self.presence.leave_cluster().await;
        let _ = self.client.flush().await;
    }
}
