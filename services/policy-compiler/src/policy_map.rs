//! The compiled form of an identity's policy: exactly the contents of its BPF policy map,
//! and THE lookup the datapath performs on it. This file is the contract between the
//! compiler and the datapath.
//!
//! A key is `{direction, remote identity, protocol, port..end_port}`:
//! - remote identity 0 is the L3 wildcard (every peer);
//! - protocol 0 is ANY protocol, and then port = end_port = 0 (rules naming ANY with a port
//!   are expanded into TCP, UDP and SCTP keys, as Cilium does);
//! - port 0 is every port; otherwise `[port, end_port]` (end_port 0 = just `port`). Within
//!   one `{direction, remote, protocol}` the port ranges never overlap.
//!
//! Lookup of a packet (direction d, remote identity R from the ipcache, protocol p,
//! destination port x; x = 0 for protocols without ports): the FIRST key present in
//! 1. `{d, R, p, range ∋ x}`  2. `{d, R, p, *}`  3. `{d, R, ANY, *}`
//! 4. `{d, 0, p, range ∋ x}`  5. `{d, 0, p, *}`  6. `{d, 0, ANY, *}`
//!
//! gives the verdict; if none is present the packet is denied (the direction is enforced,
//! else no lookup happens). This is what Cilium's two LPM lookups (remote identity, then
//! wildcard; longest port prefix first) compute, so an LPM trie keyed
//! `{direction, remote, protocol, port prefix}` per endpoint implements it with the ranges
//! split into port prefixes.
//!
//! The compiler makes this first-hit lookup equal to the policy semantics ("deny wins over
//! every allow that matches; otherwise any allow allows; otherwise deny") by resolving
//! precedence ahead of time ([`resolve`]): the entries a packet could match under the
//! wildcard tiers are folded into every more specific group, and within a group a broader
//! deny removes narrower entries while a narrower deny cuts a hole into a broader allow.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::policy::model::{Direction, PolicyKey, RuleRef};

/// A numeric security identity.
pub type NumericIdentity = u32;
/// The L3 wildcard: every remote identity.
pub const WILDCARD_IDENTITY: NumericIdentity = 0;
/// The ANY protocol.
pub const ANY_PROTOCOL: u8 = 0;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// The traffic passes.
    Allow,
    /// The traffic is dropped.
    Deny,
}

/// Whether policy is enforced per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforcement {
    /// Ingress is default-deny.
    pub ingress: bool,
    /// Egress is default-deny.
    pub egress: bool,
}

impl Enforcement {
    /// The flag of one direction.
    pub fn get(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }

    /// Sets the flag of one direction.
    pub fn set(&mut self, direction: Direction, value: bool) {
        match direction {
            Direction::Ingress => self.ingress = value,
            Direction::Egress => self.egress = value,
        }
    }
}

/// The key of one policy-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapKey {
    /// Direction, seen from the endpoint.
    pub direction: Direction,
    /// Remote identity; 0 = every peer.
    pub remote: NumericIdentity,
    /// IANA protocol; 0 = ANY (then port = end_port = 0).
    pub protocol: u8,
    /// First port; 0 = every port.
    pub port: u16,
    /// Last port of a range; 0 for a single port.
    pub end_port: u16,
}

impl MapKey {
    /// The last port covered (`port` for a single port, 65535 for every port).
    pub fn last_port(&self) -> u16 {
        match (self.port, self.end_port) {
            (0, _) => u16::MAX,
            (p, 0) => p,
            (_, e) => e,
        }
    }

    /// True when the key's port part matches destination port `x`.
    pub fn matches_port(&self, x: u16) -> bool {
        self.port == 0 || (self.port <= x && x <= self.last_port())
    }
}

impl fmt::Display for MapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let remote = if self.remote == WILDCARD_IDENTITY {
            "*".to_owned()
        } else {
            self.remote.to_string()
        };
        let proto = crate::policy::model::Protocol::from_number(self.protocol)
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| self.protocol.to_string());
        let port = match (self.port, self.end_port) {
            (0, _) => "*".to_owned(),
            (p, 0) => p.to_string(),
            (p, e) => format!("{p}-{e}"),
        };
        write!(f, "{} {remote} {port}/{proto}", self.direction.as_str())
    }
}

