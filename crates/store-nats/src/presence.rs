//! [`Presence`]: the connections table, room memberships and node liveness in one JetStream KV
//! bucket (`DW_CONNECTIONS`), with a local view every node keeps by watching the bucket.
//!
//! Keys (tokens as in [`crate::names`]):
//! - `n.<node>`: the node is alive. Written with a per-key TTL (`Nats-TTL`) and rewritten by
//!   the node's heartbeat every third of it; when a node stops, its key expires and the bucket's
//!   delete marker tells every watcher.
//! - `c.<node>.<connection>`: a connection's row (who, how, from where, since when).
//! - `m.<room>.<node>.<connection>`: a membership (the user, for `members`).
//!
//! Membership lists are cluster-wide and leave out every node whose key is gone (or not
//! refreshed within its TTL), so a crashed node's connections leave the members lists within
//! the node TTL (15 s by default). The first node to notice also deletes the dead node's
//! rows, which every other node sees as `left` presence events for its members. Presence from
//! other nodes reaches this node's members the same way: a membership key appearing is a
//! `joined`, one disappearing a `left`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use dynamowave_core::ports::{ConnectionRecord, ConnectionStore, RoomMembership};
use dynamowave_core::protocol::{Member, Mode, PresenceEvent};
use dynamowave_core::types::now_ms;
use dynamowave_core::{ConnectionId, RoomId, UserName, webhook};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::names::{self, Names};
use crate::webhooks::HookEvents;
use crate::{StoreError, backend};

/// How long a purge marker stays in the bucket: long enough for every watcher to see it, and
/// then gone, so rows of connections that ended do not pile up.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// A connection row as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    id: ConnectionId,
    user: UserName,
    mode: Mode,
    source_ip: String,
    user_agent: String,
    connected_at: u64,
}

impl From<&ConnectionRecord> for Row {
    fn from(r: &ConnectionRecord) -> Self {
        Row {
            id: r.id.clone(),
            user: r.user.clone(),
            mode: r.mode,
            source_ip: r.source_ip.clone(),
            user_agent: r.user_agent.clone(),
            connected_at: r.connected_at,
        }
    }
}

