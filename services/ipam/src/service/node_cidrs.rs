//! Node blocks: giving a node its blocks (idempotent; one more when full), giving them back.
//!
//! A block becomes a node's by the atomic Create of its block claim (`block:<cidr>`), then
//! the node record (`<node>`) lists it, written by Create or compare-and-swap. A block
//! claim that no node record lists (its replica died in between, or lost a race for the
//! same node) is adopted by the next request for that node, or given back by Gc of the node
//! or ReleaseNodeCidrs (see [`Ipam::collect_orphan_blocks`]). Adopting bumps the claim's
//! revision first, so the replica that created it can no longer delete it.
//!
//! No record of a node hangs on a lease: a node whose agent is down keeps its blocks and its
//! pods' addresses until it is deleted explicitly. Records an older kino-ipam attached to a
//! lease are moved off it ([`Ipam::detach_leases`] at start-up, and whenever the node's
//! record is next read here).

use std::collections::BTreeSet;
use std::time::SystemTime;

use kino_service_kit::records::Spec;

use super::pools::unknown_pool;
use super::{Ipam, MAX_ATTEMPTS, summarize};
use crate::error::{IpamError, Result};
use crate::persistence::{IpamQueries, Stored, WriteError, block_record_name};
use crate::pool::PoolPhase;
use crate::prefix::{Family, IpPrefix};
use crate::records::{Allocation, Claim, NodeBlock, NodeBlocks, Pool};

/// The lease every record of kino-ipam is written on: none.
const NO_LEASE: i64 = 0;

/// A request for one more block of a family, made when the node's `seen` blocks of that
/// family were all full.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grow {
    pub family: Family,
    pub seen: usize,
}

impl Ipam {
    /// Gives `node` its blocks of `pool` (AllocateNodeCidrs).
    pub async fn allocate_node_cidrs(&self, pool: &str, node: &str) -> Result<Stored<NodeBlocks>> {
        self.ensure_node_blocks("pool", pool, node, None).await
    }

    /// The node's record in `pool`: cached, or made (the node gets its blocks) if missing.
    pub(super) async fn node_blocks(&self, pool: &str, node: &str) -> Result<Stored<NodeBlocks>> {
        if let Some(cached) = self.cached_node(pool, node)
            && cached.lease == NO_LEASE
        {
            return Ok(cached);
        }
        self.ensure_node_blocks("pool", pool, node, None).await
    }