/// The value of one entry: the verdict and the rules it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The rules this entry was derived from (empty for built-in entries such as
    /// allow-localhost).
    pub derived_from: BTreeSet<Arc<RuleRef>>,
}

/// One (identity, direction) contribution of a rule before precedence is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// Direction.
    pub direction: Direction,
    /// Remote identity or 0.
    pub remote: NumericIdentity,
    /// Protocol or 0 (then the port range is every port).
    pub protocol: u8,
    /// Port range `[lo, hi]`; `None` = every port.
    pub ports: Option<(u16, u16)>,
    /// Allow or deny.
    pub verdict: Verdict,
    /// The rule; `None` for built-in entries.
    pub rule: Option<Arc<RuleRef>>,
}

impl RawEntry {
    /// True when the entry matches a packet (before precedence).
    pub fn matches(&self, remote: NumericIdentity, protocol: u8, port: u16) -> bool {
        (self.remote == WILDCARD_IDENTITY || self.remote == remote)
            && (self.protocol == ANY_PROTOCOL || self.protocol == protocol)
            && self.ports.is_none_or(|(lo, hi)| lo <= port && port <= hi)
    }
}

/// The compiled policy of one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// The identity.
    pub identity: NumericIdentity,
    /// Enforcement per direction.
    pub enforcement: Enforcement,
    /// The policy-map entries.
    pub entries: BTreeMap<MapKey, MapEntry>,
    /// The policies with a rule selecting the identity.
    pub selected_by: BTreeSet<PolicyKey>,
}

/// The outcome of a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether the direction is enforced.
    pub enforced: bool,
    /// The entry that decided; `None` for not enforced or default deny.
    pub entry: Option<MapKey>,
}

impl CompiledPolicy {
    /// The first entry hit by the datapath's lookup order (see the module docs).
    pub fn lookup(
        &self,
        direction: Direction,
        remote: NumericIdentity,
        protocol: u8,
        port: u16,
    ) -> Option<MapKey> {
        for r in [remote, WILDCARD_IDENTITY] {
            if protocol != ANY_PROTOCOL {
                // 1 / 4: the port range holding `port` (ranges do not overlap).
                if port != 0 {
                    let probe = MapKey {
                        direction,
                        remote: r,
                        protocol,
                        port,
                        end_port: u16::MAX,
                    };
                    if let Some((key, _)) = self.entries.range(..=probe).next_back()
                        && key.direction == direction
                        && key.remote == r
                        && key.protocol == protocol
                        && key.port != 0
                        && key.matches_port(port)
                    {
                        return Some(*key);
                    }
                }
                // 2 / 5: every port of the protocol.
                let any_port = MapKey {
                    direction,
                    remote: r,
                    protocol,
                    port: 0,
                    end_port: 0,
                };
                if self.entries.contains_key(&any_port) {
                    return Some(any_port);
                }
            }
            // 3 / 6: every protocol.
            let any = MapKey {
                direction,
                remote: r,
                protocol: ANY_PROTOCOL,
                port: 0,
                end_port: 0,
            };
            if self.entries.contains_key(&any) {
                return Some(any);
            }
            if r == WILDCARD_IDENTITY {
                break;
            }
        }
        None
    }

    /// The verdict of the policy for a packet: not enforced → allow; else the looked-up
    /// entry's verdict; no entry → deny.
    pub fn decide(
        &self,
        direction: Direction,
        remote: NumericIdentity,
        protocol: u8,
        port: u16,
    ) -> Decision {
        let enforced = self.enforcement.get(direction);
        if !enforced {
            return Decision {
                verdict: Verdict::Allow,
                enforced,
                entry: None,
            };
        }
        match self.lookup(direction, remote, protocol, port) {
            Some(key) => Decision {
                verdict: self.entries[&key].verdict,
                enforced,
                entry: Some(key),
            },
            None => Decision {
                verdict: Verdict::Deny,
                enforced,
                entry: None,
            },
        }
    }

    /// Number of entries of a direction.
    pub fn count(&self, direction: Direction) -> usize {
        self.entries
            .keys()
            .filter(|k| k.direction == direction)
            .count()
    }
}

