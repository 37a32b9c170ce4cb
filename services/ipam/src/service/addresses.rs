//! Endpoint addresses: Allocate, Release, Gc.
//!
//! Allocate for an owner (container id + ifname) and family, in three writes:
//!
//! 1. Create the owner claim `owner:<family>:<hash>` naming a candidate address. Only one
//!    request per owner gets here; the others find the claim and return (or wait for) its
//!    address, so replicas racing on a retried CNI ADD agree.
//! 2. Create the address record `<address>`: the commit point that gives the address to
//!    exactly one owner. If someone else holds it, move the claim (compare-and-swap) to the
//!    next candidate and try again.
//! 3. Mark the claim bound (compare-and-swap). Then read the node record once more: if its
//!    blocks were released meanwhile (or moved to another lease), undo (or follow).
//!
//! A request that finds the claim half-done finishes it: if the address record is already
//! the owner's it marks the claim bound; if not and the claim has not changed for
//! `takeover_after`, its replica is presumed dead and the request takes the claim over
//! (compare-and-swap, so two takers cannot both win). A takeover that reuses an address
//! record left by the dead request adopts it with a compare-and-swap update, so the slow
//! request, should it wake up, can no longer delete it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use kino_service_kit::records::Spec;

use super::node_cidrs::Grow;
use super::{Ipam, MAX_ATTEMPTS, lock, pause};
use crate::allocator::BlockAllocator;
use crate::error::{Exhaustion, InvalidField, IpamError, Result};
use crate::owner::{Owner, OwnerKey};
use crate::persistence::{IpamQueries, Stored, WriteError, address_record_name};
use crate::pool::reserved;
use crate::prefix::{Family, IpPrefix};
use crate::records::{Allocation, Claim, NodeBlocks};

/// An Allocate request, validated.
#[derive(Clone, Debug)]
pub struct AllocateArgs {
    /// Node the endpoint lives on.
    pub node: String,
    /// Pool to allocate from.
    pub pool: String,
    /// Family of the address.
    pub family: Family,
    /// Who will hold it.
    pub owner: Owner,
    /// A specific address, if asked for.
    pub requested: Option<IpAddr>,
}

/// The outcome of Allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// The allocation.
    pub allocation: Allocation,
    /// True when the owner already held it (a retried request).
    pub existing: bool,
}

/// What Release frees.
#[derive(Clone, Debug)]
pub enum ReleaseTarget {
    /// Every address of an owner (one family, or both).
    Owner {
        /// The owner.
        owner: Owner,
        /// Only this family; `None` for both.
        family: Option<Family>,
    },
    /// One address, whoever holds it.
    Address(IpAddr),
}

/// A Gc request, validated.
#[derive(Clone, Debug)]
pub struct GcArgs {
    /// Node to collect.
    pub node: String,
    /// Only this pool; `None` for every pool.
    pub pool: Option<String>,
    /// Owners still in use on the node.
    pub valid_owners: Vec<OwnerKey>,
    /// Only free allocations at least this old (zero: any age).
    pub min_age: Duration,
    /// Report without freeing.
    pub dry_run: bool,
}

/// Longest a request waits for another request's claim on the same owner to settle.
const CLAIM_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// How an attempt ended.
enum Step {
    Done(Box<Allocated>),
    /// Something changed under the attempt; start again from reading.
    Retry,
}

/// A proposed address: given back to the replica's free-address cache when dropped, unless
/// kept (allocated) or found taken.
struct Candidate<'a> {
    ipam: &'a Ipam,
    pool: String,
    block: IpPrefix,
    addr: IpAddr,
    settled: bool,
}

impl Candidate<'_> {
    /// The address is allocated (to us or someone else): not a candidate any more.
    fn taken(mut self) {
        self.ipam.address_taken(&self.pool, &self.block, self.addr);
        self.settled = true;
    }
}

impl Drop for Candidate<'_> {
    fn drop(&mut self) {
        if !self.settled
            && let Some(allocator) =
                lock(&self.ipam.blocks).get_mut(&(self.pool.clone(), self.block))
        {
            allocator.abandon(self.addr);
        }
    }
}

