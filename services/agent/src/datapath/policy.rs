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

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError};

use super::abi::{
    EndpointPolicyRaw, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, PolicyEntryRaw, VERDICT_ALLOW, VERDICT_DENY,
};
use super::map_access::is_missing_key;

/// The policy maps' ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::{
    DIR_EGRESS, DIR_INGRESS, Direction, EP_POLICY_MAP, MAX_ENDPOINT_ID, POLICY_MAP,
    POLICY_MAX_ENTRIES, PolicyKeyRaw,
};

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// The traffic passes.
    Allow,
    /// The traffic is dropped (wins over any allow).
    Deny,
}

impl Verdict {
    fn raw(self) -> u8 {
        match self {
            Verdict::Allow => VERDICT_ALLOW,
            Verdict::Deny => VERDICT_DENY,
        }
    }

    fn from_raw(raw: u8) -> Self {
        // Anything but ALLOW denies in the datapath too.
        if raw == VERDICT_ALLOW {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

/// Whether policy is enforced (default deny) per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Enforcement {
    /// Ingress is enforced.
    pub ingress: bool,
    /// Egress is enforced.
    pub egress: bool,
}

impl Enforcement {
    /// Enforcement in both directions.
    pub const BOTH: Enforcement = Enforcement {
        ingress: true,
        egress: true,
    };

    fn flags(self) -> u32 {
        (if self.ingress { POLICY_F_INGRESS } else { 0 })
            | (if self.egress { POLICY_F_EGRESS } else { 0 })
    }

    fn from_flags(flags: u32) -> Self {
        Enforcement {
            ingress: flags & POLICY_F_INGRESS != 0,
            egress: flags & POLICY_F_EGRESS != 0,
        }
    }

    /// Enforced in a direction.
    pub fn get(self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }

    /// Only the directions enforced in both `self` and `other`.
    fn and(self, other: Enforcement) -> Enforcement {
        Enforcement {
            ingress: self.ingress && other.ingress,
            egress: self.egress && other.egress,
        }
    }
}

/// One compiled policy-map key of an endpoint: `kino.policy.v1.PolicyMapKey` with the remote
/// as an identity (CIDRs have CIDR identities through the ipcache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Direction.
    pub direction: Direction,
    /// Remote identity; 0 = every peer.
    pub remote_identity: u32,
    /// IANA protocol; 0 = ANY (then `port` and `end_port` are 0).
    pub protocol: u8,
    /// Destination port; 0 = every port.
    pub port: u16,
    /// Last port of a range `[port, end_port]`; 0 for a single port.
    pub end_port: u16,
}

impl PolicyKey {
    /// A key for every port of `protocol` (0 = ANY protocol).
    pub fn any_port(direction: Direction, remote_identity: u32, protocol: u8) -> Self {
        PolicyKey {
            direction,
            remote_identity,
            protocol,
            port: 0,
            end_port: 0,
        }
    }

    /// A key for one port.
    pub fn port(direction: Direction, remote_identity: u32, protocol: u8, port: u16) -> Self {
        PolicyKey {
            direction,
            remote_identity,
            protocol,
            port,
            end_port: 0,
        }
    }

    /// A key for the ports `first..=last`.
    pub fn range(
        direction: Direction,
        remote_identity: u32,
        protocol: u8,
        first: u16,
        last: u16,
    ) -> Self {
        PolicyKey {
            direction,
            remote_identity,
            protocol,
            port: first,
            end_port: last,
        }
    }

