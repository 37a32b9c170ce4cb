//! What a service's addresses must agree with in IPAM's records: every backend is an address
//! IPAM allocated to a pod (in any pool) or a node's own address (its Node record), and its
//! node is the allocation's (or that Node's); an external IP lies outside every pod pool.
//! A backend nobody holds would black-hole its share of the connections, so it is refused.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use futures::stream::{self, StreamExt, TryStreamExt};
use kino_api::types::Node;
use kino_service_kit::records::Spec;

use super::super::Ipam;
use crate::error::{InvalidField, Result};
use crate::lb::model::{FrontendType, ServiceSpec};
use crate::persistence::{IpamQueries, address_record_name, decode};
use crate::records::{Allocation, Pool};

/// How many address records are read at once.
const PARALLEL_READS: usize = 16;

impl Ipam {
    /// The node of each backend of `spec`, in order; an INVALID_ARGUMENT naming the first
    /// backend no pod and no node holds.
    pub(super) async fn backend_nodes(&self, spec: &ServiceSpec) -> Result<Vec<String>> {
        if spec.backends.is_empty() {
            return Ok(Vec::new());
        }
        let pools: Vec<Pool> = self
            .store
            .pools()
            .await?
            .into_iter()
            .map(|p| p.value)
            .collect();
        let distinct: Vec<IpAddr> = spec
            .backends
            .iter()
            .map(|b| b.address)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut nodes: HashMap<IpAddr, String> = stream::iter(distinct.iter().copied())
            .map(|address| self.allocation_node(&pools, address))
            .buffer_unordered(PARALLEL_READS)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await?;
        if nodes.len() < distinct.len() {
            for (address, node) in self.node_addresses().await? {
                nodes.entry(address).or_insert(node);
            }
        }
        spec.backends
            .iter()
            .enumerate()
            .map(|(i, backend)| {
                nodes.get(&backend.address).cloned().ok_or_else(|| {
                    InvalidField::new(
                        format!("service.backends[{i}].address"),
                        format!(
                            "{} is not a known backend: IPAM has not allocated it to any pod (in any pool) and no node has it; start the pod first (`kino ipam allocations` lists the pods' addresses, `kino node get` a node's), or remove the backend",
                            backend.address
                        ),
                    )
                    .into()
                })
            })
            .collect()
    }

    /// The node IPAM allocated `address` on, if it did: (address, node).
    async fn allocation_node(
        &self,
        pools: &[Pool],
        address: IpAddr,
    ) -> Result<Option<(IpAddr, String)>> {
        let Some(pool) = pools
            .iter()
            .find(|p| p.config.cidrs().any(|c| c.contains(address)))
        else {
            return Ok(None);
        };
        let record = self
            .store
            .get::<Allocation>(&pool.config.name, &address_record_name(address))
            .await?;
        Ok(record.map(|r| (address, r.value.node)))
    }

    /// Every address of every Node record, with its node (the first node wins).
    async fn node_addresses(&self) -> Result<BTreeMap<IpAddr, String>> {
        let mut addresses = BTreeMap::new();
        for resource in self.store.list_all(Node::KIND, "").await?.0 {
            let node = decode::<Node>(&resource)?.value;
            for address in &node.addresses {
                if let Ok(ip) = address.address.parse::<IpAddr>() {
                    addresses.entry(ip).or_insert_with(|| node.name.clone());
                }
            }
        }
        Ok(addresses)
    }

    /// INVALID_ARGUMENT naming the first external IP of `spec` inside a pod pool.
    pub(super) async fn check_external_ips(&self, spec: &ServiceSpec) -> Result<()> {
        let external = spec
            .frontends
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == FrontendType::ExternalIp);
        let mut pools = None;
        for (i, frontend) in external {
            let Some(address) = frontend.key.address else {
                continue;
            };
            if pools.is_none() {
                pools = Some(self.store.pools().await?);
            }
            let inside = pools.iter().flatten().find_map(|p| {
                p.value
                    .config
                    .cidrs()
                    .find(|c| c.contains(address))
                    .map(|c| (p.value.config.name.clone(), *c))
            });
            if let Some((pool, cidr)) = inside {
                return Err(InvalidField::new(
                    format!("service.frontends[{i}].address"),
                    format!(
                        "external IP {address} is inside {cidr} of pod pool {pool:?}; an external IP must be outside the cluster's CIDRs (a pod may hold this address)"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}
