//! The datapath's BPF maps: `#[repr(C)]` mirrors of `bpf/kino_maps.h` (checked against the
//! object's BTF by this module's tests) and typed wrappers to upsert, remove and list
//! endpoint entries and read per-endpoint counters. The policy maps are in [`super::policy`],
//! the ipcache in [`super::ipcache`], conntrack in [`super::conntrack`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap};

use crate::netlink::MacAddr;

/// Name of the IP → endpoint map (pinned under the node's pin directory).
pub const ENDPOINTS_MAP: &str = "kino_endpoints";
/// Name of the lxc ifindex → endpoint map.
pub const LXC_MAP: &str = "kino_lxc";
/// Name of the per-CPU endpoint id → counters map.
pub const METRICS_MAP: &str = "kino_metrics";
/// Every map of the datapath, in the order they are pinned.
pub const ALL_MAPS: [&str; 9] = [
    ENDPOINTS_MAP,
    LXC_MAP,
    METRICS_MAP,
    super::ipcache::IPCACHE_MAP,
    super::policy::POLICY_MAP,
    super::policy::EP_POLICY_MAP,
    super::conntrack::CT_MAP,
    super::events::EVENTS_MAP,
    super::events::EVENT_COUNTERS_MAP,
];

/// `KINO_MAX_ENDPOINTS`: capacity of each map.
pub const MAX_ENDPOINTS: u32 = 16384;
/// `KINO_FAMILY_IPV4`.
pub const FAMILY_IPV4: u8 = 1;
/// `KINO_FAMILY_IPV6`.
pub const FAMILY_IPV6: u8 = 2;
/// `KINO_EP_F_IPV6`: `EndpointInfoRaw::ipv6` is set.
pub const EP_F_IPV6: u32 = 1;
/// `KINO_DROP_REASONS`: length of `EndpointMetricsRaw::drops`.
pub const DROP_REASONS: usize = 8;

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
const _: () = assert!(size_of::<EndpointMetricsRaw>() == 112);

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
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 7] = [
        Self::UnknownEndpoint,
        Self::InvalidPacket,
        Self::SpoofedSource,
        Self::UnsupportedL3,
        Self::PolicyDenied,
        Self::CtInvalid,
        Self::PolicyDeniedIngress,
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
        }
    }
}

/// An endpoint as the datapath knows it (one entry per IP in `kino_endpoints`, one per lxc in
/// `kino_lxc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    /// The agent's endpoint id (0 is reserved for "unknown").
    pub id: u32,
    /// Security identity (0 until issue #5 assigns them).
    pub identity: u32,
    /// The endpoint's IPv4 address: its only legal IPv4 source.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address, if it has one.
    pub ipv6: Option<Ipv6Addr>,
    /// ifindex of the lxc (host side) in the node's netns.
    pub lxc_ifindex: u32,
    /// MAC of the lxc.
    pub lxc_mac: MacAddr,
    /// MAC of the pod side (eth0).
    pub pod_mac: MacAddr,
}

impl EndpointEntry {
    /// The map value of this entry.
    pub fn to_raw(&self) -> EndpointInfoRaw {
        EndpointInfoRaw {
            ifindex: self.lxc_ifindex,
            endpoint_id: self.id,
            identity: self.identity,
            flags: if self.ipv6.is_some() { EP_F_IPV6 } else { 0 },
            ipv4: self.ipv4.octets(),
            ipv6: self.ipv6.map(|ip| ip.octets()).unwrap_or_default(),
            mac: self.pod_mac.0,
            node_mac: self.lxc_mac.0,
        }
    }

    /// The entry a map value describes.
    pub fn from_raw(raw: &EndpointInfoRaw) -> Self {
        Self {
            id: raw.endpoint_id,
            identity: raw.identity,
            ipv4: Ipv4Addr::from(raw.ipv4),
            ipv6: (raw.flags & EP_F_IPV6 != 0).then(|| Ipv6Addr::from(raw.ipv6)),
            lxc_ifindex: raw.ifindex,
            lxc_mac: MacAddr(raw.node_mac),
            pod_mac: MacAddr(raw.mac),
        }
    }
}