/// Resolves raw contributions into policy-map entries whose first-hit lookup equals
/// "deny wins, then allow, else default deny" over the raw entries.
pub fn resolve(raw: &[RawEntry]) -> BTreeMap<MapKey, MapEntry> {
    let mut out = BTreeMap::new();
    for direction in Direction::BOTH {
        let entries: Vec<&RawEntry> = raw.iter().filter(|e| e.direction == direction).collect();
        if entries.is_empty() {
            continue;
        }
        // Positions (in `entries`) of each remote's own entries, so a group is built from
        // its own entries and the wildcard ones without scanning every entry per remote.
        let mut by_remote: BTreeMap<NumericIdentity, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_remote.entry(e.remote).or_default().push(i);
        }
        let wildcard: Vec<usize> = by_remote
            .get(&WILDCARD_IDENTITY)
            .cloned()
            .unwrap_or_default();
        for (&remote, own) in &by_remote {
            // The group of `remote` sees its own entries and the wildcard ones, in the
            // order of `entries`.
            let group: Vec<&RawEntry> = if remote == WILDCARD_IDENTITY {
                own.iter().map(|&i| entries[i]).collect()
            } else {
                merge_positions(own, &wildcard)
                    .into_iter()
                    .map(|i| entries[i])
                    .collect()
            };
            resolve_group(direction, remote, &group, &mut out);
        }
    }
    out
}

/// Resolves the group of one `{direction, remote}`: `entries` are the remote's own raw
/// entries plus (for a remote other than the wildcard) the wildcard's. The keys it gives
/// all have that direction and remote, and depend on nothing else, so the compiler
/// re-resolves only the groups whose entries changed.
pub fn resolve_group(
    direction: Direction,
    remote: NumericIdentity,
    entries: &[&RawEntry],
    out: &mut BTreeMap<MapKey, MapEntry>,
) {
    let protocols: BTreeSet<u8> = entries.iter().map(|e| e.protocol).collect();
    for protocol in protocols {
        let sub: Vec<&RawEntry> = entries
            .iter()
            .copied()
            .filter(|e| e.protocol == protocol || e.protocol == ANY_PROTOCOL)
            .collect();
        resolve_ports(direction, remote, protocol, &sub, out);
    }
}

/// The union of two ascending, disjoint position lists, ascending.
fn merge_positions(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] < b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn rules<'a>(entries: impl Iterator<Item = &'a &'a RawEntry>) -> BTreeSet<Arc<RuleRef>> {
    entries.filter_map(|e| e.rule.clone()).collect()
}

/// Resolves the entries of one `{direction, remote, protocol}` group.
fn resolve_ports(
    direction: Direction,
    remote: NumericIdentity,
    protocol: u8,
    entries: &[&RawEntry],
    out: &mut BTreeMap<MapKey, MapEntry>,
) {
    let key = |port: u16, end_port: u16| MapKey {
        direction,
        remote,
        protocol,
        port,
        end_port,
    };
    let any_deny: Vec<&&RawEntry> = entries
        .iter()
        .filter(|e| e.ports.is_none() && e.verdict == Verdict::Deny)
        .collect();
    if !any_deny.is_empty() {
        out.insert(
            key(0, 0),
            MapEntry {
                verdict: Verdict::Deny,
                derived_from: rules(any_deny.into_iter()),
            },
        );
        return;
    }
    let any_allow: Vec<&&RawEntry> = entries
        .iter()
        .filter(|e| e.ports.is_none() && e.verdict == Verdict::Allow)
        .collect();
    let covered_by_any = !any_allow.is_empty();
    if covered_by_any {
        out.insert(
            key(0, 0),
            MapEntry {
                verdict: Verdict::Allow,
                derived_from: rules(any_allow.into_iter()),
            },
        );
    }
    if protocol == ANY_PROTOCOL {
        return;
    }
    let ranged: Vec<(u32, u32, &RawEntry)> = entries
        .iter()
        .filter_map(|e| e.ports.map(|(lo, hi)| (lo as u32, hi as u32, *e)))
        .collect();
    if ranged.is_empty() {
        return;
    }
    let mut bounds: BTreeSet<u32> = BTreeSet::new();
    for (lo, hi, _) in &ranged {
        bounds.insert(*lo);
        bounds.insert(*hi + 1);
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    // Elementary segments, each with one verdict and its rules; adjacent equal ones merge.
    let mut segments: Vec<(u32, u32, Verdict, BTreeSet<Arc<RuleRef>>)> = Vec::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let covering: Vec<&RawEntry> = ranged
            .iter()
            .filter(|(a, b, _)| *a <= lo && hi <= *b)
            .map(|(_, _, e)| *e)
            .collect();
        if covering.is_empty() {
            continue;
        }
        let denies: Vec<&RawEntry> = covering
            .iter()
            .copied()
            .filter(|e| e.verdict == Verdict::Deny)
            .collect();
        let (verdict, from) = if denies.is_empty() {
            if covered_by_any {
                continue;
            }
            (Verdict::Allow, covering)
        } else {
            (Verdict::Deny, denies)
        };
        let from: BTreeSet<Arc<RuleRef>> = from.iter().filter_map(|e| e.rule.clone()).collect();
        if let Some(last) = segments.last_mut()
            && last.1 + 1 == lo
            && last.2 == verdict
            && last.3 == from
        {
            last.1 = hi;
            continue;
        }
        segments.push((lo, hi, verdict, from));
    }
    for (lo, hi, verdict, derived_from) in segments {
        let end = if hi == lo { 0 } else { hi as u16 };
        out.insert(
            key(lo as u16, end),
            MapEntry {
                verdict,
                derived_from,
            },
        );
    }
}

