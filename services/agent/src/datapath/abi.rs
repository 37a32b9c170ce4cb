//! The datapath's ABI: the one Rust twin of `bpf/kino_maps.h` — every `#[repr(C)]` key and
//! value the programs and the agent share, the map names and the list of maps whose size the
//! agent sets, the flags, families, identities, directions and drop reasons with their
//! numeric values — and the compiled object itself. The tests beside it (`abi/tests.rs`)
//! prove the layouts against the object's BTF and the constants against the header: shared
//! layouts are checked, not trusted. Change the header and this module together.
//!
//! Nothing here talks to the kernel; the typed maps (`maps`, `ipcache`, `policy`,
//! `conntrack`, `events`, `lb`) and the loaders build on it, and it imports none of them. One file
//! per map (or group of maps), re-exported flat: callers write `abi::CtKeyRaw`,
//! `abi::IPCACHE_MAP`. A constant mirroring a `#define` is named as it, without `KINO_`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod conntrack;
mod endpoints;
mod events;
mod ipcache;
mod lb;
mod node_config;
mod policy;
#[cfg(test)]
mod tests;

pub use conntrack::*;
pub use endpoints::*;
pub use events::*;
pub use ipcache::*;
pub use lb::*;
pub use node_config::*;
pub use policy::*;

/// The datapath object, as compiled by build.rs from `bpf/datapath.bpf.c`.
pub static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// Every host side device of an endpoint starts with this (`lxc<hash>`, Cilium's name): how
/// the loader finds the devices its programs sit on.
pub const LXC_PREFIX: &str = "lxc";

/// `KINO_FAMILY_IPV4`.
pub const FAMILY_IPV4: u8 = 1;
/// `KINO_FAMILY_IPV6`.
pub const FAMILY_IPV6: u8 = 2;

/// Every map of the datapath, in the order they are pinned.
pub const ALL_MAPS: [&str; 10] = [
    ENDPOINTS_MAP,
    LXC_MAP,
    METRICS_MAP,
    IPCACHE_MAP,
    POLICY_MAP,
    EP_POLICY_MAP,
    CT_MAP,
    EVENTS_MAP,
    EVENT_COUNTERS_MAP,
    NODE_CONFIG_MAP,
];

/// Capacities of the maps that grow with policy, for [`super::Datapath::load_with`]. They
/// apply when a map is created; a map adopted from a previous agent keeps its capacity
/// (remove the node's pins to change it). The defaults are the header's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapCapacities {
    /// Prefixes in `kino_policy` (all endpoints; a port range takes up to 30).
    pub policy: u32,
    /// Prefixes in `kino_ipcache`.
    pub ipcache: u32,
    /// Connections in `kino_ct` (preallocated: about 150 bytes each).
    pub conntrack: u32,
    /// Bytes of the flow event ring buffer `kino_events` (a power of two, at least a page;
    /// an event takes 104).
    pub events: u32,
}

impl MapCapacities {
    /// Each sized map with its capacity (what the loader sets, and what a reused pin must
    /// have).
    pub fn sized(&self) -> [(&'static str, u32); 4] {
        [
            (POLICY_MAP, self.policy),
            (IPCACHE_MAP, self.ipcache),
            (CT_MAP, self.conntrack),
            (EVENTS_MAP, self.events),
        ]
    }
}

impl Default for MapCapacities {
    fn default() -> Self {
        MapCapacities {
            policy: POLICY_MAX_ENTRIES,
            ipcache: IPCACHE_MAX_ENTRIES,
            conntrack: CT_MAX_ENTRIES,
            events: EVENTS_RING_BYTES,
        }
    }
}

/// `union kino_addr` with the `KINO_FAMILY_*` beside it: IPv4 in the first 4 bytes (network
/// order, the rest zero) or the 16 IPv6 bytes.
pub fn addr_to_raw(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(a) => {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&a.octets());
            (FAMILY_IPV4, raw)
        }
        IpAddr::V6(a) => (FAMILY_IPV6, a.octets()),
    }
}

/// The address a `union kino_addr` of `family` holds; `None` for an unknown family.
pub fn addr_from_raw(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}