impl Ipam {
    /// Gives an owner an address on a node (Allocate).
    pub async fn allocate(&self, args: AllocateArgs) -> Result<Allocated> {
        let pool = self.pool_for_use("pool", &args.pool, false).await?;
        if pool.value.config.family(args.family).is_none() {
            let field = if args.requested.is_some() {
                "requested_address"
            } else {
                "family"
            };
            return Err(InvalidField::new(
                field,
                format!(
                    "pool {:?} has no {} CIDRs; ask for the other family or use a dual-stack pool",
                    args.pool, args.family
                ),
            )
            .into());
        }
        let claim_name = args.owner.claim_name(args.family);
        for _ in 0..MAX_ATTEMPTS {
            let node = self.node_blocks(&args.pool, &args.node).await?;
            let (candidate, node) = match args.requested {
                Some(addr) => (self.requested_candidate(&args, &node, addr)?, node),
                None => match self.next_candidate(&args, node).await {
                    Ok(found) => found,
                    Err(IpamError::Exhausted(e)) => {
                        // A retried request of an owner that holds an address on a full node
                        // still gets it back.
                        if let Some(done) = self.existing_claim(&args, &claim_name).await? {
                            return Ok(done);
                        }
                        return Err(IpamError::Exhausted(e));
                    }
                    Err(e) => return Err(e),
                },
            };
            let claim = Claim {
                owner: args.owner.clone(),
                family: args.family,
                pool: args.pool.clone(),
                node: args.node.clone(),
                address: candidate.addr,
                bound: false,
                update_time: SystemTime::now(),
            };
            match self
                .store
                .create(&args.pool, &claim_name, &claim, node.lease)
                .await
            {
                Ok(created) => match self.claimant(&args, created, candidate, node).await? {
                    Step::Done(done) => return Ok(*done),
                    Step::Retry => continue,
                },
                Err(WriteError::Exists) => {
                    drop(candidate);
                    if let Some(done) = self.existing_claim(&args, &claim_name).await? {
                        return Ok(done);
                    }
                }
                Err(WriteError::LeaseGone | WriteError::NotFound | WriteError::Conflict) => {
                    // The node's lease ended: its records are gone; read them again.
                    self.forget_node(&args.pool, &args.node);
                }
                Err(WriteError::Failed(e)) => return Err(e),
            }
        }
        Err(IpamError::Aborted(format!(
            "allocating for {} on node {:?}: other requests kept changing the same records; retry",
            args.owner, args.node
        )))
    }

