//! Inspection: the endpoints with their datapath counters and realized enforcement (`kino
//! endpoint list/get`, metrics, the flow directory) and the datapath's maps as they are
//! (`kino bpf endpoint|policy|ipcache|ct list`).

use std::net::IpAddr;
use std::path::PathBuf;

use kino_api::agent::{DropCounter, Endpoint, EndpointCounters};
use kino_api::types::{Direction, DropReason as PbDropReason, PolicyEnforcement};

use super::{EndpointManager, ManagerError, kernel};
use crate::datapath::{
    CtListing, Datapath, DropReason, EndpointEntry, Enforcement, IpcacheEntry, PolicyEntryInfo,
};

impl EndpointManager {
    /// All endpoints with their counters.
    pub async fn list(&self) -> Vec<Endpoint> {
        let inner = self.inner.lock().await;
        inner
            .endpoints
            .values()
            .map(|e| with_counters(&inner.datapath, e))
            .collect()
    }

    /// One endpoint by id, IP, container id or pod.
    pub async fn get(
        &self,
        lookup: kino_api::agent::get_endpoint_request::Lookup,
    ) -> Result<Endpoint, ManagerError> {
        use kino_api::agent::get_endpoint_request::Lookup;
        let inner = self.inner.lock().await;
        let found = match &lookup {
            Lookup::Id(id) => inner.endpoints.get(id),
            Lookup::Ip(ip) => {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|e| ManagerError::Invalid(format!("ip {ip:?}: {e}")))?;
                inner.endpoints.values().find(|e| {
                    e.networking
                        .as_ref()
                        .and_then(|n| n.addressing.as_ref())
                        .is_some_and(|a| {
                            a.ipv4.parse::<IpAddr>().ok() == Some(ip)
                                || a.ipv6.parse::<IpAddr>().ok() == Some(ip)
                        })
                })
            }
            Lookup::ContainerId(c) => inner
                .endpoints
                .values()
                .filter(|e| &e.container_id == c)
                .min_by_key(|e| {
                    e.networking
                        .as_ref()
                        .map(|n| n.container_interface_name.clone())
                }),
            Lookup::Pod(p) => inner.endpoints.values().find(|e| {
                e.pod.as_ref().is_some_and(|q| {
                    q.name == p.name
                        && (q.namespace == p.namespace
                            || p.namespace.is_empty() && q.namespace == "default")
                })
            }),
        };
        found
            .map(|e| with_counters(&inner.datapath, e))
            .ok_or_else(|| {
                ManagerError::NotFound(format!(
                    "no endpoint matches {lookup:?} on node {}",
                    self.config.node
                ))
            })
    }

    /// Number of endpoints.
    pub async fn count(&self) -> usize {
        self.inner.lock().await.endpoints.len()
    }

    /// The datapath's endpoint map, one row per key (an endpoint's IPv4 and IPv6 address),
    /// for `kino bpf endpoint list`.
    pub async fn bpf_endpoints(&self) -> Result<Vec<(IpAddr, EndpointEntry)>, ManagerError> {
        let inner = self.inner.lock().await;
        inner.datapath.maps().list_ips().map_err(kernel)
    }

    /// How the programs sit on each endpoint's lxc (`tc`, `tcx`, `tc+tcx`, `none`), by lxc
    /// ifindex, for `kino bpf endpoint list`.
    pub async fn bpf_attach_modes(
        &self,
    ) -> Result<std::collections::HashMap<u32, &'static str>, ManagerError> {
        let inner = self.inner.lock().await;
        let mut modes = std::collections::HashMap::new();
        for endpoint in inner.endpoints.values() {
            let Some(net) = endpoint.networking.as_ref() else {
                continue;
            };
            let attachment = inner
                .datapath
                .attachment(&inner.netlink, &net.interface_name, net.interface_index)
                .await
                .map_err(kernel)?;
            modes.insert(net.interface_index, attachment.mode());
        }
        Ok(modes)
    }

    /// An endpoint's policy map as the datapath holds it, for `kino bpf policy list`.
    pub async fn bpf_policy(&self, endpoint_id: u32) -> Result<BpfPolicy, ManagerError> {
        let inner = self.inner.lock().await;
        let endpoint = inner.endpoints.get(&endpoint_id).ok_or_else(|| {
            ManagerError::NotFound(format!(
                "no endpoint {endpoint_id} on node {}; `kino endpoint list` shows them",
                self.config.node
            ))
        })?;
        let policy = inner.datapath.policy();
        let (enforcement, revision) = policy.enforcement(endpoint_id).map_err(kernel)?;
        Ok(BpfPolicy {
            identity: endpoint.identity,
            enforcement,
            revision,
            entries: policy.list(endpoint_id).map_err(kernel)?,
        })
    }

    /// The ipcache map, for `kino bpf ipcache list`.
    pub async fn bpf_ipcache(&self) -> Result<Vec<IpcacheEntry>, ManagerError> {
        let inner = self.inner.lock().await;
        inner.datapath.ipcache().list().map_err(kernel)
    }

    /// Up to `max` live conntrack entries (of one family, `KINO_FAMILY_*`, when given), for
    /// `kino bpf ct list`.
    pub async fn bpf_conntrack(
        &self,
        max: usize,
        family: Option<u8>,
    ) -> Result<CtListing, ManagerError> {
        let inner = self.inner.lock().await;
        inner.datapath.conntrack().list(max, family).map_err(kernel)
    }

    /// Where the maps are pinned.
    pub async fn pin_dir(&self) -> PathBuf {
        self.inner.lock().await.datapath.pin_dir().to_owned()
    }
}

