//! The flow events' ABI: `kino_events`, the BPF ring buffer of `struct flow_event` records the
//! datapath reports drops and new connections' policy verdicts to, and the per-CPU
//! `kino_event_counters` (events emitted, events lost because the ring was full).

/// Name of the ring buffer of flow events (pinned under the node's pin directory).
pub const EVENTS_MAP: &str = "kino_events";
/// Name of the per-CPU counters of emitted and lost events.
pub const EVENT_COUNTERS_MAP: &str = "kino_event_counters";
/// `KINO_EVENTS_RING_BYTES`: default size of the ring buffer.
pub const EVENTS_RING_BYTES: u32 = 4_194_304;

/// `KINO_EVENT_DROP`.
pub const EVENT_DROP: u8 = 1;
/// `KINO_EVENT_POLICY_VERDICT`.
pub const EVENT_POLICY_VERDICT: u8 = 2;
/// `KINO_EVENT_FORWARDED`.
pub const EVENT_FORWARDED: u8 = 1;
/// `KINO_EVENT_DROPPED`.
pub const EVENT_DROPPED: u8 = 2;
/// `KINO_EVENT_AUDIT`.
pub const EVENT_AUDIT: u8 = 3;
/// `KINO_OBS_FROM_ENDPOINT`.
pub const OBS_FROM_ENDPOINT: u8 = 1;
/// `KINO_OBS_TO_ENDPOINT`.
pub const OBS_TO_ENDPOINT: u8 = 2;
/// `KINO_MATCH_NONE`.
pub const MATCH_NONE: u8 = 0;
/// `KINO_MATCH_L3_L4`.
pub const MATCH_L3_L4: u8 = 1;
/// `KINO_MATCH_L3_ONLY`.
pub const MATCH_L3_ONLY: u8 = 2;
/// `KINO_MATCH_L4_ONLY`.
pub const MATCH_L4_ONLY: u8 = 3;
/// `KINO_MATCH_ALL`.
pub const MATCH_ALL: u8 = 4;
/// `KINO_MATCH_NOT_ENFORCED`.
pub const MATCH_NOT_ENFORCED: u8 = 5;
/// `KINO_EVENT_F_SRC_IDENTITY`: `src_identity` is the datapath's.
pub const EVENT_F_SRC_IDENTITY: u8 = 1 << 0;
/// `KINO_EVENT_F_DST_IDENTITY`: `dst_identity` is the datapath's.
pub const EVENT_F_DST_IDENTITY: u8 = 1 << 1;
/// `KINO_EVENT_F_REPLY_KNOWN`: conntrack classified the packet.
pub const EVENT_F_REPLY_KNOWN: u8 = 1 << 2;
/// `KINO_EVENT_F_REPLY`: ... as a reply.
pub const EVENT_F_REPLY: u8 = 1 << 3;

/// `struct flow_event`: one record of `kino_events`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEventRaw {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Local endpoint of the observation point (0: unknown lxc).
    pub endpoint_id: u32,
    /// Source identity (with [`EVENT_F_SRC_IDENTITY`]).
    pub src_identity: u32,
    /// Destination identity (with [`EVENT_F_DST_IDENTITY`]).
    pub dst_identity: u32,
    /// Packet length.
    pub len: u32,
    /// Ethertype, host order.
    pub ethertype: u16,
    /// `KINO_FAMILY_*`, 0 when not IP.
    pub family: u8,
    /// IP protocol.
    pub protocol: u8,
    /// Source address (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port, network order as stored (the two bytes in order).
    pub sport: [u8; 2],
    /// Destination port, network order as stored.
    pub dport: [u8; 2],
    /// `KINO_EVENT_*` type.
    pub r#type: u8,
    /// Verdict.
    pub verdict: u8,
    /// `KINO_DROP_*`.
    pub drop_reason: u8,
    /// `KINO_DIR_*`, 0 for none.
    pub direction: u8,
    /// `KINO_OBS_*`.
    pub obs_point: u8,
    /// `KINO_MATCH_*`.
    pub match_type: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// `KINO_EVENT_F_*`.
    pub flags: u8,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 6],
}

/// `struct event_counters`: one CPU's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventCountersRaw {
    /// Events submitted to the ring.
    pub emitted: u64,
    /// Events lost: the ring was full.
    pub lost: u64,
}

// SAFETY: plain `#[repr(C)]` integers and byte arrays with no padding (checked against the
// BTF by the tests and by the size asserts below).
unsafe impl aya::Pod for FlowEventRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for EventCountersRaw {}

const _: () = assert!(size_of::<FlowEventRaw>() == 96);
const _: () = assert!(size_of::<EventCountersRaw>() == 16);