/// An endpoint's counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EndpointCounters {
    /// Packets the pod sent.
    pub from_container_packets: u64,
    /// Bytes the pod sent.
    pub from_container_bytes: u64,
    /// Packets delivered to the pod (redirected from a local pod, or through the stack).
    pub to_container_packets: u64,
    /// Bytes delivered to the pod.
    pub to_container_bytes: u64,
    /// Packets the pod sent that went straight to a local pod (bpf_redirect_peer).
    pub local_redirect_packets: u64,
    /// Packets the pod sent that were passed to the node's stack.
    pub to_stack_packets: u64,
    /// Drops, indexed by [`DropReason`] as usize.
    pub drops: [u64; DROP_REASONS],
}

impl EndpointCounters {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    fn add(&mut self, raw: &EndpointMetricsRaw) {
        self.from_container_packets += raw.from_container_packets;
        self.from_container_bytes += raw.from_container_bytes;
        self.to_container_packets += raw.to_container_packets;
        self.to_container_bytes += raw.to_container_bytes;
        self.local_redirect_packets += raw.local_redirect_packets;
        self.to_stack_packets += raw.to_stack_packets;
        for (sum, value) in self.drops.iter_mut().zip(raw.drops) {
            *sum += value;
        }
    }
}

/// Reading or writing a datapath map failed.
#[derive(Debug, thiserror::Error)]
#[error("BPF map {map}: {op} failed: {source}")]
pub struct MapOpError {
    /// The map's name.
    pub map: &'static str,
    /// What was being done, naming the entry.
    pub op: String,
    /// aya's error.
    #[source]
    pub source: MapError,
}

fn map_err(map: &'static str, op: impl Into<String>) -> impl FnOnce(MapError) -> MapOpError {
    let op = op.into();
    move |source| MapOpError { map, op, source }
}

fn is_missing_key(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The endpoint maps of one node, typed.
pub struct EndpointMaps {
    endpoints: HashMap<MapData, EndpointKeyRaw, EndpointInfoRaw>,
    lxc: HashMap<MapData, u32, EndpointInfoRaw>,
    metrics: PerCpuHashMap<MapData, u32, EndpointMetricsRaw>,
}

impl std::fmt::Debug for EndpointMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointMaps").finish_non_exhaustive()
    }
}

impl EndpointMaps {
    /// Wraps the maps taken from a loaded object (checks their key and value sizes).
    pub fn new(endpoints: Map, lxc: Map, metrics: Map) -> Result<Self, MapOpError> {
        Ok(Self {
            endpoints: HashMap::try_from(endpoints).map_err(map_err(ENDPOINTS_MAP, "open"))?,
            lxc: HashMap::try_from(lxc).map_err(map_err(LXC_MAP, "open"))?,
            metrics: PerCpuHashMap::try_from(metrics).map_err(map_err(METRICS_MAP, "open"))?,
        })
    }

