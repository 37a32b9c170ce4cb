//! The ipcache: prefix → security identity (and where the address lives), what the agents'
//! LPM-trie ipcache map holds.
//!
//! Entries come from several owners; when two give the same prefix the higher source wins:
//! endpoint addresses (/32, /128, from Endpoint resources) over node addresses (from Node
//! resources) over policy CIDRs (their CIDR identities) over nodes' pod CIDRs (world, with
//! the node as tunnel endpoint) over the built-in `0.0.0.0/0` and `::/0` → world. A winner
//! without a tunnel endpoint takes the one of a lower entry of the same prefix (a policy
//! naming exactly a node's pod CIDR keeps that traffic going to the node). Node addresses are
//! stored as remote-node (6); the stream to a node turns that node's own addresses into host
//! (1) and drops the tunnel endpoint of whatever lives on that node
//! ([`IpcacheEntry::for_node`]): a node never tunnels to itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::cidr::Cidr;
use crate::identity;
use crate::policy_map::NumericIdentity;

/// Where an entry comes from; later variants win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpcacheSource {
    /// Built in (`/0` → world).
    Reserved,
    /// A node's pod CIDR (world, with that node as tunnel endpoint).
    PodCidr,
    /// A prefix named by a policy.
    PolicyCidr,
    /// A node address.
    Node,
    /// An endpoint address.
    Endpoint,
}

/// The endpoint holding an address.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointRef {
    /// Its node.
    pub node_name: String,
    /// Endpoint id on the node.
    pub endpoint_id: u32,
    /// Container id.
    pub container_id: String,
    /// Interface in the pod.
    pub ifname: String,
    /// Pod namespace and name, when known.
    pub pod: Option<(String, String)>,
}

/// One ipcache entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcacheEntry {
    /// The prefix.
    pub prefix: Cidr,
    /// Its identity.
    pub identity: NumericIdentity,
    /// Tunnel endpoint / next hop: the IP of the node hosting the address.
    pub host_ip: Option<IpAddr>,
    /// The node hosting the address; empty when none.
    pub node_name: String,
    /// The endpoint, for endpoint entries.
    pub endpoint: Option<EndpointRef>,
    /// Where it comes from.
    pub source: IpcacheSource,
}

impl IpcacheEntry {
    /// The entry as the agent of `node` sees it: its own node addresses are host (1), and
    /// nothing on its own node has a tunnel endpoint.
    pub fn for_node(&self, node: Option<&str>) -> IpcacheEntry {
        let mut entry = self.clone();
        if node == Some(self.node_name.as_str()) {
            entry.host_ip = None;
            if self.source == IpcacheSource::Node {
                entry.identity = identity::HOST;
            }
        }
        entry
    }
}

/// The change of one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcacheChange {
    /// The prefix.
    pub prefix: Cidr,
    /// Its entry before.
    pub old: Option<IpcacheEntry>,
    /// Its entry after.
    pub new: Option<IpcacheEntry>,
}

/// Who contributed entries: (source, owner name).
pub type Owner = (IpcacheSource, String);

/// The ipcache, with the changes not yet taken.
#[derive(Clone, Debug)]
pub struct Ipcache {
    by_owner: BTreeMap<Owner, BTreeMap<Cidr, IpcacheEntry>>,
    candidates: BTreeMap<Cidr, BTreeMap<Owner, IpcacheEntry>>,
    current: BTreeMap<Cidr, IpcacheEntry>,
    touched: BTreeSet<Cidr>,
}

impl Default for Ipcache {
    fn default() -> Self {
        Ipcache::new()
    }
}

impl Ipcache {
    /// An ipcache with the built-in world entries.
    pub fn new() -> Ipcache {
        let mut cache = Ipcache {
            by_owner: BTreeMap::new(),
            candidates: BTreeMap::new(),
            current: BTreeMap::new(),
            touched: BTreeSet::new(),
        };
        let world = |prefix: &str| IpcacheEntry {
            prefix: prefix.parse().expect("a valid prefix"),
            identity: identity::WORLD,
            host_ip: None,
            node_name: String::new(),
            endpoint: None,
            source: IpcacheSource::Reserved,
        };
        cache.set_owner(
            (IpcacheSource::Reserved, "world".into()),
            vec![world("0.0.0.0/0"), world("::/0")],
        );
        cache
    }