/// The change of one entry: its value before and after (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryChange {
    /// The key.
    pub key: MapKey,
    /// The entry before.
    pub old: Option<MapEntry>,
    /// The entry after.
    pub new: Option<MapEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::PolicyKind;

    fn rule(path: &str) -> Option<Arc<RuleRef>> {
        Some(Arc::new(RuleRef {
            policy: PolicyKey {
                namespace: "ns".into(),
                name: "p".into(),
            },
            kind: PolicyKind::Kino,
            path: path.into(),
            direction: Direction::Ingress,
            deny: false,
            description: String::new(),
        }))
    }

    fn raw(remote: u32, protocol: u8, ports: Option<(u16, u16)>, verdict: Verdict) -> RawEntry {
        RawEntry {
            direction: Direction::Ingress,
            remote,
            protocol,
            ports,
            verdict,
            rule: rule(&format!("{remote}/{protocol}/{ports:?}/{verdict:?}")),
        }
    }

    fn compiled(raw: &[RawEntry]) -> CompiledPolicy {
        CompiledPolicy {
            identity: 300,
            enforcement: Enforcement {
                ingress: true,
                egress: true,
            },
            entries: resolve(raw),
            selected_by: BTreeSet::new(),
        }
    }

    /// Deny wins, then allow, else deny, over the raw entries.
    fn semantics(raw: &[RawEntry], remote: u32, protocol: u8, port: u16) -> Verdict {
        let matching: Vec<&RawEntry> = raw
            .iter()
            .filter(|e| e.matches(remote, protocol, port))
            .collect();
        if matching.iter().any(|e| e.verdict == Verdict::Deny) || matching.is_empty() {
            Verdict::Deny
        } else {
            Verdict::Allow
        }
    }

    #[test]
    fn narrow_deny_cuts_broad_allow() {
        let raw = vec![
            raw(300, 6, Some((1, 1000)), Verdict::Allow),
            raw(300, 6, Some((80, 80)), Verdict::Deny),
        ];
        let p = compiled(&raw);
        let keys: Vec<String> = p.entries.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "ingress 300 1-79/TCP",
                "ingress 300 80/TCP",
                "ingress 300 81-1000/TCP"
            ]
        );
        for port in [0, 1, 79, 80, 81, 1000, 1001] {
            assert_eq!(
                p.decide(Direction::Ingress, 300, 6, port).verdict,
                semantics(&raw, 300, 6, port),
                "port {port}"
            );
        }
    }

    #[test]
    fn wildcard_deny_beats_specific_allow() {
        let raw = vec![
            raw(300, 0, None, Verdict::Allow),
            raw(0, 6, Some((80, 80)), Verdict::Deny),
            raw(0, 17, None, Verdict::Allow),
        ];
        let p = compiled(&raw);
        for remote in [300, 301] {
            for (proto, port) in [(6, 80), (6, 81), (17, 80), (1, 0), (132, 80)] {
                assert_eq!(
                    p.decide(Direction::Ingress, remote, proto, port).verdict,
                    semantics(&raw, remote, proto, port),
                    "remote {remote} proto {proto} port {port}: {:?}",
                    p.entries.keys().map(|k| k.to_string()).collect::<Vec<_>>()
                );
            }
        }
    }
}
