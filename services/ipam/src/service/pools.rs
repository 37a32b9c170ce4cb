//! Pools: create (with the overlap check that replicas agree on), get, list, delete (only
//! when empty), and the `default` pool made at start-up.

use std::time::SystemTime;

use kino_service_kit::records::Spec;

use super::{Ipam, MAX_ATTEMPTS, lock, summarize};
use crate::error::{InvalidField, IpamError, Result};
use crate::persistence::{IpamQueries, Stored, WriteError};
use crate::pool::{PoolConfig, PoolPhase};
use crate::prefix::Family;
use crate::records::Pool;

/// What start-up did about the default pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultPoolOutcome {
    /// It was created as configured.
    Created,
    /// It exists already with this configuration.
    Exists,
    /// It exists with another configuration (left as it is).
    ExistsDifferently(String),
}

impl Ipam {
    /// Creates a pool. Its CIDRs must not overlap any other pool's: the pool is written in
    /// phase CREATING, compared with every pool created before it (by datastore revision,
    /// which all replicas see alike), and becomes READY only if none overlaps.
    pub async fn create_pool(&self, config: PoolConfig) -> Result<Stored<Pool>> {
        if let Some((service, cidr)) = self.options.service_network.overlap_with(&config) {
            return Err(InvalidField::new(
                cidr_field(&config, &cidr),
                format!(
                    "{cidr} overlaps service CIDR {service} (kino-ipam's --service-cidr); a pod address must never be a ClusterIP: choose another CIDR"
                ),
            )
            .into());
        }
        let name = config.name.clone();
        let pool = Pool {
            config,
            phase: PoolPhase::Creating,
            create_time: SystemTime::now(),
        };
        match self.store.create(&name_ns(), &name, &pool, 0).await {
            Ok(created) => self.finish_creation(created).await,
            Err(WriteError::Exists) => {
                let existing = self.store.get::<Pool>(&name_ns(), &name).await?;
                if let Some(existing) = existing.filter(|p| p.value.phase == PoolPhase::Creating) {
                    // Finish what a dead replica started, so the name is usable.
                    let _ = self.finish_creation(existing).await;
                }
                Err(IpamError::AlreadyExists(format!(
                    "pool {name:?} already exists; delete it first (DeletePool) or choose another name"
                )))
            }
            Err(e) => Err(e.into_error(&format!("creating pool {name:?}"))),
        }
    }

    /// Compares a CREATING pool with the pools created before it; READY if none overlaps,
    /// deleted (and an INVALID_ARGUMENT naming the overlap) otherwise.
    async fn finish_creation(&self, mut pool: Stored<Pool>) -> Result<Stored<Pool>> {
        for _ in 0..MAX_ATTEMPTS {
            let others = self.store.pools().await?;
            let earlier = others.iter().filter(|o| {
                o.value.config.name != pool.value.config.name
                    && o.create_revision < pool.create_revision
            });
            for other in earlier {
                if let Some((ours, theirs)) = pool.value.config.overlap_with(&other.value.config) {
                    let _ = self
                        .store
                        .delete(Pool::KIND, &name_ns(), &pool.name, pool.revision)
                        .await;
                    return Err(InvalidField::new(
                        cidr_field(&pool.value.config, &ours),
                        format!(
                            "{ours} overlaps {theirs} of pool {:?}; pools must not share addresses",
                            other.value.config.name
                        ),
                    )
                    .into());
                }
            }
            let mut ready = pool.value.clone();
            ready.phase = PoolPhase::Ready;
            match self
                .store
                .update(&name_ns(), &pool.name, &ready, 0, pool.revision)
                .await
            {
                Ok(updated) => return Ok(updated),
                Err(WriteError::Conflict) => {
                    match self.store.get::<Pool>(&name_ns(), &pool.name).await? {
                        Some(now) if now.value.phase == PoolPhase::Creating => pool = now,
                        Some(now) => return Ok(now),
                        None => {
                            return Err(IpamError::Aborted(format!(
                                "pool {:?} was deleted while being created",
                                pool.name
                            )));
                        }
                    }
                }
                Err(WriteError::NotFound) => {
                    return Err(IpamError::Aborted(format!(
                        "pool {:?} was deleted while being created",
                        pool.name
                    )));
                }
                Err(e) => return Err(e.into_error("finishing a pool's creation")),
            }
        }
        Err(too_many("creating pool", &pool.name))
    }

