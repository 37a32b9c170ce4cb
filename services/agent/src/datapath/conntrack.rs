//! Conntrack in the kernel: the `kino_ct` LRU hash. The datapath writes it (a connection is
//! recorded at each enforcement point that allowed its first packet — the egress of its source
//! endpoint, the ingress of its destination endpoint) and reads it to let replies through;
//! the agent lists it (`kino bpf ct list`), removes the connections of a deleted endpoint's
//! addresses, and a GC task removes expired entries. Expiry times are CLOCK_MONOTONIC_COARSE
//! seconds on both sides: the datapath's `bpf_ktime_get_coarse_ns()` is that clock.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData, MapError};
use aya::sys::SyscallError;

use super::abi::{Direction, addr_from_raw};

/// Conntrack's ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::{
    CT_F_RX_CLOSING, CT_F_SEEN_NON_SYN, CT_F_TX_CLOSING, CT_MAP, CT_MAX_ENTRIES, CtEntryRaw,
    CtKeyRaw,
};

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
        let (source, destination) = key_addresses(key)?;
        let direction = Direction::from_raw(key.direction)?;
        Some(CtEntry {
            protocol: key.protocol,
            source,
            source_port: u16::from_be_bytes(key.sport),
            destination,
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

impl ConntrackError {
    /// A task working on the map ended without an answer (it panicked or was cancelled).
    pub fn task(error: &tokio::task::JoinError) -> Self {
        ConntrackError {
            op: "a task on the map".into(),
            source: MapError::SyscallError(SyscallError {
                call: "spawn_blocking",
                io_error: std::io::Error::other(error.to_string()),
            }),
        }
    }
}

/// The CLOCK_MONOTONIC_COARSE second, the datapath's clock (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_seconds() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
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
    /// The map's fd again, for the batch calls aya 0.14 lacks.
    fd: OwnedFd,
}

impl fmt::Debug for ConntrackMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConntrackMap").finish_non_exhaustive()
    }
}