    /// The node's record, with one block of every family of the pool (and one more of
    /// `grow.family` if asked), claiming free blocks as needed; off any lease.
    pub(super) async fn ensure_node_blocks(
        &self,
        pool_field: &str,
        pool_name: &str,
        node: &str,
        grow: Option<Grow>,
    ) -> Result<Stored<NodeBlocks>> {
        for attempt in 0..MAX_ATTEMPTS {
            let pool = self
                .pool_for_use(pool_field, pool_name, attempt > 0)
                .await?;
            let current = self.store.get::<NodeBlocks>(pool_name, node).await?;
            if let Some(current) = &current
                && current.value.releasing
            {
                return Err(releasing(pool_name, node));
            }
            let mut missing: Vec<Family> = pool
                .value
                .config
                .families()
                .map(|(f, _)| f)
                .filter(|f| {
                    current
                        .as_ref()
                        .is_none_or(|c| c.value.of_family(*f).next().is_none())
                })
                .collect();
            if let (Some(grow), Some(current)) = (grow, &current) {
                let have = current.value.of_family(grow.family).count();
                if have == grow.seen && !missing.contains(&grow.family) {
                    if have >= self.options.max_node_blocks {
                        return Err(IpamError::FailedPrecondition(format!(
                            "node {node:?} already has {have} {} block(s) in pool {pool_name:?}, the most a node may hold (--max-node-blocks {})",
                            grow.family, self.options.max_node_blocks
                        )));
                    }
                    missing.push(grow.family);
                }
            }
            let new_lease = NO_LEASE;
            if missing.is_empty() {
                let current =
                    current.expect("a pool has a family, so a node with none is missing one");
                if current.lease != new_lease {
                    match self.move_node_lease(&current, new_lease).await {
                        Ok(moved) => return Ok(moved),
                        Err(WriteError::Conflict | WriteError::NotFound) => continue,
                        Err(e) => return Err(e.into_error(&format!("node {node:?}"))),
                    }
                }
                self.cache_node(&current);
                return Ok(current);
            }

            // Claim (or adopt) one block per missing family.
            let claims = self.store.block_claims(pool_name).await?;
            let mut claimed: BTreeSet<IpPrefix> = claims
                .iter()
                .flat_map(|c| c.value.blocks.iter().map(|b| b.cidr))
                .collect();
            let listed = |b: &IpPrefix| current.as_ref().is_some_and(|c| c.value.has(b));
            let mut orphans: Vec<&Stored<NodeBlocks>> = claims
                .iter()
                .filter(|c| c.value.node == node)
                .filter(|c| c.value.blocks.iter().all(|b| !listed(&b.cidr)))
                .collect();
            let mut fresh: Vec<Stored<NodeBlocks>> = Vec::new();
            let mut added: Vec<NodeBlock> = Vec::new();
            let mut lost_race = false;
            for family in missing {
                let family_pool = pool
                    .value
                    .config
                    .family(family)
                    .expect("missing families come from the pool");
                let orphan = orphans.iter().position(|o| {
                    o.value
                        .blocks
                        .first()
                        .is_some_and(|b| b.cidr.family() == family && family_pool.is_block(&b.cidr))
                });
                if let Some(index) = orphan {
                    let orphan = orphans.swap_remove(index);
                    match self
                        .store
                        .update(
                            pool_name,
                            &orphan.name,
                            &orphan.value,
                            new_lease,
                            orphan.revision,
                        )
                        .await
                    {
                        Ok(_) => added.extend(orphan.value.blocks.iter().cloned()),
                        Err(WriteError::Failed(e)) => {
                            self.drop_fresh(pool_name, &fresh).await;
                            return Err(e);
                        }
                        Err(WriteError::LeaseGone) => {
                            self.drop_fresh(pool_name, &fresh).await;
                            return Err(lease_gone(new_lease));
                        }
                        Err(_) => {
                            lost_race = true;
                            break;
                        }
                    }
                    continue;
                }
                loop {
                    let Some(block) = family_pool.first_free_block(&claimed) else {
                        self.drop_fresh(pool_name, &fresh).await;
                        let total = family_pool.block_count();
                        return Err(IpamError::NoFreeBlock(format!(
                            "pool {pool_name:?} has no free {family} block for node {node:?}: all {total} /{} blocks of {} are given to nodes; add CIDRs in a new pool or release nodes' blocks (ReleaseNodeCidrs)",
                            family_pool.node_mask,
                            family_pool
                                .cidrs
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(" ")
                        )));
                    };
                    let record = NodeBlocks {
                        pool: pool_name.to_owned(),
                        node: node.to_owned(),
                        blocks: vec![NodeBlock {
                            cidr: block,
                            allocate_time: SystemTime::now(),
                        }],
                        releasing: false,
                    };
                    match self
                        .store
                        .create(pool_name, &block_record_name(&block), &record, new_lease)
                        .await
                    {
                        Ok(created) => {
                            added.extend(record.blocks);
                            fresh.push(created);
                            break;
                        }
                        Err(WriteError::Exists) => {
                            claimed.insert(block);
                        }
                        Err(WriteError::LeaseGone) => {
                            self.drop_fresh(pool_name, &fresh).await;
                            return Err(lease_gone(new_lease));
                        }
                        Err(e) => {
                            self.drop_fresh(pool_name, &fresh).await;
                            return Err(e.into_error(&format!("claiming block {block}")));
                        }
                    }
                }
            }
            if lost_race {
                self.drop_fresh(pool_name, &fresh).await;
                continue;
            }

            // Commit: the node record lists the new blocks.
            let mut record = current
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or(NodeBlocks {
                    pool: pool_name.to_owned(),
                    node: node.to_owned(),
                    blocks: Vec::new(),
                    releasing: false,
                });
            record.blocks.extend(added);
            let written = match &current {
                None => self.store.create(pool_name, node, &record, new_lease).await,
                Some(c) => {
                    self.store
                        .update(pool_name, node, &record, new_lease, c.revision)
                        .await
                }
            };
            match written {
                Ok(written) => {
                    if current.is_none()
                        && let Err(e) = self.check_pool_still_there(&pool, &written).await
                    {
                        return Err(e);
                    }
                    if current.as_ref().is_some_and(|c| c.lease != new_lease)
                        && let Err(e) = self.move_records_lease(&written).await
                    {
                        return Err(e);
                    }
                    self.cache_node(&written);
                    return Ok(written);
                }
                Err(WriteError::Exists | WriteError::Conflict | WriteError::NotFound) => {
                    // Another request changed the node first: give back what we claimed
                    // (unless adopted meanwhile) and start again from what it wrote.
                    self.drop_fresh(pool_name, &fresh).await;
                }
                Err(WriteError::LeaseGone) => {
                    self.drop_fresh(pool_name, &fresh).await;
                    return Err(lease_gone(new_lease));
                }
                Err(WriteError::Failed(e)) => {
                    self.drop_fresh(pool_name, &fresh).await;
                    return Err(e);
                }
            }
        }
        Err(IpamError::Aborted(format!(
            "node {node:?} in pool {pool_name:?}: other requests kept changing its blocks; retry"
        )))
    }

