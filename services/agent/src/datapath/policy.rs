//! Per-endpoint policy in the kernel: the `kino_policy` LPM trie (every endpoint's entries)
//! and the `kino_ep_policy` array (enforced directions and realized revision per endpoint),
//! with the typed operations the policy sync calls: apply a delta, replace a whole entry set
//! (diffed against what is in the map), set enforcement — all without reloading programs.
//!
//! A compiled key (`kino.policy.v1.PolicyMapKey`) becomes one trie prefix, except a port range,
//! which becomes the few prefixes covering it exactly (at most 30 for any range, 1 for a single
//! port); every prefix's value carries the range it belongs to, so a dump shows the compiled
//! keys again. The datapath's lookup is two LPM lookups per packet whatever the number of
//! entries (see `bpf/kino_maps.h`, `struct policy_key`).
//!
//! Changes are written in an order that never lets through a packet that neither the old nor
//! the new policy allows: new and changed DENY entries first, then removals of ALLOW entries,
//! then removals of DENY entries, then new and changed ALLOW entries. Enforcement that turns
//! on is set after the entries are in place; enforcement that turns off is cleared before.
//!
//! The map has one writer, the agent; [`PolicyMaps`] keeps a copy of the compiled entries per
//! endpoint (rebuilt from the pinned map when the datapath is loaded), so a replace diffs in
//! memory and a delta costs only the keys it names.
//!
//! Files: `policy/entry.rs` (the entry model: compiled keys, verdicts, enforcement, updates),
//! `policy/ports.rs` (port ranges as prefixes), `policy/plan.rs` (validating a change and
//! ordering its writes), `policy/error.rs`; this file holds [`PolicyMaps`], the access to the
//! maps. They import each other in that order only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, Map, MapData};

use super::abi::{EndpointPolicyRaw, PolicyEntryRaw};
use super::map_access::is_missing_key;

mod entry;
mod error;
mod plan;
mod ports;

pub use entry::{
    ApplyStats, Enforcement, EntryChange, PolicyEntryInfo, PolicyKey, PolicyUpdate, Verdict,
};
pub use error::PolicyMapError;
pub use ports::port_prefixes;

use plan::{Op, plan_change};

/// The policy maps' ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::{
    DIR_EGRESS, DIR_INGRESS, Direction, EP_POLICY_MAP, MAX_ENDPOINT_ID, POLICY_MAP,
    POLICY_MAX_ENTRIES, PolicyKeyRaw,
};

/// The policy maps of one node, typed, with the agent's copy of every endpoint's entries.
pub struct PolicyMaps {
    trie: LpmTrie<MapData, PolicyKeyRaw, PolicyEntryRaw>,
    state: Array<MapData, EndpointPolicyRaw>,
    realized: HashMap<u32, BTreeMap<PolicyKey, Verdict>>,
}

impl fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyMaps")
            .field("endpoints", &self.realized.len())
            .finish_non_exhaustive()
    }
}

