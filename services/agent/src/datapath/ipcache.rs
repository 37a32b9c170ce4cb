//! The ipcache in the kernel: the `kino_ipcache` LPM trie mapping address prefixes to
//! security identities (and, for routing later, the node hosting them). The datapath resolves
//! the identity of a packet's peer with one longest-prefix lookup; a peer no prefix covers is
//! world (2).
//!
//! What goes in: every local endpoint's address with its identity (0 while unknown: the
//! endpoint manager), the node's own addresses as host (1), and what the policy compiler
//! streams — other nodes' endpoints, node addresses (remote-node, 6) and CIDR identities for
//! the CIDRs policies name (so policy-map keys only ever hold identities).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData, MapError};

use super::abi::{
    FAMILY_IPV6, IPCACHE_PREFIX_STATIC, IpcacheEntryRaw, IpcacheKeyRaw, addr_from_raw, addr_to_raw,
};
use super::map_access::is_missing_key;

/// The ipcache's ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::{
    IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN, IDENTITY_WORLD, IPCACHE_F_TUNNEL_IPV6,
    IPCACHE_MAP, IPCACHE_MAX_ENTRIES,
};

/// An IP prefix with its host bits zero: `10.0.1.23/32`, `192.0.2.0/24`, `fd00::/104`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The prefix `addr/len`; an error if `len` is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{addr}/{len}: prefix length above {max}"));
        }
        let prefix = IpPrefix { addr, len };
        if prefix.masked() != addr {
            return Err(format!(
                "{addr}/{len}: host bits are set (the prefix is {}/{len})",
                prefix.masked()
            ));
        }
        Ok(prefix)
    }

    /// One address as a /32 or /128.
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        IpPrefix { addr, len }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for a zero-length prefix (every address of its family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    fn to_key(self) -> Key<IpcacheKeyRaw> {
        let (family, addr) = addr_to_raw(self.addr);
        Key::new(
            IPCACHE_PREFIX_STATIC + u32::from(self.len),
            IpcacheKeyRaw {
                family,
                pad: [0; 3],
                addr,
            },
        )
    }

    fn from_key(key: &Key<IpcacheKeyRaw>) -> Option<Self> {
        let data = key.data();
        let len = u8::try_from(key.prefix_len().checked_sub(IPCACHE_PREFIX_STATIC)?).ok()?;
        let addr = addr_from_raw(data.family, &data.addr)?;
        Some(IpPrefix { addr, len })
    }
}

impl FromStr for IpPrefix {
    type Err = String;

    /// `a.b.c.d/len`, `x::y/len`, or a bare address (a host prefix).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|e| format!("{s:?} is not a prefix: {e}"))?;
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("{s:?} is not a prefix: bad length"))?;
                IpPrefix::new(addr, len)
            }
            None => s
                .parse()
                .map(IpPrefix::host)
                .map_err(|e| format!("{s:?} is not an address or prefix: {e}")),
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One ipcache entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcacheEntry {
    /// The prefix.
    pub prefix: IpPrefix,
    /// Its security identity.
    pub identity: u32,
    /// The node hosting it, for routing (none for local or world prefixes).
    pub tunnel_endpoint: Option<IpAddr>,
}

impl IpcacheEntry {
    /// An entry without a tunnel endpoint.
    pub fn new(prefix: IpPrefix, identity: u32) -> Self {
        IpcacheEntry {
            prefix,
            identity,
            tunnel_endpoint: None,
        }
    }

    fn to_raw(&self) -> IpcacheEntryRaw {
        let (flags, tunnel_endpoint) = match self.tunnel_endpoint {
            None => (0, [0; 16]),
            Some(ip) => {
                let (family, raw) = addr_to_raw(ip);
                let flags = if family == FAMILY_IPV6 {
                    IPCACHE_F_TUNNEL_IPV6
                } else {
                    0
                };
                (flags, raw)
            }
        };
        IpcacheEntryRaw {
            identity: self.identity,
            flags,
            tunnel_endpoint,
        }
    }

    fn from_raw(prefix: IpPrefix, raw: &IpcacheEntryRaw) -> Self {
        let t = raw.tunnel_endpoint;
        let tunnel_endpoint = if raw.flags & IPCACHE_F_TUNNEL_IPV6 != 0 {
            Some(IpAddr::V6(Ipv6Addr::from(t)))
        } else if t[..4] != [0; 4] {
            Some(IpAddr::V4(Ipv4Addr::new(t[0], t[1], t[2], t[3])))
        } else {
            None
        };
        IpcacheEntry {
            prefix,
            identity: raw.identity,
            tunnel_endpoint,
        }
    }
}

/// Reading or writing the ipcache failed.
#[derive(Debug, thiserror::Error)]
#[error("BPF map {IPCACHE_MAP}: {op} failed: {source}")]
pub struct IpcacheError {
    /// What was being done, naming the prefix.
    pub op: String,
    /// aya's error.
    #[source]
    pub source: MapError,
}

/// The node's ipcache map, typed.
pub struct IpcacheMap {
    trie: LpmTrie<MapData, IpcacheKeyRaw, IpcacheEntryRaw>,
}

