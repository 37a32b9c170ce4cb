//! The agent's [`Directory`] for the enricher: local endpoints from the endpoint manager,
//! addresses' identities from the node's ipcache (its own handle on the pinned map, so no
//! lookup waits on the manager's lock), identities' labels from the policy-compiler, and a
//! remote address's node from its ipcache tunnel endpoint and the cluster's nodes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData};
use futures::future::BoxFuture;
use kino_api::policy::GetIdentityRequest;
use kino_api::policy::get_identity_request::Lookup;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_service_kit::TracedChannel;

use super::enrich::{Directory, EndpointInfo};
use super::flow::Label;
use crate::cluster::nodes::PeerNodes;
use crate::datapath::ipcache::{IPCACHE_MAP, IpcacheMap};
use crate::endpoint::manager::EndpointManager;

/// How long an identity lookup at the compiler may take.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(2);

/// Lookups backed by the running agent.
pub struct AgentDirectory {
    manager: Arc<EndpointManager>,
    ipcache: Option<Mutex<IpcacheMap>>,
    policy: PolicyServiceClient<TracedChannel>,
    nodes: Option<tokio::sync::watch::Receiver<Option<PeerNodes>>>,
    /// Remote addresses' nodes, recently looked up.
    node_cache: Mutex<HashMap<IpAddr, (Option<String>, Instant)>>,
    /// Frontend id → service (namespace, name), kept by the agent's service watch.
    services: FrontendNames,
}

/// Frontend id → the (namespace, name) of its service: written by the service watch
/// (`services::watch`), read here for the flows' `(svc ns/name)`.
pub type FrontendNames = Arc<std::sync::RwLock<HashMap<u32, (String, String)>>>;

/// How long a remote address's node is taken from the cache.
const NODE_TTL: Duration = Duration::from_secs(2);
/// Remote addresses cached at most (cleared when full).
const MAX_CACHED_NODES: usize = 4096;

impl AgentDirectory {
    /// Lookups through `manager`, the ipcache pinned in `pin_dir` (none if it cannot be
    /// opened: peers' identities then come from events only), the compiler `policy` and
    /// the cluster's `nodes` (remote peers' node names) and the service watch's `services`.
    pub fn new(
        manager: Arc<EndpointManager>,
        pin_dir: &Path,
        policy: PolicyServiceClient<TracedChannel>,
        nodes: Option<tokio::sync::watch::Receiver<Option<PeerNodes>>>,
        services: FrontendNames,
    ) -> Self {
        let path = pin_dir.join(IPCACHE_MAP);
        let ipcache = MapData::from_pin(&path)
            .map_err(|e| e.to_string())
            .and_then(|data| Map::from_map_data(data).map_err(|e| e.to_string()))
            .and_then(|map| IpcacheMap::new(map).map_err(|e| e.to_string()));
        let ipcache = match ipcache {
            Ok(map) => Some(Mutex::new(map)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "flow observer: no ipcache for peers' identities");
                None
            }
        };
        AgentDirectory {
            manager,
            ipcache,
            policy,
            nodes,
            node_cache: Mutex::new(HashMap::new()),
            services,
        }
    }
}

fn labels_from_proto(labels: Option<&kino_api::types::Labels>) -> Vec<Label> {
    labels
        .map(|l| l.labels.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|l| Label {
            source: if l.source.is_empty() {
                "unspec".to_owned()
            } else {
                l.source.clone()
            },
            key: l.key.clone(),
            value: l.value.clone(),
        })
        .collect()
}

impl Directory for AgentDirectory {
    fn endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointInfo>, String>> {
        Box::pin(async move {
            Ok(self
                .manager
                .list()
                .await
                .into_iter()
                .map(|e| {
                    let pod = e.pod.clone().unwrap_or_default();
                    let networking = e.networking.clone().unwrap_or_default();
                    let addressing = networking.addressing.clone().unwrap_or_default();
                    EndpointInfo {
                        id: e.id,
                        identity: e.identity,
                        namespace: pod.namespace,
                        pod_name: pod.name,
                        labels: labels_from_proto(e.labels.as_ref()),
                        ips: [addressing.ipv4, addressing.ipv6]
                            .iter()
                            .filter_map(|a| a.parse().ok())
                            .collect(),
                        lxc_ifindex: networking.interface_index,
                        lxc_name: networking.interface_name,
                    }
                })
                .collect())
        })
    }

    fn identity_of(&self, ip: IpAddr) -> Option<u32> {
        let ipcache = self.ipcache.as_ref()?;
        let map = ipcache.lock().unwrap_or_else(|p| p.into_inner());
        map.identity_of(ip).ok()
    }

    fn service_of(&self, frontend_id: u32) -> Option<(String, String)> {
        let names = self.services.read().unwrap_or_else(|p| p.into_inner());
        names.get(&frontend_id).cloned()
    }

    fn node_of(&self, ip: IpAddr) -> Option<String> {
        let nodes = self.nodes.as_ref()?;
        // Flows of a remote peer come in bursts: one ipcache lookup (a syscall) per address
        // per NODE_TTL, not one per flow.
        let now = Instant::now();
        let mut cache = self.node_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((node, at)) = cache.get(&ip)
            && now.duration_since(*at) < NODE_TTL
        {
            return node.clone();
        }
        let endpoint = self.ipcache.as_ref().and_then(|ipcache| {
            let map = ipcache.lock().unwrap_or_else(|p| p.into_inner());
            map.tunnel_endpoint_of(ip).ok().flatten()
        });
        let node = endpoint.and_then(|endpoint| {
            nodes
                .borrow()
                .as_ref()?
                .values()
                .find(|n| n.underlay.contains(&endpoint))
                .map(|n| n.name.clone())
        });
        if cache.len() >= MAX_CACHED_NODES {
            cache.clear();
        }
        cache.insert(ip, (node.clone(), now));
        node
    }

    fn identity_labels(&self, identity: u32) -> BoxFuture<'_, Option<Vec<Label>>> {
        let mut policy = self.policy.clone();
        Box::pin(async move {
            let request = GetIdentityRequest {
                lookup: Some(Lookup::Id(identity)),
            };
            let response = tokio::time::timeout(IDENTITY_TIMEOUT, policy.get_identity(request))
                .await
                .ok()?
                .ok()?;
            let identity = response.into_inner().identity?;
            Some(labels_from_proto(identity.labels.as_ref()))
        })
    }
}
