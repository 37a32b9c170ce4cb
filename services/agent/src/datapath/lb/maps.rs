//! The service maps, typed (issue #14): frontends by address, their slots, backends, Maglev
//! table chunks and per-packet reverse NAT — single-entry reads and writes the programmer
//! (`state`) orders so that a reader never meets a dangling id. Layouts in [`abi`].

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};

use crate::datapath::abi::{
    self, LB_AFFINITY_MAP, LB_BACKENDS_MAP, LB_FRONTENDS_MAP, LB_MAGLEV_MAP, LB_REVNAT_MAP,
    LB_SLOTS_MAP, LbAffinityKeyRaw, LbAffinityRaw, LbBackendRaw, LbFrontendKeyRaw, LbFrontendRaw,
    LbMaglevChunkRaw, LbMaglevKeyRaw, LbRevnatRaw, LbSlotKeyRaw, LbSlotRaw, addr_from_raw,
    addr_to_raw,
};
use crate::datapath::map_access::{MapOpError, is_missing_key, map_err, open_pinned};

/// A transport protocol a service is load-balanced for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl L4Protocol {
    /// The IANA number.
    pub fn number(self) -> u8 {
        match self {
            L4Protocol::Tcp => libc::IPPROTO_TCP as u8,
            L4Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    /// The protocol of an IANA number this load balancer knows.
    pub fn from_number(number: u8) -> Option<Self> {
        match i32::from(number) {
            libc::IPPROTO_TCP => Some(L4Protocol::Tcp),
            libc::IPPROTO_UDP => Some(L4Protocol::Udp),
            _ => None,
        }
    }

    /// `tcp` / `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
        }
    }
}

/// An address, port and protocol: a frontend (VIP:port/proto) or a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L4Addr {
    /// The IP address.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: L4Protocol,
}

impl std::fmt::Display for L4Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port, self.protocol.as_str()),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port, self.protocol.as_str()),
        }
    }
}

impl L4Addr {
    /// The frontend map's key for it.
    pub fn frontend_key(&self) -> LbFrontendKeyRaw {
        let (family, addr) = addr_to_raw(self.ip);
        LbFrontendKeyRaw {
            addr,
            port: self.port.to_be_bytes(),
            protocol: self.protocol.number(),
            family,
        }
    }

    /// The address a frontend key holds; `None` for an unknown family or protocol.
    pub fn from_frontend_key(raw: &LbFrontendKeyRaw) -> Option<Self> {
        Some(L4Addr {
            ip: addr_from_raw(raw.family, &raw.addr)?,
            port: u16::from_be_bytes(raw.port),
            protocol: L4Protocol::from_number(raw.protocol)?,
        })
    }

    /// The address a backend entry holds.
    pub fn of_backend(raw: &LbBackendRaw) -> Option<Self> {
        Some(L4Addr {
            ip: addr_from_raw(raw.family, &raw.addr)?,
            port: u16::from_be_bytes(raw.port),
            protocol: L4Protocol::from_number(raw.protocol)?,
        })
    }
}

/// The service maps of one node.
pub struct LbMaps {
    frontends: HashMap<MapData, LbFrontendKeyRaw, LbFrontendRaw>,
    slots: HashMap<MapData, LbSlotKeyRaw, LbSlotRaw>,
    backends: HashMap<MapData, u32, LbBackendRaw>,
    maglev: HashMap<MapData, LbMaglevKeyRaw, LbMaglevChunkRaw>,
    revnat: HashMap<MapData, u32, LbRevnatRaw>,
    affinity: HashMap<MapData, LbAffinityKeyRaw, LbAffinityRaw>,
}

impl std::fmt::Debug for LbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMaps").finish_non_exhaustive()
    }
}

fn typed<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: Map,
) -> Result<HashMap<MapData, K, V>, MapOpError> {
    HashMap::try_from(map).map_err(map_err(name, "open"))
}