impl From<Row> for ConnectionRecord {
    fn from(r: Row) -> Self {
        ConnectionRecord {
            id: r.id,
            user: r.user,
            mode: r.mode,
            source_ip: r.source_ip,
            user_agent: r.user_agent,
            connected_at: r.connected_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MemberValue {
    user: UserName,
}

/// A parsed key of the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Node(String),
    Connection {
        node: String,
        id: ConnectionId,
    },
    Membership {
        room: RoomId,
        node: String,
        id: ConnectionId,
    },
}

impl Key {
    fn parse(key: &str) -> Option<Key> {
        let mut parts = key.split('.');
        let key = match (parts.next()?, parts.next(), parts.next(), parts.next()) {
            ("n", Some(node), None, None) => Key::Node(node.to_owned()),
            ("c", Some(node), Some(id), None) => Key::Connection {
                node: node.to_owned(),
                id: ConnectionId::parse(&names::from_b64(id)?).ok()?,
            },
            ("m", Some(room), Some(node), Some(id)) => Key::Membership {
                room: names::room_from_token(room)?,
                node: node.to_owned(),
                id: ConnectionId::parse(&names::from_b64(id)?).ok()?,
            },
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }

    fn node(node: &str) -> String {
        format!("n.{node}")
    }

    fn connection(node: &str, id: &ConnectionId) -> String {
        format!("c.{node}.{}", names::b64(id.as_str()))
    }

    fn membership(room: &RoomId, node: &str, id: &ConnectionId) -> String {
        format!(
            "m.{}.{node}.{}",
            names::room_token(room),
            names::b64(id.as_str())
        )
    }
}

/// What this node knows of the bucket, kept current by the watch.
#[derive(Default)]
struct View {
    /// Live nodes and when their key was last written.
    nodes: HashMap<String, Instant>,
    /// Connection → its node.
    connections: HashMap<ConnectionId, String>,
    /// Room → its members on every node: connection → (node, user).
    rooms: HashMap<RoomId, BTreeMap<ConnectionId, (String, UserName)>>,
}

/// This node's own rows, to delete them on `$disconnect` and write them again if the bucket
/// lost them (the node was cut off from NATS for longer than its TTL).
#[derive(Default)]
struct Own {
    connections: BTreeMap<ConnectionId, (ConnectionRecord, Vec<RoomId>)>,
}

pub struct Presence {
    kv: kv::Store,
    js: jetstream::Context,
    bucket: String,
    node: String,
    node_ttl: Duration,
    /// This node's own fan-out (the hub): local joins, and presence to local members.
    local: Arc<dyn RoomMembership>,
    view: Mutex<View>,
    own: Mutex<Own>,
    /// With webhooks on: where connections' events go (crate::webhooks).
    hooks: Option<HookEvents>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Presence {
    pub fn new(
        js: jetstream::Context,
        kv: kv::Store,
        names: &Names,
        node: String,
        node_ttl: Duration,
        local: Arc<dyn RoomMembership>,
        hooks: Option<HookEvents>,
    ) -> Self {
        Presence {
            kv,
            js,
            bucket: names.connections_bucket(),
            node,
            node_ttl,
            local,
            view: Mutex::new(View::default()),
            own: Mutex::new(Own::default()),
            hooks,
        }
    }

    /// Queues a webhook event, with webhooks on.
    async fn hook(&self, body: impl FnOnce() -> String) {
        if let Some(hooks) = &self.hooks {
            hooks.connection(body()).await;
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node that holds connection `id`, if it is a live connection of a live node.
    pub fn owner(&self, id: &ConnectionId) -> Option<String> {
        let view = lock(&self.view);
        let node = view.connections.get(id)?;
        self.alive(&view, node).then(|| node.clone())
    }

    pub fn is_alive(&self, node: &str) -> bool {
        let view = lock(&self.view);
        self.alive(&view, node)
    }

    fn alive(&self, view: &View, node: &str) -> bool {
        node == self.node
            || view
                .nodes
                .get(node)
                .is_some_and(|at| at.elapsed() < self.node_ttl + self.node_ttl / 3)
    }

    /// Writes `n.<node>` with the node TTL.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-TTL",
            format!("{}s", self.node_ttl.as_secs().max(1)).as_str(),
        );
        let subject = format!("$KV.{}.{}", self.bucket, Key::node(&self.node));
        self.js
            .publish_with_headers(subject, headers, Bytes::from(crate::now_ms_string()))
            .await
            .map_err(|e| backend("writing the node heartbeat", e))?
            .await
            .map_err(|e| backend("writing the node heartbeat", e))?;
        Ok(())
    }

    /// Deletes a key (its marker expires after [`MARKER_TTL`]).
    async fn forget(&self, key: &str) -> Result<(), StoreError> {
        self.kv
            .purge_with_ttl(key, MARKER_TTL)
            .await
            .map_err(|e| backend("deleting a connection row", e))
    }

    async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.kv
            .put(key, bytes.into())
            .await
            .map(drop)
            .map_err(|e| backend("writing a connection row", e))
    }

    /// Writes every row of this node again (after the bucket lost them).
    async fn reassert(&self) -> Result<(), StoreError> {
        let rows: Vec<_> = lock(&self.own).connections.values().cloned().collect();
        self.heartbeat().await?;
        for (record, rooms) in rows {
            self.put(
                &Key::connection(&self.node, &record.id),
                &Row::from(&record),
            )
            .await?;
            for room in rooms {
                let value = MemberValue {
                    user: record.user.clone(),
                };
                self.put(&Key::membership(&room, &self.node, &record.id), &value)
                    .await?;
            }
        }
        Ok(())
    }

    /// Applies one change of the bucket to the view, telling local members of presence changes
    /// on other nodes. Returns a node whose key just went away.
    fn apply(&self, key: Key, value: Option<&[u8]>) -> Option<String> {
        let mut view = lock(&self.view);
        match (key, value) {
            (Key::Node(node), Some(_)) => {
                view.nodes.insert(node, Instant::now());
            }
            (Key::Node(node), None) => {
                view.nodes.remove(&node);
                return Some(node);
            }
            (Key::Connection { node, id }, Some(_)) => {
                view.connections.insert(id, node);
            }
            (Key::Connection { id, .. }, None) => {
                view.connections.remove(&id);
            }
            (Key::Membership { room, node, id }, Some(value)) => {
                let Ok(MemberValue { user }) = serde_json::from_slice(value) else {
                    return None;
                };
                let members = view.rooms.entry(room.clone()).or_default();
                let new = members
                    .insert(id.clone(), (node.clone(), user.clone()))
                    .is_none();
                drop(view);
                if new && node != self.node {
                    self.local
                        .presence(&room, PresenceEvent::Joined, &user, &id);
                }
            }
            (Key::Membership { room, node, id }, None) => {
                let members = view.rooms.get_mut(&room)?;
                let removed = members.remove(&id);
                if members.is_empty() {
                    view.rooms.remove(&room);
                }
                drop(view);
                if let Some((_, user)) = removed
                    && node != self.node
                {
                    self.local.presence(&room, PresenceEvent::Left, &user, &id);
                }
            }
        }
        None
    }

    /// Removes a dead node's rows: from the view at once (its members leave every list and
    /// local members get `left`), then from the bucket.
    async fn reap(&self, node: &str) {
        let (connections, memberships) = {
            let view = lock(&self.view);
            let connections: Vec<ConnectionId> = view
                .connections
                .iter()
                .filter(|(_, n)| n.as_str() == node)
                .map(|(id, _)| id.clone())
                .collect();
            let memberships: Vec<(RoomId, ConnectionId, UserName)> = view
                .rooms
                .iter()
                .flat_map(|(room, members)| {
                    members
                        .iter()
                        .filter(|(_, (n, _))| n.as_str() == node)
                        .map(|(id, (_, user))| (room.clone(), id.clone(), user.clone()))
                })
                .collect();
            (connections, memberships)
        };
        if connections.is_empty() && memberships.is_empty() {
            return;
        }
        tracing::warn!(
            node,
            connections = connections.len(),
            "a cluster node stopped: removing its connections"
        );
        for (room, id, _) in &memberships {
            let key = Key::Membership {
                room: room.clone(),
                node: node.to_owned(),
                id: id.clone(),
            };
            self.apply(key, None);
            let _ = self.forget(&Key::membership(room, node, id)).await;
        }
        for id in &connections {
            lock(&self.view).connections.remove(id);
            if self.forget(&Key::connection(node, id)).await.is_ok() {
                // The dead node cannot say it; two nodes reaping at once both do (at least
                // once: receivers dedupe by connection id).
                let user = memberships
                    .iter()
                    .find(|(_, m, _)| m == id)
                    .map(|(_, _, user)| user);
                self.hook(|| webhook::disconnect(id, user, now_ms())).await;
            }
        }
    }

    /// Keeps the view current and the node's key alive; runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        let beat = {
            let this = self.clone();
            async move {
                let mut tick = tokio::time::interval(this.node_ttl / 3);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = this.heartbeat().await {
                        tracing::warn!(error = %e, "cluster heartbeat failed");
                    }
                    // Nodes whose key was not refreshed in time, even if no marker came.
                    let dead: Vec<String> = {
                        let view = lock(&this.view);
                        let known = view
                            .connections
                            .values()
                            .chain(view.rooms.values().flat_map(|m| m.values().map(|(n, _)| n)));
                        let mut dead: Vec<String> =
                            known.filter(|n| !this.alive(&view, n)).cloned().collect();
                        dead.sort();
                        dead.dedup();
                        dead
                    };
                    for node in dead {
                        this.reap(&node).await;
                    }
                }
            }
        };
        let watch = {
            let this = self.clone();
            async move {
                loop {
                    let mut entries = match this.kv.watch_with_history(">").await {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch the connections bucket; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    while let Some(entry) = entries.next().await {
                        let Ok(entry) = entry else { continue };
                        let Some(key) = Key::parse(&entry.key) else {
                            continue;
                        };
                        let value = match entry.operation {
                            kv::Operation::Put => Some(entry.value.as_ref()),
                            kv::Operation::Delete | kv::Operation::Purge => None,
                        };
                        if let Some(gone) = this.apply(key, value) {
                            if gone == this.node {
                                // Cut off for longer than the TTL: the others think this node
                                // is dead. Write its rows again.
                                tracing::warn!(
                                    "this node's key expired; writing its connections again"
                                );
                                if let Err(e) = this.reassert().await {
                                    tracing::warn!(error = %e, "could not write this node's connections again");
                                }
                            } else {
                                this.reap(&gone).await;
                            }
                        }
                    }
                    tracing::warn!("the connections watch ended; watching again");
                }
            }
        };
        tokio::join!(beat, watch);
    }

    /// Deletes this node's key (graceful shutdown: the others need not wait for the TTL).
    pub async fn leave_cluster(&self) {
        let _ = self.forget(&Key::node(&self.node)).await;
    }

    /// Every key of the bucket, parsed.
    async fn keys(&self) -> Result<Vec<Key>, StoreError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| backend("listing connection rows", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| backend("listing connection rows", e))?;
            if let Some(k) = Key::parse(&key) {
                out.push(k);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ConnectionStore for Presence {
    async fn insert(&self, record: &ConnectionRecord) -> Result<(), StoreError> {
        self.put(&Key::connection(&self.node, &record.id), &Row::from(record))
            .await?;
        lock(&self.own)
            .connections
            .insert(record.id.clone(), (record.clone(), Vec::new()));
        self.hook(|| webhook::connect(record)).await;
        Ok(())
    }

    async fn remove(&self, id: &ConnectionId) -> Result<(), StoreError> {
        let Some((record, rooms)) = lock(&self.own).connections.remove(id) else {
            // Not a connection of this node (or removed already): nothing to report.
            return self.forget(&Key::connection(&self.node, id)).await;
        };
        for room in &rooms {
            self.forget(&Key::membership(room, &self.node, id)).await?;
        }
        self.forget(&Key::connection(&self.node, id)).await?;
        self.hook(|| webhook::disconnect(id, Some(&record.user), now_ms()))
            .await;
        Ok(())
    }

    async fn add_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        let user = match lock(&self.own).connections.get(id) {
            Some((record, _)) => record.user.clone(),
            None => return Ok(()),
        };
        self.put(
            &Key::membership(room, &self.node, id),
            &MemberValue { user: user.clone() },
        )
        .await?;
        let joined = match lock(&self.own).connections.get_mut(id) {
            Some((_, rooms)) if !rooms.contains(room) => {
                rooms.push(room.clone());
                rooms.sort();
                true
            }
            _ => false,
        };
        if joined {
            self.hook(|| webhook::join(room, id, Some(&user), now_ms()))
                .await;
        }
        Ok(())
    }

    async fn remove_membership(&self, id: &ConnectionId, room: &RoomId) -> Result<(), StoreError> {
        self.forget(&Key::membership(room, &self.node, id)).await?;
        let left = match lock(&self.own).connections.get_mut(id) {
            Some((record, rooms)) if rooms.contains(room) => {
                rooms.retain(|r| r != room);
                Some(record.user.clone())
            }
            _ => None,
        };
        if let Some(user) = left {
            self.hook(|| webhook::leave(room, id, Some(&user), now_ms()))
                .await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(ConnectionRecord, Vec<RoomId>)>, StoreError> {
        let mut rows: BTreeMap<ConnectionId, (ConnectionRecord, Vec<RoomId>)> = BTreeMap::new();
        let keys = self.keys().await?;
        for key in &keys {
            if let Key::Connection { node, id } = key
                && let Some(value) = self
                    .kv
                    .get(Key::connection(node, id))
                    .await
                    .map_err(|e| backend("reading a connection row", e))?
                && let Ok(row) = serde_json::from_slice::<Row>(&value)
            {
                rows.insert(id.clone(), (row.into(), Vec::new()));
            }
        }
        for key in keys {
            if let Key::Membership { room, id, .. } = key
                && let Some((_, rooms)) = rows.get_mut(&id)
            {
                rooms.push(room);
            }
        }
        Ok(rows
            .into_values()
            .map(|(record, mut rooms)| {
                rooms.sort();
                (record, rooms)
            })
            .collect())
    }

    /// Deletes the rows of this node id (a previous process under the same `--node-id`) and
    /// of nodes that are not alive; returns how many connections that was.
    async fn purge_stale(&self) -> Result<u64, StoreError> {
        let keys = self.keys().await?;
        let live: Vec<String> = keys
            .iter()
            .filter_map(|k| match k {
                Key::Node(n) if *n != self.node => Some(n.clone()),
                _ => None,
            })
            .collect();
        let own_now: Vec<ConnectionId> = lock(&self.own).connections.keys().cloned().collect();
        let stale = |node: &String, id: &ConnectionId| {
            !(live.contains(node) || node == &self.node && own_now.contains(id))
        };
        let mut purged = 0;
        for key in keys {
            match &key {
                Key::Connection { node, id } if stale(node, id) => {
                    self.forget(&Key::connection(node, id)).await?;
                    lock(&self.view).connections.remove(id);
                    self.hook(|| webhook::disconnect(id, None, now_ms())).await;
                    purged += 1;
                }
                Key::Membership { room, node, id } if stale(node, id) => {
                    self.forget(&Key::membership(room, node, id)).await?;
                }
                _ => {}
            }
        }
        // The rows inserted by this very process count as stale too when it asks (the
        // conformance suite does): a server asks only once, before accepting connections.
        let mine = std::mem::take(&mut lock(&self.own).connections);
        for (id, (record, rooms)) in &mine {
            for room in rooms {
                self.forget(&Key::membership(room, &self.node, id)).await?;
            }
            self.forget(&Key::connection(&self.node, id)).await?;
            self.hook(|| webhook::disconnect(id, Some(&record.user), now_ms()))
                .await;
        }
        Ok(purged + mine.len() as u64)
    }
}

/// Membership as the handlers see it in a cluster: joins and presence go to this node's hub
/// (the other nodes learn them from the bucket); `members` is cluster-wide.
pub struct ClusterRooms(pub Arc<Presence>, pub crate::signals::Signals);

#[async_trait::async_trait]
impl RoomMembership for ClusterRooms {
    fn join(&self, connection: &ConnectionId, room: &RoomId) {
        self.0.local.join(connection, room);
    }

    fn leave(&self, connection: &ConnectionId, room: &RoomId) {
        self.0.local.leave(connection, room);
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, StoreError> {
        let mut members = self.0.local.members(room).await?;
        let view = lock(&self.0.view);
        if let Some(all) = view.rooms.get(room) {
            for (id, (node, user)) in all {
                if *node != self.0.node
                    && self.0.alive(&view, node)
                    && !members.iter().any(|m| m.connection_id == *id)
                {
                    members.push(Member {
                        connection_id: id.clone(),
                        user: user.clone(),
                        last_read: dynamowave_core::Seq::ZERO,
                    });
                }
            }
        }
        Ok(members)
    }

    fn presence(
        &self,
        room: &RoomId,
        event: PresenceEvent,
        user: &UserName,
        connection: &ConnectionId,
    ) {
        self.0.local.presence(room, event, user, connection);
    }

    fn signal(&self, room: &RoomId, frame: &str, except: Option<&ConnectionId>) {
        self.0.local.signal(room, frame, except);
        self.1.publish(room, frame, except);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let room = RoomId::parse("a.b").unwrap();
        let id = ConnectionId::parse("k1.X=").unwrap();
        assert_eq!(Key::parse("n.node-1"), Some(Key::Node("node-1".into())));
        assert_eq!(
            Key::parse(&Key::connection("n1", &id)),
            Some(Key::Connection {
                node: "n1".into(),
                id: id.clone()
            })
        );
        assert_eq!(
            Key::parse(&Key::membership(&room, "n1", &id)),
            Some(Key::Membership {
                room,
                node: "n1".into(),
                id
            })
        );
        assert_eq!(Key::parse("x.y"), None);
    }
}