/// An endpoint's policy as the datapath holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfPolicy {
    /// The endpoint's identity.
    pub identity: u32,
    /// Enforced directions.
    pub enforcement: Enforcement,
    /// Realized policy revision.
    pub revision: i64,
    /// The entries with their hit counters.
    pub entries: Vec<PolicyEntryInfo>,
}

/// The direction a drop counter belongs to.
fn drop_direction(reason: DropReason) -> Direction {
    match reason {
        DropReason::PolicyDeniedIngress => Direction::Ingress,
        _ => Direction::Egress,
    }
}

/// The endpoint with its current datapath counters and realized enforcement.
pub(super) fn with_counters(datapath: &Datapath, endpoint: &Endpoint) -> Endpoint {
    let mut out = endpoint.clone();
    if let Ok((enforcement, revision)) = datapath.policy().enforcement(endpoint.id) {
        let (ingress_entries, egress_entries) = datapath.policy().counts(endpoint.id);
        let policy = out.policy.get_or_insert_with(Default::default);
        policy.enforcement = Some(PolicyEnforcement {
            ingress: enforcement.ingress,
            egress: enforcement.egress,
        });
        policy.realized_revision = revision;
        policy.ingress_entries = ingress_entries as u32;
        policy.egress_entries = egress_entries as u32;
    }
    if let Ok(c) = datapath.maps().counters(endpoint.id) {
        out.counters = Some(EndpointCounters {
            ingress_packets: c.to_container_packets,
            ingress_bytes: c.to_container_bytes,
            egress_packets: c.from_container_packets,
            egress_bytes: c.from_container_bytes,
            drops: DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r) > 0)
                .map(|r| DropCounter {
                    reason: drop_reason(*r) as i32,
                    direction: drop_direction(*r) as i32,
                    packets: c.dropped(*r),
                    bytes: 0,
                })
                .collect(),
        });
    }
    out
}

/// Maps the datapath's drop counters onto the API's drop reasons.
fn drop_reason(reason: DropReason) -> PbDropReason {
    match reason {
        DropReason::UnknownEndpoint => PbDropReason::Unspecified,
        DropReason::InvalidPacket => PbDropReason::InvalidPacket,
        DropReason::SpoofedSource => PbDropReason::SpoofedSource,
        DropReason::UnsupportedL3 => PbDropReason::UnsupportedL3Protocol,
        DropReason::PolicyDenied => PbDropReason::PolicyDenied,
        DropReason::CtInvalid => PbDropReason::CtUnknownState,
        DropReason::PolicyDeniedIngress => PbDropReason::PolicyDenied,
        DropReason::ErrorRetrievingTunnelKey => PbDropReason::ErrorRetrievingTunnelKey,
        DropReason::UnknownSender => PbDropReason::UnknownSender,
        DropReason::InvalidIdentity => PbDropReason::InvalidIdentity,
        DropReason::NoTunnelEndpoint => PbDropReason::NoTunnelEndpoint,
    }
}
