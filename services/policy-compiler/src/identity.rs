//! Security identities: a numeric id per distinct label set.
//!
//! - Reserved identities (never stored): 1 host, 2 world, 3 unmanaged, 4 health, 5 init,
//!   6 remote-node, labelled `reserved:<name>`.
//! - Endpoint identities, 256 ..= 65535, allocated cluster-wide through the datastore
//!   ([`allocator`]): one per distinct set of endpoint labels.
//! - CIDR identities, `1 << 24 | hash`, one per prefix named by a policy (`cidr:<prefix>`).
//!   They are local to the compiler process's output (ipcache and policy maps, like
//!   Cilium's local identities) and never stored: a stream resumes only within the process
//!   that numbered them (its epoch), any other gets a snapshot. A prefix keeps its number
//!   while policies name it, so one new prefix renumbers nothing ([`CidrIdentities`]);
//!   numbers come from the prefix's hash, so replicas agree on every prefix except the
//!   rare ones whose hash collided in a different order.

pub mod allocator;

use std::collections::{BTreeMap, HashSet};

use crate::cidr::Cidr;
use crate::labels::{Label, Labels, SOURCE_CIDR, SOURCE_RESERVED};
use crate::policy_map::NumericIdentity;

/// Host: the local node.
pub const HOST: NumericIdentity = 1;
/// World: outside the cluster.
pub const WORLD: NumericIdentity = 2;
/// An endpoint not managed by kino.
pub const UNMANAGED: NumericIdentity = 3;
/// A node's health endpoint.
pub const HEALTH: NumericIdentity = 4;
/// An endpoint whose labels are not known yet.
pub const INIT: NumericIdentity = 5;
/// Another node of the cluster.
pub const REMOTE_NODE: NumericIdentity = 6;
/// First identity of label sets.
pub const MIN_ENDPOINT_IDENTITY: NumericIdentity = 256;
/// Last identity of label sets (Cilium's default cluster range).
pub const MAX_ENDPOINT_IDENTITY: NumericIdentity = 65535;
/// Bit marking CIDR (local) identities.
pub const LOCAL_SCOPE: NumericIdentity = 1 << 24;

/// The reserved identities with their names.
pub const RESERVED: [(NumericIdentity, &str); 6] = [
    (HOST, "host"),
    (WORLD, "world"),
    (UNMANAGED, "unmanaged"),
    (HEALTH, "health"),
    (INIT, "init"),
    (REMOTE_NODE, "remote-node"),
];

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityClass {
    /// A reserved identity.
    Reserved,
    /// A set of endpoint labels.
    Endpoint,
    /// A prefix named by a policy.
    Cidr(Cidr),
}

/// An identity with its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    /// The number.
    pub id: NumericIdentity,
    /// Its labels.
    pub labels: Labels,
    /// What it stands for.
    pub class: IdentityClass,
}

impl IdentityInfo {
    /// An endpoint identity.
    pub fn endpoint(id: NumericIdentity, labels: Labels) -> IdentityInfo {
        IdentityInfo {
            id,
            labels,
            class: IdentityClass::Endpoint,
        }
    }

    /// A CIDR identity.
    pub fn cidr(id: NumericIdentity, prefix: Cidr) -> IdentityInfo {
        let labels = [
            Label::new(SOURCE_CIDR, &prefix.to_string(), ""),
            Label::new(SOURCE_RESERVED, "world", ""),
        ]
        .into_iter()
        .collect();
        IdentityInfo {
            id,
            labels,
            class: IdentityClass::Cidr(prefix),
        }
    }

    /// True for endpoint identities.
    pub fn is_endpoint(&self) -> bool {
        self.class == IdentityClass::Endpoint
    }
}

/// The reserved identity `id`, if it is one.
pub fn reserved(id: NumericIdentity) -> Option<IdentityInfo> {
    RESERVED
        .iter()
        .find(|(n, _)| *n == id)
        .map(|(id, name)| IdentityInfo {
            id: *id,
            labels: [Label::new(SOURCE_RESERVED, name, "")]
                .into_iter()
                .collect(),
            class: IdentityClass::Reserved,
        })
}