    /// A stored pool overlapping the service CIDRs, as an operator reads it; `None` if none
    /// does (checked at start-up: a pool created before `--service-cidr` changed).
    pub async fn pool_overlapping_services(&self) -> Result<Option<String>> {
        for pool in self.store.pools().await? {
            if let Err(e) = self.options.service_network.check_pool(&pool.value.config) {
                return Ok(Some(e.to_string()));
            }
        }
        Ok(None)
    }

    /// One pool, as stored (a pool left CREATING by a dead replica is finished first).
    pub async fn get_pool(&self, name: &str) -> Result<Stored<Pool>> {
        match self.store.get::<Pool>(&name_ns(), name).await? {
            None => Err(unknown_pool("name", name)),
            Some(p) if p.value.phase == PoolPhase::Creating => self.finish_creation(p).await,
            Some(p) => Ok(p),
        }
    }

    /// Every pool, sorted by name.
    pub async fn list_pools(&self) -> Result<Vec<Stored<Pool>>> {
        self.store.pools().await
    }

    /// A READY pool to allocate from: cached, or read when `fresh` or unknown.
    pub(super) async fn pool_for_use(
        &self,
        field: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Stored<Pool>> {
        if !fresh && let Some(pool) = lock(&self.pools).get(name).cloned() {
            return Ok(pool);
        }
        let mut found = self.store.get::<Pool>(&name_ns(), name).await?;
        if found.is_none()
            && let Some(default) = self
                .options
                .default_pool
                .as_ref()
                .filter(|d| d.name == name)
        {
            self.ensure_pool(default.clone()).await?;
            found = self.store.get::<Pool>(&name_ns(), name).await?;
        }
        let pool = match found {
            None => {
                self.forget_pool(name);
                return Err(unknown_pool(field, name));
            }
            Some(p) if p.value.phase == PoolPhase::Creating => self.finish_creation(p).await?,
            Some(p) => p,
        };
        if pool.value.phase == PoolPhase::Deleting {
            return Err(IpamError::FailedPrecondition(format!(
                "pool {name:?} is being deleted (DeletePool is checking it is empty); nothing is allocated from it"
            )));
        }
        lock(&self.pools).insert(name.to_owned(), pool.clone());
        Ok(pool)
    }

    /// Deletes a pool that has no node blocks and no addresses; FAILED_PRECONDITION naming
    /// them otherwise. The pool is marked DELETING first, so no replica gives out a block
    /// from it while it is checked.
    pub async fn delete_pool(&self, name: &str) -> Result<Stored<Pool>> {
        for _ in 0..MAX_ATTEMPTS {
            let before = match self.store.get::<Pool>(&name_ns(), name).await? {
                None => return Err(unknown_pool("name", name)),
                Some(p) => p,
            };
            let marked = if before.value.phase == PoolPhase::Deleting {
                before.clone()
            } else {
                let mut deleting = before.value.clone();
                deleting.phase = PoolPhase::Deleting;
                match self
                    .store
                    .update(&name_ns(), name, &deleting, 0, before.revision)
                    .await
                {
                    Ok(marked) => marked,
                    Err(WriteError::Conflict | WriteError::NotFound) => continue,
                    Err(e) => return Err(e.into_error(&format!("deleting pool {name:?}"))),
                }
            };
            self.forget_pool(name);
            let (nodes, blocks) = self.store.node_records(name).await?;
            let (addresses, claims) = self.store.address_records(name).await?;
            if !nodes.is_empty() || !addresses.is_empty() {
                // Back to READY, unless someone changed it meanwhile.
                let mut ready = marked.value.clone();
                ready.phase = PoolPhase::Ready;
                let _ = self
                    .store
                    .update(&name_ns(), name, &ready, 0, marked.revision)
                    .await;
                let node_list: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        let cidrs: Vec<String> =
                            n.value.blocks.iter().map(|b| b.cidr.to_string()).collect();
                        format!("{} ({})", n.value.node, cidrs.join(" "))
                    })
                    .collect();
                let address_list: Vec<String> = addresses
                    .iter()
                    .map(|a| format!("{} held by {}", a.value.address, a.value.owner))
                    .collect();
                let mut parts = Vec::new();
                if !nodes.is_empty() {
                    parts.push(format!(
                        "{} node(s) with blocks: {}",
                        nodes.len(),
                        summarize(&node_list, 5)
                    ));
                }
                if !addresses.is_empty() {
                    parts.push(format!(
                        "{} allocated address(es): {}",
                        addresses.len(),
                        summarize(&address_list, 5)
                    ));
                }
                return Err(IpamError::FailedPrecondition(format!(
                    "pool {name:?} still has {}; release them first (Release / Gc for addresses, ReleaseNodeCidrs with force for a node and its addresses)",
                    parts.join(" and ")
                )));
            }
            // Leftovers of requests that died half-way: claims without addresses and block
            // claims without node records. Nothing can use them once the pool is gone.
            for claim in &claims {
                let _ = self
                    .store
                    .delete(
                        crate::records::Claim::KIND,
                        name,
                        &claim.name,
                        claim.revision,
                    )
                    .await;
            }
            for block in &blocks {
                let _ = self
                    .store
                    .delete(
                        crate::records::NodeBlocks::KIND,
                        name,
                        &block.name,
                        block.revision,
                    )
                    .await;
            }
            match self
                .store
                .delete(Pool::KIND, &name_ns(), name, marked.revision)
                .await
            {
                Ok(_) => {
                    self.forget_pool(name);
                    return Ok(before);
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::NotFound) => return Err(unknown_pool("name", name)),
                Err(e) => return Err(e.into_error(&format!("deleting pool {name:?}"))),
            }
        }
        Err(too_many("deleting pool", name))
    }

    /// Creates the default pool if it does not exist (start-up); several replicas may run
    /// this at once.
    pub async fn ensure_pool(&self, config: PoolConfig) -> Result<DefaultPoolOutcome> {
        match self.create_pool(config.clone()).await {
            Ok(_) => Ok(DefaultPoolOutcome::Created),
            Err(IpamError::AlreadyExists(_)) => {
                let existing = self.get_pool(&config.name).await?;
                if existing.value.config == config {
                    Ok(DefaultPoolOutcome::Exists)
                } else {
                    Ok(DefaultPoolOutcome::ExistsDifferently(describe(
                        &existing.value.config,
                    )))
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Pools are cluster-scoped: namespace "".
fn name_ns() -> String {
    String::new()
}

/// NOT_FOUND for an unknown pool.
pub(super) fn unknown_pool(field: &str, name: &str) -> IpamError {
    IpamError::not_found(
        field,
        format!("pool {name:?}"),
        "ListPools shows the pools; CreatePool makes one",
    )
}

fn too_many(what: &str, name: &str) -> IpamError {
    IpamError::Aborted(format!(
        "{what} {name:?}: other requests kept changing it; retry"
    ))
}

/// The request field of one of the pool's CIDRs, e.g. `pool.ipv6.cidrs[0]`.
fn cidr_field(config: &PoolConfig, cidr: &crate::prefix::IpPrefix) -> String {
    let family = cidr.family();
    let index = config
        .family(family)
        .and_then(|p| p.cidrs.iter().position(|c| c == cidr))
        .unwrap_or(0);
    let part = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    format!("pool.{part}.cidrs[{index}]")
}

/// A pool's configuration in one line: `10.0.0.0/8 → /24, fd00::/104 → /120`.
pub fn describe(config: &PoolConfig) -> String {
    config
        .families()
        .map(|(_, p)| {
            let cidrs: Vec<String> = p.cidrs.iter().map(ToString::to_string).collect();
            format!("{} → /{}", cidrs.join(" "), p.node_mask)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
