//! The compiler's view of the datastore: policies, identities, endpoints and nodes as of a
//! store revision, the compiled policies and ipcache derived from them, and the history of
//! changes that lets a stream resume from an earlier revision.
//!
//! Everything here is synchronous and deterministic; the datastore follower (`sync.rs`)
//! feeds it from the datastore watches.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cidr::Cidr;
use crate::compile::{Compiler, CompilerConfig, IdentityChange};
use crate::identity;
use crate::ipcache::{EndpointRef, Ipcache, IpcacheChange, IpcacheEntry, IpcacheSource};
use crate::labels::Labels;
use crate::metrics::COMPILE;
use crate::policy::{Policy, PolicyKey};
use crate::policy_map::NumericIdentity;

/// What the compiler needs of an Endpoint resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Node and endpoint id.
    pub key: EndpointRef,
    /// Its identity (0 while unknown).
    pub identity: NumericIdentity,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// What the compiler needs of a Node resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's name.
    pub name: String,
    /// Every address of the node (internal, external, kino_host).
    pub addresses: Vec<IpAddr>,
    /// The address other nodes reach its pods through (tunnel endpoint or next hop).
    pub tunnel: Option<IpAddr>,
    /// Its pod CIDRs (both families): in the ipcache as world with the node as tunnel
    /// endpoint, so traffic to an address of them no endpoint holds (yet) still goes to
    /// that node, as Cilium's ipcache holds remote pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
}

/// One change of an input.
#[derive(Clone, Debug)]
pub enum Change {
    /// A policy was stored.
    UpsertPolicy(Box<Policy>),
    /// A policy was deleted.
    DeletePolicy(PolicyKey),
    /// An endpoint identity was stored.
    UpsertIdentity(NumericIdentity, Labels),
    /// An endpoint identity was deleted.
    DeleteIdentity(NumericIdentity),
    /// An endpoint was stored.
    UpsertEndpoint(EndpointRecord),
    /// An endpoint was deleted: node, endpoint id.
    DeleteEndpoint(String, u32),
    /// A node was stored.
    UpsertNode(NodeRecord),
    /// A node was deleted.
    DeleteNode(String),
}

/// The changes of one step of the view, kept for streams to catch up from.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The view's revision after the step.
    pub revision: i64,
    /// Compiled policies that changed, with the entries that changed (not whole policies:
    /// a record costs what the step changed, whatever the size of the policies).
    pub policies: Vec<IdentityChange>,
    /// ipcache prefixes that changed.
    pub ipcache: Vec<IpcacheChange>,
    /// Changes of the identities used on each node: (node, identity, +1 / -1 endpoints).
    pub interest: Vec<(String, NumericIdentity, i32)>,
}

/// The view.
#[derive(Debug)]
pub struct View {
    compiler: Compiler,
    ipcache: Ipcache,
    endpoints: BTreeMap<(String, u32), EndpointRecord>,
    nodes: BTreeMap<String, NodeRecord>,
    used: BTreeMap<String, BTreeMap<NumericIdentity, usize>>,
    revision: i64,
    history: VecDeque<Arc<Record>>,
    history_base: i64,
    history_limit: usize,
}

impl View {
    /// An empty view at revision 0 keeping `history_limit` steps of history.
    pub fn new(config: CompilerConfig, history_limit: usize) -> View {
        View {
            compiler: Compiler::new(config),
            ipcache: Ipcache::new(),
            endpoints: BTreeMap::new(),
            nodes: BTreeMap::new(),
            used: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            history_base: 0,
            history_limit: history_limit.max(1),
        }
    }

    /// The compiler.
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// The ipcache.
    pub fn ipcache(&self) -> &Ipcache {
        &self.ipcache
    }