    /// The ports covered, `None` for every port.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match (self.port, self.end_port) {
            (0, _) => None,
            (p, 0) => Some((p, p)),
            (p, e) => Some((p, e)),
        }
    }

    /// Checks the key's shape (what the compiler guarantees).
    pub fn validate(&self) -> Result<(), String> {
        if self.protocol == 0 && (self.port != 0 || self.end_port != 0) {
            return Err(format!("{self}: protocol ANY must have port 0"));
        }
        if self.port == 0 && self.end_port != 0 {
            return Err(format!("{self}: end_port without a port"));
        }
        if self.end_port != 0 && self.end_port <= self.port {
            return Err(format!("{self}: end_port must be above port"));
        }
        Ok(())
    }

    /// True when the port ranges of two keys of the same group overlap.
    fn overlaps(&self, other: &PolicyKey) -> bool {
        match (self.ports(), other.ports()) {
            (Some((a, b)), Some((c, d))) => a <= d && c <= b,
            _ => false,
        }
    }

    /// The trie prefixes of this key for `endpoint_id`.
    pub fn prefixes(&self, endpoint_id: u32) -> Vec<Key<PolicyKeyRaw>> {
        let raw = |protocol: u8, port: u16| PolicyKeyRaw {
            endpoint_id,
            remote_identity: self.remote_identity,
            direction: self.direction.raw(),
            protocol,
            dport: port.to_be_bytes(),
            pad: [0; 4],
        };
        if self.protocol == 0 {
            return vec![Key::new(POLICY_PREFIX_ANY_PROTO, raw(0, 0))];
        }
        match self.ports() {
            None => vec![Key::new(POLICY_PREFIX_ANY_PORT, raw(self.protocol, 0))],
            Some((first, last)) => port_prefixes(first, last)
                .into_iter()
                .map(|(port, bits)| {
                    Key::new(
                        POLICY_PREFIX_ANY_PORT + u32::from(bits),
                        raw(self.protocol, port),
                    )
                })
                .collect(),
        }
    }

    /// The compiled key a stored prefix belongs to (its value names the range).
    fn from_stored(raw: &PolicyKeyRaw, prefix_len: u32, value: &PolicyEntryRaw) -> Option<Self> {
        let direction = Direction::from_raw(raw.direction)?;
        let (protocol, port, end_port) = if prefix_len <= POLICY_PREFIX_ANY_PROTO {
            (0, 0, 0)
        } else if prefix_len == POLICY_PREFIX_ANY_PORT {
            (raw.protocol, 0, 0)
        } else {
            (raw.protocol, value.port, value.end_port)
        };
        Some(PolicyKey {
            direction,
            remote_identity: raw.remote_identity,
            protocol,
            port,
            end_port,
        })
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let remote = match self.remote_identity {
            0 => "*".to_owned(),
            id => id.to_string(),
        };
        let proto = match self.protocol {
            0 => "ANY".to_owned(),
            1 => "ICMP".to_owned(),
            6 => "TCP".to_owned(),
            17 => "UDP".to_owned(),
            58 => "ICMPv6".to_owned(),
            132 => "SCTP".to_owned(),
            p => p.to_string(),
        };
        let port = match self.ports() {
            None => "*".to_owned(),
            Some((p, e)) if p == e => p.to_string(),
            Some((p, e)) => format!("{p}-{e}"),
        };
        write!(f, "{} {remote} {port}/{proto}", self.direction.as_str())
    }
}

/// The fewest prefixes `(first port, prefix bits)` covering exactly `first..=last`
/// (`first` ≥ 1): at most 30, one for a single port.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(first), u32::from(last));
    while start <= end {
        // The largest aligned block starting at `start` that ends within `end`.
        let mut size = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push((start as u16, (16 - size.trailing_zeros()) as u8));
        start += size;
    }
    out
}

/// A change to one endpoint's policy entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryChange {
    /// Remove `deletes`, then add or change `upserts` (a `WatchEndpointPolicy` delta).
    Delta {
        /// Entries added or changed.
        upserts: Vec<(PolicyKey, Verdict)>,
        /// Keys removed.
        deletes: Vec<PolicyKey>,
    },
    /// The endpoint's complete entry set: everything else is removed.
    Replace(BTreeMap<PolicyKey, Verdict>),
}

