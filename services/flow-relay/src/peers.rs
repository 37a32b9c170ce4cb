//! The nodes the relay reads flows from: a name and the address of the node's flow
//! observer. They come from two places — `--peer NAME=HOST:PORT` flags (static, for setups
//! without a datastore) and the datastore's Node records (`crate::discovery`) — merged in a
//! [`PeerSet`] that follow streams watch, so nodes joining and leaving are picked up while
//! a stream runs. A static peer wins over a discovered node of the same name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tokio::sync::watch;

use crate::error::RelayError;

/// Default port of a node's flow observer (the agent's `--flow-listen`).
pub const DEFAULT_PEER_PORT: u16 = 7404;

/// Node name → address (`host:port`) of its flow observer.
pub type Peers = BTreeMap<String, String>;

/// One node to read flows from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// `host:port` of its flow observer.
    pub address: String,
}

impl Peer {
    /// Parses a `--peer NAME=HOST:PORT` (or `NAME=unix:/path`) flag.
    pub fn parse_flag(flag: &str) -> Result<Peer, RelayError> {
        let invalid = |reason: &str| RelayError::InvalidPeer {
            flag: flag.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, address) = flag
            .split_once('=')
            .ok_or_else(|| invalid("there is no '=' between the node name and its address"))?;
        let (name, address) = (name.trim(), address.trim());
        if name.is_empty() {
            return Err(invalid("the node name is empty"));
        }
        if name.contains(|c: char| c.is_whitespace() || c == ',' || c.is_control()) {
            return Err(invalid(
                "a node name has no whitespace, commas or control characters",
            ));
        }
        if let Some(path) = address.strip_prefix("unix:") {
            // A flow observer on a unix socket of this machine (its owner is admin there).
            if path.trim_start_matches('/').is_empty() {
                return Err(invalid("the unix socket path is empty"));
            }
            return Ok(Peer {
                name: name.to_owned(),
                address: address.to_owned(),
            });
        }
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| invalid("the address has no port (HOST:PORT)"))?;
        if host.is_empty() {
            return Err(invalid("the address has no host"));
        }
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?;
        Ok(Peer {
            name: name.to_owned(),
            address: address.to_owned(),
        })
    }

    /// The flow observer of a node whose INTERNAL_IP is `ip`, on `port`.
    pub fn at(name: &str, ip: IpAddr, port: u16) -> Peer {
        let address = match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        Peer {
            name: name.to_owned(),
            address,
        }
    }
}

/// The current peers (static and discovered), watchable.
#[derive(Debug)]
pub struct PeerSet {
    static_peers: Peers,
    discovered: std::sync::Mutex<Peers>,
    current: watch::Sender<Peers>,
}

impl PeerSet {
    /// A set holding the static peers; a name given twice keeps the last address.
    pub fn new(static_peers: impl IntoIterator<Item = Peer>) -> PeerSet {
        let static_peers: Peers = static_peers
            .into_iter()
            .map(|p| (p.name, p.address))
            .collect();
        PeerSet {
            current: watch::Sender::new(static_peers.clone()),
            static_peers,
            discovered: std::sync::Mutex::new(Peers::new()),
        }
    }

    /// Replaces the discovered nodes (the datastore's view); the static peers stay.
    pub fn set_discovered(&self, discovered: Peers) {
        let mut held = self
            .discovered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = discovered;
        let mut merged = held.clone();
        merged.extend(self.static_peers.clone());
        self.current.send_if_modified(|current| {
            let changed = *current != merged;
            *current = merged;
            changed
        });
    }

    /// The peers now.
    pub fn current(&self) -> Peers {
        self.current.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Peers> {
        self.current.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_flags_parse_and_bad_ones_say_what_to_give() {
        assert_eq!(
            Peer::parse_flag("n1=192.0.2.11:7404").unwrap(),
            Peer {
                name: "n1".into(),
                address: "192.0.2.11:7404".into()
            }
        );
        assert_eq!(
            Peer::parse_flag(" n2 = [2001:db8::2]:7404")
                .unwrap()
                .address,
            "[2001:db8::2]:7404"
        );
        assert_eq!(
            Peer::parse_flag("n3=unix:/run/kino/n3/flows.sock")
                .unwrap()
                .address,
            "unix:/run/kino/n3/flows.sock"
        );
        for bad in [
            "n1",
            "=192.0.2.1:7404",
            "n1=192.0.2.1",
            "n1=:7404",
            "n1=h:0",
            "n1=h:x",
            "a b=h:1",
            "n1=unix:",
        ] {
            let message = Peer::parse_flag(bad).expect_err(bad).to_string();
            assert!(
                message.contains(&format!("{bad:?}")) && message.contains("NAME=HOST:PORT"),
                "{message}"
            );
        }
    }

    #[test]
    fn addresses_of_both_families() {
        assert_eq!(
            Peer::at("n", "192.0.2.1".parse().unwrap(), 7404).address,
            "192.0.2.1:7404"
        );
        assert_eq!(
            Peer::at("n", "2001:db8::1".parse().unwrap(), 7404).address,
            "[2001:db8::1]:7404"
        );
    }

    #[test]
    fn static_peers_win_and_changes_are_seen() {
        let set = PeerSet::new([Peer::parse_flag("n1=198.18.0.1:1").unwrap()]);
        let mut changes = set.subscribe();
        set.set_discovered(Peers::from([
            ("n1".into(), "192.0.2.1:7404".into()),
            ("n2".into(), "192.0.2.2:7404".into()),
        ]));
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            *changes.borrow_and_update(),
            Peers::from([
                ("n1".into(), "198.18.0.1:1".into()),
                ("n2".into(), "192.0.2.2:7404".into()),
            ])
        );
        set.set_discovered(Peers::from([("n2".into(), "192.0.2.2:7404".into())]));
        assert!(!changes.has_changed().unwrap(), "the same peers: no change");
        set.set_discovered(Peers::new());
        assert_eq!(set.current().len(), 1);
    }
}