/// Every reserved identity.
pub fn all_reserved() -> Vec<IdentityInfo> {
    RESERVED
        .iter()
        .filter_map(|(id, _)| reserved(*id))
        .collect()
}

/// The reserved identity whose labels are exactly `labels`.
pub fn reserved_by_labels(labels: &Labels) -> Option<IdentityInfo> {
    all_reserved().into_iter().find(|r| &r.labels == labels)
}

/// True for ids in the range of allocated endpoint identities.
pub fn is_endpoint_range(id: NumericIdentity) -> bool {
    (MIN_ENDPOINT_IDENTITY..=MAX_ENDPOINT_IDENTITY).contains(&id)
}

/// Bits of the CIDR identity hash.
const CIDR_SLOTS: u32 = 1 << 24;

/// FNV-1a over the text written to it.
struct Fnv1a(u32);

impl std::fmt::Write for Fnv1a {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        for byte in text.bytes() {
            self.0 ^= byte as u32;
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
        Ok(())
    }
}

/// FNV-1a of the prefix's text (`10.0.0.0/8`), without building the string.
fn prefix_hash(prefix: &Cidr) -> u32 {
    use std::fmt::Write;
    let mut hash = Fnv1a(0x811c_9dc5);
    let _ = write!(hash, "{prefix}");
    hash.0
}

/// The CIDR identities of a process: `LOCAL_SCOPE | slot`, the slot being the prefix's
/// hash or, when another prefix holds it, the next free one. A prefix keeps its number
/// until it is released; allocating and releasing cost O(log n) whatever the number of
/// prefixes, so a policy change renumbers nothing and touches only its own prefixes.
#[derive(Clone, Debug)]
pub struct CidrIdentities {
    slots: u32,
    by_prefix: BTreeMap<Cidr, NumericIdentity>,
    taken: HashSet<u32>,
}

impl Default for CidrIdentities {
    fn default() -> Self {
        CidrIdentities::new()
    }
}

impl CidrIdentities {
    /// No prefix numbered yet.
    pub fn new() -> CidrIdentities {
        CidrIdentities::with_slots(CIDR_SLOTS)
    }

    fn with_slots(slots: u32) -> CidrIdentities {
        CidrIdentities {
            slots,
            by_prefix: BTreeMap::new(),
            taken: HashSet::new(),
        }
    }

    /// The identity of a prefix, if it has one.
    pub fn get(&self, prefix: &Cidr) -> Option<NumericIdentity> {
        self.by_prefix.get(prefix).copied()
    }

    /// Every numbered prefix.
    pub fn all(&self) -> &BTreeMap<Cidr, NumericIdentity> {
        &self.by_prefix
    }

    /// The identity of a prefix, numbering it if it has none.
    pub fn allocate(&mut self, prefix: Cidr) -> NumericIdentity {
        if let Some(id) = self.get(&prefix) {
            return id;
        }
        assert!(
            (self.taken.len() as u64) < u64::from(self.slots),
            "every CIDR identity slot is taken"
        );
        let mut slot = prefix_hash(&prefix) % self.slots;
        while !self.taken.insert(slot) {
            slot = (slot + 1) % self.slots;
        }
        let id = LOCAL_SCOPE | slot;
        self.by_prefix.insert(prefix, id);
        id
    }

