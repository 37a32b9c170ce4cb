//! The policy maps' ABI: `kino_policy`, the LPM trie of every endpoint's policy entries
//! (`struct policy_key`'s prefix lengths say what a key matches), `kino_ep_policy`, the array
//! of enforced directions per endpoint, and the directions and verdicts they hold.

/// Name of the policy LPM trie.
pub const POLICY_MAP: &str = "kino_policy";
/// Name of the per-endpoint enforcement array.
pub const EP_POLICY_MAP: &str = "kino_ep_policy";
/// `KINO_POLICY_MAX_ENTRIES`: default capacity of the policy trie, in prefixes.
pub const POLICY_MAX_ENTRIES: u32 = 262_144;
/// `KINO_MAX_ENDPOINT_ID`: the largest endpoint id (the array has one more slot, for 0).
pub const MAX_ENDPOINT_ID: u32 = 65_535;
/// `KINO_POLICY_PREFIX_ANY_PROTO`: a key for every protocol (and so every port).
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// `KINO_POLICY_PREFIX_ANY_PORT`: a key for every port of one protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// `KINO_POLICY_PREFIX_FULL`: a key for one port (and the length packets are looked up with).
pub const POLICY_PREFIX_FULL: u32 = 96;
/// `KINO_POLICY_F_INGRESS`.
pub const POLICY_F_INGRESS: u32 = 1;
/// `KINO_POLICY_F_EGRESS`.
pub const POLICY_F_EGRESS: u32 = 2;
/// `KINO_VERDICT_ALLOW`.
pub const VERDICT_ALLOW: u8 = 1;
/// `KINO_VERDICT_DENY`.
pub const VERDICT_DENY: u8 = 2;
/// `KINO_DIR_INGRESS`.
pub const DIR_INGRESS: u8 = 1;
/// `KINO_DIR_EGRESS`.
pub const DIR_EGRESS: u8 = 2;

/// `struct policy_key` without its leading `prefixlen` (aya's `Key` adds it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyKeyRaw {
    /// The local endpoint whose policy this is.
    pub endpoint_id: u32,
    /// The peer's identity; 0 = every peer.
    pub remote_identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IANA protocol number; 0 = ANY.
    pub protocol: u8,
    /// Destination port, network byte order as stored in memory.
    pub dport: [u8; 2],
    /// Zero; never matched. Makes the key data 16 bytes so the trie stores the value (with
    /// its u64 counters the datapath adds to atomically) 8-byte aligned — see
    /// `struct policy_key`.
    pub pad: [u8; 4],
}

/// `struct policy_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEntryRaw {
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`].
    pub verdict: u8,
    /// Zero.
    pub pad: u8,
    /// First port of the compiled key's range (0 = every port).
    pub port: u16,
    /// Last port of the range; 0 for a single port.
    pub end_port: u16,
    /// Zero.
    pub pad2: u16,
    /// Packets that hit this prefix.
    pub packets: u64,
    /// Bytes that hit this prefix.
    pub bytes: u64,
}

/// `struct endpoint_policy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointPolicyRaw {
    /// `KINO_POLICY_F_*`.
    pub flags: u32,
    /// Bumped (in a write of its own) after every change of the endpoint's entries or flags;
    /// conntrack's verdict cache is valid only under the generation it was made in.
    pub generation: u32,
    /// Realized policy revision.
    pub revision: i64,
}

// SAFETY: plain `#[repr(C)]` integers without padding (sizes asserted below, offsets checked
// against the object's BTF by the tests).
unsafe impl aya::Pod for PolicyKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyEntryRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointPolicyRaw {}

const _: () = assert!(size_of::<PolicyKeyRaw>() == 16);
// The trie stores a value right after the node header and the key data (not the prefixlen):
// key data of a multiple of 8 bytes keeps the value's u64 counters aligned, so the
// datapath's atomic adds on them never straddle a cache line (a split lock per packet).
const _: () = assert!(
    size_of::<PolicyKeyRaw>().is_multiple_of(8),
    "policy_key data must be a multiple of 8 bytes (see struct policy_key)"
);
const _: () = assert!(size_of::<PolicyEntryRaw>() == 24);
const _: () = assert!(size_of::<EndpointPolicyRaw>() == 16);

/// Direction of traffic, seen from the endpoint (`KINO_DIR_*`: of a policy key, of the point
/// that made a conntrack entry, of a flow event's enforcement point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

impl Direction {
    /// Both, ingress first.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// Its `KINO_DIR_*` value.
    pub fn raw(self) -> u8 {
        match self {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        }
    }

    /// The direction a `KINO_DIR_*` value names; `None` for any other value.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            DIR_INGRESS => Some(Direction::Ingress),
            DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }

    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}