/// A policy update of one endpoint, as the policy sync applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyUpdate {
    /// Enforcement per direction after the update.
    pub enforcement: Enforcement,
    /// The policy revision the endpoint holds after the update.
    pub revision: i64,
    /// The entries.
    pub entries: EntryChange,
}

/// What an update wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Keys added or changed.
    pub upserted: usize,
    /// Keys removed.
    pub deleted: usize,
    /// Keys named by the update that were already as asked.
    pub unchanged: usize,
    /// Trie prefixes written or removed.
    pub prefixes: usize,
}

/// One entry of an endpoint's policy map as dumped, with its hit counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEntryInfo {
    /// The compiled key.
    pub key: PolicyKey,
    /// Its verdict.
    pub verdict: Verdict,
    /// Packets that hit it (all its prefixes).
    pub packets: u64,
    /// Bytes that hit it.
    pub bytes: u64,
}

/// Changing or reading the policy maps failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    /// The endpoint id cannot index the enforcement array.
    #[error("endpoint id {0} is out of range (1 to {MAX_ENDPOINT_ID})")]
    EndpointId(u32),
    /// A key is malformed; nothing was written.
    #[error("policy of endpoint {endpoint}: invalid key {reason}; nothing was written")]
    InvalidKey {
        /// The endpoint.
        endpoint: u32,
        /// What is wrong.
        reason: String,
    },
    /// Two keys of one {direction, remote, protocol} have overlapping port ranges, which
    /// the first-hit lookup cannot express; nothing was written.
    #[error(
        "policy of endpoint {endpoint}: {new} overlaps {existing}; port ranges of one direction, remote and protocol must not overlap (the compiler splits them); nothing was written"
    )]
    Overlap {
        /// The endpoint.
        endpoint: u32,
        /// The key being added.
        new: PolicyKey,
        /// The key it overlaps.
        existing: PolicyKey,
    },
    /// A map operation failed; what was written before it stays, and is what the maps and
    /// this copy hold.
    #[error("BPF map {map}: {op} failed: {source}{}", if *.applied > 0 { format!(" (after {} of the update's keys were written)", .applied) } else { String::new() })]
    Map {
        /// The map's name.
        map: &'static str,
        /// What was being done.
        op: String,
        /// Keys of the update written before the failure.
        applied: usize,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
}

/// One write of an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Upsert(PolicyKey, Verdict),
    Delete(PolicyKey),
}

/// The writes turning `current` into `target`, in the safe order (see the module docs).
fn plan(current: &BTreeMap<PolicyKey, Verdict>, target: &BTreeMap<PolicyKey, Verdict>) -> Vec<Op> {
    let mut deny_upserts = Vec::new();
    let mut allow_upserts = Vec::new();
    let mut allow_deletes = Vec::new();
    let mut deny_deletes = Vec::new();
    for (key, verdict) in target {
        if current.get(key) != Some(verdict) {
            match verdict {
                Verdict::Deny => deny_upserts.push(Op::Upsert(*key, *verdict)),
                Verdict::Allow => allow_upserts.push(Op::Upsert(*key, *verdict)),
            }
        }
    }
    for (key, verdict) in current {
        if !target.contains_key(key) {
            match verdict {
                Verdict::Allow => allow_deletes.push(Op::Delete(*key)),
                Verdict::Deny => deny_deletes.push(Op::Delete(*key)),
            }
        }
    }
    let mut ops = deny_upserts;
    ops.extend(allow_deletes);
    ops.extend(deny_deletes);
    ops.extend(allow_upserts);
    ops
}

