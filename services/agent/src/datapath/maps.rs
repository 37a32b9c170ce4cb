//! The endpoint maps of the datapath, typed: upsert, remove and list endpoint entries
//! (`kino_endpoints` by IP, `kino_lxc` by lxc) and read per-endpoint counters
//! (`kino_metrics`). Their layouts are in [`super::abi`]; the policy maps, the ipcache and
//! conntrack have files of their own (`policy`, `ipcache`, `conntrack`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};

use super::abi::{
    DROP_REASONS, DropReason, ENDPOINTS_MAP, EP_F_IPV6, EndpointInfoRaw, EndpointKeyRaw,
    EndpointMetricsRaw, LXC_MAP, METRICS_MAP,
};
use super::map_access::{MapOpError, is_missing_key, map_err, open_pinned};
use crate::netlink::MacAddr;

/// Part of the ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::{ALL_MAPS, FAMILY_IPV4, FAMILY_IPV6};

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
        let open = |name| open_pinned(pin_dir, name);
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
mod tests {
    use super::*;

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
