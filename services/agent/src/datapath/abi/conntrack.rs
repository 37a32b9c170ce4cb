//! Conntrack's ABI: `kino_ct`, the LRU hash of connections seen at each enforcement point,
//! and its entries' flags.

/// Name of the conntrack map.
pub const CT_MAP: &str = "kino_ct";
/// `KINO_CT_MAX_ENTRIES`: default capacity (preallocated).
pub const CT_MAX_ENTRIES: u32 = 131_072;
/// `KINO_CT_F_TX_CLOSING`.
pub const CT_F_TX_CLOSING: u32 = 1;
/// `KINO_CT_F_RX_CLOSING`.
pub const CT_F_RX_CLOSING: u32 = 2;
/// `KINO_CT_F_SEEN_NON_SYN`.
pub const CT_F_SEEN_NON_SYN: u32 = 4;

/// `struct ct_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtKeyRaw {
    /// Source address (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port, network order as stored (ICMP echo request: identifier).
    pub sport: [u8; 2],
    /// Destination port, network order as stored (ICMP echo reply: identifier).
    pub dport: [u8; 2],
    /// IANA protocol.
    pub protocol: u8,
    /// `KINO_FAMILY_*`.
    pub family: u8,
    /// `KINO_DIR_*` of the point that made the entry.
    pub direction: u8,
    /// Zero.
    pub pad: u8,
}

/// `struct ct_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntryRaw {
    /// Packets in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// CLOCK_MONOTONIC_COARSE second at which the entry lapses.
    pub expires: u32,
    /// `KINO_CT_F_*`.
    pub flags: u32,
    /// Identity of the connection's source.
    pub src_identity: u32,
    /// The local endpoint of the point that made the entry.
    pub endpoint_id: u32,
    /// Verdict cache: the endpoint's policy generation the connection was last allowed
    /// under, ...
    pub policy_generation: u32,
    /// ... with this peer identity.
    pub remote_identity: u32,
}

// SAFETY: plain `#[repr(C)]` integers and byte arrays without padding (sizes asserted below,
// offsets checked against the object's BTF by the tests).
unsafe impl aya::Pod for CtKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntryRaw {}

const _: () = assert!(size_of::<CtKeyRaw>() == 40);
const _: () = assert!(size_of::<CtEntryRaw>() == 56);
