//! The mesh: one actor owns the libp2p Swarm (tcp + pnet + noise + yamux; mdns, identify,
//! gossipsub, and streams for requests and beats). Everyone else talks to it through a cloneable
//! [`MeshHandle`]; requests go over one long-lived stream per peer (`rpc.rs`), not through the
//! actor.
//!
//! - **Closed by key.** Every connection first runs a pnet handshake with the cluster key, then
//!   noise: a node without the key cannot connect, gossip, or send a request.
//! - **Discovery.** mDNS (optional), configured peer addresses (redialled with backoff), and peer
//!   exchange: each announcement carries the sender's addresses, and gossip carries every
//!   announcement to every node, so a node given one peer learns them all. For discovered peers
//!   only the lower PeerId dials, so two nodes never dial each other at once.
//! - **Announcements and beats.** Each node gossips its [`Announcement`] when it holds news, and
//!   beats the voters (a voter: everyone) every few seconds; a learner lists the other
//!   learners on the voters' word. A peer neither heard nor vouched for within the peer TTL
//!   expires (see `actor.rs`).
//! - **Bounded.** Connections are capped ([`CONNECTION_CAPS`]), and one that has not finished
//!   its handshakes within [`HANDSHAKE_TIMEOUT`] is closed, so connections without the key
//!   cannot use up the node's file descriptors.

mod actor;
pub mod keys;
mod limits;
mod peers;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use keys::{ClusterKey, fingerprint, load_or_create_identity};
pub use libp2p::PeerId;
pub use limits::OverAddressCap;
pub use peers::{Announcement, ClusterBadge, PeerInfo, PeerList, PeerTable, load_average};
pub use rpc::Reply;

/// The decoders of what peers send, exactly as the mesh reads it: gossiped announcements, and
/// the frames and JSON of requests and answers on a request stream. Public so that the fuzz
/// targets (`fuzz/`) feed them arbitrary bytes; the node itself goes through [`MeshHandle`].
pub mod wire {
    pub use crate::peers::decode_announcement;
    pub use crate::rpc::{decode_request, decode_response, read_frame};
}

/// How many connections the mesh holds at once; a connection over a cap is closed at once.
///
/// A mesh of 30 nodes needs at most 29 established connections per node, 58 if every pair
/// briefly holds two (both dialled at once, or a restarted peer whose old connection has not
/// timed out yet), and at most 29 handshakes at once (every peer redialling together). The caps
/// leave room for twice that. Pending incoming connections (TCP accepted, handshakes not done)
/// are what a stranger without the key can hold: at most 64, each for at most
/// [`HANDSHAKE_TIMEOUT`], and 8 of them from one IP address, so that a host flooding the port
/// leaves slots for peers at other addresses. Connections already established are not affected
/// by a flood.
pub const CONNECTION_CAPS: ConnectionCaps = ConnectionCaps {
    pending_incoming: 64,
    pending_incoming_per_address: 8,
    pending_outgoing: 128,
    established_incoming: 128,
    established_per_peer: 4,
    established_total: 192,
};

/// A connection must finish TCP, the pnet handshake (the cluster key), noise and yamux within
/// this; one that does not (a client without the key that sends nothing) is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Caps on the mesh's connections (see [`CONNECTION_CAPS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Incoming connections still in their handshakes.
    pub pending_incoming: u32,
    /// Of those, from one IP address.
    pub pending_incoming_per_address: u32,
    /// Dials still in their handshakes.
    pub pending_outgoing: u32,
    pub established_incoming: u32,
    /// Connections with one peer (normally one).
    pub established_per_peer: u32,
    /// Established connections, incoming and outgoing.
    pub established_total: u32,
}

/// How a mesh endpoint starts.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub identity: Keypair,
    pub key: ClusterKey,
    pub listen: Multiaddr,
    pub mdns: bool,
    /// Configured peers: `host:port` or multiaddrs.
    pub peers: Vec<String>,
    pub announce_every: Duration,
    pub peer_ttl: Duration,
    /// Where requests the mesh does not answer itself go (Raft RPCs, run logs).
    pub inbound: Option<mpsc::Sender<Inbound>>,
    /// Where the endpoint counts the bytes it sends and receives; the node keeps one across
    /// restarts of its endpoint, so the counts only grow.
    pub traffic: Arc<Traffic>,
}