    /// Steps 2 and 3 for the request that holds the claim.
    async fn claimant(
        &self,
        args: &AllocateArgs,
        mut claim: Stored<Claim>,
        mut candidate: Candidate<'_>,
        node: Stored<NodeBlocks>,
    ) -> Result<Step> {
        let pool = &args.pool;
        loop {
            let allocation = Allocation {
                address: candidate.addr,
                block: candidate.block,
                pool: pool.clone(),
                node: args.node.clone(),
                owner: args.owner.clone(),
                allocate_time: SystemTime::now(),
            };
            let name = address_record_name(candidate.addr);
            let record = match self
                .store
                .create(pool, &name, &allocation, node.lease)
                .await
            {
                Ok(record) => record,
                Err(WriteError::Exists) => {
                    let held = match self.store.get::<Allocation>(pool, &name).await? {
                        None => continue,
                        Some(held) => held,
                    };
                    if held.value.owner.same(&args.owner) {
                        // Left by an earlier attempt for this owner: adopt it.
                        match self
                            .store
                            .update(pool, &name, &allocation, node.lease, held.revision)
                            .await
                        {
                            Ok(record) => record,
                            Err(WriteError::Conflict | WriteError::NotFound) => continue,
                            Err(WriteError::Failed(e)) => return Err(e),
                            Err(_) => {
                                self.drop_claim(&claim).await;
                                self.forget_node(pool, &args.node);
                                return Ok(Step::Retry);
                            }
                        }
                    } else {
                        let addr = candidate.addr;
                        candidate.taken();
                        if args.requested.is_some() {
                            self.drop_claim(&claim).await;
                            return Err(IpamError::AlreadyExists(format!(
                                "{addr} is already allocated to {} on node {:?} in pool {pool:?}; ask for another address or none",
                                held.value.owner, held.value.node
                            )));
                        }
                        let next = match self.next_candidate(args, node.clone()).await {
                            Ok((next, _)) => next,
                            Err(e) => {
                                self.drop_claim(&claim).await;
                                return Err(e);
                            }
                        };
                        let mut moved = claim.value.clone();
                        moved.address = next.addr;
                        moved.update_time = SystemTime::now();
                        match self
                            .store
                            .update(pool, &claim.name, &moved, node.lease, claim.revision)
                            .await
                        {
                            Ok(updated) => {
                                claim = updated;
                                candidate = next;
                                continue;
                            }
                            Err(WriteError::Failed(e)) => return Err(e),
                            // Taken over or released meanwhile: start again.
                            Err(_) => return Ok(Step::Retry),
                        }
                    }
                }
                Err(WriteError::Failed(e)) => {
                    self.drop_claim(&claim).await;
                    return Err(e);
                }
                Err(_) => {
                    self.drop_claim(&claim).await;
                    self.forget_node(pool, &args.node);
                    return Ok(Step::Retry);
                }
            };
            // Bind the claim.
            let mut bound = claim.value.clone();
            bound.bound = true;
            bound.update_time = SystemTime::now();
            return match self
                .store
                .update(pool, &claim.name, &bound, node.lease, claim.revision)
                .await
            {
                Ok(bound_claim) => {
                    candidate.taken();
                    self.settle(args, record, bound_claim, false).await
                }
                Err(WriteError::Failed(e)) => Err(e),
                Err(_) => {
                    // The claim changed: taken over (perhaps with this same address) or
                    // released. Keep the address only if the claim still names it.
                    match self.store.get::<Claim>(pool, &claim.name).await? {
                        Some(now) if now.value.address == candidate.addr => candidate.taken(),
                        _ => {
                            let _ = self
                                .store
                                .delete(Allocation::KIND, pool, &record.name, record.revision)
                                .await;
                        }
                    }
                    Ok(Step::Retry)
                }
            };
        }
    }

    /// After binding: the node must still have the block (not released meanwhile), and the
    /// records follow the node's lease if it moved. Undoes the allocation otherwise.
    async fn settle(
        &self,
        args: &AllocateArgs,
        record: Stored<Allocation>,
        claim: Stored<Claim>,
        existing: bool,
    ) -> Result<Step> {
        let pool = &args.pool;
        let node = self.store.get::<NodeBlocks>(pool, &args.node).await?;
        match node {
            Some(node) if !node.value.releasing && node.value.has(&record.value.block) => {
                if node.lease != record.lease {
                    // Address first, then claim: a claim never outlives its address.
                    self.relabel(pool, node.lease, record.clone()).await?;
                    self.relabel(pool, node.lease, claim).await?;
                }
                self.cache_node(&node);
                Ok(Step::Done(Box::new(Allocated {
                    allocation: record.value,
                    existing,
                })))
            }
            other => {
                self.forget_node(pool, &args.node);
                let _ = self
                    .store
                    .delete(Claim::KIND, pool, &claim.name, claim.revision)
                    .await;
                let _ = self
                    .store
                    .delete(Allocation::KIND, pool, &record.name, record.revision)
                    .await;
                self.address_freed(pool, &record.value.block, record.value.address);
                match other {
                    Some(node) if node.value.releasing => {
                        Err(IpamError::FailedPrecondition(format!(
                            "node {:?}'s blocks in pool {pool:?} are being released (ReleaseNodeCidrs); nothing is allocated from them",
                            args.node
                        )))
                    }
                    _ => Ok(Step::Retry),
                }
            }
        }
    }