    /// The revision the view reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.values()
    }

    /// The names of every known node.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The identities used by a node's endpoints.
    pub fn node_identities(&self, node: &str) -> BTreeSet<NumericIdentity> {
        self.used
            .get(node)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// True when some endpoint (on any node) has the identity.
    pub fn identity_in_use(&self, id: NumericIdentity) -> bool {
        self.used.values().any(|m| m.contains_key(&id))
    }

    /// The history records after `revision`, if the history reaches back to it.
    pub fn records_after(&self, revision: i64) -> Option<Vec<Arc<Record>>> {
        if revision < self.history_base || revision > self.revision {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|r| r.revision > revision)
                .cloned()
                .collect(),
        )
    }

    /// Makes the current state the start of history (after the initial load).
    pub fn reset_history(&mut self) {
        self.history.clear();
        self.history_base = self.revision;
    }

    /// Applies changes seen up to `revision`; returns the record of what changed, if
    /// anything did.
    pub fn apply(&mut self, revision: i64, changes: Vec<Change>) -> Option<Arc<Record>> {
        let mut interest = Vec::new();
        let mut endpoints_of_nodes: BTreeSet<String> = BTreeSet::new();
        for change in changes {
            match change {
                Change::UpsertPolicy(policy) => self.compiler.upsert_policy(*policy),
                Change::DeletePolicy(key) => self.compiler.delete_policy(&key),
                Change::UpsertIdentity(id, labels) => self.compiler.upsert_identity(id, labels),
                Change::DeleteIdentity(id) => self.compiler.delete_identity(id),
                Change::UpsertEndpoint(record) => {
                    let key = (record.key.node_name.clone(), record.key.endpoint_id);
                    if let Some(old) = self.endpoints.remove(&key) {
                        self.unuse(&old, &mut interest);
                    }
                    self.use_identity(&record, &mut interest);
                    self.endpoints.insert(key, record.clone());
                    self.publish_endpoint(&record);
                }
                Change::DeleteEndpoint(node, id) => {
                    if let Some(old) = self.endpoints.remove(&(node.clone(), id)) {
                        self.unuse(&old, &mut interest);
                        self.ipcache
                            .set_owner((IpcacheSource::Endpoint, format!("{node}/{id}")), vec![]);
                    }
                }
                Change::UpsertNode(node) => {
                    endpoints_of_nodes.insert(node.name.clone());
                    self.publish_node(&node);
                    self.nodes.insert(node.name.clone(), node);
                }
                Change::DeleteNode(name) => {
                    endpoints_of_nodes.insert(name.clone());
                    self.nodes.remove(&name);
                    self.ipcache
                        .set_owner((IpcacheSource::PodCidr, name.clone()), vec![]);
                    self.ipcache.set_owner((IpcacheSource::Node, name), vec![]);
                }
            }
        }
        for node in endpoints_of_nodes {
            let records: Vec<EndpointRecord> = self
                .endpoints
                .range((node.clone(), 0)..=(node.clone(), u32::MAX))
                .map(|(_, r)| r.clone())
                .collect();
            for record in records {
                self.publish_endpoint(&record);
            }
        }
        self.publish_cidrs();
        let compiling = std::time::Instant::now();
        let policies = self.compiler.recompile();
        COMPILE.seconds.observe(compiling.elapsed().as_secs_f64());
        COMPILE.changed_identities.inc_by(policies.len() as f64);
        let record = Record {
            revision: self.revision.max(revision),
            policies,
            ipcache: self.ipcache.take_changes(),
            interest,
        };
        self.revision = record.revision;
        if record.policies.is_empty() && record.ipcache.is_empty() && record.interest.is_empty() {
            return None;
        }
        let record = Arc::new(record);
        self.history.push_back(record.clone());
        while self.history.len() > self.history_limit {
            if let Some(oldest) = self.history.pop_front() {
                self.history_base = oldest.revision;
            }
        }
        Some(record)
    }

    /// Moves the revision forward without a change (e.g. a write of a kind the view does
    /// not follow).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    fn use_identity(
        &mut self,
        record: &EndpointRecord,
        interest: &mut Vec<(String, NumericIdentity, i32)>,
    ) {
        if record.identity == 0 {
            return;
        }
        let node = record.key.node_name.clone();
        let count = self
            .used
            .entry(node.clone())
            .or_default()
            .entry(record.identity)
            .or_default();
        *count += 1;
        interest.push((node, record.identity, 1));
    }

    fn unuse(
        &mut self,
        record: &EndpointRecord,
        interest: &mut Vec<(String, NumericIdentity, i32)>,
    ) {
        if record.identity == 0 {
            return;
        }
        let node = &record.key.node_name;
        if let Some(map) = self.used.get_mut(node) {
            if let Some(count) = map.get_mut(&record.identity) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&record.identity);
                }
            }
            if map.is_empty() {
                self.used.remove(node);
            }
        }
        interest.push((node.clone(), record.identity, -1));
    }

    fn node_tunnel(&self, node: &str) -> Option<IpAddr> {
        self.nodes.get(node).and_then(|n| n.tunnel)
    }

    fn publish_endpoint(&mut self, record: &EndpointRecord) {
        let owner = (
            IpcacheSource::Endpoint,
            format!("{}/{}", record.key.node_name, record.key.endpoint_id),
        );
        let entries = if record.identity == 0 {
            Vec::new()
        } else {
            record
                .addresses
                .iter()
                .map(|ip| IpcacheEntry {
                    prefix: Cidr::host(*ip),
                    identity: record.identity,
                    host_ip: self.node_tunnel(&record.key.node_name),
                    node_name: record.key.node_name.clone(),
                    endpoint: Some(record.key.clone()),
                    source: IpcacheSource::Endpoint,
                })
                .collect()
        };
        self.ipcache.set_owner(owner, entries);
    }

    fn publish_node(&mut self, node: &NodeRecord) {
        let entries = node
            .addresses
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|ip| IpcacheEntry {
                prefix: Cidr::host(*ip),
                identity: identity::REMOTE_NODE,
                host_ip: node.tunnel,
                node_name: node.name.clone(),
                endpoint: None,
                source: IpcacheSource::Node,
            })
            .collect();
        self.ipcache
            .set_owner((IpcacheSource::Node, node.name.clone()), entries);
        let pod_cidrs = node
            .pod_cidrs
            .iter()
            .map(|prefix| IpcacheEntry {
                prefix: *prefix,
                identity: identity::WORLD,
                host_ip: node.tunnel,
                node_name: node.name.clone(),
                endpoint: None,
                source: IpcacheSource::PodCidr,
            })
            .collect();
        self.ipcache
            .set_owner((IpcacheSource::PodCidr, node.name.clone()), pod_cidrs);
    }

    /// The ipcache entries of the prefixes whose CIDR identity came, changed or went.
    fn publish_cidrs(&mut self) {
        let owner = (IpcacheSource::PolicyCidr, "policies".to_owned());
        for (prefix, identity) in self.compiler.take_cidr_changes() {
            let entry = identity.map(|identity| IpcacheEntry {
                prefix,
                identity,
                host_ip: None,
                node_name: String::new(),
                endpoint: None,
                source: IpcacheSource::PolicyCidr,
            });
            self.ipcache.set_entry(&owner, prefix, entry);
        }
    }
}
