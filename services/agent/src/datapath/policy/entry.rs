//! The entry model of an endpoint's policy: compiled keys ([`PolicyKey`], the
//! `kino.policy.v1.PolicyMapKey` with the remote as an identity) and the trie prefixes they
//! become, verdicts, enforcement per direction, and the updates the policy sync applies.

use std::collections::BTreeMap;
use std::fmt;

use aya::maps::lpm_trie::Key;

use super::ports::port_prefixes;
use crate::datapath::abi::{
    Direction, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO,
    PolicyEntryRaw, PolicyKeyRaw, VERDICT_ALLOW, VERDICT_DENY,
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
    /// Its `KINO_VERDICT_*` value.
    pub(super) fn raw(self) -> u8 {
        match self {
            Verdict::Allow => VERDICT_ALLOW,
            Verdict::Deny => VERDICT_DENY,
        }
    }

    /// The verdict a `policy_entry.verdict` value means.
    pub(super) fn from_raw(raw: u8) -> Self {
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

    /// Its `KINO_POLICY_F_*` flags.
    pub(super) fn flags(self) -> u32 {
        (if self.ingress { POLICY_F_INGRESS } else { 0 })
            | (if self.egress { POLICY_F_EGRESS } else { 0 })
    }

    /// The enforcement `KINO_POLICY_F_*` flags say.
    pub(super) fn from_flags(flags: u32) -> Self {
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
    pub(super) fn and(self, other: Enforcement) -> Enforcement {
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
    pub(super) fn overlaps(&self, other: &PolicyKey) -> bool {
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
    pub(super) fn from_stored(
        raw: &PolicyKeyRaw,
        prefix_len: u32,
        value: &PolicyEntryRaw,
    ) -> Option<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::{DIR_EGRESS, POLICY_PREFIX_FULL};

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