    /// Frees a prefix's identity; returns it.
    pub fn release(&mut self, prefix: &Cidr) -> Option<NumericIdentity> {
        let id = self.by_prefix.remove(prefix)?;
        self.taken.remove(&(id & !LOCAL_SCOPE));
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The CIDR identities a set of prefixes gets when numbered together (in sorted order):
    /// what a compiler given these prefixes at once (e.g. after a restart) holds.
    fn cidr_identities(prefixes: &BTreeSet<Cidr>) -> BTreeMap<Cidr, NumericIdentity> {
        cidr_identities_in(prefixes, CIDR_SLOTS)
    }

    fn cidr_identities_in(
        prefixes: &BTreeSet<Cidr>,
        slots: u32,
    ) -> BTreeMap<Cidr, NumericIdentity> {
        let mut ids = CidrIdentities::with_slots(slots);
        for prefix in prefixes {
            ids.allocate(*prefix);
        }
        ids.by_prefix
    }

    #[test]
    fn reserved_identities() {
        assert_eq!(reserved(HOST).unwrap().labels.to_string(), "reserved:host");
        assert_eq!(
            reserved(REMOTE_NODE).unwrap().labels.to_string(),
            "reserved:remote-node"
        );
        assert!(reserved(7).is_none());
        let world = Labels::parse_list("reserved:world").unwrap();
        assert_eq!(reserved_by_labels(&world).unwrap().id, WORLD);
    }

    #[test]
    fn prefix_hash_is_fnv1a_of_the_text() {
        let fnv1a = |text: &str| {
            let mut hash: u32 = 0x811c_9dc5;
            for byte in text.bytes() {
                hash ^= byte as u32;
                hash = hash.wrapping_mul(0x0100_0193);
            }
            hash
        };
        for p in ["10.0.0.0/8", "100.64.1.2/32", "fd00::/104", "0.0.0.0/0"] {
            let cidr: Cidr = p.parse().unwrap();
            assert_eq!(prefix_hash(&cidr), fnv1a(p));
        }
        let one: BTreeSet<Cidr> = ["10.0.0.0/8".parse().unwrap()].into();
        assert_eq!(
            cidr_identities(&one).values().next(),
            Some(&(LOCAL_SCOPE | (fnv1a("10.0.0.0/8") % CIDR_SLOTS)))
        );
    }

    #[test]
    fn cidr_identities_are_stable_and_distinct() {
        let set: BTreeSet<Cidr> = ["10.0.0.0/8", "10.1.0.0/16", "fd00::/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ids = cidr_identities(&set);
        assert_eq!(ids.len(), 3);
        assert!(ids.values().all(|id| id & LOCAL_SCOPE != 0));
        let mut more = set.clone();
        more.insert("192.168.0.0/16".parse().unwrap());
        let ids2 = cidr_identities(&more);
        for (prefix, id) in &ids {
            assert_eq!(ids2[prefix], *id);
        }
        // With a tiny hash space every prefix collides and still gets its own slot.
        let tiny = cidr_identities_in(&more, 4);
        let distinct: BTreeSet<_> = tiny.values().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn numbers_stay_while_prefixes_come_and_go() {
        // Four slots: every prefix collides with another one.
        let mut ids = CidrIdentities::with_slots(4);
        let p = |s: &str| s.parse::<Cidr>().unwrap();
        let prefixes = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "fd00::/8",
            "192.168.0.0/16",
            "172.16.0.0/12",
        ]
        .map(p);
        let mut held: BTreeMap<Cidr, NumericIdentity> = BTreeMap::new();
        for prefix in &prefixes[..4] {
            held.insert(*prefix, ids.allocate(*prefix));
        }
        let freed = ids.release(&prefixes[0]).unwrap();
        held.remove(&prefixes[0]);
        held.insert(prefixes[4], ids.allocate(prefixes[4]));
        // Those that stayed kept their number; the newcomer took the only free slot.
        for (prefix, id) in &held {
            assert_eq!(ids.get(prefix), Some(*id), "{prefix}");
        }
        assert_eq!(ids.get(&prefixes[4]), Some(freed));
        assert_eq!(ids.allocate(prefixes[1]), held[&prefixes[1]], "idempotent");
        // Numbered together, a set gets the numbers of `cidr_identities`.
        let set: BTreeSet<Cidr> = prefixes[1..].iter().copied().collect();
        let mut together = CidrIdentities::with_slots(4);
        for prefix in &set {
            together.allocate(*prefix);
        }
        assert_eq!(together.all(), &cidr_identities_in(&set, 4));
    }
}
