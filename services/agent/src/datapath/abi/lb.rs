//! The load balancer's ABI (issue #14): the service maps of `bpf/lib/lb_maps.h` — frontends,
//! their backend slots, backends, Maglev tables, session affinity, the socket and per-packet
//! reverse NAT, and the network namespaces whose sockets this node translates — the socket
//! programs' object (`bpf/sock_lb.bpf.c`) and its sock-LB flow event.

/// The socket load-balancing object, as compiled by build.rs from `bpf/sock_lb.bpf.c`.
pub static SOCK_LB_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.bpf.o"));

/// Name of the frontend map.
pub const LB_FRONTENDS_MAP: &str = "kino_lb_frontends";
/// Name of the slot map.
pub const LB_SLOTS_MAP: &str = "kino_lb_slots";
/// Name of the backend map.
pub const LB_BACKENDS_MAP: &str = "kino_lb_backends";
/// Name of the Maglev table map.
pub const LB_MAGLEV_MAP: &str = "kino_lb_maglev";
/// Name of the session affinity map.
pub const LB_AFFINITY_MAP: &str = "kino_lb_affinity";
/// Name of the socket reverse-NAT map.
pub const LB_REVERSE_SK_MAP: &str = "kino_lb_reverse_sk";
/// Name of the per-packet reverse-NAT map.
pub const LB_REVNAT_MAP: &str = "kino_lb_revnat";
/// Name of the map of this node's network namespaces.
pub const LB_NETNS_MAP: &str = "kino_lb_netns";

/// Every map of the load balancer, in the order they are pinned.
pub const LB_MAPS: [&str; 8] = [
    LB_FRONTENDS_MAP,
    LB_SLOTS_MAP,
    LB_BACKENDS_MAP,
    LB_MAGLEV_MAP,
    LB_AFFINITY_MAP,
    LB_REVERSE_SK_MAP,
    LB_REVNAT_MAP,
    LB_NETNS_MAP,
];

/// `KINO_LB_MAX_FRONTENDS`.
pub const LB_MAX_FRONTENDS: u32 = 65_536;
/// `KINO_LB_MAX_BACKENDS`.
pub const LB_MAX_BACKENDS: u32 = 262_144;
/// `KINO_LB_MAX_SLOTS`.
pub const LB_MAX_SLOTS: u32 = 262_144;
/// `KINO_LB_AFFINITY_MAX_ENTRIES`.
pub const LB_AFFINITY_MAX_ENTRIES: u32 = 131_072;
/// `KINO_LB_REVERSE_SK_MAX_ENTRIES`.
pub const LB_REVERSE_SK_MAX_ENTRIES: u32 = 262_144;
/// `KINO_LB_NETNS_MAX_ENTRIES`.
pub const LB_NETNS_MAX_ENTRIES: u32 = 16_640;
/// `KINO_LB_MAGLEV_CHUNK`: slots per `kino_lb_maglev` value.
pub const LB_MAGLEV_CHUNK: usize = 1000;
/// `KINO_LB_SLOT_SEARCH_STEPS`.
pub const LB_SLOT_SEARCH_STEPS: u32 = 17;

/// `KINO_LB_F_AFFINITY`.
pub const LB_F_AFFINITY: u16 = 1 << 0;
/// `KINO_LB_F_MAGLEV`.
pub const LB_F_MAGLEV: u16 = 1 << 1;

/// `KINO_LB_CLUSTER_IP`.
pub const LB_CLUSTER_IP: u8 = 1;
/// `KINO_LB_NODE_PORT`.
pub const LB_NODE_PORT: u8 = 2;
/// `KINO_LB_EXTERNAL_IP`.
pub const LB_EXTERNAL_IP: u8 = 3;

/// `KINO_LB_BACKEND_ACTIVE`.
pub const LB_BACKEND_ACTIVE: u8 = 1;
/// `KINO_LB_BACKEND_TERMINATING`.
pub const LB_BACKEND_TERMINATING: u8 = 2;

/// `KINO_LB_NETNS_F_IPV6`.
pub const LB_NETNS_F_IPV6: u32 = 1 << 0;
/// `KINO_LB_NETNS_F_HOST`.
pub const LB_NETNS_F_HOST: u32 = 1 << 1;

/// `KINO_EVENT_SOCK_LB`: a socket translation ([`SockLbEventRaw`]).
pub const EVENT_SOCK_LB: u8 = 3;
/// `KINO_OBS_SOCK`: a socket program.
pub const OBS_SOCK: u8 = 3;

/// `struct lb_frontend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LbFrontendKeyRaw {
    /// IPv4 in the first 4 bytes, or the 16 IPv6 bytes.
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    /// IANA protocol number.
    pub protocol: u8,
    /// `KINO_FAMILY_*`.
    pub family: u8,
}

/// `struct lb_frontend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbFrontendRaw {
    /// Frontend id.
    pub id: u32,
    /// Active backends (slots 1..=count).
    pub count: u32,
    /// Sum of the active backends' weights.
    pub total_weight: u32,
    /// Affinity timeout, seconds.
    pub affinity_timeout: u32,
    /// Slots of the Maglev table.
    pub maglev_size: u32,
    /// `KINO_LB_F_*`.
    pub flags: u16,
    /// `KINO_LB_CLUSTER_IP` ...
    pub r#type: u8,
    /// Zero.
    pub pad: u8,
}