/// Requests one node sends another over the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// "Who are you?": the peer's current announcement (the mesh answers it itself).
    Announcement,
    /// "I am alive": answered with the peer's own [`Beat`] (the mesh answers it itself).
    Beat(Beat),
    /// "Whom do you hear?": a voter's [`Live`] list (the mesh answers it itself).
    Live,
    /// "Where does this peer listen?": the addresses of another peer, as the asked node holds
    /// them (the mesh answers it itself). How a learner reaches a peer a voter names that it
    /// never heard of; who the peer is, the peer tells once connected.
    AddrsOf(String),
    /// A Raft RPC, opaque to the mesh (the consensus layer encodes and answers it). Raw JSON:
    /// the mesh carries it as it is, without building a tree of it.
    Raft(Box<RawValue>),
    /// A piece of a run's log, from byte `from`, at most `max` bytes (the node that ran it
    /// answers).
    RunLog { run: String, from: u64, max: u32 },
    /// Run requests a follower hands to the leader's scheduler (a list), opaque to the mesh.
    Schedule(Box<RawValue>),
    /// The runs a node keeps in its own history that match a query (opaque to the mesh): how
    /// a node lists history that ran elsewhere.
    Runs(Box<RawValue>),
    /// What the runs of a node's own history since a time did (counts, durations), opaque to
    /// the mesh: how the dashboard adds up the cluster.
    RunStats(Box<RawValue>),
}

impl Request {
    /// The request's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Announcement => "announcement",
            Request::Beat(_) => "beat",
            Request::Live => "live",
            Request::AddrsOf(_) => "addrs_of",
            Request::Raft(_) => "raft",
            Request::RunLog { .. } => "run_log",
            Request::Schedule(_) => "schedule",
            Request::Runs(_) => "runs",
            Request::RunStats(_) => "run_stats",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Announcement(Option<Box<Announcement>>),
    Beat(Beat),
    Live(Live),
    /// A peer's addresses; empty when the node does not know it.
    Addrs(Vec<String>),
    Raft(Box<RawValue>),
    /// The log piece; `None` when the node has no log for that run.
    RunLog(Option<Vec<u8>>),
    /// The leader's answer to each handed-over run request, in order.
    Schedule(Box<RawValue>),
    /// The matching runs of the node's history, newest first.
    Runs(Box<RawValue>),
    /// The node's run statistics.
    RunStats(Box<RawValue>),
    /// The receiving node could not handle the request (no handler, or it failed).
    Error(String),
}

/// One side of a beat exchange: the number of the announcement the node holds out as current
/// (0 before its first), its load average now, and, from a voter, the digest of the peers it
/// hears itself (its [`Live`] list; 0 from a node that is not a voter).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub seq: u64,
    pub load: f32,
    pub live: u64,
}

/// The peers a voter heard itself within half the peer timeout, each with the number of the
/// announcement it holds, and the digest of their ids that its beats carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub digest: u64,
    pub peers: Vec<(String, u64)>,
}

impl Live {
    /// The most peers a list may name (a 30-node mesh names 29).
    pub const MAX_PEERS: usize = 1024;

    /// A voter's list of `peers`: the digest is never 0, which stands for "no list".
    pub fn of(peers: Vec<(String, u64)>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        for (id, _) in &peers {
            id.hash(&mut hasher);
        }
        Live {
            digest: hasher.finish() | 1,
            peers,
        }
    }
}

/// A request from a peer that the mesh does not answer itself; whoever handles it answers
/// through `reply` (dropping it answers with an error).
#[derive(Debug)]
pub struct Inbound {
    pub from: PeerId,
    pub request: Request,
    pub reply: Reply,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the p2p listen address {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
    #[error("building the p2p endpoint: {0}")]
    Build(String),
    #[error("request to {peer} failed: {message}")]
    Request { peer: PeerId, message: String },
}

pub(crate) enum Command {
    Announce(Box<Announcement>),
    Dial(Vec<Multiaddr>),
    /// A peer's answer to "who are you?", asked when it connected.
    Observe(PeerId, Box<Announcement>),
    /// A peer's beat, to be answered with this node's.
    Beat(PeerId, Beat, Reply),
    /// A peer's answer to this node's beat.
    Beaten(PeerId, Beat),
    /// A peer asks whom this node hears.
    Live(Reply),
    /// A voter's answer to that.
    Vouches(PeerId, Live),
    /// A peer asks where another peer listens.
    AddrsOf(String, Reply),
    /// The answer to that, about `peer`.
    Found(PeerId, Vec<String>),
}

/// What this node has sent of its own since the endpoint started: announcements and beats.
#[derive(Debug, Default)]
pub struct Published {
    count: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    largest: std::sync::atomic::AtomicU64,
    beats: std::sync::atomic::AtomicU64,
    exchanges: std::sync::atomic::AtomicU64,
}

impl Published {
    pub(crate) fn record(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.count.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.largest.fetch_max(bytes as u64, Relaxed);
    }