    /// Replaces every entry of `owner` by `entries` (a later entry of a prefix replaces an
    /// earlier one). Only the prefixes whose entry of this owner changes are touched, so
    /// replacing a set that changed in one prefix costs no change of the others.
    pub fn set_owner(&mut self, owner: Owner, entries: Vec<IpcacheEntry>) {
        let new: BTreeMap<Cidr, IpcacheEntry> =
            entries.into_iter().map(|e| (e.prefix, e)).collect();
        let old = self.by_owner.get(&owner);
        if old.map_or(new.is_empty(), |old| *old == new) {
            return;
        }
        let gone: Vec<Cidr> = old
            .into_iter()
            .flat_map(|old| old.keys())
            .filter(|prefix| !new.contains_key(prefix))
            .copied()
            .collect();
        for prefix in gone {
            self.set_entry(&owner, prefix, None);
        }
        for (prefix, entry) in new {
            self.set_entry(&owner, prefix, Some(entry));
        }
    }

    /// Sets (`Some`) or removes (`None`) the entry `owner` gives `prefix`: a change of one
    /// prefix, whatever the number of the owner's others.
    pub fn set_entry(&mut self, owner: &Owner, prefix: Cidr, entry: Option<IpcacheEntry>) {
        let held = self.by_owner.get(owner).and_then(|m| m.get(&prefix));
        if held == entry.as_ref() {
            return;
        }
        match entry {
            Some(entry) => {
                self.candidates
                    .entry(prefix)
                    .or_default()
                    .insert(owner.clone(), entry.clone());
                self.by_owner
                    .entry(owner.clone())
                    .or_default()
                    .insert(prefix, entry);
            }
            None => {
                if let Some(c) = self.candidates.get_mut(&prefix) {
                    c.remove(owner);
                    if c.is_empty() {
                        self.candidates.remove(&prefix);
                    }
                }
                if let Some(m) = self.by_owner.get_mut(owner) {
                    m.remove(&prefix);
                    if m.is_empty() {
                        self.by_owner.remove(owner);
                    }
                }
            }
        }
        self.touched.insert(prefix);
    }

    /// Applies pending changes; returns each changed prefix with its entry before and
    /// after (None = absent).
    pub fn take_changes(&mut self) -> Vec<IpcacheChange> {
        let mut out = Vec::new();
        for prefix in std::mem::take(&mut self.touched) {
            let winner = self.candidates.get(&prefix).and_then(|c| {
                let mut winner = c
                    .iter()
                    .max_by_key(|(owner, _)| owner.0)
                    .map(|(_, e)| e.clone())?;
                if winner.host_ip.is_none()
                    && let Some(via) = c.values().find(|e| e.host_ip.is_some())
                {
                    winner.host_ip = via.host_ip;
                    winner.node_name = via.node_name.clone();
                }
                Some(winner)
            });
            if self.current.get(&prefix) == winner.as_ref() {
                continue;
            }
            let old = match &winner {
                Some(entry) => self.current.insert(prefix, entry.clone()),
                None => self.current.remove(&prefix),
            };
            out.push(IpcacheChange {
                prefix,
                old,
                new: winner,
            });
        }
        out
    }

    /// Every entry.
    pub fn entries(&self) -> &BTreeMap<Cidr, IpcacheEntry> {
        &self.current
    }

