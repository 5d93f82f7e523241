//! The mesh actor: owns the Swarm, turns commands into swarm calls and swarm events into the
//! peer table.
//!
//! **Liveness.** A peer is live while it is heard: its announcements (gossiped to every
//! connected peer when they hold news) and its beats. A beat is a request on the stream the two
//! nodes hold (`Request::Beat`), answered with the other's beat, every `announce_every`; a node
//! beats every connected peer except the learners of its own cluster, and except a peer with a
//! lower PeerId that beats it already (one exchange a round per pair). So a voter hears every
//! node (each beats it) and every node hears the voters (their answers), while two learners do
//! not beat each other: the traffic of a learner does not grow with the mesh. A learner knows
//! the other learners are alive from the voters: a voter's beat carries the digest of the peers
//! it heard itself ([`super::Live`]), the learner asks for that list when the digest is new, and
//! each later beat with the same digest *vouches* for the peers on it (`PeerTable::vouch`).
//! Vouching lists a peer; only hearing it oneself counts for the always-task lease
//! (`PeerInfo::heard_ms`). The peer list goes out when it changes, the beats heard once per
//! tick; its readers age it to the moment they read it ([`super::PeerList`]).
//!
//! **Discovery.** A node learns of peers by mDNS, by the configured peers, and by announcements
//! (relayed by gossip to peers not connected to their origin, see [`Actor::relay`]). Relaying
//! can miss: two nodes that join through a third at the same moment may each miss the other's
//! announcement, and the next relay is a minute away. So every node, voter or learner, also asks
//! for a voter's list when its digest is new, and asks that voter where a peer on it listens
//! that the node is not connected to (`Request::AddrsOf`); it dials the addresses, and the peer
//! tells who it is once connected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport, connection_limits, gossipsub, identify, mdns, noise, tcp,
    yamux,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::limits::{OverAddressCap, PendingPerAddress};
use super::rpc::{self, Rpc};
use super::{
    Announcement, Beat, CONNECTION_CAPS, Command, HANDSHAKE_TIMEOUT, Live, MeshConfig, MeshError,
    MeshHandle, PeerTable, Request, Response, peer_multiaddr,
};
use taskmesh_core::backoff::{self, Backoff};

const TOPIC: &str = "taskmesh/announce/1";
/// Configured peers are redialled after this, doubling up to [`MAX_REDIAL`].
const FIRST_REDIAL: Duration = Duration::from_secs(1);
const MAX_REDIAL: Duration = Duration::from_secs(30);
/// Each redial wait is cut by up to this part at random, so that nodes restarted together do
/// not redial in lockstep.
const REDIAL_JITTER: f64 = 0.25;
/// An announcement is sent at most this often when things change fast.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A discovered peer with a higher PeerId is expected to dial us; if it has not after this
/// long (it may not have discovered us yet), we dial it after all.
const FALLBACK_DIAL: Duration = Duration::from_millis(700);
/// How many peers a node asks a voter about for each of its beats, when the voter names peers
/// the node is not connected to.
const ASK_ADDRS_PER_BEAT: usize = 8;
/// How often a node relays a peer's announcement that tells it nothing new ([`Actor::relay`]).
const RELAY_EVERY: Duration = Duration::from_secs(60);
/// Connections refused over a cap are logged as a warning at most this often (a flood would
/// otherwise flood the log too).
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);
/// The most peers kept on the list of peers that are down.
const MAX_DOWN: usize = 1024;