/// A key of `entries` (other than `key` and those `skip` names) in `key`'s group whose ports
/// overlap `key`'s, if any. Checks only the last range starting at or before `key`'s last
/// port: ranges of one group in `entries` do not overlap each other, so no earlier one can
/// reach further.
fn overlapping(
    entries: &BTreeMap<PolicyKey, Verdict>,
    key: &PolicyKey,
    skip: impl Fn(&PolicyKey) -> bool,
) -> Option<PolicyKey> {
    let (_, last) = key.ports()?;
    let group_start = PolicyKey {
        port: 1,
        end_port: 0,
        ..*key
    };
    let probe = PolicyKey {
        port: last,
        end_port: u16::MAX,
        ..*key
    };
    entries
        .range(group_start..=probe)
        .rev()
        .map(|(k, _)| *k)
        .find(|k| k != key && !skip(k))
        .filter(|k| k.overlaps(key))
}

/// The writes a change needs, validated: an invalid or overlapping key fails it before
/// anything is written. A delta costs O(k log n) for k named keys (no copy of the n entries);
/// a replace O(n log n).
fn plan_change(
    endpoint: u32,
    current: &BTreeMap<PolicyKey, Verdict>,
    change: &EntryChange,
) -> Result<Vec<Op>, PolicyMapError> {
    let invalid = |reason| PolicyMapError::InvalidKey { endpoint, reason };
    let overlap = |new: &PolicyKey, existing: PolicyKey| PolicyMapError::Overlap {
        endpoint,
        new: *new,
        existing,
    };
    match change {
        EntryChange::Replace(target) => {
            for key in target.keys() {
                key.validate().map_err(invalid)?;
                if let Some(existing) = overlapping(target, key, |_| false) {
                    return Err(overlap(key, existing));
                }
            }
            Ok(plan(current, target))
        }
        EntryChange::Delta { upserts, deletes } => {
            // Deletes first, then upserts (a key in both ends up upserted).
            let mut named: BTreeMap<PolicyKey, Option<Verdict>> = BTreeMap::new();
            for key in deletes {
                named.insert(*key, None);
            }
            for (key, verdict) in upserts {
                key.validate().map_err(invalid)?;
                named.insert(*key, Some(*verdict));
            }
            let added: BTreeMap<PolicyKey, Verdict> = named
                .iter()
                .filter_map(|(k, v)| v.map(|v| (*k, v)))
                .collect();
            for key in added.keys() {
                // Against what stays of the current entries, and against the other upserts.
                let in_current = overlapping(current, key, |k| named.contains_key(k));
                if let Some(existing) = in_current.or_else(|| overlapping(&added, key, |_| false)) {
                    return Err(overlap(key, existing));
                }
            }
            let target: BTreeMap<PolicyKey, Verdict> = added
                .into_iter()
                .filter(|(k, v)| current.get(k) != Some(v))
                .collect();
            let gone: BTreeMap<PolicyKey, Verdict> = named
                .iter()
                .filter(|(_, v)| v.is_none())
                .filter_map(|(k, _)| current.get(k).map(|v| (*k, *v)))
                .collect();
            // `plan` over just the keys that change: `gone` as the current side of the
            // removals, `target` as the new side of the upserts.
            let mut ops = plan(&BTreeMap::new(), &target);
            let removals = plan(&gone, &BTreeMap::new());
            // Keep the safe order: deny upserts, removals (allows then denies), allow upserts.
            let split = ops
                .iter()
                .position(|op| matches!(op, Op::Upsert(_, Verdict::Allow)))
                .unwrap_or(ops.len());
            ops.splice(split..split, removals);
            Ok(ops)
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::POLICY_PREFIX_FULL;

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u32> {
        let mut ports: Vec<u32> = prefixes
            .iter()
            .flat_map(|(start, bits)| {
                let size = 1u32 << (16 - u32::from(*bits));
                (u32::from(*start)..u32::from(*start) + size).collect::<Vec<_>>()
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn port_ranges_become_exact_prefix_sets() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(8000, 8009), vec![(8000, 13), (8008, 15)]);
        assert_eq!(port_prefixes(1, 65535).len(), 16);
        for (first, last) in [
            (1, 1),
            (1, 79),
            (81, 1000),
            (1024, 65535),
            (8000, 8080),
            (65535, 65535),
            (3, 65534),
            (12345, 23456),
        ] {
            let prefixes = port_prefixes(first, last);
            assert!(prefixes.len() <= 30, "{first}-{last}: {}", prefixes.len());
            assert_eq!(
                covered(&prefixes),
                (u32::from(first)..=u32::from(last)).collect::<Vec<_>>(),
                "{first}-{last}"
            );
            for (start, bits) in &prefixes {
                let size = 1u32 << (16 - u32::from(*bits));
                assert_eq!(u32::from(*start) % size, 0, "aligned");
            }
        }
    }

    #[test]
    fn keys_map_onto_prefix_lengths() {
        let any = PolicyKey::any_port(Direction::Ingress, 300, 0);
        let p = any.prefixes(7);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].prefix_len(), POLICY_PREFIX_ANY_PROTO);
        let tcp = PolicyKey::any_port(Direction::Egress, 0, 6);
        assert_eq!(tcp.prefixes(7)[0].prefix_len(), POLICY_PREFIX_ANY_PORT);
        let one = PolicyKey::port(Direction::Egress, 0, 6, 443);
        let p = one.prefixes(7)[0];
        assert_eq!(p.prefix_len(), POLICY_PREFIX_FULL);
        assert_eq!(p.data().dport, [1, 187]);
        assert_eq!(p.data().endpoint_id, 7);
        assert_eq!(p.data().direction, DIR_EGRESS);
        let range = PolicyKey::range(Direction::Ingress, 5, 17, 1000, 1999);
        for prefix in range.prefixes(9) {
            let value = PolicyEntryRaw {
                verdict: VERDICT_ALLOW,
                port: 1000,
                end_port: 1999,
                ..Default::default()
            };
            assert_eq!(
                PolicyKey::from_stored(&prefix.data(), prefix.prefix_len(), &value),
                Some(range)
            );
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut key = PolicyKey::any_port(Direction::Ingress, 0, 0);
        assert!(key.validate().is_ok());
        key.port = 80;
        assert!(key.validate().is_err(), "ANY with a port");
        assert!(
            PolicyKey::range(Direction::Ingress, 0, 6, 90, 80)
                .validate()
                .is_err()
        );
        assert!(
            PolicyKey::range(Direction::Ingress, 0, 6, 0, 80)
                .validate()
                .is_err()
        );
        assert!(
            PolicyKey::range(Direction::Ingress, 0, 6, 80, 90)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let k = |a, b| PolicyKey::range(Direction::Ingress, 300, 6, a, b);
        let current: BTreeMap<PolicyKey, Verdict> =
            [(k(1, 79), Verdict::Allow), (k(81, 1000), Verdict::Allow)].into();
        let ok = EntryChange::Delta {
            upserts: vec![(
                PolicyKey::port(Direction::Ingress, 300, 6, 80),
                Verdict::Deny,
            )],
            deletes: vec![],
        };
        assert!(plan_change(1, &current, &ok).is_ok());
        let bad = EntryChange::Delta {
            upserts: vec![(k(70, 90), Verdict::Deny)],
            deletes: vec![],
        };
        assert!(matches!(
            plan_change(1, &current, &bad),
            Err(PolicyMapError::Overlap { .. })
        ));
        // Deleting the overlapped key in the same delta makes it fine.
        let swap = EntryChange::Delta {
            upserts: vec![(k(70, 90), Verdict::Deny)],
            deletes: vec![k(1, 79), k(81, 1000)],
        };
        assert!(plan_change(1, &current, &swap).is_ok());
        // Another protocol, or the every-port key, does not overlap.
        let other = EntryChange::Delta {
            upserts: vec![
                (
                    PolicyKey::range(Direction::Ingress, 300, 17, 1, 100),
                    Verdict::Allow,
                ),
                (
                    PolicyKey::any_port(Direction::Ingress, 300, 6),
                    Verdict::Allow,
                ),
            ],
            deletes: vec![],
        };
        assert!(plan_change(1, &current, &other).is_ok());
        let replace =
            EntryChange::Replace([(k(1, 100), Verdict::Allow), (k(50, 60), Verdict::Deny)].into());
        assert!(plan_change(1, &BTreeMap::new(), &replace).is_err());
        // Two new keys overlapping each other in one delta.
        let both = EntryChange::Delta {
            upserts: vec![
                (k(2000, 2010), Verdict::Allow),
                (k(2005, 2020), Verdict::Allow),
            ],
            deletes: vec![],
        };
        assert!(plan_change(1, &current, &both).is_err());
    }

    #[test]
    fn writes_never_open_a_gap() {
        let tcp = |p| PolicyKey::port(Direction::Ingress, 300, 6, p);
        let all = PolicyKey::any_port(Direction::Ingress, 300, 6);
        let current: BTreeMap<PolicyKey, Verdict> = [
            (all, Verdict::Allow),
            (tcp(80), Verdict::Deny),
            (tcp(22), Verdict::Allow),
        ]
        .into();
        let target: BTreeMap<PolicyKey, Verdict> = [
            (tcp(443), Verdict::Allow),
            (tcp(22), Verdict::Deny),
            (tcp(8080), Verdict::Deny),
        ]
        .into();
        let ops = plan(&current, &target);
        assert_eq!(
            ops,
            vec![
                // New and changed denies first, ...
                Op::Upsert(tcp(22), Verdict::Deny),
                Op::Upsert(tcp(8080), Verdict::Deny),
                // ... then allows go (the broad one before the deny under it), ...
                Op::Delete(all),
                Op::Delete(tcp(80)),
                // ... then new allows.
                Op::Upsert(tcp(443), Verdict::Allow),
            ]
        );
        assert!(plan(&target, &target).is_empty());
    }

    #[test]
    fn deltas_write_only_what_changes_in_the_safe_order() {
        let tcp = |p| PolicyKey::port(Direction::Ingress, 300, 6, p);
        let all = PolicyKey::any_port(Direction::Ingress, 300, 6);
        let current: BTreeMap<PolicyKey, Verdict> = [
            (all, Verdict::Allow),
            (tcp(80), Verdict::Deny),
            (tcp(22), Verdict::Allow),
        ]
        .into();
        let change = EntryChange::Delta {
            upserts: vec![
                (tcp(443), Verdict::Allow),
                (tcp(22), Verdict::Deny),
                (tcp(8080), Verdict::Deny),
                (tcp(80), Verdict::Deny),
            ],
            deletes: vec![all, tcp(80), tcp(9999)],
        };
        let ops = plan_change(1, &current, &change).expect("valid");
        assert_eq!(
            ops,
            vec![
                Op::Upsert(tcp(22), Verdict::Deny),
                Op::Upsert(tcp(8080), Verdict::Deny),
                Op::Delete(all),
                Op::Upsert(tcp(443), Verdict::Allow),
            ],
            "tcp(80) is deleted and upserted unchanged: no write; 9999 is not there"
        );
        // The same as replacing with the resulting set.
        let target: BTreeMap<PolicyKey, Verdict> = [
            (tcp(80), Verdict::Deny),
            (tcp(22), Verdict::Deny),
            (tcp(443), Verdict::Allow),
            (tcp(8080), Verdict::Deny),
        ]
        .into();
        assert_eq!(plan(&current, &target), ops);
    }

    #[test]
    fn enforcement_flags_round_trip() {
        for (ingress, egress) in [(false, false), (true, false), (false, true), (true, true)] {
            let e = Enforcement { ingress, egress };
            assert_eq!(Enforcement::from_flags(e.flags()), e);
        }
        assert_eq!(
            Enforcement::BOTH.and(Enforcement {
                ingress: false,
                egress: true
            }),
            Enforcement {
                ingress: false,
                egress: true
            }
        );
    }
}