    /// Longest-prefix match, as the datapath's LPM trie.
    pub fn lookup(&self, ip: IpAddr) -> Option<&IpcacheEntry> {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let prefix = Cidr::new(mask(ip, len), len).ok()?;
            self.current.get(&prefix)
        })
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, identity: u32, source: IpcacheSource) -> IpcacheEntry {
        IpcacheEntry {
            prefix: prefix.parse().unwrap(),
            identity,
            host_ip: None,
            node_name: "n1".into(),
            endpoint: None,
            source,
        }
    }

    #[test]
    fn longest_prefix_and_priorities() {
        let mut cache = Ipcache::new();
        cache.set_owner(
            (IpcacheSource::PolicyCidr, "policy".into()),
            vec![
                entry("10.0.0.0/8", 100, IpcacheSource::PolicyCidr),
                entry("10.0.0.5/32", 101, IpcacheSource::PolicyCidr),
            ],
        );
        cache.set_owner(
            (IpcacheSource::Endpoint, "n1/1".into()),
            vec![entry("10.0.0.5/32", 300, IpcacheSource::Endpoint)],
        );
        let changes = cache.take_changes();
        assert_eq!(changes.len(), 4);
        let id = |ip: &str| cache.lookup(ip.parse().unwrap()).unwrap().identity;
        assert_eq!(id("10.0.0.5"), 300);
        assert_eq!(id("10.0.0.6"), 100);
        assert_eq!(id("11.0.0.1"), identity::WORLD);
        assert_eq!(id("fd00::1"), identity::WORLD);
        cache.set_owner((IpcacheSource::Endpoint, "n1/1".into()), vec![]);
        let changes = cache.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new.as_ref().unwrap().identity, 101);
        let node = entry("192.0.2.1/32", identity::REMOTE_NODE, IpcacheSource::Node);
        assert_eq!(node.for_node(Some("n1")).identity, identity::HOST);
        assert_eq!(node.for_node(Some("n2")).identity, identity::REMOTE_NODE);
    }

    #[test]
    fn pod_cidrs_lead_to_their_node_and_never_back_to_it() {
        let mut cache = Ipcache::new();
        let mut pod_cidr = entry("10.0.1.0/24", identity::WORLD, IpcacheSource::PodCidr);
        pod_cidr.host_ip = Some("192.0.2.2".parse().unwrap());
        pod_cidr.node_name = "n2".into();
        cache.set_owner(
            (IpcacheSource::PodCidr, "n2".into()),
            vec![pod_cidr.clone()],
        );
        // A policy CIDR of exactly that prefix wins the identity, keeps the tunnel.
        cache.set_owner(
            (IpcacheSource::PolicyCidr, "policies".into()),
            vec![entry("10.0.1.0/24", 16777217, IpcacheSource::PolicyCidr)],
        );
        cache.take_changes();
        let got = cache.lookup("10.0.1.7".parse().unwrap()).unwrap().clone();
        assert_eq!(got.identity, 16777217);
        assert_eq!(got.host_ip, pod_cidr.host_ip);
        assert_eq!(got.node_name, "n2");
        // Node n2 itself sees no tunnel endpoint; n1 does.
        assert_eq!(got.for_node(Some("n2")).host_ip, None);
        assert_eq!(got.for_node(Some("n1")).host_ip, pod_cidr.host_ip);
        assert_eq!(got.for_node(Some("n2")).identity, 16777217);
        // The pod CIDR gone: the policy CIDR stays, without a tunnel endpoint.
        cache.set_owner((IpcacheSource::PodCidr, "n2".into()), vec![]);
        cache.take_changes();
        let got = cache.lookup("10.0.1.7".parse().unwrap()).unwrap();
        assert_eq!((got.identity, got.host_ip), (16777217, None));
    }

    #[test]
    fn one_entry_of_an_owner_changes_alone() {
        let mut cache = Ipcache::new();
        let owner = (IpcacheSource::PolicyCidr, "policies".to_owned());
        let a = entry("10.0.0.0/8", 100, IpcacheSource::PolicyCidr);
        let b = entry("10.1.0.0/16", 101, IpcacheSource::PolicyCidr);
        cache.set_owner(owner.clone(), vec![a.clone()]);
        cache.take_changes();
        cache.set_entry(&owner, b.prefix, Some(b.clone()));
        let changes = cache.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new.as_ref(), Some(&b));
        // Setting what is there is no change; removing one leaves the other.
        cache.set_entry(&owner, b.prefix, Some(b.clone()));
        assert!(cache.take_changes().is_empty());
        cache.set_entry(&owner, a.prefix, None);
        let changes = cache.take_changes();
        assert_eq!((changes.len(), changes[0].prefix), (1, a.prefix));
        assert_eq!(cache.lookup("10.1.2.3".parse().unwrap()), Some(&b));
        assert_eq!(
            cache.lookup("10.2.0.1".parse().unwrap()).unwrap().identity,
            identity::WORLD
        );
        // The owner's set is what set_entry left: replacing it by the same is no change.
        cache.set_owner(owner, vec![b]);
        assert!(cache.take_changes().is_empty());
    }
}
