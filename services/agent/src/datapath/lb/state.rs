//! The programmer of the service maps: what each frontend should be ([`FrontendSpec`]) turned
//! into the few map writes that make it so. It remembers what it wrote, so a change of one
//! service rewrites only what changed — a backend's entry, the slots whose weight or backend
//! moved, the table chunks that differ, the frontend entry — never the whole set. Writes are
//! ordered so that a program reading between two of them never follows a dangling id: new
//! backends first, then slots and table, then the frontend (its count), and only then the
//! removal of what is gone. A terminating backend's state changes before its slot goes, so
//! it gets no new connection even from a slot read in between.
//!
//! A restarted agent adopts what the maps hold ([`LbState::adopt`]): backend ids stay (session
//! affinity entries name them) and frontends no service wants any more are found and removed
//! by [`LbState::retain`] after the first complete list.

use std::collections::{BTreeMap, BTreeSet};

use super::maglev;
use super::maps::{L4Addr, LbMaps};
use crate::datapath::abi::{
    LB_BACKEND_ACTIVE, LB_BACKEND_TERMINATING, LB_F_AFFINITY, LB_F_MAGLEV, LB_MAGLEV_CHUNK,
    LbBackendRaw, LbFrontendRaw, LbMaglevChunkRaw, LbSlotRaw, addr_to_raw,
};
use crate::datapath::map_access::MapOpError;

/// How a frontend's backend is chosen for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// A weighted random backend (Cilium's default).
    #[default]
    Random,
    /// Through the frontend's Maglev table.
    Maglev,
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Algorithm::Random),
            "maglev" => Ok(Algorithm::Maglev),
            other => Err(format!(
                "unknown load-balancing algorithm {other:?}: use random or maglev"
            )),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Random => "random",
            Algorithm::Maglev => "maglev",
        })
    }
}

/// The node's load-balancing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbConfig {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Slots of a Maglev table (a prime; [`maglev::validate_table_size`]).
    pub maglev_table_size: u32,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            algorithm: Algorithm::Random,
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

/// What kind of address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FrontendKind {
    /// A ClusterIP (VIP).
    #[default]
    ClusterIp,
    /// A NodePort.
    NodePort,
    /// An external IP.
    ExternalIp,
}

impl FrontendKind {
    fn raw(self) -> u8 {
        match self {
            FrontendKind::ClusterIp => crate::datapath::abi::LB_CLUSTER_IP,
            FrontendKind::NodePort => crate::datapath::abi::LB_NODE_PORT,
            FrontendKind::ExternalIp => crate::datapath::abi::LB_EXTERNAL_IP,
        }
    }

    /// The kind a frontend entry's type says.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            crate::datapath::abi::LB_NODE_PORT => FrontendKind::NodePort,
            crate::datapath::abi::LB_EXTERNAL_IP => FrontendKind::ExternalIp,
            _ => FrontendKind::ClusterIp,
        }
    }
}

/// One backend of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Its address (same family and protocol as the frontend's).
    pub address: L4Addr,
    /// Relative weight, 1..=65535.
    pub weight: u32,
    /// Takes new connections (false: terminating).
    pub active: bool,
}

/// What a frontend should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    /// Its cluster-wide id (1..=65535).
    pub id: u32,
    /// VIP:port/protocol.
    pub address: L4Addr,
    /// Its kind.
    pub kind: FrontendKind,
    /// Its backends (each address once).
    pub backends: Vec<BackendSpec>,
    /// ClientIP session affinity timeout, seconds.
    pub affinity_timeout: Option<u32>,
}

/// A map write failed; the frontend is rewritten whole at its next change.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A map operation failed.
    #[error("programming frontend {frontend}: {source}")]
    Map {
        /// The frontend.
        frontend: L4Addr,
        /// The failure.
        #[source]
        source: Box<MapOpError>,
    },
    /// Reading the maps failed.
    #[error("reading the service maps: {0}")]
    Read(#[source] Box<MapOpError>),
    /// The spec cannot be programmed.
    #[error("frontend {frontend}: {reason}")]
    Invalid {
        /// The frontend.
        frontend: L4Addr,
        /// Why.
        reason: String,
    },
}

/// Map writes (and removals) one change took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    /// Entries written.
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
}