    /// Opens the maps pinned in `pin_dir` (`/sys/fs/bpf/kino/<node>`) without loading any
    /// program: for tools that only read them (`kino bpf endpoint list`).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapOpError> {
        let open = |name: &'static str| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(map_err(name, format!("open pin {}", path.display())))?;
            Map::from_map_data(data).map_err(map_err(name, "open"))
        };
        Self::new(open(ENDPOINTS_MAP)?, open(LXC_MAP)?, open(METRICS_MAP)?)
    }

    /// Adds or replaces an endpoint: its lxc entry first, then one entry per IP, so the
    /// source check knows the endpoint before any packet can be delivered to it. On failure,
    /// what this call wrote is removed again.
    pub fn upsert(&mut self, entry: &EndpointEntry) -> Result<(), MapOpError> {
        let raw = entry.to_raw();
        let mut keys = vec![EndpointKeyRaw::ipv4(entry.ipv4)];
        keys.extend(entry.ipv6.map(EndpointKeyRaw::ipv6));
        self.lxc.insert(entry.lxc_ifindex, raw, 0).map_err(map_err(
            LXC_MAP,
            format!("insert lxc #{}", entry.lxc_ifindex),
        ))?;
        for (done, key) in keys.iter().enumerate() {
            if let Err(source) = self.endpoints.insert(*key, raw, 0) {
                for written in &keys[..done] {
                    let _ = self.endpoints.remove(written);
                }
                let _ = self.lxc.remove(&entry.lxc_ifindex);
                return Err(MapOpError {
                    map: ENDPOINTS_MAP,
                    op: format!("insert endpoint {} ({})", entry.id, entry.ipv4),
                    source,
                });
            }
        }
        Ok(())
    }

    /// The endpoint holding `ip`, if any.
    pub fn get(&self, ip: Ipv4Addr) -> Result<Option<EndpointEntry>, MapOpError> {
        self.get_ip(ip.into())
    }

    /// The endpoint holding `ip` (IPv4 or IPv6), if any.
    pub fn get_ip(&self, ip: std::net::IpAddr) -> Result<Option<EndpointEntry>, MapOpError> {
        let key = match ip {
            std::net::IpAddr::V4(v4) => EndpointKeyRaw::ipv4(v4),
            std::net::IpAddr::V6(v6) => EndpointKeyRaw::ipv6(v6),
        };
        match self.endpoints.get(&key, 0) {
            Ok(raw) => Ok(Some(EndpointEntry::from_raw(&raw))),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(map_err(ENDPOINTS_MAP, format!("lookup {ip}"))(e)),
        }
    }

    /// The endpoint on lxc `ifindex`, if any.
    pub fn get_by_lxc(&self, ifindex: u32) -> Result<Option<EndpointEntry>, MapOpError> {
        match self.lxc.get(&ifindex, 0) {
            Ok(raw) => Ok(Some(EndpointEntry::from_raw(&raw))),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(map_err(LXC_MAP, format!("lookup lxc #{ifindex}"))(e)),
        }
    }

    /// Removes the endpoint holding `ip`: its IP entries, its lxc entry (if it still names
    /// this endpoint) and its counters. Returns what was removed; `None` if it was not there.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<Option<EndpointEntry>, MapOpError> {
        let Some(entry) = self.get(ip)? else {
            return Ok(None);
        };
        self.remove_entry(&entry)?;
        Ok(Some(entry))
    }

    /// Removes everything `entry` wrote; entries already gone are fine.
    pub fn remove_entry(&mut self, entry: &EndpointEntry) -> Result<(), MapOpError> {
        let mut keys = vec![EndpointKeyRaw::ipv4(entry.ipv4)];
        keys.extend(entry.ipv6.map(EndpointKeyRaw::ipv6));
        for key in keys {
            if let Err(e) = self.endpoints.remove(&key)
                && !is_missing_key(&e)
            {
                return Err(map_err(
                    ENDPOINTS_MAP,
                    format!("remove endpoint {}", entry.id),
                )(e));
            }
        }
        if self
            .get_by_lxc(entry.lxc_ifindex)?
            .is_some_and(|e| e.id == entry.id)
            && let Err(e) = self.lxc.remove(&entry.lxc_ifindex)
            && !is_missing_key(&e)
        {
            return Err(map_err(
                LXC_MAP,
                format!("remove lxc #{}", entry.lxc_ifindex),
            )(e));
        }
        if let Err(e) = self.metrics.remove(&entry.id)
            && !is_missing_key(&e)
        {
            return Err(map_err(
                METRICS_MAP,
                format!("remove counters of {}", entry.id),
            )(e));
        }
        Ok(())
    }

    /// Every endpoint, once each (from `kino_lxc`), sorted by id.
    pub fn list(&self) -> Result<Vec<EndpointEntry>, MapOpError> {
        let mut entries = Vec::new();
        for item in self.lxc.iter() {
            let (_, raw) = item.map_err(map_err(LXC_MAP, "iterate"))?;
            entries.push(EndpointEntry::from_raw(&raw));
        }
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }

    /// Every IP entry of `kino_endpoints` (IPv4 and IPv6), for map dumps.
    pub fn list_ips(&self) -> Result<Vec<(std::net::IpAddr, EndpointEntry)>, MapOpError> {
        let mut entries = Vec::new();
        for item in self.endpoints.iter() {
            let (key, raw) = item.map_err(map_err(ENDPOINTS_MAP, "iterate"))?;
            let ip = if key.family == FAMILY_IPV6 {
                Ipv6Addr::from(key.addr).into()
            } else {
                Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]).into()
            };
            entries.push((ip, EndpointEntry::from_raw(&raw)));
        }
        entries.sort_by_key(|(ip, _)| *ip);
        Ok(entries)
    }

    /// The counters of endpoint `id` summed over CPUs (zeros if it has seen no packet yet).
    /// Id 0 holds drops of packets on lxcs without an endpoint entry.
    pub fn counters(&self, id: u32) -> Result<EndpointCounters, MapOpError> {
        let mut counters = EndpointCounters::default();
        match self.metrics.get(&id, 0) {
            Ok(per_cpu) => {
                for raw in per_cpu.iter() {
                    counters.add(raw);
                }
                Ok(counters)
            }
            Err(e) if is_missing_key(&e) => Ok(counters),
            Err(e) => Err(map_err(METRICS_MAP, format!("lookup counters of {id}"))(e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::mem::offset_of;

    /// A minimal reader of BTF (the kernel's format, little endian): struct and union names,
    /// sizes and member offsets — all this test needs.
    pub(crate) mod btf {
        use std::collections::HashMap;

        pub struct Member {
            pub name: String,
            pub bit_offset: u32,
        }

        pub struct Composite {
            pub size: u32,
            pub members: Vec<Member>,
        }

        fn u32_at(data: &[u8], at: usize) -> u32 {
            u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
        }

        fn string_at(strings: &[u8], offset: u32) -> String {
            let tail = &strings[offset as usize..];
            let end = tail.iter().position(|&b| b == 0).expect("NUL-terminated");
            String::from_utf8_lossy(&tail[..end]).into_owned()
        }

        /// Named structs of the `.BTF` section `data`, by name.
        pub fn structs(data: &[u8]) -> HashMap<String, Composite> {
            assert_eq!(u16::from_le_bytes([data[0], data[1]]), 0xeb9f, "BTF magic");
            let header_len = u32_at(data, 4) as usize;
            let (type_off, type_len) = (u32_at(data, 8) as usize, u32_at(data, 12) as usize);
            let (str_off, str_len) = (u32_at(data, 16) as usize, u32_at(data, 20) as usize);
            let types = &data[header_len + type_off..header_len + type_off + type_len];
            let strings = &data[header_len + str_off..header_len + str_off + str_len];
            let mut found = HashMap::new();
            let mut at = 0;
            while at < types.len() {
                let name_off = u32_at(types, at);
                let info = u32_at(types, at + 4);
                let size = u32_at(types, at + 8);
                at += 12;
                let vlen = (info & 0xffff) as usize;
                let kind = (info >> 24) & 0x1f;
                let kflag = info >> 31;
                match kind {
                    // struct, union: vlen members of {name_off, type, offset}
                    4 | 5 => {
                        let members = (0..vlen)
                            .map(|i| {
                                let m = at + i * 12;
                                let offset = u32_at(types, m + 8);
                                Member {
                                    name: string_at(strings, u32_at(types, m)),
                                    bit_offset: if kflag == 1 {
                                        offset & 0xff_ffff
                                    } else {
                                        offset
                                    },
                                }
                            })
                            .collect();
                        if kind == 4 && name_off != 0 {
                            found.insert(string_at(strings, name_off), Composite { size, members });
                        }
                        at += vlen * 12;
                    }
                    1 | 14 | 17 => at += 4,     // int, var, decl_tag
                    3 => at += 12,              // array
                    6 | 13 => at += vlen * 8,   // enum, func_proto
                    15 | 19 => at += vlen * 12, // datasec, enum64
                    2 | 7..=12 | 16 | 18 => {}  // no trailing data
                    other => panic!("unknown BTF kind {other}"),
                }
            }
            found
        }
    }

    pub(crate) fn object_btf() -> std::collections::HashMap<String, btf::Composite> {
        use object::{Object, ObjectSection};
        let file = object::File::parse(super::super::loader::DATAPATH_OBJECT)
            .expect("the embedded object is ELF");
        let section = file
            .section_by_name(".BTF")
            .expect("the object has BTF (-g)");
        btf::structs(section.data().expect("BTF section data"))
    }

    pub(crate) fn assert_layout(
        structs: &std::collections::HashMap<String, btf::Composite>,
        name: &str,
        size: usize,
        members: &[(&str, usize)],
    ) {
        let found = structs
            .get(name)
            .unwrap_or_else(|| panic!("struct {name} not in the object's BTF"));
        assert_eq!(found.size as usize, size, "size of struct {name}");
        let named: Vec<_> = found
            .members
            .iter()
            .filter(|m| !m.name.is_empty())
            .collect();
        assert_eq!(
            named.len() + found.members.iter().filter(|m| m.name.is_empty()).count(),
            found.members.len()
        );
        for (member, offset) in members {
            let in_btf = found
                .members
                .iter()
                .find(|m| m.name == *member)
                .unwrap_or_else(|| panic!("{name}.{member} not in the BTF"));
            assert_eq!(
                in_btf.bit_offset as usize,
                offset * 8,
                "offset of {name}.{member}"
            );
        }
        let mirrored: Vec<&str> = members.iter().map(|(m, _)| *m).collect();
        for member in &found.members {
            assert!(
                member.name.is_empty() || mirrored.contains(&member.name.as_str()),
                "{name}.{} is in the C header but not mirrored in Rust",
                member.name
            );
        }
    }

    #[test]
    fn rust_mirrors_match_the_object_btf() {
        let structs = object_btf();
        assert_layout(
            &structs,
            "endpoint_key",
            size_of::<EndpointKeyRaw>(),
            &[
                ("family", offset_of!(EndpointKeyRaw, family)),
                ("pad", offset_of!(EndpointKeyRaw, pad)),
            ],
        );
        // The anonymous union {ip4, ip6} is `addr` at offset 0.
        let key = &structs["endpoint_key"];
        assert_eq!(key.members[0].name, "");
        assert_eq!(
            key.members[0].bit_offset as usize,
            offset_of!(EndpointKeyRaw, addr) * 8
        );
        assert_layout(
            &structs,
            "endpoint_info",
            size_of::<EndpointInfoRaw>(),
            &[
                ("ifindex", offset_of!(EndpointInfoRaw, ifindex)),
                ("endpoint_id", offset_of!(EndpointInfoRaw, endpoint_id)),
                ("identity", offset_of!(EndpointInfoRaw, identity)),
                ("flags", offset_of!(EndpointInfoRaw, flags)),
                ("ipv4", offset_of!(EndpointInfoRaw, ipv4)),
                ("ipv6", offset_of!(EndpointInfoRaw, ipv6)),
                ("mac", offset_of!(EndpointInfoRaw, mac)),
                ("node_mac", offset_of!(EndpointInfoRaw, node_mac)),
            ],
        );
        assert_layout(
            &structs,
            "endpoint_metrics",
            size_of::<EndpointMetricsRaw>(),
            &[
                (
                    "from_container_packets",
                    offset_of!(EndpointMetricsRaw, from_container_packets),
                ),
                (
                    "from_container_bytes",
                    offset_of!(EndpointMetricsRaw, from_container_bytes),
                ),
                (
                    "to_container_packets",
                    offset_of!(EndpointMetricsRaw, to_container_packets),
                ),
                (
                    "to_container_bytes",
                    offset_of!(EndpointMetricsRaw, to_container_bytes),
                ),
                (
                    "local_redirect_packets",
                    offset_of!(EndpointMetricsRaw, local_redirect_packets),
                ),
                (
                    "to_stack_packets",
                    offset_of!(EndpointMetricsRaw, to_stack_packets),
                ),
                ("drops", offset_of!(EndpointMetricsRaw, drops)),
            ],
        );
        policy_layouts_match(&structs);
    }

    /// The policy, ipcache and conntrack structs. LPM trie keys start with `prefixlen`,
    /// which the Rust mirrors leave to aya's `lpm_trie::Key`: their members sit 4 bytes on.
    fn policy_layouts_match(structs: &std::collections::HashMap<String, btf::Composite>) {
        use super::super::conntrack::{CtEntryRaw, CtKeyRaw};
        use super::super::ipcache::{IpcacheEntryRaw, IpcacheKeyRaw};
        use super::super::policy::{EndpointPolicyRaw, PolicyEntryRaw, PolicyKeyRaw};
        const LPM: usize = 4;
        assert_layout(
            structs,
            "ipcache_key",
            LPM + size_of::<IpcacheKeyRaw>(),
            &[
                ("prefixlen", 0),
                ("family", LPM + offset_of!(IpcacheKeyRaw, family)),
                ("pad", LPM + offset_of!(IpcacheKeyRaw, pad)),
                ("addr", LPM + offset_of!(IpcacheKeyRaw, addr)),
            ],
        );
        assert_layout(
            structs,
            "ipcache_entry",
            size_of::<IpcacheEntryRaw>(),
            &[
                ("identity", offset_of!(IpcacheEntryRaw, identity)),
                ("flags", offset_of!(IpcacheEntryRaw, flags)),
                (
                    "tunnel_endpoint",
                    offset_of!(IpcacheEntryRaw, tunnel_endpoint),
                ),
            ],
        );
        assert_layout(
            structs,
            "policy_key",
            LPM + size_of::<PolicyKeyRaw>(),
            &[
                ("prefixlen", 0),
                ("endpoint_id", LPM + offset_of!(PolicyKeyRaw, endpoint_id)),
                (
                    "remote_identity",
                    LPM + offset_of!(PolicyKeyRaw, remote_identity),
                ),
                ("direction", LPM + offset_of!(PolicyKeyRaw, direction)),
                ("protocol", LPM + offset_of!(PolicyKeyRaw, protocol)),
                ("dport", LPM + offset_of!(PolicyKeyRaw, dport)),
                ("pad", LPM + offset_of!(PolicyKeyRaw, pad)),
            ],
        );
        assert_layout(
            structs,
            "policy_entry",
            size_of::<PolicyEntryRaw>(),
            &[
                ("verdict", offset_of!(PolicyEntryRaw, verdict)),
                ("pad", offset_of!(PolicyEntryRaw, pad)),
                ("port", offset_of!(PolicyEntryRaw, port)),
                ("end_port", offset_of!(PolicyEntryRaw, end_port)),
                ("pad2", offset_of!(PolicyEntryRaw, pad2)),
                ("packets", offset_of!(PolicyEntryRaw, packets)),
                ("bytes", offset_of!(PolicyEntryRaw, bytes)),
            ],
        );
        assert_layout(
            structs,
            "endpoint_policy",
            size_of::<EndpointPolicyRaw>(),
            &[
                ("flags", offset_of!(EndpointPolicyRaw, flags)),
                ("generation", offset_of!(EndpointPolicyRaw, generation)),
                ("revision", offset_of!(EndpointPolicyRaw, revision)),
            ],
        );
        assert_layout(
            structs,
            "ct_key",
            size_of::<CtKeyRaw>(),
            &[
                ("saddr", offset_of!(CtKeyRaw, saddr)),
                ("daddr", offset_of!(CtKeyRaw, daddr)),
                ("sport", offset_of!(CtKeyRaw, sport)),
                ("dport", offset_of!(CtKeyRaw, dport)),
                ("protocol", offset_of!(CtKeyRaw, protocol)),
                ("family", offset_of!(CtKeyRaw, family)),
                ("direction", offset_of!(CtKeyRaw, direction)),
                ("pad", offset_of!(CtKeyRaw, pad)),
            ],
        );
        assert_layout(
            structs,
            "ct_entry",
            size_of::<CtEntryRaw>(),
            &[
                ("tx_packets", offset_of!(CtEntryRaw, tx_packets)),
                ("tx_bytes", offset_of!(CtEntryRaw, tx_bytes)),
                ("rx_packets", offset_of!(CtEntryRaw, rx_packets)),
                ("rx_bytes", offset_of!(CtEntryRaw, rx_bytes)),
                ("expires", offset_of!(CtEntryRaw, expires)),
                ("flags", offset_of!(CtEntryRaw, flags)),
                ("src_identity", offset_of!(CtEntryRaw, src_identity)),
                ("endpoint_id", offset_of!(CtEntryRaw, endpoint_id)),
                (
                    "policy_generation",
                    offset_of!(CtEntryRaw, policy_generation),
                ),
                ("remote_identity", offset_of!(CtEntryRaw, remote_identity)),
            ],
        );
    }

    #[test]
    fn header_constants_match() {
        let header = include_str!("../../bpf/kino_maps.h");
        let define = |name: &str| -> String {
            let line = header
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("#define {name} not in kino_maps.h"));
            line.split_whitespace().nth(2).expect("a value").to_owned()
        };
        assert_eq!(define("KINO_MAX_ENDPOINTS"), MAX_ENDPOINTS.to_string());
        assert_eq!(define("KINO_FAMILY_IPV4"), FAMILY_IPV4.to_string());
        assert_eq!(define("KINO_FAMILY_IPV6"), FAMILY_IPV6.to_string());
        assert_eq!(define("KINO_DROP_REASONS"), DROP_REASONS.to_string());
        {
            use super::super::{conntrack as ct, ipcache as ipc, policy as p};
            for (name, value) in [
                ("KINO_POLICY_MAX_ENTRIES", p::POLICY_MAX_ENTRIES),
                ("KINO_IPCACHE_MAX_ENTRIES", ipc::IPCACHE_MAX_ENTRIES),
                ("KINO_CT_MAX_ENTRIES", ct::CT_MAX_ENTRIES),
                ("KINO_MAX_ENDPOINT_ID", p::MAX_ENDPOINT_ID),
                ("KINO_IDENTITY_UNKNOWN", ipc::IDENTITY_UNKNOWN),
                ("KINO_IDENTITY_HOST", ipc::IDENTITY_HOST),
                ("KINO_IDENTITY_WORLD", ipc::IDENTITY_WORLD),
                ("KINO_IDENTITY_REMOTE_NODE", ipc::IDENTITY_REMOTE_NODE),
                ("KINO_DIR_INGRESS", u32::from(p::DIR_INGRESS)),
                ("KINO_DIR_EGRESS", u32::from(p::DIR_EGRESS)),
                ("KINO_VERDICT_ALLOW", u32::from(p::VERDICT_ALLOW)),
                ("KINO_VERDICT_DENY", u32::from(p::VERDICT_DENY)),
                ("KINO_IPCACHE_PREFIX_STATIC", ipc::PREFIX_STATIC),
                ("KINO_POLICY_PREFIX_ANY_PROTO", p::PREFIX_ANY_PROTO),
                ("KINO_POLICY_PREFIX_ANY_PORT", p::PREFIX_ANY_PORT),
                ("KINO_POLICY_PREFIX_FULL", p::PREFIX_FULL),
            ] {
                // Large numbers are written without separators in C.
                assert_eq!(define(name), value.to_string(), "{name}");
            }
            for (name, bit) in [
                ("KINO_IPCACHE_F_TUNNEL_IPV6", ipc::IPCACHE_F_TUNNEL_IPV6),
                ("KINO_POLICY_F_INGRESS", p::POLICY_F_INGRESS),
                ("KINO_POLICY_F_EGRESS", p::POLICY_F_EGRESS),
                ("KINO_CT_F_TX_CLOSING", ct::CT_F_TX_CLOSING),
                ("KINO_CT_F_RX_CLOSING", ct::CT_F_RX_CLOSING),
                ("KINO_CT_F_SEEN_NON_SYN", ct::CT_F_SEEN_NON_SYN),
            ] {
                let line = header
                    .lines()
                    .find(|l| l.starts_with(&format!("#define {name} ")))
                    .unwrap_or_else(|| panic!("#define {name} not in kino_maps.h"));
                let text = line[format!("#define {name} ").len()..]
                    .split("/*")
                    .next()
                    .expect("a value")
                    .trim();
                let shift: u32 = text
                    .strip_prefix("(1U <<")
                    .and_then(|t| t.strip_suffix(')'))
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name} = {text}: expected (1U << n)"));
                assert_eq!(1 << shift, bit, "{name}");
            }
        }
        for reason in DropReason::ALL {
            assert_eq!(
                define(&format!("KINO_DROP_{}", reason.as_str())),
                (reason as usize).to_string(),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn entries_round_trip_through_the_raw_layout() {
        let entry = EndpointEntry {
            id: 7,
            identity: 256,
            ipv4: Ipv4Addr::new(10, 200, 0, 5),
            ipv6: Some("fd00::5".parse().expect("v6")),
            lxc_ifindex: 42,
            lxc_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            pod_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        };
        let raw = entry.to_raw();
        assert_eq!(raw.ipv4, [10, 200, 0, 5]);
        assert_eq!(raw.flags, EP_F_IPV6);
        assert_eq!(EndpointEntry::from_raw(&raw), entry);
        let v4_only = EndpointEntry {
            ipv6: None,
            ..entry
        };
        assert_eq!(EndpointEntry::from_raw(&v4_only.to_raw()), v4_only);
        assert_eq!(
            EndpointKeyRaw::ipv4(Ipv4Addr::new(1, 2, 3, 4)).addr[..5],
            [1, 2, 3, 4, 0]
        );
    }
}
