//! [`Ipam`]: pools, node blocks and endpoint addresses over the datastore, safe with any
//! number of replicas. Every decision that two replicas could make differently is committed
//! by one atomic datastore write:
//!
//! - a block is a node's once its block claim (`block:<cidr>`) is created;
//! - an address is an owner's once its address record (`<address>`) is created;
//! - an owner's address is settled once its owner claim (`owner:<family>:<hash>`), created
//!   before the address record and naming it, is marked bound by compare-and-swap.
//!
//! Deleting goes the other way round (claim first, then address record), so a bound claim
//! always names an address record of its owner. The in-memory caches of a replica (pools,
//! node blocks, free addresses) only propose; a stale cache costs a retry, never a
//! duplicate. See `proto/kino/ipam/v1/ipam.proto` for the record layout.
//!
//! Load-balanced services (`lb`, `kino.service.v1`) follow the same rule with their own
//! claims: a frontend or a frontend id is a service's once its claim record is created.

mod addresses;
mod lb;
mod node_cidrs;
mod nodes;
mod pools;
mod status;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

pub use addresses::{AllocateArgs, Allocated, GcArgs, ReleaseTarget};
pub use nodes::{
    BlockUsage, DeletedNode, ENDPOINT_KIND, FINISH_DELETION_AFTER, Liveness, NodeView,
};
pub use pools::{DefaultPoolOutcome, describe as describe_pool};
pub use status::{AllocationPage, FamilyUsage, ListArgs, NodeUsage, PoolUsage};

use crate::allocator::BlockAllocator;
use crate::lb::network::ServiceNetwork;
use crate::persistence::{Datastore, Stored};
use crate::prefix::IpPrefix;
use crate::records::{NodeBlocks, Pool};

/// How many times an operation re-reads and retries after losing a compare-and-swap race
/// before it answers ABORTED.
const MAX_ATTEMPTS: usize = 64;

/// Tunables of the service.
#[derive(Clone, Debug)]
pub struct IpamOptions {
    /// How long an owner claim may stay half-done (no progress seen) before another request
    /// for the same owner takes it over (its replica is presumed dead).
    pub takeover_after: Duration,
    /// Most blocks of one family a node may hold in one pool (1 = never grow).
    pub max_node_blocks: usize,
    /// The pool to create when a request names it and it does not exist (the `default`
    /// pool, also created at start-up), so no request races the start-up.
    pub default_pool: Option<crate::pool::PoolConfig>,
    /// The service CIDRs and NodePort range (`kino.service.v1`); no pool may overlap them.
    pub service_network: ServiceNetwork,
}

impl Default for IpamOptions {
    fn default() -> Self {
        IpamOptions {
            takeover_after: Duration::from_secs(3),
            max_node_blocks: 4,
            default_pool: None,
            service_network: ServiceNetwork::default(),
        }
    }
}

/// The IPAM logic of one replica.
#[derive(Debug)]
pub struct Ipam {
    store: Datastore,
    options: IpamOptions,
    /// READY pools by name.
    pools: Mutex<HashMap<String, Stored<Pool>>>,
    /// Node records by (pool, node).
    nodes: Mutex<HashMap<(String, String), Stored<NodeBlocks>>>,
    /// Candidate addresses by (pool, block).
    blocks: Mutex<HashMap<(String, IpPrefix), BlockAllocator>>,
    /// Frontend ids believed taken (loaded at first use); only proposes, as the block caches.
    frontend_ids: Mutex<Option<BTreeSet<u16>>>,
}

impl Ipam {
    /// A replica over `store`.
    pub fn new(store: Datastore, options: IpamOptions) -> Self {
        Ipam {
            store,
            options,
            pools: Mutex::default(),
            nodes: Mutex::default(),
            blocks: Mutex::default(),
            frontend_ids: Mutex::default(),
        }
    }

    /// The datastore client.
    pub fn store(&self) -> &Datastore {
        &self.store
    }

    fn cached_node(&self, pool: &str, node: &str) -> Option<Stored<NodeBlocks>> {
        lock(&self.nodes)
            .get(&(pool.to_owned(), node.to_owned()))
            .cloned()
    }

    fn cache_node(&self, record: &Stored<NodeBlocks>) {
        let key = (record.value.pool.clone(), record.value.node.clone());
        let mut nodes = lock(&self.nodes);
        match nodes.get(&key) {
            Some(old) if old.revision > record.revision => {}
            _ => {
                nodes.insert(key, record.clone());
            }
        }
    }

    fn forget_node(&self, pool: &str, node: &str) {
        lock(&self.nodes).remove(&(pool.to_owned(), node.to_owned()));
    }

    fn forget_pool(&self, pool: &str) {
        lock(&self.pools).remove(pool);
        lock(&self.nodes).retain(|(p, _), _| p != pool);
        lock(&self.blocks).retain(|(p, _), _| p != pool);
    }

    fn forget_block(&self, pool: &str, block: &IpPrefix) {
        lock(&self.blocks).remove(&(pool.to_owned(), *block));
    }

    /// The address is free again (released by this replica).
    fn address_freed(&self, pool: &str, block: &IpPrefix, addr: IpAddr) {
        if let Some(allocator) = lock(&self.blocks).get_mut(&(pool.to_owned(), *block)) {
            allocator.mark_free(addr);
        }
    }

    /// The address is known allocated.
    fn address_taken(&self, pool: &str, block: &IpPrefix, addr: IpAddr) {
        if let Some(allocator) = lock(&self.blocks).get_mut(&(pool.to_owned(), *block)) {
            allocator.mark_taken(addr);
        }
    }
}

/// Locks a cache, recovering from a panic elsewhere (the caches only propose).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A short pause between polls of a record another request is changing.
async fn pause(attempt: usize) {
    let millis = (2u64 << attempt.min(5)).min(50);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// A list of things for a message: the first few, then how many more.
fn summarize<T: std::fmt::Display>(items: &[T], max: usize) -> String {
    let mut text = items
        .iter()
        .take(max)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        text.push_str(&format!(" and {} more", items.len() - max));
    }
    text
}