impl std::ops::AddAssign for Writes {
    fn add_assign(&mut self, other: Writes) {
        self.written += other.written;
        self.removed += other.removed;
    }
}

/// What the programmer wrote for one frontend.
#[derive(Clone, Debug, Default)]
struct Programmed {
    /// The spec (None: adopted or failed; everything is rewritten at the next change).
    spec: Option<FrontendSpec>,
    id: u32,
    /// Every backend id that may be in the maps for it, by address.
    backend_ids: BTreeMap<L4Addr, u32>,
    backends: BTreeMap<u32, LbBackendRaw>,
    /// slots[i] is slot i + 1.
    slots: Vec<LbSlotRaw>,
    /// The highest slot that may be in the map.
    slot_high_water: u32,
    /// Table chunks as written.
    chunks: Vec<LbMaglevChunkRaw>,
    /// The number of chunks that may be in the map.
    chunk_high_water: u32,
    raw: Option<LbFrontendRaw>,
}

/// The service maps and what this agent wrote into them.
pub struct LbState {
    maps: LbMaps,
    config: LbConfig,
    frontends: BTreeMap<L4Addr, Programmed>,
    used_ids: BTreeSet<u32>,
    next_id: u32,
}

impl std::fmt::Debug for LbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbState")
            .field("config", &self.config)
            .field("frontends", &self.frontends.len())
            .finish_non_exhaustive()
    }
}

fn backend_raw(frontend_id: u32, backend: &BackendSpec) -> LbBackendRaw {
    let (family, addr) = addr_to_raw(backend.address.ip);
    LbBackendRaw {
        addr,
        port: backend.address.port.to_be_bytes(),
        protocol: backend.address.protocol.number(),
        family,
        state: if backend.active {
            LB_BACKEND_ACTIVE
        } else {
            LB_BACKEND_TERMINATING
        },
        pad: [0; 3],
        frontend_id,
    }
}

impl LbState {
    /// Adopts what `maps` hold (a previous agent's frontends and backend ids).
    pub fn adopt(maps: LbMaps, config: LbConfig) -> Result<Self, LbError> {
        let mut frontends: BTreeMap<L4Addr, Programmed> = BTreeMap::new();
        let listed = maps.frontends().map_err(|e| LbError::Read(Box::new(e)))?;
        let mut by_id: BTreeMap<u32, L4Addr> = BTreeMap::new();
        for (address, raw) in &listed {
            by_id.insert(raw.id, *address);
            frontends.insert(
                *address,
                Programmed {
                    id: raw.id,
                    slot_high_water: raw.count,
                    ..Programmed::default()
                },
            );
        }
        let mut used_ids = BTreeSet::new();
        for (id, raw) in maps.backends().map_err(|e| LbError::Read(Box::new(e)))? {
            used_ids.insert(id);
            if let (Some(frontend), Some(address)) =
                (by_id.get(&raw.frontend_id), L4Addr::of_backend(&raw))
                && let Some(programmed) = frontends.get_mut(frontend)
            {
                programmed.backend_ids.insert(address, id);
            }
        }
        for (frontend_id, slot, _) in maps.slots().map_err(|e| LbError::Read(Box::new(e)))? {
            if let Some(programmed) = by_id.get(&frontend_id).and_then(|a| frontends.get_mut(a)) {
                programmed.slot_high_water = programmed.slot_high_water.max(slot);
            }
        }
        for (frontend_id, chunk) in maps
            .maglev_chunks()
            .map_err(|e| LbError::Read(Box::new(e)))?
        {
            if let Some(programmed) = by_id.get(&frontend_id).and_then(|a| frontends.get_mut(a)) {
                programmed.chunk_high_water = programmed.chunk_high_water.max(chunk + 1);
            }
        }
        let next_id = used_ids
            .last()
            .map_or(1, |last| last.wrapping_add(1).max(1));
        Ok(LbState {
            maps,
            config,
            frontends,
            used_ids,
            next_id,
        })
    }

    /// The settings.
    pub fn config(&self) -> LbConfig {
        self.config
    }

    /// The maps (to read them).
    pub fn maps(&self) -> &LbMaps {
        &self.maps
    }

