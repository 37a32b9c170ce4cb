//! Reading the state for operators: ListAllocations (paged) and PoolStatus (utilisation per
//! pool and per node).

use std::collections::BTreeMap;

use kino_service_kit::records::{Page, Spec};

use super::Ipam;
use super::pools::unknown_pool;
use crate::error::{InvalidField, IpamError, Result};
use crate::owner::CLAIM_PREFIX;
use crate::persistence::{IpamQueries, MAX_PAGE, decode};
use crate::prefix::{Family, IpPrefix, addr_to_u128};
use crate::records::{Allocation, NodeBlocks};

/// Default page size of ListAllocations.
pub const DEFAULT_PAGE: usize = 500;

/// A ListAllocations request, validated.
#[derive(Clone, Debug, Default)]
pub struct ListArgs {
    /// Only this node.
    pub node: Option<String>,
    /// Only this pool.
    pub pool: Option<String>,
    /// Only this family.
    pub family: Option<Family>,
    /// Page size (0 = default).
    pub page_size: i32,
    /// Where the previous page ended.
    pub page_token: String,
}

/// One page of allocations.
#[derive(Clone, Debug, Default)]
pub struct AllocationPage {
    /// The allocations, by pool then address name.
    pub allocations: Vec<Allocation>,
    /// Where to continue; empty on the last page.
    pub next_page_token: String,
}

/// Utilisation of one pool.
#[derive(Clone, Debug)]
pub struct PoolUsage {
    /// Pool name.
    pub pool: String,
    /// One entry per family the pool has.
    pub families: Vec<FamilyUsage>,
    /// One entry per (node, family) with blocks, by node then family.
    pub nodes: Vec<NodeUsage>,
}

/// Utilisation of one family of a pool.
#[derive(Clone, Debug)]
pub struct FamilyUsage {
    /// The family.
    pub family: Family,
    /// Cluster CIDRs.
    pub cidrs: Vec<IpPrefix>,
    /// Per-node block prefix length.
    pub node_mask: u8,
    /// Blocks the CIDRs hold.
    pub node_blocks_total: u128,
    /// Blocks given to nodes.
    pub node_blocks_allocated: u128,
    /// Addresses that can be handed out, in all blocks.
    pub size: u128,
    /// Addresses handed out.
    pub allocated: u128,
}

/// Utilisation of one node's blocks of one family.
#[derive(Clone, Debug)]
pub struct NodeUsage {
    /// Node name.
    pub node: String,
    /// The family.
    pub family: Family,
    /// The node's blocks of this family.
    pub cidrs: Vec<IpPrefix>,
    /// Addresses those blocks can hand out.
    pub size: u128,
    /// Addresses handed out.
    pub allocated: u128,
    /// The allocations (with `include_allocations`), by address.
    pub allocations: Vec<Allocation>,
}

impl Ipam {
    /// One page of allocations (ListAllocations).
    pub async fn list_allocations(&self, args: ListArgs) -> Result<AllocationPage> {
        let page_size = match args.page_size {
            0 => DEFAULT_PAGE,
            n if !(0..=MAX_PAGE).contains(&n) => {
                return Err(InvalidField::new(
                    "page_size",
                    format!("{n} is not from 0 (default {DEFAULT_PAGE}) to {MAX_PAGE}"),
                )
                .into());
            }
            n => n as usize,
        };
        let pools = self.selected_pools(args.pool.as_deref()).await?;
        let (start_pool, mut gateway_token) = match args.page_token.split_once('|') {
            None if args.page_token.is_empty() => (pools.first().cloned(), String::new()),
            Some((pool, token)) if pools.iter().any(|p| p == pool) => {
                (Some(pool.to_owned()), token.to_owned())
            }
            _ => {
                return Err(InvalidField::new(
                    "page_token",
                    "does not belong to this query; pass the next_page_token of the same query",
                )
                .into());
            }
        };
        if let Some(node) = &args.node
            && args.page_token.is_empty()
        {
            let mut known = false;
            for pool in &pools {
                if self.store.get::<NodeBlocks>(pool, node).await?.is_some() {
                    known = true;
                    break;
                }
            }
            if !known {
                return Err(unknown_node(node, args.pool.as_deref()));
            }
        }
        let mut page = AllocationPage::default();
        let Some(start_pool) = start_pool else {
            return Ok(page);
        };
        let start = pools.iter().position(|p| *p == start_pool).unwrap_or(0);
        for (index, pool) in pools.iter().enumerate().skip(start) {
            loop {
                let need = (page_size - page.allocations.len()) as i32;
                let Page {
                    resources,
                    next_page_token: next,
                    ..
                } = self
                    .store
                    .list_page(Allocation::KIND, pool, "", need, &gateway_token)
                    .await?;
                let mut pool_done = next.is_empty();
                for resource in &resources {
                    // Owner claims sort after every address: the pool's addresses are done.
                    if resource.name.starts_with(CLAIM_PREFIX) {
                        pool_done = true;
                        break;
                    }
                    let allocation = decode::<Allocation>(resource)?.value;
                    if args.node.as_ref().is_some_and(|n| *n != allocation.node)
                        || args.family.is_some_and(|f| f != allocation.family())
                    {
                        continue;
                    }
                    page.allocations.push(allocation);
                }
                gateway_token = if pool_done { String::new() } else { next };
                if page.allocations.len() >= page_size {
                    page.next_page_token = match (pool_done, pools.get(index + 1)) {
                        (false, _) => format!("{pool}|{gateway_token}"),
                        (true, Some(next_pool)) => format!("{next_pool}|"),
                        (true, None) => String::new(),
                    };
                    return Ok(page);
                }
                if pool_done {
                    break;
                }
            }
        }
        Ok(page)
    }

