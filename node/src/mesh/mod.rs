//! The mesh: one actor owns the libp2p Swarm (tcp + pnet + noise + yamux; mdns, identify, ping,
//! gossipsub, request-response). Everyone else talks to it through a cloneable [`MeshHandle`].
//!
//! - **Closed by key.** Every connection first runs a pnet handshake with the cluster key, then
//!   noise: a node without the key cannot connect, gossip, or send a request.
//! - **Discovery.** mDNS (optional), configured peer addresses (redialled with backoff), and peer
//!   exchange: each announcement carries the sender's addresses, and gossip carries every
//!   announcement to every node, so a node given one peer learns them all. For discovered peers
//!   only the lower PeerId dials, so two nodes never dial each other at once.
//! - **Announcements.** Each node gossips its [`Announcement`] on change and every few seconds;
//!   a peer silent for longer than the peer TTL expires.

mod actor;
pub mod keys;
mod peers;

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use keys::{ClusterKey, load_or_create_identity};
pub use libp2p::PeerId;
pub use peers::{Announcement, PeerInfo, PeerTable};

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
}

/// Requests one node sends another over the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// "Who are you?": the peer's current announcement.
    Announcement,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Announcement(Option<Box<Announcement>>),
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the p2p listen address {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
    #[error("building the p2p endpoint: {0}")]
    Build(String),
    #[error("request to {peer} failed: {message}")]
    Request { peer: PeerId, message: String },
    #[error("the mesh has stopped")]
    Stopped,
}

pub(crate) enum Command {
    Announce(Box<Announcement>),
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, MeshError>>,
    },
    Dial(Vec<Multiaddr>),
}

/// A cloneable handle on the mesh actor.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::Sender<Command>,
    peers: watch::Receiver<Arc<Vec<PeerInfo>>>,
    listen: watch::Receiver<Vec<Multiaddr>>,
    local: PeerId,
}

impl MeshHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// The live peers (not this node), by name.
    pub fn peers(&self) -> Arc<Vec<PeerInfo>> {
        self.peers.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<PeerInfo>>> {
        self.peers.clone()
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

    /// Sends a request to a peer and waits for its answer.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
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