/// Whether a dial failed because every address refused the connection: the host is there and
/// nothing listens on the port.
fn refused(error: &libp2p::swarm::DialError) -> bool {
    match error {
        libp2p::swarm::DialError::Transport(errors) => {
            !errors.is_empty()
                && errors.iter().all(|(_, e)| {
                    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
                    while let Some(err) = source {
                        if err
                            .downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                        {
                            return true;
                        }
                        source = err.source();
                    }
                    // Layers that hide their source still print it.
                    format!("{e:?}").contains("ConnectionRefused")
                })
        }
        _ => false,
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Refuses connections over [`CONNECTION_CAPS`]; first, so they decide before the others.
    limits: connection_limits::Behaviour,
    per_address: PendingPerAddress,
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    /// The streams requests travel on (see [`rpc`]).
    streams: libp2p_stream::Behaviour,
}

struct Configured {
    text: String,
    /// The peer it turned out to be, while connected.
    connected: Option<PeerId>,
    next_try: Instant,
    /// The waits between dials while it is not connected.
    backoff: Backoff,
    dialing: bool,
}

struct Actor {
    swarm: Swarm<Behaviour>,
    inbox: mpsc::Receiver<Command>,
    self_tx: mpsc::Sender<Command>,
    topic: gossipsub::IdentTopic,
    table: PeerTable,
    /// The list each voter last gave of the peers it hears, while this node is a learner.
    vouches: HashMap<PeerId, Live>,
    peers_tx: watch::Sender<super::PeerList>,
    /// Whether beats were heard since the peer list was last published: they refresh the
    /// ages, and the list goes out with the next tick instead of once per beat.
    beats_unpublished: bool,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
    own: Option<Announcement>,
    /// What this node last published of `own` (peers know it).
    published: Option<Announcement>,
    /// When this node last relayed an announcement of each peer ([`Self::relay`]).
    relayed: HashMap<String, Instant>,
    publish_stats: Arc<super::Published>,
    traffic: Arc<super::Traffic>,
    /// `own` for the request streams, which answer "who are you?" themselves.
    own_tx: watch::Sender<Option<Announcement>>,
    rpc: Rpc,
    publish_at: Option<Instant>,
    last_publish: Instant,
    configured: Vec<Configured>,
    connected: HashSet<PeerId>,
    /// When each peer last beat this node (its request, which the answer to carries this
    /// node's beat back): see [`Actor::beat`].
    beat_us: HashMap<PeerId, Instant>,
    /// Discovered peers we left to dial us, and when we dial them ourselves if they did not.
    fallback: HashMap<PeerId, (Instant, Vec<Multiaddr>)>,
    /// Peers whose last connection closed, dialled once to tell a dead process (refused) from a
    /// network that is slow or cut (anything else).
    probing: HashSet<PeerId>,
    /// Peers whose process is gone: their connection closed and a dial was refused.
    down_tx: watch::Sender<Arc<std::collections::BTreeSet<String>>>,
    announce_every: Duration,
    peer_ttl: Duration,
    listen_is_loopback: bool,
    /// Incoming connections refused over a cap since the last warning, and when that was.
    refused_over_cap: u64,
    cap_warned: Option<Instant>,
    cancel: CancellationToken,
}

fn build_swarm(config: &MeshConfig) -> Result<Swarm<Behaviour>, MeshError> {
    let psk = PreSharedKey::new(config.key.bytes());
    let mdns = config.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.identity.clone())
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                // In both directions: an incoming connection that never finishes is dropped.
                .timeout(HANDSHAKE_TIMEOUT);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(transport)
        })
        .map_err(|e| MeshError::Build(e.to_string()))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mdns = if mdns {
                // libp2p's default: a query every 5 minutes (a node starting queries every
                // second or so at first, so a new node finds the others at once); each query is
                // answered by every node on the LAN.
                let config = mdns::Config::default();
                Some(mdns::tokio::Behaviour::new(config, peer_id)?)
            } else {
                None
            };
            // Every node connects to every node it learns of, and a publisher sends to all its
            // peers at once (flood publishing); the gossipsub mesh only relays for peers that
            // are not connected yet. So a node relays an announcement only for discovery
            // (`validate_messages`, see `Actor::relay`), the mesh is
            // small, and there is no lazy gossip of message ids (it would cost every heartbeat
            // what the next refresh repairs anyway).
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validate_messages()
                .heartbeat_interval(Duration::from_millis(700))
                .mesh_n(2)
                .mesh_n_low(1)
                .mesh_n_high(4)
                .mesh_outbound_min(1)
                .gossip_lazy(0)
                .gossip_factor(0.0)
                .max_transmit_size(64 * 1024)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(connection_limits()),
                per_address: PendingPerAddress::new(CONNECTION_CAPS.pending_incoming_per_address),
                mdns: Toggle::from(mdns),
                identify: identify::Behaviour::new(
                    identify::Config::new("/taskmesh/1".into(), key.public())
                        .with_agent_version(format!("taskmesh/{}", env!("CARGO_PKG_VERSION"))),
                ),
                gossipsub,
                streams: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| MeshError::Build(e.to_string()))?
        // A substream sends its first message with its protocol's name instead of waiting for
        // the peer to confirm the name: one round trip less for each new stream. Every node
        // speaks the same protocols, and a dialer offering several still waits for all but the
        // last.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(300))
                .with_substream_upgrade_protocol_override(Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}