impl LbMaps {
    /// Types the maps of a loaded object (`take` hands each out by name).
    pub fn new(
        mut take: impl FnMut(&'static str) -> Result<Map, MapOpError>,
    ) -> Result<Self, MapOpError> {
        Ok(LbMaps {
            frontends: typed(LB_FRONTENDS_MAP, take(LB_FRONTENDS_MAP)?)?,
            slots: typed(LB_SLOTS_MAP, take(LB_SLOTS_MAP)?)?,
            backends: typed(LB_BACKENDS_MAP, take(LB_BACKENDS_MAP)?)?,
            maglev: typed(LB_MAGLEV_MAP, take(LB_MAGLEV_MAP)?)?,
            revnat: typed(LB_REVNAT_MAP, take(LB_REVNAT_MAP)?)?,
            affinity: typed(LB_AFFINITY_MAP, take(LB_AFFINITY_MAP)?)?,
        })
    }

    /// Opens the maps pinned in `pin_dir` (a second handle: inspection, tests).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapOpError> {
        Self::new(|name| open_pinned(pin_dir, name))
    }

    /// Writes a frontend.
    pub fn put_frontend(&mut self, key: &L4Addr, value: LbFrontendRaw) -> Result<(), MapOpError> {
        self.frontends
            .insert(key.frontend_key(), value, 0)
            .map_err(map_err(LB_FRONTENDS_MAP, format!("write frontend {key}")))
    }

    /// Removes a frontend (absent is fine).
    pub fn remove_frontend(&mut self, key: &L4Addr) -> Result<(), MapOpError> {
        absent_ok(
            self.frontends.remove(&key.frontend_key()),
            LB_FRONTENDS_MAP,
            format!("remove frontend {key}"),
        )
    }

    /// Every frontend (entries of unknown families or protocols skipped).
    pub fn frontends(&self) -> Result<Vec<(L4Addr, LbFrontendRaw)>, MapOpError> {
        let mut all = Vec::new();
        for item in self.frontends.iter() {
            let (key, value) = item.map_err(map_err(LB_FRONTENDS_MAP, "list"))?;
            if let Some(addr) = L4Addr::from_frontend_key(&key) {
                all.push((addr, value));
            }
        }
        all.sort_by_key(|(addr, _)| *addr);
        Ok(all)
    }

    /// Writes slot `slot` of `frontend_id`.
    pub fn put_slot(
        &mut self,
        frontend_id: u32,
        slot: u32,
        value: LbSlotRaw,
    ) -> Result<(), MapOpError> {
        self.slots
            .insert(LbSlotKeyRaw { frontend_id, slot }, value, 0)
            .map_err(map_err(
                LB_SLOTS_MAP,
                format!("write slot {slot} of frontend {frontend_id}"),
            ))
    }

    /// Removes slot `slot` of `frontend_id` (absent is fine).
    pub fn remove_slot(&mut self, frontend_id: u32, slot: u32) -> Result<(), MapOpError> {
        absent_ok(
            self.slots.remove(&LbSlotKeyRaw { frontend_id, slot }),
            LB_SLOTS_MAP,
            format!("remove slot {slot} of frontend {frontend_id}"),
        )
    }

    /// Every slot, as (frontend id, slot, value).
    pub fn slots(&self) -> Result<Vec<(u32, u32, LbSlotRaw)>, MapOpError> {
        let mut all = Vec::new();
        for item in self.slots.iter() {
            let (key, value) = item.map_err(map_err(LB_SLOTS_MAP, "list"))?;
            all.push((key.frontend_id, key.slot, value));
        }
        all.sort_by_key(|(f, s, _)| (*f, *s));
        Ok(all)
    }

    /// Writes backend `id`.
    pub fn put_backend(&mut self, id: u32, value: LbBackendRaw) -> Result<(), MapOpError> {
        self.backends
            .insert(id, value, 0)
            .map_err(map_err(LB_BACKENDS_MAP, format!("write backend {id}")))
    }

    /// Removes backend `id` (absent is fine).
    pub fn remove_backend(&mut self, id: u32) -> Result<(), MapOpError> {
        absent_ok(
            self.backends.remove(&id),
            LB_BACKENDS_MAP,
            format!("remove backend {id}"),
        )
    }

    /// Every backend, by id.
    pub fn backends(&self) -> Result<Vec<(u32, LbBackendRaw)>, MapOpError> {
        let mut all = Vec::new();
        for item in self.backends.iter() {
            all.push(item.map_err(map_err(LB_BACKENDS_MAP, "list"))?);
        }
        all.sort_by_key(|(id, _)| *id);
        Ok(all)
    }