    /// Deletes block claims this request created, at the revision it created them (a claim
    /// adopted by another request meanwhile has a newer revision and stays).
    async fn drop_fresh(&self, pool: &str, fresh: &[Stored<NodeBlocks>]) {
        for claim in fresh {
            let _ = self
                .store
                .delete(NodeBlocks::KIND, pool, &claim.name, claim.revision)
                .await;
        }
    }

    /// After creating a node record: the pool must still be the READY pool we read, else
    /// (DeletePool marked it meanwhile) the node record and its blocks are removed again.
    async fn check_pool_still_there(
        &self,
        pool: &Stored<Pool>,
        written: &Stored<NodeBlocks>,
    ) -> Result<()> {
        let name = &pool.value.config.name;
        let now = self.store.get::<Pool>("", name).await?;
        let fine = now.as_ref().is_some_and(|p| {
            p.create_revision == pool.create_revision && p.value.phase != PoolPhase::Deleting
        });
        if fine {
            return Ok(());
        }
        self.forget_pool(name);
        let _ = self
            .store
            .delete(NodeBlocks::KIND, name, &written.name, written.revision)
            .await;
        for block in &written.value.blocks {
            let _ = self
                .store
                .delete(NodeBlocks::KIND, name, &block_record_name(&block.cidr), 0)
                .await;
        }
        Err(match now {
            None => unknown_pool("pool", name),
            Some(_) => IpamError::FailedPrecondition(format!(
                "pool {name:?} is being deleted; nothing is allocated from it"
            )),
        })
    }

    /// Moves a node record, then its block claims, addresses and owner claims, to `lease`.
    async fn move_node_lease(
        &self,
        current: &Stored<NodeBlocks>,
        lease: i64,
    ) -> Result<Stored<NodeBlocks>, WriteError> {
        let pool = &current.value.pool;
        let moved = self
            .store
            .update(pool, &current.name, &current.value, lease, current.revision)
            .await
            .map_err(|e| match e {
                WriteError::LeaseGone => WriteError::Failed(lease_gone(lease)),
                e => e,
            })?;
        self.move_records_lease(&moved)
            .await
            .map_err(WriteError::Failed)?;
        self.cache_node(&moved);
        Ok(moved)
    }

