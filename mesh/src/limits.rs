//! A cap on the handshakes one remote IP address holds open at once, so that one host without
//! the key cannot take every pending slot of [`super::CONNECTION_CAPS`] and keep peers out.
//!
//! It keeps its books as libp2p's `connection_limits` does: a connection counts from
//! `handle_pending_inbound_connection` until it is established or fails (`ListenFailure`, which
//! the swarm also sends when another behaviour refuses it).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::ListenFailure;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Refuses an incoming connection while its address already has `cap` in their handshakes.
pub(super) struct PendingPerAddress {
    cap: usize,
    pending: HashMap<IpAddr, HashSet<ConnectionId>>,
    address_of: HashMap<ConnectionId, IpAddr>,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{address} already has {cap} connections in their handshakes")]
pub struct OverAddressCap {
    pub address: IpAddr,
    pub cap: usize,
}

impl PendingPerAddress {
    pub(super) fn new(cap: u32) -> Self {
        Self {
            cap: cap as usize,
            pending: HashMap::new(),
            address_of: HashMap::new(),
        }
    }

    /// The connection's handshakes ended (it is established, or it failed or was refused).
    fn ended(&mut self, connection: ConnectionId) {
        let Some(address) = self.address_of.remove(&connection) else {
            return;
        };
        if let Some(held) = self.pending.get_mut(&address) {
            held.remove(&connection);
            if held.is_empty() {
                self.pending.remove(&address);
            }
        }
    }

    /// Connections in their handshakes, from every address.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.address_of.len()
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for PendingPerAddress {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(address) = ip_of(remote_addr) else {
            return Ok(());
        };
        let held = self.pending.entry(address).or_default();
        if held.len() >= self.cap {
            return Err(ConnectionDenied::new(OverAddressCap {
                address,
                cap: self.cap,
            }));
        }
        held.insert(connection_id);
        self.address_of.insert(connection_id, address);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.ended(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) = event {
            self.ended(connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/40000").parse().expect("multiaddr")
    }

    #[test]
    fn each_address_holds_at_most_the_cap_and_gets_its_slots_back() {
        let local = addr("127.0.0.1");
        let mut caps = PendingPerAddress::new(2);
        let (a1, a2, a3, b1) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
            ConnectionId::new_unchecked(4),
        );
        let a = addr("10.0.0.1");
        let b = addr("10.0.0.2");
        assert!(
            caps.handle_pending_inbound_connection(a1, &local, &a)
                .is_ok()
        );
        assert!(
            caps.handle_pending_inbound_connection(a2, &local, &a)
                .is_ok()
        );
        let refused = caps
            .handle_pending_inbound_connection(a3, &local, &a)
            .expect_err("over the cap");
        assert!(refused.downcast_ref::<OverAddressCap>().is_some());
        assert!(
            caps.handle_pending_inbound_connection(b1, &local, &b)
                .is_ok(),
            "another address has its own slots"
        );
        // One established, one failed: both slots are free again.
        assert!(
            caps.handle_established_inbound_connection(a1, PeerId::random(), &local, &a)
                .is_ok()
        );
        let error = libp2p::swarm::ListenError::Aborted;
        caps.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &a,
            error: &error,
            connection_id: a2,
            peer_id: None,
        }));
        assert_eq!(caps.held(), 1);
        assert!(
            caps.handle_pending_inbound_connection(a3, &local, &a)
                .is_ok()
        );
        // A failure of a connection it never counted changes nothing.
        caps.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &a,
            error: &error,
            connection_id: ConnectionId::new_unchecked(99),
            peer_id: None,
        }));
        assert_eq!(caps.held(), 2);
    }
}
