//! Policy application: the compiler's `WatchEndpointPolicy` stream applied to the datapath
//! (each identity's policy to every local endpoint with it, the ipcache changes except the
//! agent's own entries, snapshots that keep the old ipcache until they are synced), and what
//! the datapath realizes as a result — reported by `policy_realization.rs`.

use kino_api::policy::WatchEndpointPolicyResponse;

use super::{EndpointManager, Inner, ManagerError, addresses_of, kernel};
use crate::datapath::ipcache::IDENTITY_HOST;
use crate::datapath::{EntryChange, IpPrefix};
use crate::endpoint::compiled_policy::{ipcache_entry_from_proto, policy_update_from_proto};

impl EndpointManager {
    /// The last synced policy revision applied.
    pub async fn realized_revision(&self) -> i64 {
        self.inner.lock().await.realized_revision
    }

    /// What the datapath realizes: the stream's last synced revision and, per endpoint, the
    /// revision whose policy its map holds — the synced revision once the stream delivers
    /// its identity's policy; before that (fetched at ADD or at a label change) the fetched
    /// policy's revision, capped by the synced one (the ipcache is the stream's).
    pub async fn realization(&self) -> Realization {
        let inner = self.inner.lock().await;
        let synced = inner.realized_revision;
        let endpoints = inner
            .endpoints
            .values()
            .map(|e| {
                let revision = if e.identity == 0 {
                    // No policy can select an endpoint without labels: nothing to realize.
                    synced
                } else {
                    match inner.identity_policies.get(&e.identity) {
                        Some(p) if p.streamed => synced,
                        Some(p) => p.revision.min(synced),
                        None => 0,
                    }
                };
                RealizedEndpoint {
                    id: e.id,
                    identity: e.identity,
                    revision,
                }
            })
            .collect();
        Realization {
            revision: synced,
            endpoints,
        }
    }

    /// Applies one `WatchEndpointPolicy` message: each identity's update to every local
    /// endpoint with that identity, and the ipcache changes (never the agent's own endpoint
    /// /32s or host entries). Validates every update before writing anything.
    pub async fn apply_policy_message(
        &self,
        message: &WatchEndpointPolicyResponse,
    ) -> Result<(), ManagerError> {
        let invalid = |e: &dyn std::fmt::Display| {
            ManagerError::Internal(format!(
                "policy stream at revision {}: {e}",
                message.revision
            ))
        };
        let mut updates = Vec::with_capacity(message.policy_updates.len());
        for (i, update) in message.policy_updates.iter().enumerate() {
            let converted = policy_update_from_proto(update, message.revision)
                .map_err(|e| invalid(&format!("policy_updates[{i}]: {e}")))?;
            updates.push((update.identity, converted));
        }
        let upserts = message
            .ipcache_upserts
            .iter()
            .enumerate()
            .map(|(i, e)| ipcache_entry_from_proto(e, &format!("ipcache_upserts[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let deletes = message
            .ipcache_deletes
            .iter()
            .map(|p| p.parse::<IpPrefix>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;

        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        if message.reset {
            inner.identity_policies.clear();
            inner.in_snapshot = true;
            // (Extended, not replaced: a snapshot may restart before the last one synced.)
            let streamed = std::mem::take(&mut inner.streamed_prefixes);
            inner.unconfirmed_prefixes.extend(streamed);
        }
        for (identity, update) in updates {
            let local: Vec<u32> = inner
                .endpoints
                .values()
                .filter(|e| e.identity == identity)
                .map(|e| e.id)
                .collect();
            match update {
                None => {
                    inner.identity_policies.remove(&identity);
                    for id in local {
                        inner.datapath.policy_mut().clear(id).map_err(kernel)?;
                    }
                }
                Some(update) => {
                    let cached = inner.identity_policies.entry(identity).or_default();
                    cached.enforcement = update.enforcement;
                    cached.revision = update.revision;
                    cached.streamed = true;
                    match &update.entries {
                        EntryChange::Replace(all) => cached.entries = all.clone(),
                        EntryChange::Delta { upserts, deletes } => {
                            for key in deletes {
                                cached.entries.remove(key);
                            }
                            for (key, verdict) in upserts {
                                cached.entries.insert(*key, *verdict);
                            }
                        }
                    }
                    for id in local {
                        inner
                            .datapath
                            .policy_mut()
                            .apply(id, &update)
                            .map_err(kernel)?;
                    }
                }
            }
        }
        for prefix in deletes {
            inner.streamed_prefixes.remove(&prefix);
            inner.unconfirmed_prefixes.remove(&prefix);
            if !protected(inner, &prefix) {
                inner
                    .datapath
                    .ipcache_mut()
                    .remove(&prefix)
                    .map_err(kernel)?;
            }
        }
        for entry in upserts {
            inner.unconfirmed_prefixes.remove(&entry.prefix);
            if protected(inner, &entry.prefix) {
                continue;
            }
            inner
                .datapath
                .ipcache_mut()
                .upsert(&entry)
                .map_err(kernel)?;
            inner.streamed_prefixes.insert(entry.prefix);
        }
        if message.synced {
            let ids: Vec<(u32, u32)> = inner
                .endpoints
                .values()
                .map(|e| (e.id, e.identity))
                .collect();
            for (id, identity) in ids {
                match inner.identity_policies.get(&identity) {
                    Some(policy) => {
                        let (enforcement, revision) =
                            inner.datapath.policy().enforcement(id).map_err(kernel)?;
                        if revision != message.revision || enforcement != policy.enforcement {
                            inner
                                .datapath
                                .policy_mut()
                                .set_enforcement(id, policy.enforcement, message.revision)
                                .map_err(kernel)?;
                        }
                    }
                    None if inner.in_snapshot => {
                        // The snapshot does not name its identity: no policy of old applies.
                        inner.datapath.policy_mut().clear(id).map_err(kernel)?;
                    }
                    None => {}
                }
            }
            if inner.in_snapshot {
                // Streamed before the snapshot and not in it: gone.
                for prefix in std::mem::take(&mut inner.unconfirmed_prefixes) {
                    if !protected(inner, &prefix) {
                        inner
                            .datapath
                            .ipcache_mut()
                            .remove(&prefix)
                            .map_err(kernel)?;
                    }
                }
            }
            inner.in_snapshot = false;
            inner.realized_revision = message.revision;
        }
        Ok(())
    }
}

/// What a node's datapath enforces (reported as the node's `PolicyRealization` record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Realization {
    /// The last synced revision of the policy stream applied.
    pub revision: i64,
    /// Every endpoint, by id.
    pub endpoints: Vec<RealizedEndpoint>,
}

/// The realized policy revision of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealizedEndpoint {
    /// Endpoint id.
    pub id: u32,
    /// Its identity.
    pub identity: u32,
    /// Its datapath enforces every policy written at or before this revision (0: none yet).
    pub revision: i64,
}

/// Whether the policy stream must leave an ipcache prefix alone: a local endpoint's /32 or
/// a host entry the agent wrote.
fn protected(inner: &Inner, prefix: &IpPrefix) -> bool {
    if *prefix != IpPrefix::host(prefix.addr()) {
        return false;
    }
    let addr = prefix.addr();
    if inner
        .endpoints
        .values()
        .any(|e| addresses_of(e).contains(&addr))
    {
        return true;
    }
    // One kernel lookup (not a dump of the map: this runs once per streamed /32). Only the
    // agent writes the host identity, and only for host addresses.
    matches!(
        inner.datapath.ipcache().identity_of(addr),
        Ok(identity) if identity == IDENTITY_HOST
    )
}