    /// The frontends programmed (or adopted).
    pub fn frontend_addresses(&self) -> Vec<L4Addr> {
        self.frontends.keys().copied().collect()
    }

    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if self.used_ids.insert(id) {
                return id;
            }
        }
    }

    /// Makes the frontend `spec.address` what `spec` says.
    pub fn upsert(&mut self, spec: &FrontendSpec) -> Result<Writes, LbError> {
        let frontend = spec.address;
        let invalid = |reason: String| LbError::Invalid { frontend, reason };
        if spec.id == 0 || spec.id > 65_535 {
            return Err(invalid(format!(
                "frontend id {} is not in 1..65535",
                spec.id
            )));
        }
        let mut seen = BTreeSet::new();
        for backend in &spec.backends {
            if backend.address.ip.is_ipv4() != frontend.ip.is_ipv4()
                || backend.address.protocol != frontend.protocol
            {
                return Err(invalid(format!(
                    "backend {} is not of the frontend's family and protocol",
                    backend.address
                )));
            }
            if !seen.insert(backend.address) {
                return Err(invalid(format!("backend {} listed twice", backend.address)));
            }
        }
        let mut writes = Writes::default();
        if self
            .frontends
            .get(&frontend)
            .is_some_and(|p| p.id != spec.id)
        {
            writes += self.remove(&frontend)?;
        }
        if let Some(old) = self.frontends.get(&frontend)
            && old.spec.as_ref() == Some(spec)
        {
            return Ok(writes);
        }
        let old = self.frontends.remove(&frontend).unwrap_or_default();
        match self.write(spec, &old, &mut writes) {
            Ok(programmed) => {
                self.frontends.insert(frontend, programmed);
                Ok(writes)
            }
            Err(source) => {
                // Remember every id and slot that may be in the maps; rewrite all next time.
                let mut failed = old;
                failed.spec = None;
                failed.raw = None;
                failed.slots.clear();
                failed.chunks.clear();
                failed.id = spec.id;
                for backend in &spec.backends {
                    if let Some(id) = self.id_of(&failed, &backend.address) {
                        failed.backend_ids.insert(backend.address, id);
                    }
                }
                failed.slot_high_water = failed.slot_high_water.max(spec.backends.len() as u32);
                failed.chunk_high_water = failed.chunk_high_water.max(self.chunks_per_table());
                self.frontends.insert(frontend, failed);
                Err(LbError::Map {
                    frontend,
                    source: Box::new(source),
                })
            }
        }
    }

    fn id_of(&self, programmed: &Programmed, address: &L4Addr) -> Option<u32> {
        programmed.backend_ids.get(address).copied()
    }

    fn chunks_per_table(&self) -> u32 {
        (self.config.maglev_table_size as usize).div_ceil(LB_MAGLEV_CHUNK) as u32
    }

    fn write(
        &mut self,
        spec: &FrontendSpec,
        old: &Programmed,
        writes: &mut Writes,
    ) -> Result<Programmed, MapOpError> {
        let mut new = Programmed {
            spec: Some(spec.clone()),
            id: spec.id,
            ..Programmed::default()
        };
        // 1. Backends: new ones and changed states.
        for backend in &spec.backends {
            let id = match old.backend_ids.get(&backend.address) {
                Some(id) => *id,
                None => self.allocate_id(),
            };
            new.backend_ids.insert(backend.address, id);
            let raw = backend_raw(spec.id, backend);
            if old.backends.get(&id) != Some(&raw) {
                self.maps.put_backend(id, raw)?;
                writes.written += 1;
            }
            new.backends.insert(id, raw);
        }
        // 2. Slots of the active backends, in address order, with cumulative weights.
        let active: Vec<&BackendSpec> = {
            let mut active: Vec<&BackendSpec> = spec.backends.iter().filter(|b| b.active).collect();
            active.sort_by_key(|b| b.address);
            active
        };
        let mut weight_end = 0u32;
        for (i, backend) in active.iter().enumerate() {
            weight_end += backend.weight.clamp(1, 65_535);
            let raw = LbSlotRaw {
                backend_id: new.backend_ids[&backend.address],
                weight_end,
            };
            if old.slots.get(i) != Some(&raw) {
                self.maps.put_slot(spec.id, i as u32 + 1, raw)?;
                writes.written += 1;
            }
            new.slots.push(raw);
        }
        new.slot_high_water = new.slots.len() as u32;
        // 3. The Maglev table.
        let maglev = self.config.algorithm == Algorithm::Maglev && !active.is_empty();
        if maglev {
            let names: Vec<(String, u32)> = active
                .iter()
                .map(|b| (b.address.to_string(), b.weight.clamp(1, 65_535)))
                .collect();
            let table = maglev::table(&names, self.config.maglev_table_size);
            for (c, slots) in table.chunks(LB_MAGLEV_CHUNK).enumerate() {
                let mut chunk = LbMaglevChunkRaw {
                    backend_ids: [0; LB_MAGLEV_CHUNK],
                };
                for (slot, index) in chunk.backend_ids.iter_mut().zip(slots) {
                    *slot = new.slots[*index as usize].backend_id;
                }
                if old.chunks.get(c) != Some(&chunk) {
                    self.maps.put_maglev_chunk(spec.id, c as u32, &chunk)?;
                    writes.written += 1;
                }
                new.chunks.push(chunk);
            }
        }
        new.chunk_high_water = new.chunks.len() as u32;
        // 4. The frontend, then its reverse NAT.
        let raw = LbFrontendRaw {
            id: spec.id,
            count: new.slots.len() as u32,
            total_weight: weight_end,
            affinity_timeout: spec.affinity_timeout.unwrap_or(0),
            maglev_size: if maglev {
                self.config.maglev_table_size
            } else {
                0
            },
            flags: if spec.affinity_timeout.is_some() {
                LB_F_AFFINITY
            } else {
                0
            } | if maglev { LB_F_MAGLEV } else { 0 },
            r#type: spec.kind.raw(),
            pad: 0,
        };
        if old.raw != Some(raw) {
            self.maps.put_frontend(&spec.address, raw)?;
            self.maps.put_revnat(spec.id, &spec.address)?;
            writes.written += 2;
        }
        new.raw = Some(raw);
        // 5. What is gone: slots past the count, table chunks, backends.
        for slot in new.slot_high_water + 1..=old.slot_high_water {
            self.maps.remove_slot(spec.id, slot)?;
            writes.removed += 1;
        }
        for chunk in new.chunk_high_water..old.chunk_high_water {
            self.maps.remove_maglev_chunk(spec.id, chunk)?;
            writes.removed += 1;
        }
        for (address, id) in &old.backend_ids {
            if !new.backend_ids.contains_key(address) {
                self.maps.remove_backend(*id)?;
                self.used_ids.remove(id);
                writes.removed += 1;
            }
        }
        Ok(new)
    }

    /// Removes the frontend `address` (the frontend first: no new connection finds it).
    pub fn remove(&mut self, address: &L4Addr) -> Result<Writes, LbError> {
        let Some(old) = self.frontends.remove(address) else {
            return Ok(Writes::default());
        };
        let mut writes = Writes::default();
        let result = (|| {
            self.maps.remove_frontend(address)?;
            self.maps.remove_revnat(old.id)?;
            writes.removed += 2;
            for slot in 1..=old.slot_high_water {
                self.maps.remove_slot(old.id, slot)?;
                writes.removed += 1;
            }
            for chunk in 0..old.chunk_high_water {
                self.maps.remove_maglev_chunk(old.id, chunk)?;
                writes.removed += 1;
            }
            for id in old.backend_ids.values() {
                self.maps.remove_backend(*id)?;
                self.used_ids.remove(id);
                writes.removed += 1;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(writes),
            Err(source) => {
                let frontend = *address;
                self.frontends.insert(frontend, old);
                Err(LbError::Map {
                    frontend,
                    source: Box::new(source),
                })
            }
        }
    }

    /// Removes every frontend `keep` refuses (after a complete list of the services: what a
    /// previous agent programmed for services deleted meanwhile). Every removal is tried.
    pub fn retain(&mut self, keep: impl Fn(&L4Addr) -> bool) -> (Writes, Vec<LbError>) {
        let gone: Vec<L4Addr> = self
            .frontends
            .keys()
            .filter(|a| !keep(a))
            .copied()
            .collect();
        let mut writes = Writes::default();
        let mut errors = Vec::new();
        for address in gone {
            match self.remove(&address) {
                Ok(w) => writes += w,
                Err(e) => errors.push(e),
            }
        }
        (writes, errors)
    }
}