    /// The owner's claim exists: return its address, finishing a half-done claim or taking
    /// over one whose request died. `None` when the claim went away (start again).
    async fn existing_claim(
        &self,
        args: &AllocateArgs,
        claim_name: &str,
    ) -> Result<Option<Allocated>> {
        let pool = &args.pool;
        let Some(mut observed) = self.store.get::<Claim>(pool, claim_name).await? else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut last_change = started;
        let mut poll = 0;
        loop {
            poll += 1;
            if started.elapsed() > CLAIM_WAIT_LIMIT {
                return Err(IpamError::Aborted(format!(
                    "{} is still being given an address by another request after {CLAIM_WAIT_LIMIT:?}; retry",
                    args.owner
                )));
            }
            let claim = observed.value.clone();
            if claim.node != args.node {
                return Err(IpamError::FailedPrecondition(format!(
                    "{} already holds {} in pool {pool:?} on node {:?}; an owner gets one address per family: release it first",
                    args.owner, claim.address, claim.node
                )));
            }
            if let Some(wanted) = args.requested
                && wanted != claim.address
            {
                return Err(IpamError::FailedPrecondition(format!(
                    "{} already holds {} in pool {pool:?}; release it before asking for {wanted}",
                    args.owner, claim.address
                )));
            }
            let record = self
                .store
                .get::<Allocation>(pool, &address_record_name(claim.address))
                .await?
                .filter(|r| r.value.owner.same(&args.owner));
            if claim.bound {
                return match record {
                    Some(record) => Ok(Some(Allocated {
                        allocation: record.value,
                        existing: true,
                    })),
                    None => {
                        // A Release between our two reads deletes the claim next. If the
                        // claim is still there unchanged, it is broken: remove it.
                        let now = self.store.get::<Claim>(pool, claim_name).await?;
                        if now.is_some_and(|n| n.revision == observed.revision) {
                            tracing::warn!(claim = %observed.name, pool = %pool, address = %claim.address,
                                "bound claim without its address record: removing it");
                            self.drop_claim(&observed).await;
                        }
                        Ok(None)
                    }
                };
            }
            if let Some(record) = record {
                // The address is already the owner's: bind the claim for its request.
                let mut bound = claim.clone();
                bound.bound = true;
                bound.update_time = SystemTime::now();
                match self
                    .store
                    .update(pool, claim_name, &bound, observed.lease, observed.revision)
                    .await
                {
                    Ok(bound_claim) => {
                        return match self.settle(args, record, bound_claim, true).await? {
                            Step::Done(done) => Ok(Some(*done)),
                            Step::Retry => Ok(None),
                        };
                    }
                    Err(WriteError::Failed(e)) => return Err(e),
                    Err(_) => {}
                }
            } else if last_change.elapsed() >= self.options.takeover_after {
                tracing::info!(claim = %observed.name, pool = %pool, owner = %args.owner, address = %claim.address,
                    "taking over an owner claim that made no progress (its replica is presumed dead)");
                let node = self.node_blocks(pool, &args.node).await?;
                let candidate = match self.requested_candidate(args, &node, claim.address) {
                    Ok(candidate) => candidate,
                    Err(_) if args.requested.is_none() => {
                        self.next_candidate(args, node.clone()).await?.0
                    }
                    Err(e) => return Err(e),
                };
                let mut taken = claim.clone();
                taken.address = candidate.addr;
                taken.update_time = SystemTime::now();
                match self
                    .store
                    .update(pool, claim_name, &taken, node.lease, observed.revision)
                    .await
                {
                    Ok(ours) => {
                        return match self.claimant(args, ours, candidate, node).await? {
                            Step::Done(done) => Ok(Some(*done)),
                            Step::Retry => Ok(None),
                        };
                    }
                    Err(WriteError::Failed(e)) => return Err(e),
                    Err(_) => {}
                }
            }
            pause(poll).await;
            match self.store.get::<Claim>(pool, claim_name).await? {
                None => return Ok(None),
                Some(now) => {
                    if now.revision != observed.revision {
                        last_change = Instant::now();
                    }
                    observed = now;
                }
            }
        }
    }