/// `struct lb_slot_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbSlotKeyRaw {
    /// Frontend id.
    pub frontend_id: u32,
    /// 1..=count.
    pub slot: u32,
}

/// `struct lb_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbSlotRaw {
    /// Backend id.
    pub backend_id: u32,
    /// Cumulative weight of slots 1..=this.
    pub weight_end: u32,
}

/// `struct lb_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbBackendRaw {
    /// IPv4 in the first 4 bytes, or the 16 IPv6 bytes.
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    /// IANA protocol number.
    pub protocol: u8,
    /// `KINO_FAMILY_*`.
    pub family: u8,
    /// `KINO_LB_BACKEND_*`.
    pub state: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// The frontend it serves.
    pub frontend_id: u32,
}

/// `struct lb_maglev_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbMaglevKeyRaw {
    /// Frontend id.
    pub frontend_id: u32,
    /// Slot / [`LB_MAGLEV_CHUNK`].
    pub chunk: u32,
}

/// `struct lb_maglev_chunk`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbMaglevChunkRaw {
    /// Backend ids of the chunk's slots.
    pub backend_ids: [u32; LB_MAGLEV_CHUNK],
}

/// `struct lb_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbAffinityKeyRaw {
    /// The client's address.
    pub client: [u8; 16],
    /// Frontend id.
    pub frontend_id: u32,
    /// `KINO_FAMILY_*`.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `struct lb_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbAffinityRaw {
    /// Backend id.
    pub backend_id: u32,
    /// CLOCK_MONOTONIC second of its last use.
    pub last_used: u32,
}

/// `struct lb_reverse_sk_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbReverseSkKeyRaw {
    /// Socket cookie.
    pub cookie: u64,
    /// The backend's address.
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    /// `KINO_FAMILY_*`.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 5],
}

/// `struct lb_reverse_sk`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbReverseSkRaw {
    /// The frontend's address.
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    /// `KINO_FAMILY_*`.
    pub family: u8,
    /// Zero.
    pub pad: u8,
    /// Frontend id.
    pub frontend_id: u32,
}

/// `struct lb_revnat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbRevnatRaw {
    /// The frontend's address.
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    /// IANA protocol number.
    pub protocol: u8,
    /// `KINO_FAMILY_*`.
    pub family: u8,
}

/// `struct lb_netns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbNetnsRaw {
    /// Endpoint id; 0 for the node.
    pub endpoint_id: u32,
    /// The pod's identity.
    pub identity: u32,
    /// `KINO_LB_NETNS_F_*`.
    pub flags: u32,
    /// The pod's IPv4 address.
    pub ipv4: [u8; 4],
    /// The pod's IPv6 address (with `LB_NETNS_F_IPV6`).
    pub ipv6: [u8; 16],
}

/// `struct sock_lb_event`: a `struct flow_event` and the backend chosen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockLbEventRaw {
    /// The translation as a flow event (daddr/dport: the frontend).
    pub flow: super::FlowEventRaw,
    /// The backend's address.
    pub backend_addr: [u8; 16],
    /// Network order.
    pub backend_port: [u8; 2],
    /// Zero.
    pub pad: u16,
    /// Frontend id.
    pub frontend_id: u32,
    /// Backend id.
    pub backend_id: u32,
    /// Zero.
    pub pad2: u32,
}

// SAFETY: plain `#[repr(C)]` integers and byte arrays without padding (sizes asserted below,
// offsets checked against the object's BTF by the tests).
unsafe impl aya::Pod for LbFrontendKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbFrontendRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbSlotKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbSlotRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbBackendRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbMaglevKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbMaglevChunkRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbAffinityKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbAffinityRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbReverseSkKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbReverseSkRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbRevnatRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for LbNetnsRaw {}

const _: () = assert!(size_of::<LbFrontendKeyRaw>() == 20);
const _: () = assert!(size_of::<LbFrontendRaw>() == 24);
const _: () = assert!(size_of::<LbSlotKeyRaw>() == 8);
const _: () = assert!(size_of::<LbSlotRaw>() == 8);
const _: () = assert!(size_of::<LbBackendRaw>() == 28);
const _: () = assert!(size_of::<LbMaglevKeyRaw>() == 8);
const _: () = assert!(size_of::<LbMaglevChunkRaw>() == 4 * LB_MAGLEV_CHUNK);
const _: () = assert!(size_of::<LbAffinityKeyRaw>() == 24);
const _: () = assert!(size_of::<LbAffinityRaw>() == 8);
const _: () = assert!(size_of::<LbReverseSkKeyRaw>() == 32);
const _: () = assert!(size_of::<LbReverseSkRaw>() == 24);
const _: () = assert!(size_of::<LbRevnatRaw>() == 20);
const _: () = assert!(size_of::<LbNetnsRaw>() == 32);
const _: () = assert!(size_of::<SockLbEventRaw>() == size_of::<super::FlowEventRaw>() + 32);