    /// Utilisation per pool and per node (PoolStatus).
    pub async fn pool_status(
        &self,
        pool: Option<&str>,
        node: Option<&str>,
        include_allocations: bool,
    ) -> Result<Vec<PoolUsage>> {
        let pools = match pool {
            Some(name) => vec![self.get_pool(name).await.map_err(|e| match e {
                IpamError::NotFound { .. } => unknown_pool("pool", name),
                e => e,
            })?],
            None => self.store.pools().await?,
        };
        let mut out = Vec::new();
        let mut node_seen = false;
        for pool in pools {
            let name = pool.value.config.name.clone();
            let (nodes, _) = self.store.node_records(&name).await?;
            let (addresses, _) = self.store.address_records(&name).await?;
            let mut families = Vec::new();
            for (family, config) in pool.value.config.families() {
                let blocks_allocated = nodes
                    .iter()
                    .map(|n| n.value.of_family(family).count() as u128)
                    .sum();
                let total = config.block_count();
                families.push(FamilyUsage {
                    family,
                    cidrs: config.cidrs.clone(),
                    node_mask: config.node_mask,
                    node_blocks_total: total,
                    node_blocks_allocated: blocks_allocated,
                    size: total.saturating_mul(config.assignable_per_block()),
                    allocated: addresses
                        .iter()
                        .filter(|a| a.value.family() == family)
                        .count() as u128,
                });
            }
            let mut by_node: BTreeMap<(&str, Family), Vec<&Allocation>> = BTreeMap::new();
            for a in &addresses {
                by_node
                    .entry((a.value.node.as_str(), a.value.family()))
                    .or_default()
                    .push(&a.value);
            }
            let mut node_usage = Vec::new();
            let mut nodes: Vec<&NodeBlocks> = nodes
                .iter()
                .map(|n| &n.value)
                .filter(|n| node.is_none_or(|wanted| wanted == n.node))
                .collect();
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            for record in nodes {
                node_seen = true;
                for (family, config) in pool.value.config.families() {
                    let cidrs: Vec<IpPrefix> = record.of_family(family).copied().collect();
                    if cidrs.is_empty() {
                        continue;
                    }
                    let mut allocations: Vec<Allocation> = by_node
                        .get(&(record.node.as_str(), family))
                        .map(|v| v.iter().map(|a| (*a).clone()).collect())
                        .unwrap_or_default();
                    allocations.sort_by_key(|a| addr_to_u128(a.address));
                    node_usage.push(NodeUsage {
                        node: record.node.clone(),
                        family,
                        size: (cidrs.len() as u128).saturating_mul(config.assignable_per_block()),
                        cidrs,
                        allocated: allocations.len() as u128,
                        allocations: if include_allocations {
                            allocations
                        } else {
                            Vec::new()
                        },
                    });
                }
            }
            out.push(PoolUsage {
                pool: name,
                families,
                nodes: node_usage,
            });
        }
        if let Some(node) = node
            && !node_seen
        {
            return Err(unknown_node(node, pool));
        }
        Ok(out)
    }
}

fn unknown_node(node: &str, pool: Option<&str>) -> IpamError {
    IpamError::not_found(
        "node",
        format!(
            "node {node:?} (it has no blocks in {})",
            match pool {
                Some(p) => format!("pool {p:?}"),
                None => "any pool".to_owned(),
            }
        ),
        "AllocateNodeCidrs gives a node its blocks; `kino ipam pools` lists the nodes that have some",
    )
}