    /// Deletes a claim at the revision we wrote it (not if someone changed it since).
    async fn drop_claim(&self, claim: &Stored<Claim>) {
        let _ = self
            .store
            .delete(Claim::KIND, &claim.value.pool, &claim.name, claim.revision)
            .await;
    }

    /// A requested address as a candidate, if the node may hand it out.
    fn requested_candidate(
        &self,
        args: &AllocateArgs,
        node: &Stored<NodeBlocks>,
        addr: IpAddr,
    ) -> Result<Candidate<'_>> {
        let Some(block) = node.value.block_of(addr) else {
            let blocks: Vec<String> = node
                .value
                .of_family(Family::of(addr))
                .map(ToString::to_string)
                .collect();
            return Err(InvalidField::new(
                "requested_address",
                format!(
                    "{addr} is outside node {:?}'s {} block(s) in pool {:?} ({}); ask for an address inside them, or none",
                    args.node,
                    Family::of(addr),
                    args.pool,
                    blocks.join(", ")
                ),
            )
            .into());
        };
        if let Some(r) = reserved(&block, addr) {
            return Err(InvalidField::new(
                "requested_address",
                format!(
                    "{addr} is {} of node {:?}'s block {block}; it is never handed out",
                    r.describe(),
                    args.node
                ),
            )
            .into());
        }
        Ok(Candidate {
            ipam: self,
            pool: args.pool.clone(),
            block,
            addr,
            settled: true,
        })
    }

    /// The next free address of the node's blocks of the family, per this replica's view
    /// (reloaded from the datastore when it says "full"); when all are full, the node gets
    /// one more block. Also returns the node record used.
    async fn next_candidate(
        &self,
        args: &AllocateArgs,
        mut node: Stored<NodeBlocks>,
    ) -> Result<(Candidate<'_>, Stored<NodeBlocks>)> {
        let pool = &args.pool;
        let family = args.family;
        for _ in 0..=self.options.max_node_blocks {
            let blocks: Vec<IpPrefix> = node.value.of_family(family).copied().collect();
            for reload in [false, true] {
                let to_load: Vec<IpPrefix> = {
                    let cache = lock(&self.blocks);
                    blocks
                        .iter()
                        .filter(|b| {
                            reload
                                || !cache
                                    .get(&(pool.clone(), **b))
                                    .is_some_and(BlockAllocator::is_loaded)
                        })
                        .copied()
                        .collect()
                };
                for block in to_load {
                    let taken = self.store.taken_in_block(pool, &block).await?;
                    lock(&self.blocks)
                        .entry((pool.clone(), block))
                        .or_insert_with(|| BlockAllocator::new(block))
                        .load(taken);
                }
                let mut cache = lock(&self.blocks);
                for block in &blocks {
                    let allocator = cache
                        .entry((pool.clone(), *block))
                        .or_insert_with(|| BlockAllocator::new(*block));
                    if let Some(addr) = allocator.next_candidate() {
                        return Ok((
                            Candidate {
                                ipam: self,
                                pool: pool.clone(),
                                block: *block,
                                addr,
                                settled: false,
                            },
                            node,
                        ));
                    }
                }
            }
            // Every block of the family is full: one more block for the node.
            let grown = self
                .ensure_node_blocks(
                    "pool",
                    pool,
                    &args.node,
                    Some(Grow {
                        family,
                        seen: blocks.len(),
                    }),
                )
                .await;
            match grown {
                Ok(grown) if grown.value.of_family(family).count() > blocks.len() => {
                    node = grown;
                }
                Ok(_) => {
                    return Err(self.exhausted(args, &blocks, "no further block was given".into()));
                }
                Err(IpamError::FailedPrecondition(reason) | IpamError::NoFreeBlock(reason)) => {
                    return Err(self.exhausted(args, &blocks, reason));
                }
                Err(e) => return Err(e),
            }
        }
        let blocks: Vec<IpPrefix> = node.value.of_family(family).copied().collect();
        Err(self.exhausted(args, &blocks, "the node's blocks stayed full".into()))
    }

    fn exhausted(&self, args: &AllocateArgs, blocks: &[IpPrefix], reason: String) -> IpamError {
        let cache = lock(&self.blocks);
        let (mut in_use, mut size) = (0u128, 0u128);
        for block in blocks {
            if let Some(allocator) = cache.get(&(args.pool.clone(), *block)) {
                in_use = in_use.saturating_add(allocator.used());
                size = size.saturating_add(allocator.capacity());
            }
        }
        IpamError::Exhausted(Box::new(Exhaustion {
            pool: args.pool.clone(),
            node: args.node.clone(),
            family: args.family,
            in_use,
            size,
            blocks: blocks.iter().map(ToString::to_string).collect(),
            no_more_blocks: lowercase_first(&reason),
        }))
    }

    /// Frees addresses by owner or by address (Release). Idempotent.
    pub async fn release(&self, target: ReleaseTarget) -> Result<Vec<Allocation>> {
        let pools = self.store.pools().await?;
        let mut freed = Vec::new();
        match target {
            ReleaseTarget::Owner { owner, family } => {
                for pool in &pools {
                    for (f, _) in pool.value.config.families() {
                        if family.is_some_and(|only| only != f) {
                            continue;
                        }
                        let name = &pool.value.config.name;
                        if let Some(a) = self.release_owner_in(name, &owner, f).await? {
                            freed.push(a);
                        }
                    }
                }
            }
            ReleaseTarget::Address(addr) => {
                let pool = pools.iter().find(|p| {
                    p.value
                        .config
                        .family(Family::of(addr))
                        .is_some_and(|f| f.cidrs.iter().any(|c| c.contains(addr)))
                });
                if let Some(pool) = pool
                    && let Some(a) = self
                        .release_address_in(&pool.value.config.name, addr)
                        .await?
                {
                    freed.push(a);
                }
            }
        }
        Ok(freed)
    }

    async fn release_owner_in(
        &self,
        pool: &str,
        owner: &Owner,
        family: Family,
    ) -> Result<Option<Allocation>> {
        let claim_name = owner.claim_name(family);
        for _ in 0..MAX_ATTEMPTS {
            let Some(claim) = self.store.get::<Claim>(pool, &claim_name).await? else {
                return Ok(None);
            };
            match self
                .store
                .delete(Claim::KIND, pool, &claim_name, claim.revision)
                .await
            {
                Ok(_) => return self.free_if_held_by(pool, claim.value.address, owner).await,
                Err(WriteError::Conflict) => continue,
                Err(WriteError::NotFound) => return Ok(None),
                Err(e) => return Err(e.into_error(&format!("releasing {owner}"))),
            }
        }
        Err(IpamError::Aborted(format!(
            "releasing {owner}: its claim kept changing; retry"
        )))
    }

    /// Deletes an address record if `owner` holds it.
    async fn free_if_held_by(
        &self,
        pool: &str,
        addr: IpAddr,
        owner: &Owner,
    ) -> Result<Option<Allocation>> {
        let name = address_record_name(addr);
        for _ in 0..MAX_ATTEMPTS {
            let Some(record) = self.store.get::<Allocation>(pool, &name).await? else {
                return Ok(None);
            };
            if !record.value.owner.same(owner) {
                return Ok(None);
            }
            match self
                .store
                .delete(Allocation::KIND, pool, &name, record.revision)
                .await
            {
                Ok(_) => {
                    self.address_freed(pool, &record.value.block, addr);
                    return Ok(Some(record.value));
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::NotFound) => return Ok(None),
                Err(e) => return Err(e.into_error(&format!("freeing {addr}"))),
            }
        }
        Err(IpamError::Aborted(format!(
            "freeing {addr}: it kept changing; retry"
        )))
    }

    async fn release_address_in(&self, pool: &str, addr: IpAddr) -> Result<Option<Allocation>> {
        let name = address_record_name(addr);
        for _ in 0..MAX_ATTEMPTS {
            let Some(record) = self.store.get::<Allocation>(pool, &name).await? else {
                return Ok(None);
            };
            let claim_name = record.value.owner.claim_name(Family::of(addr));
            if let Some(claim) = self.store.get::<Claim>(pool, &claim_name).await?
                && claim.value.address == addr
            {
                match self
                    .store
                    .delete(Claim::KIND, pool, &claim_name, claim.revision)
                    .await
                {
                    Ok(_) | Err(WriteError::NotFound) => {}
                    Err(WriteError::Conflict) => continue,
                    Err(e) => return Err(e.into_error(&format!("releasing {addr}"))),
                }
            }
            match self
                .store
                .delete(Allocation::KIND, pool, &name, record.revision)
                .await
            {
                Ok(_) => {
                    self.address_freed(pool, &record.value.block, addr);
                    return Ok(Some(record.value));
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::NotFound) => return Ok(None),
                Err(e) => return Err(e.into_error(&format!("releasing {addr}"))),
            }
        }
        Err(IpamError::Aborted(format!(
            "releasing {addr}: it kept changing; retry"
        )))
    }

    /// Frees every allocation on a node whose owner is not valid, and every address record
    /// its owner's claim does not name (left by requests that died half-way); gives back
    /// blocks claimed for the node that its record does not list. Returns the addresses
    /// that were (or, with `dry_run`, would be) freed.
    pub async fn gc(&self, args: GcArgs) -> Result<Vec<Allocation>> {
        let pools = self.selected_pools(args.pool.as_deref()).await?;
        let valid: HashSet<&OwnerKey> = args.valid_owners.iter().collect();
        let cutoff = SystemTime::now()
            .checked_sub(args.min_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let old_enough = |t: SystemTime| args.min_age.is_zero() || t <= cutoff;
        let mut freed = Vec::new();
        for pool in pools {
            let (addresses, claims) = self.store.address_records(&pool).await?;
            let claims_by_name: HashMap<&str, &Stored<Claim>> =
                claims.iter().map(|c| (c.name.as_str(), c)).collect();
            let dead_claims: Vec<&Stored<Claim>> = claims
                .iter()
                .filter(|c| c.value.node == args.node)
                .filter(|c| !valid.contains(&c.value.owner.key()))
                .filter(|c| old_enough(c.value.update_time))
                .collect();
            let doomed: Vec<&Stored<Allocation>> = addresses
                .iter()
                .filter(|a| a.value.node == args.node)
                .filter(|a| old_enough(a.value.allocate_time))
                .filter(|a| {
                    let claim_name = a.value.owner.claim_name(a.value.family());
                    let orphan = claims_by_name
                        .get(claim_name.as_str())
                        .is_none_or(|c| c.value.address != a.value.address);
                    orphan || !valid.contains(&a.value.owner.key())
                })
                .collect();
            if args.dry_run {
                freed.extend(doomed.iter().map(|a| a.value.clone()));
                continue;
            }
            for claim in dead_claims {
                let _ = self
                    .store
                    .delete(Claim::KIND, &pool, &claim.name, claim.revision)
                    .await;
            }
            for record in doomed {
                // Never free an address its owner's claim names (the owner came back).
                let claim_name = record.value.owner.claim_name(record.value.family());
                if self
                    .store
                    .get::<Claim>(&pool, &claim_name)
                    .await?
                    .is_some_and(|c| c.value.address == record.value.address)
                {
                    continue;
                }
                match self
                    .store
                    .delete(Allocation::KIND, &pool, &record.name, record.revision)
                    .await
                {
                    Ok(_) => {
                        self.address_freed(&pool, &record.value.block, record.value.address);
                        freed.push(record.value.clone());
                    }
                    Err(WriteError::Conflict | WriteError::NotFound) => {}
                    Err(e) => return Err(e.into_error(&format!("freeing {}", record.name))),
                }
            }
            // Blocks claimed for the node by a request that died before listing them.
            self.collect_orphan_blocks(&pool, &args.node).await?;
        }
        Ok(freed)
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