impl ConntrackMap {
    /// Wraps the map taken from a loaded object.
    pub fn new(map: Map) -> Result<Self, ConntrackError> {
        let fd = match &map {
            Map::LruHashMap(data) | Map::HashMap(data) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|io_error| ConntrackError {
                    op: "duplicate the map's fd".into(),
                    source: MapError::SyscallError(SyscallError {
                        call: "fcntl",
                        io_error,
                    }),
                })?,
            // Not a hash map: the conversion below says so.
            other => {
                return Err(ConntrackError {
                    op: "open".into(),
                    source: HashMap::<_, CtKeyRaw, CtEntryRaw>::try_from(other)
                        .err()
                        .unwrap_or(MapError::InvalidMapType { map_type: 0 }),
                });
            }
        };
        Ok(ConntrackMap {
            map: HashMap::try_from(map).map_err(|source| ConntrackError {
                op: "open".into(),
                source,
            })?,
            fd,
        })
    }

    /// Calls `each` with every entry of the map, [`BATCH`] at a time (`BPF_MAP_LOOKUP_BATCH`:
    /// one syscall per chunk where iterating costs two per entry — 100 000 entries are
    /// scanned in a few ms instead of ~80).
    fn scan(&self, mut each: impl FnMut(&[CtKeyRaw], &[CtEntryRaw])) -> Result<(), ConntrackError> {
        let mut keys = vec![CtKeyRaw::default(); BATCH as usize];
        let mut values = vec![CtEntryRaw::default(); BATCH as usize];
        // A hash map's batch cursor is a bucket index (u32); none to start from the first.
        let (mut cursor, mut next) = (0u32, 0u32);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    std::ptr::from_ref(&cursor) as u64
                },
                out_batch: std::ptr::from_mut(&mut next) as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH,
                map_fd: self.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let filled = (attr.count as usize).min(keys.len());
            each(&keys[..filled], &values[..filled]);
            match result {
                Ok(()) => {}
                // The end of the map (the last chunk came with it).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(io_error) => {
                    return Err(ConntrackError {
                        op: "scan (BPF_MAP_LOOKUP_BATCH, Linux 5.6+)".into(),
                        source: MapError::SyscallError(SyscallError {
                            call: "bpf_map_lookup_batch",
                            io_error,
                        }),
                    });
                }
            }
            cursor = next;
            first = false;
        }
    }

    /// Deletes `keys` (`BPF_MAP_DELETE_BATCH`), skipping those already gone; returns how
    /// many it deleted.
    fn delete_keys(&mut self, keys: &[CtKeyRaw]) -> Result<usize, ConntrackError> {
        let mut removed = 0;
        let mut rest = keys;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(BATCH as usize)];
            let mut attr = BatchAttr {
                keys: chunk.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
            let deleted = (attr.count as usize).min(chunk.len());
            removed += deleted;
            rest = match result {
                Ok(()) => &rest[chunk.len()..],
                // Key number `deleted` was gone already (the datapath's LRU, or the GC):
                // carry on after it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => &rest[deleted + 1..],
                Err(io_error) => {
                    return Err(ConntrackError {
                        op: "remove entries (BPF_MAP_DELETE_BATCH)".into(),
                        source: MapError::SyscallError(SyscallError {
                            call: "bpf_map_delete_batch",
                            io_error,
                        }),
                    });
                }
            };
        }
        Ok(removed)
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

    /// A second handle on the same map (for work on another thread).
    pub fn try_clone(&self) -> Result<Self, ConntrackError> {
        let error = |op: &str| {
            let op = op.to_owned();
            move |source| ConntrackError { op, source }
        };
        let fd = self.fd.try_clone().map_err(|io_error| ConntrackError {
            op: "duplicate the map's fd".into(),
            source: MapError::SyscallError(SyscallError {
                call: "fcntl",
                io_error,
            }),
        })?;
        let data = MapData::from_fd(fd).map_err(error("reopen"))?;
        Self::new(Map::from_map_data(data).map_err(error("reopen"))?)
    }

    /// Opens the conntrack map pinned in the node's pin directory `pin_dir`: a handle of its
    /// own, for the GC task (which then needs no lock shared with endpoint changes).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, ConntrackError> {
        let path = pin_dir.join(CT_MAP);
        let error = |source| ConntrackError {
            op: format!("open the pin {}", path.display()),
            source,
        };
        let data = MapData::from_pin(&path).map_err(error)?;
        Self::new(Map::from_map_data(data).map_err(error)?)
    }

    /// Removes expired entries and those `remove` selects; returns how many were removed.
    /// An expired entry is read again just before it goes: the datapath may have replaced
    /// it with a new connection's (same tuple) since the scan.
    pub fn gc(
        &mut self,
        mut remove: impl FnMut(&CtEntry) -> bool,
    ) -> Result<usize, ConntrackError> {
        let now = monotonic_seconds();
        let (mut doomed, mut expired) = (Vec::new(), Vec::new());
        self.scan(|keys, values| {
            for (key, value) in keys.iter().zip(values) {
                match CtEntry::from_raw(key, value, now) {
                    Some(entry) if entry.expired => expired.push(*key),
                    Some(entry) if !remove(&entry) => {}
                    // Selected, or not even decodable (garbage): it goes either way.
                    _ => doomed.push(*key),
                }
            }
        })?;
        let now = monotonic_seconds();
        doomed.extend(
            expired
                .into_iter()
                .filter(|key| self.map.get(key, 0).is_ok_and(|v| v.expires < now)),
        );
        self.delete_keys(&doomed)
    }

    /// Removes every entry whose source or destination is one of `addresses` (the
    /// connections of a deleted endpoint, at its own points and at its peers'), so a pod
    /// that gets the address next inherits none of them. One scan of the map in batches;
    /// returns how many were removed.
    pub fn remove_addresses(&mut self, addresses: &[IpAddr]) -> Result<usize, ConntrackError> {
        if addresses.is_empty() {
            return Ok(0);
        }
        let mut doomed = Vec::new();
        self.scan(|keys, _| {
            doomed.extend(keys.iter().copied().filter(|key| {
                key_addresses(key).is_some_and(|(source, destination)| {
                    addresses.contains(&source) || addresses.contains(&destination)
                })
            }));
        })?;
        self.delete_keys(&doomed)
    }

    /// Runs [`ConntrackMap::gc`] of expired entries every `interval`, forever, each pass on
    /// a blocking thread (a full map is a few hundred thousand syscalls); logs what it
    /// removed. Entries the datapath would ignore anyway go, so the LRU need not evict live
    /// connections to make room.
    pub async fn gc_every(self, interval: Duration) {
        let mut map = self;
        loop {
            tokio::time::sleep(interval).await;
            let pass = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let result = map.gc(|_| false);
                (map, result, started.elapsed())
            })
            .await;
            let (back, result, took) = match pass {
                Ok(pass) => pass,
                Err(e) => {
                    tracing::error!(error = %e, "conntrack GC pass panicked; GC stopped");
                    return;
                }
            };
            map = back;
            match result {
                Ok(0) => tracing::debug!(?took, "conntrack GC: nothing expired"),
                Ok(removed) => {
                    tracing::info!(removed, ?took, "conntrack GC: expired entries removed")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "conntrack GC pass failed; retrying next interval")
                }
            }
        }
    }
}

/// Entries per batch call.
const BATCH: u32 = 4096;
/// `enum bpf_cmd` values of the batch calls.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// bpf(2) with a batch command; `attr.count` says how far it got, also on error.
fn bpf_batch(command: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for the batch commands, and the buffers
    // it points to hold `count` keys (and values) of the map's sizes (asserted for the
    // raw types), alive for the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The source and destination of a key (`None` for an unknown family).
fn key_addresses(key: &CtKeyRaw) -> Option<(IpAddr, IpAddr)> {
    Some((
        addr_from_raw(key.family, &key.saddr)?,
        addr_from_raw(key.family, &key.daddr)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::{DIR_EGRESS, FAMILY_IPV4};

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
