//! The endpoint maps' ABI: `kino_endpoints` (IP → endpoint), `kino_lxc` (lxc ifindex →
//! endpoint) and the per-CPU `kino_metrics` (endpoint id → counters), with the drop reasons
//! that index the counters' `drops`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{FAMILY_IPV4, FAMILY_IPV6};

/// Name of the IP → endpoint map (pinned under the node's pin directory).
pub const ENDPOINTS_MAP: &str = "kino_endpoints";
/// Name of the lxc ifindex → endpoint map.
pub const LXC_MAP: &str = "kino_lxc";
/// Name of the per-CPU endpoint id → counters map.
pub const METRICS_MAP: &str = "kino_metrics";

/// `KINO_MAX_ENDPOINTS`: capacity of each map.
pub const MAX_ENDPOINTS: u32 = 16384;
/// `KINO_EP_F_IPV6`: `EndpointInfoRaw::ipv6` is set.
pub const EP_F_IPV6: u32 = 1;
/// `KINO_DROP_REASONS`: length of `EndpointMetricsRaw::drops`.
pub const DROP_REASONS: usize = 16;

/// `struct endpoint_key`: one IP address of a local endpoint (the union is `addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointKeyRaw {
    /// IPv4 in the first 4 bytes (network order) or the 16 IPv6 bytes; the rest zero.
    pub addr: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
}

impl EndpointKeyRaw {
    /// The key of an IPv4 address.
    pub fn ipv4(ip: Ipv4Addr) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&ip.octets());
        Self {
            addr,
            family: FAMILY_IPV4,
            pad: [0; 3],
        }
    }

    /// The key of an IPv6 address.
    pub fn ipv6(ip: Ipv6Addr) -> Self {
        Self {
            addr: ip.octets(),
            family: FAMILY_IPV6,
            pad: [0; 3],
        }
    }
}

/// `struct endpoint_info`: value of `kino_endpoints` and `kino_lxc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfoRaw {
    /// Host side (lxc) ifindex.
    pub ifindex: u32,
    /// Endpoint id (key of `kino_metrics`).
    pub endpoint_id: u32,
    /// Security identity.
    pub identity: u32,
    /// `KINO_EP_F_*`.
    pub flags: u32,
    /// IPv4 address, network byte order as stored in memory (the octets in order).
    pub ipv4: [u8; 4],
    /// IPv6 address when [`EP_F_IPV6`].
    pub ipv6: [u8; 16],
    /// Pod side MAC.
    pub mac: [u8; 6],
    /// lxc MAC.
    pub node_mac: [u8; 6],
}

/// `struct endpoint_metrics`: one CPU's counters of one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointMetricsRaw {
    /// Packets the pod sent.
    pub from_container_packets: u64,
    /// Bytes the pod sent.
    pub from_container_bytes: u64,
    /// Packets delivered to the pod.
    pub to_container_packets: u64,
    /// Bytes delivered to the pod.
    pub to_container_bytes: u64,
    /// Packets the pod sent that were redirected to a local pod.
    pub local_redirect_packets: u64,
    /// Packets the pod sent that were passed to the node's stack.
    pub to_stack_packets: u64,
    /// Drops by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

// SAFETY: plain `#[repr(C)]` integers and byte arrays with no padding (checked by the tests
// against the BTF and by the compiler's size asserts below).
unsafe impl aya::Pod for EndpointKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointInfoRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointMetricsRaw {}

const _: () = assert!(size_of::<EndpointKeyRaw>() == 20);
const _: () = assert!(size_of::<EndpointInfoRaw>() == 48);
const _: () = assert!(size_of::<EndpointMetricsRaw>() == 176);

/// Why the datapath dropped a packet (`KINO_DROP_*`, the index into the drop counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A packet on an lxc that has no endpoint entry (counted under endpoint id 0).
    UnknownEndpoint = 0,
    /// Truncated headers.
    InvalidPacket = 1,
    /// The source address is not the endpoint's own.
    SpoofedSource = 2,
    /// Neither IPv4, IPv6 nor ARP.
    UnsupportedL3 = 3,
    /// The endpoint's egress policy denied a packet it sent.
    PolicyDenied = 4,
    /// Invalid conntrack state (reserved).
    CtInvalid = 5,
    /// The endpoint's ingress policy denied a packet to it.
    PolicyDeniedIngress = 6,
    /// A packet from the overlay whose tunnel key could not be read (counted under id 0).
    ErrorRetrievingTunnelKey = 7,
    /// A packet from the overlay whose outer source is not a known node's underlay address.
    UnknownSender = 8,
    /// A packet from the overlay whose VNI is neither a cluster identity nor remote-node.
    InvalidIdentity = 9,
    /// A packet the stack routed to the overlay for an address no node hosts.
    NoTunnelEndpoint = 10,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 11] = [
        Self::UnknownEndpoint,
        Self::InvalidPacket,
        Self::SpoofedSource,
        Self::UnsupportedL3,
        Self::PolicyDenied,
        Self::CtInvalid,
        Self::PolicyDeniedIngress,
        Self::ErrorRetrievingTunnelKey,
        Self::UnknownSender,
        Self::InvalidIdentity,
        Self::NoTunnelEndpoint,
    ];

    /// The name operators see (Cilium's style).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownEndpoint => "UNKNOWN_ENDPOINT",
            Self::InvalidPacket => "INVALID_PACKET",
            Self::SpoofedSource => "SPOOFED_SOURCE",
            Self::UnsupportedL3 => "UNSUPPORTED_L3",
            Self::PolicyDenied => "POLICY_DENIED",
            Self::CtInvalid => "CT_INVALID",
            Self::PolicyDeniedIngress => "POLICY_DENIED_INGRESS",
            Self::ErrorRetrievingTunnelKey => "ERROR_RETRIEVING_TUNNEL_KEY",
            Self::UnknownSender => "UNKNOWN_SENDER",
            Self::InvalidIdentity => "INVALID_IDENTITY",
            Self::NoTunnelEndpoint => "NO_TUNNEL_ENDPOINT",
        }
    }
}
