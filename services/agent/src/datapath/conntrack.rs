//! Conntrack in the kernel: the `kino_ct` LRU hash. The datapath writes it (a connection is
//! recorded at each enforcement point that allowed its first packet — the egress of its source
//! endpoint, the ingress of its destination endpoint) and reads it to let replies through;
//! the agent only lists it (`kino bpf ct list`) and removes expired entries.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, MapError};

use super::maps::{FAMILY_IPV4, FAMILY_IPV6};
use super::policy::{DIR_EGRESS, DIR_INGRESS, Direction};

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
    /// CLOCK_MONOTONIC second at which the entry lapses.
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
// offsets checked against the object's BTF by the maps tests).
unsafe impl aya::Pod for CtKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntryRaw {}

const _: () = assert!(size_of::<CtKeyRaw>() == 40);
const _: () = assert!(size_of::<CtEntryRaw>() == 56);

/// One tracked connection at one enforcement point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// IANA protocol.
    pub protocol: u8,
    /// Source of the original direction.
    pub source: IpAddr,
    /// Source port (ICMP echo: identifier).
    pub source_port: u16,
    /// Destination of the original direction.
    pub destination: IpAddr,
    /// Destination port (ICMP echo: 0).
    pub destination_port: u16,
    /// The point that recorded it: egress of the source endpoint or ingress of the
    /// destination endpoint.
    pub direction: Direction,
    /// The local endpoint of that point.
    pub endpoint_id: u32,
    /// Identity of the source.
    pub source_identity: u32,
    /// Identity of the peer when the connection's verdict was last cached.
    pub remote_identity: u32,
    /// Time left before it lapses (it still counts during its last second).
    pub expires_in: Duration,
    /// It has lapsed: the datapath ignores it.
    pub expired: bool,
    /// Packets in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// `KINO_CT_F_*`.
    pub flags: u32,
}

impl CtEntry {
    fn from_raw(key: &CtKeyRaw, value: &CtEntryRaw, now: u32) -> Option<Self> {
        let addr = |raw: [u8; 16]| match key.family {
            FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(raw))),
            _ => None,
        };
        let direction = match key.direction {
            DIR_INGRESS => Direction::Ingress,
            DIR_EGRESS => Direction::Egress,
            _ => return None,
        };
        Some(CtEntry {
            protocol: key.protocol,
            source: addr(key.saddr)?,
            source_port: u16::from_be_bytes(key.sport),
            destination: addr(key.daddr)?,
            destination_port: u16::from_be_bytes(key.dport),
            direction,
            endpoint_id: value.endpoint_id,
            source_identity: value.src_identity,
            remote_identity: value.remote_identity,
            expires_in: Duration::from_secs(u64::from(value.expires.saturating_sub(now))),
            expired: value.expires < now,
            tx_packets: value.tx_packets,
            tx_bytes: value.tx_bytes,
            rx_packets: value.rx_packets,
            rx_bytes: value.rx_bytes,
            flags: value.flags,
        })
    }
}

/// Reading or changing the conntrack map failed.
#[derive(Debug, thiserror::Error)]
#[error("BPF map {CT_MAP}: {op} failed: {source}")]
pub struct ConntrackError {
    /// What was being done.
    pub op: String,
    /// aya's error.
    #[source]
    pub source: MapError,
}

/// The CLOCK_MONOTONIC second, the datapath's clock (`bpf_ktime_get_ns`).
pub fn monotonic_seconds() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// A listing of the conntrack map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtListing {
    /// The entries, in map order.
    pub entries: Vec<CtEntry>,
    /// More entries exist than were asked for.
    pub truncated: bool,
}

/// The node's conntrack map, typed.
pub struct ConntrackMap {
    map: HashMap<MapData, CtKeyRaw, CtEntryRaw>,
}

impl fmt::Debug for ConntrackMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConntrackMap").finish_non_exhaustive()
    }
}

impl ConntrackMap {
    /// Wraps the map taken from a loaded object.
    pub fn new(map: Map) -> Result<Self, ConntrackError> {
        Ok(ConntrackMap {
            map: HashMap::try_from(map).map_err(|source| ConntrackError {
                op: "open".into(),
                source,
            })?,
        })
    }

    /// Up to `max` live entries (expired ones are skipped), of `family` only when given
    /// (`KINO_FAMILY_*`).
    pub fn list(&self, max: usize, family: Option<u8>) -> Result<CtListing, ConntrackError> {
        let now = monotonic_seconds();
        let mut listing = CtListing::default();
        for item in self.map.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                // The LRU may evict a key between next-key and lookup.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(ConntrackError {
                        op: "iterate".into(),
                        source,
                    });
                }
            };
            if family.is_some_and(|f| f != key.family) {
                continue;
            }
            let Some(entry) = CtEntry::from_raw(&key, &value, now) else {
                continue;
            };
            if entry.expired {
                continue;
            }
            if listing.entries.len() == max {
                listing.truncated = true;
                break;
            }
            listing.entries.push(entry);
        }
        Ok(listing)
    }

    /// Removes expired entries and those `remove` selects (e.g. of a deleted endpoint);
    /// returns how many were removed.
    pub fn gc(
        &mut self,
        mut remove: impl FnMut(&CtEntry) -> bool,
    ) -> Result<usize, ConntrackError> {
        let now = monotonic_seconds();
        let mut doomed = Vec::new();
        for item in self.map.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(ConntrackError {
                        op: "iterate".into(),
                        source,
                    });
                }
            };
            match CtEntry::from_raw(&key, &value, now) {
                Some(entry) if !entry.expired && !remove(&entry) => {}
                _ => doomed.push(key),
            }
        }
        let mut removed = 0;
        for key in doomed {
            match self.map.remove(&key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(ConntrackError {
                        op: "remove an expired entry".into(),
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode() {
        let mut key = CtKeyRaw {
            sport: 40000u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            protocol: 6,
            family: FAMILY_IPV4,
            direction: DIR_EGRESS,
            ..Default::default()
        };
        key.saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        key.daddr[..4].copy_from_slice(&[10, 0, 0, 3]);
        let value = CtEntryRaw {
            expires: 1_000,
            tx_packets: 3,
            endpoint_id: 7,
            ..Default::default()
        };
        let entry = CtEntry::from_raw(&key, &value, 990).expect("decodes");
        assert_eq!(entry.source, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(entry.destination_port, 80);
        assert_eq!(entry.source_port, 40000);
        assert_eq!(entry.direction, Direction::Egress);
        assert_eq!(entry.expires_in, Duration::from_secs(10));
        assert!(!entry.expired);
        assert!(
            !CtEntry::from_raw(&key, &value, 1_000)
                .expect("decodes")
                .expired
        );
        assert!(
            CtEntry::from_raw(&key, &value, 1_001)
                .expect("decodes")
                .expired
        );
        key.direction = 9;
        assert!(CtEntry::from_raw(&key, &value, 0).is_none());
    }
}