    /// Writes chunk `chunk` of the Maglev table of `frontend_id`.
    pub fn put_maglev_chunk(
        &mut self,
        frontend_id: u32,
        chunk: u32,
        value: &LbMaglevChunkRaw,
    ) -> Result<(), MapOpError> {
        self.maglev
            .insert(LbMaglevKeyRaw { frontend_id, chunk }, value, 0)
            .map_err(map_err(
                LB_MAGLEV_MAP,
                format!("write chunk {chunk} of the table of frontend {frontend_id}"),
            ))
    }

    /// Removes chunk `chunk` of the Maglev table of `frontend_id` (absent is fine).
    pub fn remove_maglev_chunk(&mut self, frontend_id: u32, chunk: u32) -> Result<(), MapOpError> {
        absent_ok(
            self.maglev.remove(&LbMaglevKeyRaw { frontend_id, chunk }),
            LB_MAGLEV_MAP,
            format!("remove chunk {chunk} of the table of frontend {frontend_id}"),
        )
    }

    /// The Maglev table chunks of every frontend, as (frontend id, chunk).
    pub fn maglev_chunks(&self) -> Result<Vec<(u32, u32)>, MapOpError> {
        let mut all = Vec::new();
        for key in self.maglev.keys() {
            let key = key.map_err(map_err(LB_MAGLEV_MAP, "list"))?;
            all.push((key.frontend_id, key.chunk));
        }
        all.sort_unstable();
        Ok(all)
    }

    /// Chunk `chunk` of the Maglev table of `frontend_id`.
    pub fn maglev_chunk(
        &self,
        frontend_id: u32,
        chunk: u32,
    ) -> Result<Option<LbMaglevChunkRaw>, MapOpError> {
        match self.maglev.get(&LbMaglevKeyRaw { frontend_id, chunk }, 0) {
            Ok(value) => Ok(Some(value)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(map_err(
                LB_MAGLEV_MAP,
                format!("read chunk {chunk} of {frontend_id}"),
            )(e)),
        }
    }

    /// Writes the reverse-NAT entry of `frontend_id`.
    pub fn put_revnat(&mut self, frontend_id: u32, frontend: &L4Addr) -> Result<(), MapOpError> {
        let key = frontend.frontend_key();
        let value = LbRevnatRaw {
            addr: key.addr,
            port: key.port,
            protocol: key.protocol,
            family: key.family,
        };
        self.revnat.insert(frontend_id, value, 0).map_err(map_err(
            LB_REVNAT_MAP,
            format!("write reverse NAT of {frontend_id}"),
        ))
    }

    /// Removes the reverse-NAT entry of `frontend_id` (absent is fine).
    pub fn remove_revnat(&mut self, frontend_id: u32) -> Result<(), MapOpError> {
        absent_ok(
            self.revnat.remove(&frontend_id),
            LB_REVNAT_MAP,
            format!("remove reverse NAT of {frontend_id}"),
        )
    }

    /// Every reverse-NAT frontend id.
    pub fn revnat_ids(&self) -> Result<Vec<u32>, MapOpError> {
        let mut all = Vec::new();
        for key in self.revnat.keys() {
            all.push(key.map_err(map_err(LB_REVNAT_MAP, "list"))?);
        }
        all.sort_unstable();
        Ok(all)
    }

    /// The session affinity entries: (client, frontend id, backend id, last used second).
    pub fn affinities(&self) -> Result<Vec<(IpAddr, u32, u32, u32)>, MapOpError> {
        let mut all = Vec::new();
        for item in self.affinity.iter() {
            let (key, value) = item.map_err(map_err(LB_AFFINITY_MAP, "list"))?;
            if let Some(client) = abi::addr_from_raw(key.family, &key.client) {
                all.push((client, key.frontend_id, value.backend_id, value.last_used));
            }
        }
        all.sort_unstable();
        Ok(all)
    }
}

/// `result`, with "no such key" as success.
fn absent_ok(
    result: Result<(), aya::maps::MapError>,
    map: &'static str,
    op: String,
) -> Result<(), MapOpError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_missing_key(&e) => Ok(()),
        Err(source) => Err(MapOpError { map, op, source }),
    }
}