fn connection_limits() -> connection_limits::ConnectionLimits {
    let caps = CONNECTION_CAPS;
    connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(caps.pending_incoming))
        .with_max_pending_outgoing(Some(caps.pending_outgoing))
        .with_max_established_incoming(Some(caps.established_incoming))
        .with_max_established_per_peer(Some(caps.established_per_peer))
        .with_max_established(Some(caps.established_total))
}

pub(super) async fn start(
    config: MeshConfig,
    cancel: CancellationToken,
) -> Result<(MeshHandle, tokio::task::JoinHandle<()>), MeshError> {
    let mut swarm = build_swarm(&config)?;
    let topic = gossipsub::IdentTopic::new(TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| MeshError::Build(e.to_string()))?;
    swarm
        .listen_on(config.listen.clone())
        .map_err(|e| MeshError::Listen {
            addr: config.listen.clone(),
            message: e.to_string(),
        })?;
    // Wait for the listener, so that callers (and tests) can use the address at once.
    let first = loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => break address,
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                return Err(MeshError::Listen {
                    addr: config.listen.clone(),
                    message: error.to_string(),
                });
            }
            _ => {}
        }
    };
    let local = *swarm.local_peer_id();
    let mut control = swarm.behaviour().streams.new_control();
    let incoming = control
        .accept(rpc::PROTOCOL)
        .map_err(|e| MeshError::Build(e.to_string()))?;
    let (own_tx, own_rx) = watch::channel(None);
    let (tx, inbox) = mpsc::channel(256);
    tokio::spawn(rpc::serve(
        incoming,
        own_rx,
        tx.clone(),
        config.inbound.clone(),
        config.traffic.clone(),
        cancel.clone(),
    ));
    let rpc = Rpc::new(control, config.traffic.clone(), cancel.clone());
    let (peers_tx, peers_rx) =
        watch::channel(super::PeerList::new(std::time::Instant::now(), Vec::new()));
    let (listen_tx, listen_rx) = watch::channel(vec![first]);
    let (down_tx, down_rx) = watch::channel(Arc::new(std::collections::BTreeSet::new()));
    let now = Instant::now();
    let publish_stats = Arc::new(super::Published::default());
    let actor = Actor {
        swarm,
        inbox,
        self_tx: tx.clone(),
        topic,
        table: PeerTable::default(),
        vouches: HashMap::new(),
        peers_tx,
        beats_unpublished: false,
        listen_tx,
        own: None,
        published: None,
        relayed: HashMap::new(),
        publish_stats: publish_stats.clone(),
        traffic: config.traffic.clone(),
        own_tx,
        rpc: rpc.clone(),
        publish_at: None,
        last_publish: now,
        configured: config
            .peers
            .iter()
            .map(|p| Configured {
                text: p.clone(),
                connected: None,
                next_try: now,
                backoff: Backoff::new(FIRST_REDIAL, MAX_REDIAL)
                    .with_jitter(REDIAL_JITTER, backoff::clock_seed()),
                dialing: false,
            })
            .collect(),
        connected: HashSet::new(),
        beat_us: HashMap::new(),
        fallback: HashMap::new(),
        probing: HashSet::new(),
        down_tx,
        announce_every: config.announce_every,
        peer_ttl: config.peer_ttl,
        listen_is_loopback: is_loopback(&config.listen),
        refused_over_cap: 0,
        cap_warned: None,
        cancel,
    };
    info!(peer_id = %local, listen = %config.listen, mdns = config.mdns, key = %super::keys::fingerprint(&config.key), "mesh up");
    let task = tokio::spawn(actor.run());
    Ok((
        MeshHandle {
            tx,
            published: publish_stats,
            peers: peers_rx,
            listen: listen_rx,
            down: down_rx,
            local,
            rpc,
        },
        task,
    ))
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(command) = self.inbox.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = sleep_until_opt(self.publish_at) => self.publish(),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn local(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Announce(mut announcement) => {
                announcement.peer_id = self.local().to_string();
                announcement.addrs = self.own_addrs();
                announcement.seq = self.own.as_ref().map_or(0, |a| a.seq);
                if self.own.as_ref() != Some(&announcement) {
                    let news = self
                        .published
                        .as_ref()
                        .is_none_or(|sent| announcement.is_news_after(sent));
                    self.own = Some(*announcement);
                    self.own_tx.send_replace(self.own.clone());
                    if news {
                        self.publish_soon();
                    }
                }
            }
            Command::Observe(peer, announcement) => {
                if announcement.peer_id == peer.to_string() {
                    let origin = announcement.peer_id.clone();
                    if self.observe(*announcement) {
                        // News heard by asking, which relays nothing: the peer's next gossiped
                        // announcement is relayed at once, so that the others learn it too.
                        self.relayed.remove(&origin);
                    }
                }
            }
            Command::Beat(peer, beat, reply) => {
                self.beat_us.insert(peer, Instant::now());
                self.heard(peer, beat);
                let _ = reply.send(Response::Beat(self.own_beat()));
            }
            Command::Beaten(peer, beat) => self.heard(peer, beat),
            Command::Live(reply) => {
                let _ = reply.send(Response::Live(self.live()));
            }
            Command::AddrsOf(peer, reply) => {
                let _ = reply.send(Response::Addrs(self.table.addrs_of(&peer)));
            }
            Command::Found(peer, addrs) => {
                let addrs = addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .map(StripP2p::with_p2p_stripped)
                    .collect();
                self.dial_discovered(peer, addrs);
            }
            Command::Vouches(voter, mut live) => {
                if live.digest != 0 {
                    live.peers.truncate(Live::MAX_PEERS);
                    // A peer the voter no longer hears loses its word at once (another voter
                    // that still hears it gives it again with its next beat).
                    if let Some(old) = self.vouches.get(&voter).filter(|_| !self.is_voter()) {
                        let named: HashSet<&str> =
                            live.peers.iter().map(|(p, _)| p.as_str()).collect();
                        for (peer, _) in &old.peers {
                            if !named.contains(peer.as_str()) {
                                self.table.unvouch(peer);
                            }
                        }
                    }
                    self.vouches.insert(voter, live);
                    self.apply_vouch(voter);
                    self.publish_peers();
                }
            }
            Command::Dial(addrs) => {
                for addr in addrs {
                    if let Err(e) = self.swarm.dial(addr.clone()) {
                        debug!(%addr, error = %e, "dial failed");
                    }
                }
            }
        }
    }

    /// The addresses others can reach us at: loopback only if we listen on loopback.
    fn own_addrs(&self) -> Vec<String> {
        let local = self.local();
        self.listen_tx
            .borrow()
            .iter()
            .filter(|a| self.listen_is_loopback || !is_loopback(a))
            .map(|a| a.clone().with(Protocol::P2p(local)).to_string())
            .collect()
    }

    fn publish_soon(&mut self) {
        let earliest = self.last_publish + DEBOUNCE;
        let at = earliest.max(Instant::now());
        if self.publish_at.is_none_or(|p| p > at) {
            self.publish_at = Some(at);
        }
    }

    fn publish(&mut self) {
        self.publish_at = None;
        self.last_publish = Instant::now();
        let addrs = self.own_addrs();
        let Some(own) = self.own.as_mut() else { return };
        // Milliseconds since the epoch, but always increasing: a restarted node's announcements
        // are newer than those of its previous life.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        own.seq = (own.seq + 1).max(now_ms);
        own.addrs = addrs;
        self.published = Some(own.clone());
        self.own_tx.send_replace(Some(own.clone()));
        let data = serde_json::to_vec(own).expect("announcements serialise");
        self.publish_stats.record(data.len());
        self.gossip(self.topic.clone(), data);
    }

    /// Publishes `data` on `topic`; having no peers yet is no error.
    fn gossip(&mut self, topic: gossipsub::IdentTopic, data: Vec<u8>) {
        let name = topic.to_string();
        let bytes = data.len();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) => self.traffic.gossip_sent(bytes),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!(topic = %name, error = %e, "not published"),
        }
    }

    /// Beats every connected peer but the learners of this node's cluster (see the module's
    /// doc); each answer comes back as [`Command::Beaten`].
    ///
    /// One exchange a round is enough for two nodes: the answer carries the other's beat. So a
    /// node also leaves out a peer that beat it within the last round and a half, when that
    /// peer's PeerId sorts before its own: of two voters, the lower one beats and the higher
    /// answers, and the higher beats again as soon as the lower stops (whatever the lower
    /// thinks of it).
    fn beat(&mut self) {
        self.publish_stats.record_beat();
        let beat = self.own_beat();
        let mine = self.own.as_ref().and_then(|a| a.cluster).map(|b| b.id);
        let me = *self.swarm.local_peer_id();
        let now = Instant::now();
        let window = self.announce_every * 3 / 2;
        self.beat_us
            .retain(|_, at| now.saturating_duration_since(*at) < window);
        let targets: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|p| {
                let learner = self
                    .table
                    .get(&p.to_string())
                    .and_then(|a| a.cluster)
                    .is_some_and(|b| Some(b.id) == mine && !b.voter);
                let answered = **p < me && self.beat_us.contains_key(p);
                !learner && !answered
            })
            .copied()
            .collect();
        for peer in targets {
            self.publish_stats.record_exchange();
            let (rpc, me) = (self.rpc.clone(), self.self_tx.clone());
            tokio::spawn(async move {
                match rpc.request(peer, &Request::Beat(beat)).await {
                    Ok(Response::Beat(answer)) => {
                        let _ = me.send(Command::Beaten(peer, answer)).await;
                    }
                    Ok(other) => debug!(%peer, answer = ?other, "a beat answered with no beat"),
                    Err(e) => debug!(%peer, error = %e, "beat not answered"),
                }
            });
        }
    }

    /// This node's side of a beat exchange.
    fn own_beat(&self) -> Beat {
        Beat {
            seq: self.published.as_ref().map_or(0, |a| a.seq),
            load: self.own.as_ref().map_or(0.0, |a| a.load),
            live: self.live().digest,
        }
    }

    fn is_voter(&self) -> bool {
        self.own
            .as_ref()
            .and_then(|a| a.cluster)
            .is_some_and(|b| b.voter)
    }

    /// The peers this node heard itself within half the peer timeout (the lease term), when it
    /// is a voter: the list it vouches with. An empty list with digest 0 otherwise.
    fn live(&self) -> Live {
        if !self.is_voter() {
            return Live {
                digest: 0,
                peers: Vec::new(),
            };
        }
        Live::of(
            self.table
                .heard_within(std::time::Instant::now(), self.peer_ttl / 2),
        )
    }

    /// A peer's beat, sent or answered: it keeps the peer listed, or, naming an announcement
    /// this node does not hold, makes it ask the peer directly; a voter's also vouches for the
    /// peers it hears.
    fn heard(&mut self, peer: PeerId, beat: Beat) {
        let now = std::time::Instant::now();
        if self.table.beat(&peer.to_string(), beat.seq, beat.load, now)
            && self.connected.contains(&peer)
        {
            self.ask(peer);
        }
        if beat.live == 0 {
            self.vouches.remove(&peer);
        } else if self
            .vouches
            .get(&peer)
            .is_some_and(|l| l.digest == beat.live)
        {
            self.apply_vouch(peer);
        } else {
            self.ask_live(peer);
        }
        // Once per tick, not once per beat: a voter hears every node every round.
        self.beats_unpublished = true;
    }

    /// Takes `voter`'s last list: a learner takes its word that every peer on it is alive, and
    /// any node asks where a peer on it listens that it is not connected to (two nodes that
    /// joined through a third at the same moment may each have missed the other's
    /// announcement; a peer may be back on a new address). The caller publishes the table.
    fn apply_vouch(&mut self, voter: PeerId) {
        let Some(live) = self.vouches.get(&voter) else {
            return;
        };
        let learner = !self.is_voter();
        let (local, now) = (self.local().to_string(), std::time::Instant::now());
        let (mut ask, mut unreached) = (Vec::new(), Vec::new());
        for (peer, seq) in &live.peers {
            let Ok(id) = peer.parse::<PeerId>() else {
                continue;
            };
            if *peer == local {
                continue;
            }
            let known = self.table.contains(peer);
            let newer = learner && self.table.vouch(peer, *seq, now);
            if self.connected.contains(&id) {
                if newer || !known {
                    ask.push(id);
                }
            } else if unreached.len() < ASK_ADDRS_PER_BEAT {
                unreached.push(id);
            }
        }
        for peer in unreached {
            self.ask_addrs(voter, peer);
        }
        for peer in ask {
            self.ask(peer);
        }
    }

    /// Asks a voter where `peer` listens, to dial it.
    fn ask_addrs(&self, voter: PeerId, peer: PeerId) {
        let (rpc, me) = (self.rpc.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            match rpc
                .request(voter, &Request::AddrsOf(peer.to_string()))
                .await
            {
                Ok(Response::Addrs(addrs)) => {
                    let _ = me.send(Command::Found(peer, addrs)).await;
                }
                Ok(_) => {}
                Err(e) => debug!(%voter, %peer, error = %e, "no addresses"),
            }
        });
    }

    /// Asks a voter whom it hears.
    fn ask_live(&self, voter: PeerId) {
        let (rpc, me) = (self.rpc.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            match rpc.request(voter, &Request::Live).await {
                Ok(Response::Live(live)) => {
                    let _ = me.send(Command::Vouches(voter, live)).await;
                }
                Ok(_) => {}
                Err(e) => debug!(%voter, error = %e, "no list of live peers"),
            }
        });
    }

    /// Every `announce_every`: a round of beats, and the announcement too if something in it
    /// changed since it went out (its progress included, its load not).
    fn refresh(&mut self) {
        self.last_publish = Instant::now();
        let unchanged = match (&self.own, &self.published) {
            (Some(own), Some(sent)) => {
                !own.is_news_after(sent)
                    && own.cluster == sent.cluster
                    && own.addrs == self.own_addrs()
            }
            _ => false,
        };
        if !unchanged {
            self.publish();
        }
        self.beat();
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_publish) >= self.announce_every {
            self.refresh();
        }
        let gone = self.table.expire(now.into_std(), self.peer_ttl);
        for id in &gone {
            info!(peer_id = %id, "peer expired (silent)");
            self.relayed.remove(id);
            if let Ok(peer) = id.parse::<PeerId>() {
                self.vouches.remove(&peer);
            }
        }
        if !gone.is_empty() || self.beats_unpublished {
            self.publish_peers();
        }
        self.redial(now);
        self.dial_fallbacks(now);
    }

    /// Dials configured peers that are not connected, with backoff.
    fn redial(&mut self, now: Instant) {
        for i in 0..self.configured.len() {
            let c = &self.configured[i];
            if c.connected.is_some() || c.dialing || c.next_try > now {
                continue;
            }
            let text = c.text.clone();
            let c = &mut self.configured[i];
            c.next_try = now + c.backoff.next_wait();
            match peer_multiaddr(&text) {
                Some(addr) => {
                    c.dialing = true;
                    if let Err(e) = self.swarm.dial(addr.clone()) {
                        self.configured[i].dialing = false;
                        debug!(peer = %text, error = %e, "dial failed");
                    }
                }
                None => {
                    // A host name: look it up without blocking the actor.
                    let tx = self.self_tx.clone();
                    tokio::spawn(async move {
                        match tokio::net::lookup_host(&text).await {
                            Ok(addrs) => {
                                let addrs = addrs.map(super::socket_multiaddr).collect();
                                let _ = tx.send(Command::Dial(addrs)).await;
                            }
                            Err(e) => {
                                warn!(peer = %text, error = %e, "configured peer does not resolve")
                            }
                        }
                    });
                }
            }
        }
    }

    fn publish_peers(&mut self) {
        self.beats_unpublished = false;
        let connected = &self.connected;
        let now = std::time::Instant::now();
        let snapshot = self.table.snapshot(now, |id| {
            id.parse::<PeerId>().is_ok_and(|p| connected.contains(&p))
        });
        self.peers_tx
            .send_replace(super::PeerList::new(now, snapshot));
    }

    fn dial_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if addrs.is_empty() || peer == self.local() || self.connected.contains(&peer) {
            return;
        }
        if should_dial(self.local(), peer, false) {
            self.dial(peer, addrs);
        } else {
            self.fallback
                .entry(peer)
                .or_insert_with(|| (Instant::now() + FALLBACK_DIAL, addrs));
        }
    }

    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "dial failed");
        }
    }

    /// Dials a listed peer whose last connection closed, once: a refusal means its process is
    /// gone (the host answers, nothing listens), which [`Self::mark_down`] tells at once instead
    /// of after the peer timeout.
    fn probe(&mut self, peer: PeerId) {
        let addrs: Vec<Multiaddr> = self
            .table
            .addrs_of(&peer.to_string())
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if addrs.is_empty() || self.cancel.is_cancelled() {
            return;
        }
        self.probing.insert(peer);
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            self.probing.remove(&peer);
            debug!(%peer, error = %e, "probe not dialled");
        }
    }

    /// A peer whose process is gone: off the table, and on the list of peers that are down
    /// until they connect again.
    fn mark_down(&mut self, peer: PeerId) {
        info!(peer_id = %peer, "peer's process is gone (its connection closed and a dial was refused)");
        self.table.remove(&peer.to_string());
        self.relayed.remove(&peer.to_string());
        self.vouches.remove(&peer);
        self.down_tx.send_modify(|down| {
            let down = Arc::make_mut(down);
            if down.len() >= MAX_DOWN {
                down.pop_first();
            }
            down.insert(peer.to_string());
        });
        self.publish_peers();
    }

    /// Dials the discovered higher peers that did not dial us in time.
    fn dial_fallbacks(&mut self, now: Instant) {
        let connected = &self.connected;
        self.fallback.retain(|peer, _| !connected.contains(peer));
        let due: Vec<PeerId> = self
            .fallback
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some((_, addrs)) = self.fallback.remove(&peer) {
                self.dial(peer, addrs);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } if !is_unspecified(&address) => {
                self.listen_tx.send_modify(|l| {
                    if !l.contains(&address) {
                        l.push(address);
                    }
                });
                self.publish_soon();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.connected.insert(peer_id);
                self.probing.remove(&peer_id);
                self.down_tx.send_if_modified(|down| {
                    down.contains(&peer_id.to_string())
                        && Arc::make_mut(down).remove(&peer_id.to_string())
                });
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone().with_p2p_stripped();
                    for c in &mut self.configured {
                        if peer_multiaddr(&c.text).is_some_and(|m| m == addr) {
                            c.connected = Some(peer_id);
                            c.dialing = false;
                            c.backoff.reset();
                        }
                    }
                }
                if num_established.get() == 1 {
                    debug!(%peer_id, "connected");
                    // Ask directly, so a new peer is listed without waiting for gossip.
                    self.ask(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                for c in &mut self.configured {
                    if c.connected == Some(peer_id) {
                        c.connected = None;
                        // The backoff was reset on connecting: this is its first wait.
                        c.next_try = Instant::now() + c.backoff.next_wait();
                    }
                }
                self.probe(peer_id);
                self.publish_peers();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outgoing connection failed");
                if let Some(peer) = peer_id.filter(|p| self.probing.remove(p)) {
                    if refused(&error) {
                        self.mark_down(peer);
                    }
                }
                for c in self
                    .configured
                    .iter_mut()
                    .filter(|c| c.dialing && c.connected.is_none())
                {
                    c.dialing = false;
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let over_cap = matches!(&error, ListenError::Denied { cause }
                    if cause.downcast_ref::<connection_limits::Exceeded>().is_some()
                        || cause.downcast_ref::<OverAddressCap>().is_some());
                if over_cap {
                    self.refused_over_cap += 1;
                    if self
                        .cap_warned
                        .is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY)
                    {
                        warn!(from = %send_back_addr, refused = self.refused_over_cap, %error, "incoming p2p connections refused over the connection caps");
                        self.refused_over_cap = 0;
                        self.cap_warned = Some(Instant::now());
                    }
                } else {
                    // Typically a node with another cluster key, or one that did not finish
                    // its handshakes in time.
                    debug!(from = %send_back_addr, %error, "incoming connection refused");
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    self.dial_discovered(peer, addrs);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.traffic.gossip_received(message.data.len());
                let verdict = match message.source {
                    None => gossipsub::MessageAcceptance::Reject,
                    Some(source) => self.on_announcement(source, &message.data),
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. }) => {
                // A new listener: tell it (and, through it, everyone) who we are.
                self.publish_soon();
            }
            _ => {}
        }
    }

    /// A gossiped announcement: taken into the table, and relayed when [`Self::relay`] says so.
    fn on_announcement(&mut self, source: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
        match crate::peers::decode_announcement(data, &source.to_string()) {
            Ok(a) => {
                let origin = a.peer_id.clone();
                let discovery = self.observe(a);
                match self.relay(origin, discovery) {
                    true => gossipsub::MessageAcceptance::Accept,
                    false => gossipsub::MessageAcceptance::Ignore,
                }
            }
            Err(e) => {
                warn!(%source, error = %e, "announcement ignored");
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    /// Asks a connected peer for its announcement ("who are you?").
    fn ask(&self, peer_id: PeerId) {
        let (rpc, me) = (self.rpc.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            match rpc.request(peer_id, &Request::Announcement).await {
                Ok(Response::Announcement(Some(a))) => {
                    let _ = me.send(Command::Observe(peer_id, a)).await;
                }
                Ok(_) => {}
                Err(e) => debug!(%peer_id, error = %e, "no announcement"),
            }
        });
    }

    /// Whether to relay an announcement of `origin` this node just took in: when it told of a
    /// new peer or address, and otherwise once every [`RELAY_EVERY`] per origin. Every peer
    /// connected to the origin received it directly (flood publishing, see [`build_swarm`]);
    /// relaying is for those not connected to it yet, so that they learn of it and dial it.
    fn relay(&mut self, origin: String, discovery: bool) -> bool {
        let now = Instant::now();
        let due = discovery
            || self
                .relayed
                .get(&origin)
                .is_none_or(|at| now.duration_since(*at) >= RELAY_EVERY);
        if due {
            self.relayed.insert(origin, now);
        }
        due
    }

    /// Takes a peer's announcement into the table; returns whether it told this node of a peer
    /// or an address it did not know.
    fn observe(&mut self, announcement: Announcement) -> bool {
        if announcement.peer_id == self.local().to_string() {
            return false;
        }
        if let Err(e) = announcement.check() {
            warn!(peer_id = %announcement.peer_id, error = %e, "announcement refused");
            return false;
        }
        let peer: Option<PeerId> = announcement.peer_id.parse().ok();
        let addrs: Vec<Multiaddr> = announcement
            .addrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .map(|a| {
                if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                    a.with_p2p_stripped()
                } else {
                    a
                }
            })
            .collect();
        let new = !self.table.contains(&announcement.peer_id);
        let discovery = new || self.table.addrs_of(&announcement.peer_id) != announcement.addrs;
        if self.table.observe(announcement, std::time::Instant::now()) {
            if new {
                info!(peer = ?peer, "peer joined");
            }
            self.publish_peers();
        }
        // Peer exchange: learn the addresses of peers we only heard of.
        if let Some(peer) = peer {
            self.dial_discovered(peer, addrs);
        }
        discovery
    }
}

/// Whether this node dials a peer it discovered (by mDNS or gossip) at once: only the lower
/// PeerId does, so two nodes do not dial each other at the same moment. (The higher one dials
/// after [`FALLBACK_DIAL`] if no connection came.)
fn should_dial(local: PeerId, peer: PeerId, connected: bool) -> bool {
    !connected && local < peer
}

trait StripP2p {
    fn with_p2p_stripped(self) -> Self;
}

impl StripP2p for Multiaddr {
    fn with_p2p_stripped(mut self) -> Self {
        if matches!(self.iter().last(), Some(Protocol::P2p(_))) {
            self.pop();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lower_peer_id_dials() {
        let a = PeerId::random();
        let b = PeerId::random();
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        assert!(should_dial(low, high, false));
        assert!(!should_dial(high, low, false));
        assert!(!should_dial(low, high, true), "no second connection");
        assert!(!should_dial(low, low, false), "never itself");
    }
}