    /// Puts every record of the node (block claims, then addresses, then owner claims:
    /// an owner claim must never outlive its address) on the node record's lease.
    async fn move_records_lease(&self, node: &Stored<NodeBlocks>) -> Result<()> {
        let pool = &node.value.pool;
        let name = &node.value.node;
        let lease = node.lease;
        for claim in self.store.block_claims(pool).await? {
            if claim.value.node == *name && claim.lease != lease {
                self.relabel(pool, lease, claim).await?;
            }
        }
        let (addresses, claims) = self.store.address_records(pool).await?;
        for record in addresses {
            if record.value.node == *name && record.lease != lease {
                self.relabel(pool, lease, record).await?;
            }
        }
        for record in claims {
            if record.value.node == *name && record.lease != lease {
                self.relabel(pool, lease, record).await?;
            }
        }
        Ok(())
    }

    /// Moves every record an older kino-ipam attached to a lease off it (run at start-up),
    /// node records and block claims first, owner claims last (a claim never outlives the
    /// address it names). Returns how many records it moved.
    pub async fn detach_leases(&self) -> Result<usize> {
        let mut moved = 0;
        for pool in self.store.pools().await? {
            let pool = pool.value.config.name;
            let (nodes, blocks) = self.store.node_records(&pool).await?;
            for record in nodes.into_iter().chain(blocks) {
                if record.lease != NO_LEASE {
                    self.forget_node(&pool, &record.value.node);
                    self.relabel(&pool, NO_LEASE, record).await?;
                    moved += 1;
                }
            }
            let (addresses, claims) = self.store.address_records(&pool).await?;
            for record in addresses {
                if record.lease != NO_LEASE {
                    self.relabel(&pool, NO_LEASE, record).await?;
                    moved += 1;
                }
            }
            for record in claims {
                if record.lease != NO_LEASE {
                    self.relabel(&pool, NO_LEASE, record).await?;
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }

    /// Moves one record to `lease`, re-reading it when it changed meanwhile.
    pub(super) async fn relabel<T: Spec>(
        &self,
        pool: &str,
        lease: i64,
        mut record: Stored<T>,
    ) -> Result<()> {
        let name = record.name.clone();
        let name = name.as_str();
        for _ in 0..MAX_ATTEMPTS {
            match self
                .store
                .update(pool, name, &record.value, lease, record.revision)
                .await
            {
                Ok(_) | Err(WriteError::NotFound) => return Ok(()),
                Err(WriteError::Conflict) => match self.store.get::<T>(pool, name).await? {
                    Some(now) if now.lease != lease => record = now,
                    _ => return Ok(()),
                },
                Err(WriteError::LeaseGone) => return Err(lease_gone(lease)),
                Err(e) => return Err(e.into_error(&format!("moving {name} to lease {lease}"))),
            }
        }
        Err(IpamError::Aborted(format!(
            "moving {name} to lease {lease}: it kept changing; retry"
        )))
    }

    /// The node's records in `pool`, or in every pool (GetNodeCidrs).
    pub async fn get_node_cidrs(
        &self,
        node: &str,
        pool: Option<&str>,
    ) -> Result<Vec<Stored<NodeBlocks>>> {
        let pools = self.selected_pools(pool).await?;
        let mut out = Vec::new();
        for pool in pools {
            if let Some(record) = self.store.get::<NodeBlocks>(&pool, node).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Gives a node's blocks back (ReleaseNodeCidrs); with `force` also frees every address
    /// allocated from them. Returns the released node records and the freed addresses.
    ///
    /// The node record is marked `releasing` first: requests that read it afterwards
    /// allocate nothing, and requests that allocated before see the mark when they check
    /// the node record after their own write, and undo it.
    pub async fn release_node_cidrs(
        &self,
        node: &str,
        pool: Option<&str>,
        force: bool,
    ) -> Result<(Vec<NodeBlocks>, Vec<Allocation>)> {
        let pools = self.selected_pools(pool).await?;
        let mut released = Vec::new();
        let mut freed = Vec::new();
        for pool in pools {
            let (record, addresses) = self.release_in_pool(node, &pool, force).await?;
            released.extend(record);
            freed.extend(addresses);
        }
        Ok((released, freed))
    }

    async fn release_in_pool(
        &self,
        node: &str,
        pool: &str,
        force: bool,
    ) -> Result<(Option<NodeBlocks>, Vec<Allocation>)> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.get::<NodeBlocks>(pool, node).await?;
            let own_claims: Vec<Stored<NodeBlocks>> = self
                .store
                .block_claims(pool)
                .await?
                .into_iter()
                .filter(|c| c.value.node == node)
                .collect();
            let Some(current) = current else {
                // No node record: only leftovers of requests that died half-way.
                if !own_claims.is_empty() {
                    self.collect_orphan_blocks(pool, node).await?;
                }
                self.forget_node(pool, node);
                return Ok((None, Vec::new()));
            };
            let marked = if current.value.releasing {
                current
            } else {
                let mut releasing = current.value.clone();
                releasing.releasing = true;
                match self
                    .store
                    .update(pool, node, &releasing, current.lease, current.revision)
                    .await
                {
                    Ok(marked) => marked,
                    Err(WriteError::Conflict | WriteError::NotFound | WriteError::LeaseGone) => {
                        continue;
                    }
                    Err(e) => return Err(e.into_error(&format!("releasing node {node:?}"))),
                }
            };
            self.forget_node(pool, node);
            let (addresses, claims) = self.store.address_records(pool).await?;
            let addresses: Vec<Stored<Allocation>> = addresses
                .into_iter()
                .filter(|a| a.value.node == node)
                .collect();
            if !addresses.is_empty() && !force {
                let mut unmarked = marked.value.clone();
                unmarked.releasing = false;
                let _ = self
                    .store
                    .update(pool, node, &unmarked, marked.lease, marked.revision)
                    .await;
                let list: Vec<String> = addresses
                    .iter()
                    .map(|a| format!("{} held by {}", a.value.address, a.value.owner))
                    .collect();
                return Err(IpamError::FailedPrecondition(format!(
                    "node {node:?} still has {} address(es) allocated in pool {pool:?}: {}; release them (Release, Gc) or pass force to free them too",
                    addresses.len(),
                    summarize(&list, 5)
                )));
            }
            // Owner claims before addresses: a claim never names a missing address.
            for claim in claims.iter().filter(|c| c.value.node == node) {
                let _ = self.store.delete(Claim::KIND, pool, &claim.name, 0).await;
            }
            let mut freed = Vec::new();
            for address in addresses {
                match self
                    .store
                    .delete(Allocation::KIND, pool, &address.name, 0)
                    .await
                {
                    Ok(_) => freed.push(address.value),
                    Err(WriteError::NotFound) => {}
                    Err(e) => return Err(e.into_error(&format!("freeing {}", address.name))),
                }
            }
            for claim in &own_claims {
                let _ = self
                    .store
                    .delete(NodeBlocks::KIND, pool, &claim.name, 0)
                    .await;
            }
            for block in &marked.value.blocks {
                let _ = self
                    .store
                    .delete(NodeBlocks::KIND, pool, &block_record_name(&block.cidr), 0)
                    .await;
                self.forget_block(pool, &block.cidr);
            }
            match self
                .store
                .delete(NodeBlocks::KIND, pool, node, marked.revision)
                .await
            {
                Ok(_) | Err(WriteError::NotFound) => {
                    self.forget_node(pool, node);
                    let mut released = marked.value;
                    released.releasing = false;
                    return Ok((Some(released), freed));
                }
                Err(WriteError::Conflict) => continue,
                Err(e) => return Err(e.into_error(&format!("releasing node {node:?}"))),
            }
        }
        Err(IpamError::Aborted(format!(
            "releasing node {node:?} in pool {pool:?}: other requests kept changing it; retry"
        )))
    }

    /// Removes the block claims naming `node` that its node record does not list: left by a
    /// request whose replica died between claiming a block and writing the node record.
    /// Returns the blocks given back.
    ///
    /// A request still in flight may be about to list such a block, so first a barrier: the
    /// node record is rewritten (or, if there is none, created empty and `releasing`), which
    /// makes every request that read it before fail its compare-and-swap (or its Create) and
    /// start again. The claims were listed before the barrier and are deleted at the
    /// revisions listed, so a claim adopted after the barrier (adopting bumps its revision)
    /// stays.
    pub(super) async fn collect_orphan_blocks(
        &self,
        pool: &str,
        node: &str,
    ) -> Result<Vec<IpPrefix>> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.get::<NodeBlocks>(pool, node).await?;
            let listed = |b: &IpPrefix| current.as_ref().is_some_and(|c| c.value.has(b));
            let orphans: Vec<Stored<NodeBlocks>> = self
                .store
                .block_claims(pool)
                .await?
                .into_iter()
                .filter(|c| c.value.node == node)
                .filter(|c| c.value.blocks.iter().all(|b| !listed(&b.cidr)))
                .collect();
            if orphans.is_empty() {
                return Ok(Vec::new());
            }
            let barrier = match &current {
                Some(c) => match self
                    .store
                    .update(pool, node, &c.value, c.lease, c.revision)
                    .await
                {
                    Ok(_) => None,
                    Err(WriteError::Failed(e)) => return Err(e),
                    Err(_) => continue,
                },
                None => {
                    let empty = NodeBlocks {
                        pool: pool.to_owned(),
                        node: node.to_owned(),
                        blocks: Vec::new(),
                        releasing: true,
                    };
                    match self.store.create(pool, node, &empty, 0).await {
                        Ok(created) => Some(created),
                        Err(WriteError::Failed(e)) => return Err(e),
                        Err(_) => continue,
                    }
                }
            };
            let mut freed = Vec::new();
            for orphan in &orphans {
                if self
                    .store
                    .delete(NodeBlocks::KIND, pool, &orphan.name, orphan.revision)
                    .await
                    .is_ok()
                {
                    for block in &orphan.value.blocks {
                        self.forget_block(pool, &block.cidr);
                        freed.push(block.cidr);
                    }
                }
            }
            if let Some(barrier) = barrier {
                let _ = self
                    .store
                    .delete(NodeBlocks::KIND, pool, node, barrier.revision)
                    .await;
            }
            self.forget_node(pool, node);
            if !freed.is_empty() {
                tracing::info!(pool = %pool, node = %node, blocks = ?freed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "gave back blocks a dead request had claimed for the node");
            }
            return Ok(freed);
        }
        Err(IpamError::Aborted(format!(
            "node {node:?} in pool {pool:?}: its record kept changing while collecting unused blocks; retry"
        )))
    }

    /// The pool named (which must exist), or every pool.
    pub(super) async fn selected_pools(&self, pool: Option<&str>) -> Result<Vec<String>> {
        match pool {
            Some(name) => {
                if self.store.get::<Pool>("", name).await?.is_none() {
                    return Err(unknown_pool("pool", name));
                }
                Ok(vec![name.to_owned()])
            }
            None => Ok(self
                .store
                .pools()
                .await?
                .into_iter()
                .map(|p| p.value.config.name)
                .collect()),
        }
    }
}

fn releasing(pool: &str, node: &str) -> IpamError {
    IpamError::FailedPrecondition(format!(
        "node {node:?}'s blocks in pool {pool:?} are being released (ReleaseNodeCidrs); nothing is allocated from them. If that request died, run ReleaseNodeCidrs again"
    ))
}

fn lease_gone(lease: i64) -> IpamError {
    IpamError::not_found(
        "lease_id",
        format!("lease {lease}"),
        "it expired or was revoked: grant a new one (the datastore's GrantLease) or pass 0",
    )
}