impl fmt::Debug for IpcacheMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpcacheMap").finish_non_exhaustive()
    }
}

impl IpcacheMap {
    /// Wraps the map taken from a loaded object.
    pub fn new(map: Map) -> Result<Self, IpcacheError> {
        Ok(IpcacheMap {
            trie: LpmTrie::try_from(map).map_err(|source| IpcacheError {
                op: "open".into(),
                source,
            })?,
        })
    }

    /// Adds or replaces the entry of a prefix.
    pub fn upsert(&mut self, entry: &IpcacheEntry) -> Result<(), IpcacheError> {
        self.trie
            .insert(&entry.prefix.to_key(), entry.to_raw(), 0)
            .map_err(|source| IpcacheError {
                op: format!("set {} -> identity {}", entry.prefix, entry.identity),
                source,
            })
    }

    /// Removes the entry of exactly this prefix; `false` if there was none.
    pub fn remove(&mut self, prefix: &IpPrefix) -> Result<bool, IpcacheError> {
        match self.trie.remove(&prefix.to_key()) {
            Ok(()) => Ok(true),
            Err(e) if is_missing_key(&e) => Ok(false),
            Err(source) => Err(IpcacheError {
                op: format!("remove {prefix}"),
                source,
            }),
        }
    }

    /// The entry of exactly this prefix (reads the whole map: for tools and tests).
    pub fn get(&self, prefix: &IpPrefix) -> Result<Option<IpcacheEntry>, IpcacheError> {
        Ok(self.list()?.into_iter().find(|e| e.prefix == *prefix))
    }

    /// The identity the datapath gives `addr`: that of the longest prefix holding it (one
    /// kernel lookup, as the datapath does), world when none does.
    pub fn identity_of(&self, addr: IpAddr) -> Result<u32, IpcacheError> {
        let prefix = IpPrefix::host(addr);
        match self.trie.get(&prefix.to_key(), 0) {
            Ok(raw) => Ok(raw.identity),
            Err(e) if is_missing_key(&e) => Ok(IDENTITY_WORLD),
            Err(source) => Err(IpcacheError {
                op: format!("lookup {addr}"),
                source,
            }),
        }
    }

    /// The node the datapath sends `addr`'s traffic to (the tunnel endpoint of the longest
    /// prefix holding it), if any.
    pub fn tunnel_endpoint_of(&self, addr: IpAddr) -> Result<Option<IpAddr>, IpcacheError> {
        let prefix = IpPrefix::host(addr);
        match self.trie.get(&prefix.to_key(), 0) {
            Ok(raw) => Ok(IpcacheEntry::from_raw(prefix, &raw).tunnel_endpoint),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(source) => Err(IpcacheError {
                op: format!("lookup {addr}"),
                source,
            }),
        }
    }

    /// Every entry, sorted by prefix.
    pub fn list(&self) -> Result<Vec<IpcacheEntry>, IpcacheError> {
        let mut entries = Vec::new();
        for item in self.trie.iter() {
            let (key, value) = item.map_err(|source| IpcacheError {
                op: "iterate".into(),
                source,
            })?;
            if let Some(prefix) = IpPrefix::from_key(&key) {
                entries.push(IpcacheEntry::from_raw(prefix, &value));
            }
        }
        entries.sort_by_key(|e| e.prefix);
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::FAMILY_IPV4;

    #[test]
    fn prefixes_parse_strictly() {
        let p: IpPrefix = "192.0.2.0/24".parse().expect("valid");
        assert_eq!(p.to_string(), "192.0.2.0/24");
        assert_eq!("10.0.0.5".parse::<IpPrefix>().expect("host").len(), 32);
        assert_eq!("fd00::/104".parse::<IpPrefix>().expect("v6").len(), 104);
        assert_eq!("0.0.0.0/0".parse::<IpPrefix>().expect("all").len(), 0);
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "fd00::1/64",
            "x/8",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip() {
        for text in ["10.1.2.0/24", "0.0.0.0/0", "10.0.0.7/32", "fd00::100/120"] {
            let p: IpPrefix = text.parse().expect("valid");
            let key = p.to_key();
            assert_eq!(key.prefix_len(), 32 + u32::from(p.len()));
            assert_eq!(IpPrefix::from_key(&key), Some(p));
        }
        let key = "10.1.2.0/24".parse::<IpPrefix>().expect("v").to_key();
        assert_eq!(key.data().family, FAMILY_IPV4);
        assert_eq!(key.data().addr[..4], [10, 1, 2, 0]);
    }

    #[test]
    fn entries_round_trip() {
        let prefix: IpPrefix = "10.1.0.0/16".parse().expect("valid");
        for tunnel in [
            None,
            Some("192.168.1.2".parse().expect("v4")),
            Some("fd00::2".parse().expect("v6")),
        ] {
            let entry = IpcacheEntry {
                prefix,
                identity: 16_777_217,
                tunnel_endpoint: tunnel,
            };
            assert_eq!(IpcacheEntry::from_raw(prefix, &entry.to_raw()), entry);
        }
    }
}