impl PolicyMaps {
    /// Wraps the maps taken from a loaded object and reads back what they hold (after an
    /// agent restart: the previous agent's entries).
    pub fn new(trie: Map, state: Map) -> Result<Self, PolicyMapError> {
        let open = |map: &'static str| {
            move |source| PolicyMapError::Map {
                map,
                op: "open".into(),
                applied: 0,
                source: Box::new(source),
            }
        };
        let mut maps = PolicyMaps {
            trie: LpmTrie::try_from(trie).map_err(open(POLICY_MAP))?,
            state: Array::try_from(state).map_err(open(EP_POLICY_MAP))?,
            realized: HashMap::new(),
        };
        for item in maps.trie.iter() {
            let (key, value) = item.map_err(|source| PolicyMapError::Map {
                map: POLICY_MAP,
                op: "read back entries".into(),
                applied: 0,
                source: Box::new(source),
            })?;
            let raw = key.data();
            if let Some(compiled) = PolicyKey::from_stored(&raw, key.prefix_len(), &value) {
                maps.realized
                    .entry(raw.endpoint_id)
                    .or_default()
                    .insert(compiled, Verdict::from_raw(value.verdict));
            }
        }
        Ok(maps)
    }

    fn check_id(endpoint_id: u32) -> Result<(), PolicyMapError> {
        if endpoint_id == 0 || endpoint_id > MAX_ENDPOINT_ID {
            return Err(PolicyMapError::EndpointId(endpoint_id));
        }
        Ok(())
    }

    /// Applies an update: entries and enforcement in the safe order, then the revision, then
    /// a new generation (running connections are re-checked against the new policy).
    pub fn apply(
        &mut self,
        endpoint_id: u32,
        update: &PolicyUpdate,
    ) -> Result<ApplyStats, PolicyMapError> {
        Self::check_id(endpoint_id)?;
        let state = self.read_state(endpoint_id)?;
        let before = Enforcement::from_flags(state.flags);
        // Directions that turn off do so first; those that turn on once the entries are in.
        let result = self
            .write_state(endpoint_id, before.and(update.enforcement), state.revision)
            .and_then(|()| self.write_entries(endpoint_id, &update.entries))
            .and_then(|stats| {
                self.write_state(endpoint_id, update.enforcement, update.revision)
                    .map(|()| stats)
            });
        // Whatever was written, connections must not keep verdicts of the old policy.
        self.bump_generation(endpoint_id)?;
        result
    }

    /// Changes an endpoint's entries (not its enforcement), then its generation. Validates
    /// everything first: an invalid or overlapping key writes nothing.
    pub fn apply_entries(
        &mut self,
        endpoint_id: u32,
        change: &EntryChange,
    ) -> Result<ApplyStats, PolicyMapError> {
        Self::check_id(endpoint_id)?;
        let result = self.write_entries(endpoint_id, change);
        if !matches!(
            result,
            Err(PolicyMapError::InvalidKey { .. } | PolicyMapError::Overlap { .. })
        ) {
            self.bump_generation(endpoint_id)?;
        }
        result
    }

    fn write_entries(
        &mut self,
        endpoint_id: u32,
        change: &EntryChange,
    ) -> Result<ApplyStats, PolicyMapError> {
        let empty = BTreeMap::new();
        let current = self.realized.get(&endpoint_id).unwrap_or(&empty);
        let ops = plan_change(endpoint_id, current, change)?;
        let named = match change {
            EntryChange::Replace(entries) => entries.len(),
            EntryChange::Delta { upserts, deletes } => upserts.len() + deletes.len(),
        };
        let mut stats = ApplyStats::default();
        for (done, op) in ops.iter().enumerate() {
            stats.prefixes += self.write(endpoint_id, *op).map_err(|e| match e {
                PolicyMapError::Map {
                    map, op, source, ..
                } => PolicyMapError::Map {
                    map,
                    op,
                    applied: done,
                    source,
                },
                other => other,
            })?;
            match op {
                Op::Upsert(..) => stats.upserted += 1,
                Op::Delete(..) => stats.deleted += 1,
            }
        }
        stats.unchanged = named.saturating_sub(stats.upserted + stats.deleted);
        if self
            .realized
            .get(&endpoint_id)
            .is_some_and(|m| m.is_empty())
        {
            self.realized.remove(&endpoint_id);
        }
        Ok(stats)
    }

    /// One write; on failure the prefixes of this key it already wrote are undone, so the
    /// map and the copy agree. Returns the prefixes written.
    fn write(&mut self, endpoint_id: u32, op: Op) -> Result<usize, PolicyMapError> {
        let map_error = |op: String| {
            move |source| PolicyMapError::Map {
                map: POLICY_MAP,
                op,
                applied: 0,
                source: Box::new(source),
            }
        };
        match op {
            Op::Upsert(key, verdict) => {
                let previous = self
                    .realized
                    .get(&endpoint_id)
                    .and_then(|m| m.get(&key))
                    .copied();
                let prefixes = key.prefixes(endpoint_id);
                let value = |verdict: Verdict| PolicyEntryRaw {
                    verdict: verdict.raw(),
                    port: key.port,
                    end_port: key.end_port,
                    ..PolicyEntryRaw::default()
                };
                for (i, prefix) in prefixes.iter().enumerate() {
                    if let Err(source) = self.trie.insert(prefix, value(verdict), 0) {
                        for written in &prefixes[..i] {
                            let _ = match previous {
                                Some(old) => self.trie.insert(written, value(old), 0),
                                None => self.trie.remove(written),
                            };
                        }
                        return Err(map_error(format!("write {key} of endpoint {endpoint_id}"))(
                            source,
                        ));
                    }
                }
                self.realized
                    .entry(endpoint_id)
                    .or_default()
                    .insert(key, verdict);
                Ok(prefixes.len())
            }
            Op::Delete(key) => {
                let prefixes = key.prefixes(endpoint_id);
                for prefix in &prefixes {
                    if let Err(source) = self.trie.remove(prefix)
                        && !is_missing_key(&source)
                    {
                        // Some prefixes may be gone already: keep the key in the copy so a
                        // retry removes the rest.
                        return Err(
                            map_error(format!("remove {key} of endpoint {endpoint_id}"))(source),
                        );
                    }
                }
                if let Some(entries) = self.realized.get_mut(&endpoint_id) {
                    entries.remove(&key);
                }
                Ok(prefixes.len())
            }
        }
    }

    /// Writes flags and revision, keeping the generation (which changes only in a write of
    /// its own, so the datapath never sees a new generation with old flags).
    fn write_state(
        &mut self,
        endpoint_id: u32,
        enforcement: Enforcement,
        revision: i64,
    ) -> Result<(), PolicyMapError> {
        let current = self.read_state(endpoint_id)?;
        let raw = EndpointPolicyRaw {
            flags: enforcement.flags(),
            revision,
            ..current
        };
        if raw == current {
            return Ok(());
        }
        self.set_state(endpoint_id, raw, "set enforcement")
    }

    /// A new generation, after the flags and entries it covers are written.
    fn bump_generation(&mut self, endpoint_id: u32) -> Result<(), PolicyMapError> {
        let current = self.read_state(endpoint_id)?;
        let raw = EndpointPolicyRaw {
            generation: current.generation.wrapping_add(1),
            ..current
        };
        self.set_state(endpoint_id, raw, "bump the policy generation")
    }

    fn set_state(
        &mut self,
        endpoint_id: u32,
        raw: EndpointPolicyRaw,
        what: &str,
    ) -> Result<(), PolicyMapError> {
        self.state
            .set(endpoint_id, raw, 0)
            .map_err(|source| PolicyMapError::Map {
                map: EP_POLICY_MAP,
                op: format!("{what} of endpoint {endpoint_id}"),
                applied: 0,
                source: Box::new(source),
            })
    }

    fn read_state(&self, endpoint_id: u32) -> Result<EndpointPolicyRaw, PolicyMapError> {
        Self::check_id(endpoint_id)?;
        self.state
            .get(&endpoint_id, 0)
            .map_err(|source| PolicyMapError::Map {
                map: EP_POLICY_MAP,
                op: format!("read enforcement of endpoint {endpoint_id}"),
                applied: 0,
                source: Box::new(source),
            })
    }

    /// Sets the enforced directions of an endpoint and the revision its policy realizes.
    pub fn set_enforcement(
        &mut self,
        endpoint_id: u32,
        enforcement: Enforcement,
        revision: i64,
    ) -> Result<(), PolicyMapError> {
        Self::check_id(endpoint_id)?;
        self.write_state(endpoint_id, enforcement, revision)?;
        self.bump_generation(endpoint_id)
    }

    /// The enforced directions of an endpoint and the realized revision.
    pub fn enforcement(&self, endpoint_id: u32) -> Result<(Enforcement, i64), PolicyMapError> {
        let raw = self.read_state(endpoint_id)?;
        Ok((Enforcement::from_flags(raw.flags), raw.revision))
    }

    /// Removes every entry of an endpoint and turns enforcement off (endpoint created or
    /// deleted: nothing of a previous holder of the id may apply).
    pub fn clear(&mut self, endpoint_id: u32) -> Result<ApplyStats, PolicyMapError> {
        Self::check_id(endpoint_id)?;
        self.write_state(endpoint_id, Enforcement::default(), 0)?;
        self.apply_entries(endpoint_id, &EntryChange::Replace(BTreeMap::new()))
    }

    /// The endpoint's policy generation (see [`EndpointPolicyRaw::generation`]).
    pub fn generation(&self, endpoint_id: u32) -> Result<u32, PolicyMapError> {
        Ok(self.read_state(endpoint_id)?.generation)
    }

    /// The entries of an endpoint as the agent wrote them (no map reads).
    pub fn entries(&self, endpoint_id: u32) -> BTreeMap<PolicyKey, Verdict> {
        self.realized.get(&endpoint_id).cloned().unwrap_or_default()
    }

    /// Number of entries of an endpoint per direction (ingress, egress).
    pub fn counts(&self, endpoint_id: u32) -> (usize, usize) {
        self.realized.get(&endpoint_id).map_or((0, 0), |m| {
            let ingress = m
                .keys()
                .filter(|k| k.direction == Direction::Ingress)
                .count();
            (ingress, m.len() - ingress)
        })
    }

    /// Endpoints with at least one entry, sorted.
    pub fn endpoints(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.realized.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// An endpoint's entries read from the map (verdicts and hit counters), sorted by
    /// direction, remote, protocol, port.
    pub fn list(&self, endpoint_id: u32) -> Result<Vec<PolicyEntryInfo>, PolicyMapError> {
        let Some(entries) = self.realized.get(&endpoint_id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for key in entries.keys() {
            let mut info = PolicyEntryInfo {
                key: *key,
                verdict: Verdict::Deny,
                packets: 0,
                bytes: 0,
            };
            for prefix in key.prefixes(endpoint_id) {
                let value = self
                    .trie
                    .get(&prefix, 0)
                    .map_err(|source| PolicyMapError::Map {
                        map: POLICY_MAP,
                        op: format!("read {key} of endpoint {endpoint_id}"),
                        applied: 0,
                        source: Box::new(source),
                    })?;
                info.verdict = Verdict::from_raw(value.verdict);
                info.packets += value.packets;
                info.bytes += value.bytes;
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Every prefix in the trie (all endpoints), for checks: (endpoint, prefix length, key
    /// data, value).
    pub fn dump_prefixes(
        &self,
    ) -> Result<Vec<(u32, u32, PolicyKeyRaw, PolicyEntryRaw)>, PolicyMapError> {
        self.trie
            .iter()
            .map(|item| {
                item.map(|(key, value)| {
                    (key.data().endpoint_id, key.prefix_len(), key.data(), value)
                })
                .map_err(|source| PolicyMapError::Map {
                    map: POLICY_MAP,
                    op: "iterate".into(),
                    applied: 0,
                    source: Box::new(source),
                })
            })
            .collect()
    }
}