    pub(crate) fn record_beat(&self) {
        self.beats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn record_exchange(&self) {
        self.exchanges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many rounds of beats went out.
    pub fn beats(&self) -> u64 {
        self.beats.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many beats went out to single peers, in all rounds.
    pub fn beat_exchanges(&self) -> u64 {
        self.exchanges.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many announcements went out.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Their encoded bytes, all together.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The encoded bytes of the largest one.
    pub fn largest(&self) -> u64 {
        self.largest.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The bytes an endpoint sent and received: the request frames (`[length][id][JSON]`, both
/// directions of every request stream) and the payloads of the gossip messages this node
/// published or was delivered. What noise, yamux and gossipsub add around them is not counted.
#[derive(Debug, Default)]
pub struct Traffic {
    rpc_sent: std::sync::atomic::AtomicU64,
    rpc_received: std::sync::atomic::AtomicU64,
    gossip_sent: std::sync::atomic::AtomicU64,
    gossip_received: std::sync::atomic::AtomicU64,
}

impl Traffic {
    /// Counts `bytes` of request frames written to a peer.
    pub fn rpc_sent(&self, bytes: usize) {
        Self::add(&self.rpc_sent, bytes);
    }

    /// Counts `bytes` of request frames read from a peer.
    pub fn rpc_received(&self, bytes: usize) {
        Self::add(&self.rpc_received, bytes);
    }

    /// Counts a gossip message of `bytes` this node published.
    pub fn gossip_sent(&self, bytes: usize) {
        Self::add(&self.gossip_sent, bytes);
    }

    /// Counts a gossip message of `bytes` delivered to this node.
    pub fn gossip_received(&self, bytes: usize) {
        Self::add(&self.gossip_received, bytes);
    }

    fn add(counter: &std::sync::atomic::AtomicU64, bytes: usize) {
        counter.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn totals(&self) -> TrafficTotals {
        use std::sync::atomic::Ordering::Relaxed;
        TrafficTotals {
            rpc_sent: self.rpc_sent.load(Relaxed),
            rpc_received: self.rpc_received.load(Relaxed),
            gossip_sent: self.gossip_sent.load(Relaxed),
            gossip_received: self.gossip_received.load(Relaxed),
        }
    }
}

/// A reading of [`Traffic`], in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    pub rpc_sent: u64,
    pub rpc_received: u64,
    pub gossip_sent: u64,
    pub gossip_received: u64,
}

/// A cloneable handle on the mesh actor.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::Sender<Command>,
    published: Arc<Published>,
    peers: watch::Receiver<PeerList>,
    listen: watch::Receiver<Vec<Multiaddr>>,
    down: watch::Receiver<Arc<std::collections::BTreeSet<String>>>,
    local: PeerId,
    rpc: rpc::Rpc,
}

impl MeshHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// What this node has gossiped of its own announcements.
    pub fn published(&self) -> &Published {
        &self.published
    }

    /// The live peers (not this node), by name, with their ages as of now.
    pub fn peers(&self) -> Arc<Vec<PeerInfo>> {
        let list = self.peers.borrow().clone();
        list.as_of(std::time::Instant::now())
    }

    /// The peers whose process is known to be gone: their connection closed and a dial to them
    /// was refused. A peer leaves the list when it connects again.
    pub fn down(&self) -> Arc<std::collections::BTreeSet<String>> {
        self.down.borrow().clone()
    }

    /// The addresses the p2p endpoint listens on.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen.borrow().clone()
    }

    /// Sets what this node announces; the mesh fills in its id, addresses and sequence number
    /// and gossips it when it changed.
    pub async fn announce(&self, announcement: Announcement) {
        let _ = self
            .tx
            .send(Command::Announce(Box::new(announcement)))
            .await;
    }

    /// Sends a request to a peer and waits for its answer (at most 10 s).
    #[tracing::instrument(level = "debug", skip_all, fields(%peer, request = request.kind()))]
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, MeshError> {
        self.rpc.request(peer, &request).await
    }
}

/// Starts the mesh actor; returns once it listens.
pub async fn start(
    config: MeshConfig,
    cancel: CancellationToken,
) -> Result<(MeshHandle, tokio::task::JoinHandle<()>), MeshError> {
    actor::start(config, cancel).await
}

/// Turns a configured peer (`host:port` with an IP, or a multiaddr) into a multiaddr; `None`
/// for a host name, which needs a lookup first.
pub fn peer_multiaddr(peer: &str) -> Option<Multiaddr> {
    if peer.starts_with('/') {
        return peer.parse().ok();
    }
    let addr: std::net::SocketAddr = peer.parse().ok()?;
    Some(socket_multiaddr(addr))
}

pub fn socket_multiaddr(addr: std::net::SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(libp2p::multiaddr::Protocol::Tcp(addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        key: &ClusterKey,
        peers: Vec<String>,
        inbound: Option<mpsc::Sender<Inbound>>,
    ) -> MeshConfig {
        MeshConfig {
            identity: Keypair::generate_ed25519(),
            key: key.clone(),
            listen: "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"),
            mdns: false,
            peers,
            announce_every: Duration::from_secs(2),
            peer_ttl: Duration::from_secs(10),
            inbound,
            traffic: Arc::default(),
        }
    }

    fn raw(value: &serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(value).expect("json")
    }

    #[tokio::test]
    async fn requests_the_mesh_does_not_answer_reach_the_node_and_come_back() {
        let cancel = CancellationToken::new();
        let (a, b, mut rx) = pair(&cancel, &cancel).await;
        tokio::spawn(async move {
            while let Some(inbound) = rx.recv().await {
                let Request::Raft(value) = inbound.request else {
                    continue;
                };
                let _ = inbound
                    .reply
                    .send(Response::Raft(raw(&serde_json::json!({"echo": value}))));
            }
        });
        let answer = b
            .request(
                a.local_peer_id(),
                Request::Raft(raw(&serde_json::json!(42))),
            )
            .await
            .expect("an answer");
        match answer {
            Response::Raft(v) => assert_eq!(v.get(), r#"{"echo":42}"#),
            other => panic!("unexpected answer {other:?}"),
        }
        // A node without a handler says so instead of hanging.
        match a
            .request(b.local_peer_id(), Request::Raft(raw(&serde_json::json!(1))))
            .await
        {
            Ok(Response::Error(message)) => {
                assert!(message.contains("no such request"), "{message}")
            }
            other => panic!("unexpected answer {other:?}"),
        }
        cancel.cancel();
    }

    /// Starts `a` (its node's requests come out of the returned receiver) and `b` (knowing `a`'s
    /// address, and handling no requests), and waits until a request from `b` reaches `a`.
    async fn pair(
        cancel_a: &CancellationToken,
        cancel_b: &CancellationToken,
    ) -> (MeshHandle, MeshHandle, mpsc::Receiver<Inbound>) {
        let key = ClusterKey::generate().expect("key");
        let (tx, mut rx) = mpsc::channel(256);
        let (a, _) = start(config(&key, vec![], Some(tx)), cancel_a.clone())
            .await
            .expect("a");
        let addr = a.listen_addrs()[0].to_string();
        let (b, _) = start(config(&key, vec![addr], None), cancel_b.clone())
            .await
            .expect("b");
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ask = b.request(a.local_peer_id(), Request::Raft(raw(&serde_json::json!(0))));
            tokio::pin!(ask);
            let answer = loop {
                tokio::select! {
                    answer = &mut ask => break answer,
                    Some(inbound) = rx.recv() => {
                        let _ = inbound.reply.send(Response::Raft(raw(&serde_json::json!(0))));
                    }
                }
            };
            if answer.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "b never reached a: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (a, b, rx)
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_their_own_answer_whatever_the_order() {
        let cancel = CancellationToken::new();
        let (a, b, mut rx) = pair(&cancel, &cancel).await;
        // The node answers 50 requests only once all have arrived, last first.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while held.len() < 50 {
                held.push(rx.recv().await.expect("a request"));
            }
            for inbound in held.into_iter().rev() {
                let Request::Raft(value) = inbound.request else {
                    panic!("not a Raft request")
                };
                let _ = inbound
                    .reply
                    .send(Response::Raft(raw(&serde_json::json!({"echo": value}))));
            }
        });
        let asks = (0..50).map(|i| {
            let (b, peer) = (b.clone(), a.local_peer_id());
            async move {
                (
                    i,
                    b.request(peer, Request::Raft(raw(&serde_json::json!(i))))
                        .await,
                )
            }
        });
        for (i, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(Response::Raft(v)) => assert_eq!(v.get(), format!(r#"{{"echo":{i}}}"#)),
                other => panic!("request {i}: unexpected answer {other:?}"),
            }
        }
        cancel.cancel();
    }

    #[tokio::test]
    async fn requests_waiting_on_a_peer_that_stops_fail_at_once() {
        let (cancel_a, cancel_b) = (CancellationToken::new(), CancellationToken::new());
        let (a, b, mut rx) = pair(&cancel_a, &cancel_b).await;
        let peer = a.local_peer_id();
        let ask = tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            let answer = b
                .request(peer, Request::Raft(raw(&serde_json::json!(1))))
                .await;
            (answer, asked.elapsed())
        });
        // `a` holds the request unanswered, then stops.
        let held = rx.recv().await.expect("the request arrived");
        cancel_a.cancel();
        let (answer, took) = ask.await.expect("asker");
        drop(held);
        assert!(answer.is_err(), "answered by a stopped node: {answer:?}");
        assert!(
            took < Duration::from_secs(5),
            "the request waited {took:?}, as if for its timeout"
        );
        cancel_b.cancel();
    }
}
