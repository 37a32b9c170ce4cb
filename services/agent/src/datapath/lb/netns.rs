//! `kino_lb_netns`: the network namespaces whose sockets this node's socket programs
//! translate — each local pod's (recorded by the endpoint manager when it creates or
//! restores the endpoint, removed when it deletes it) and the node's own. Keyed by the
//! namespace cookie (`SO_NETNS_COOKIE` here, `bpf_get_netns_cookie` in the programs):
//! cookies are never reused, so a stale entry can only name a namespace that is gone.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};

use crate::datapath::abi::{LB_NETNS_F_HOST, LB_NETNS_F_IPV6, LB_NETNS_MAP, LbNetnsRaw};
use crate::datapath::map_access::{MapOpError, is_missing_key, map_err, open_pinned};

/// Whose namespace an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsOwner {
    /// A local pod.
    Pod {
        /// Its endpoint id.
        endpoint_id: u32,
        /// Its identity.
        identity: u32,
        /// Its IPv4 address.
        ipv4: Ipv4Addr,
        /// Its IPv6 address.
        ipv6: Option<Ipv6Addr>,
    },
    /// The node itself.
    Node,
}

impl NetnsOwner {
    fn to_raw(self) -> LbNetnsRaw {
        match self {
            NetnsOwner::Pod {
                endpoint_id,
                identity,
                ipv4,
                ipv6,
            } => LbNetnsRaw {
                endpoint_id,
                identity,
                flags: if ipv6.is_some() { LB_NETNS_F_IPV6 } else { 0 },
                ipv4: ipv4.octets(),
                ipv6: ipv6.map(|ip| ip.octets()).unwrap_or_default(),
            },
            NetnsOwner::Node => LbNetnsRaw {
                flags: LB_NETNS_F_HOST,
                ..LbNetnsRaw::default()
            },
        }
    }

    fn from_raw(raw: &LbNetnsRaw) -> Self {
        if raw.flags & LB_NETNS_F_HOST != 0 {
            return NetnsOwner::Node;
        }
        NetnsOwner::Pod {
            endpoint_id: raw.endpoint_id,
            identity: raw.identity,
            ipv4: Ipv4Addr::from(raw.ipv4),
            ipv6: (raw.flags & LB_NETNS_F_IPV6 != 0).then(|| Ipv6Addr::from(raw.ipv6)),
        }
    }
}

/// The node's `kino_lb_netns`.
pub struct NetnsMap {
    map: HashMap<MapData, u64, LbNetnsRaw>,
}

impl std::fmt::Debug for NetnsMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsMap").finish_non_exhaustive()
    }
}

impl NetnsMap {
    /// Types the map.
    pub fn new(map: Map) -> Result<Self, MapOpError> {
        Ok(NetnsMap {
            map: HashMap::try_from(map).map_err(map_err(LB_NETNS_MAP, "open"))?,
        })
    }

    /// Opens the map pinned in `pin_dir` (the socket LB must have been loaded there).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapOpError> {
        Self::new(open_pinned(pin_dir, LB_NETNS_MAP)?)
    }

    /// Records the namespace of `cookie` as `owner`'s.
    pub fn insert(&mut self, cookie: u64, owner: NetnsOwner) -> Result<(), MapOpError> {
        self.map
            .insert(cookie, owner.to_raw(), 0)
            .map_err(map_err(LB_NETNS_MAP, format!("record netns {cookie}")))
    }

    /// Forgets the namespace of `cookie` (absent is fine).
    pub fn remove(&mut self, cookie: u64) -> Result<(), MapOpError> {
        match self.map.remove(&cookie) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(map_err(LB_NETNS_MAP, format!("forget netns {cookie}"))(e)),
        }
    }

    /// Forgets every namespace of the endpoint `endpoint_id`; returns how many.
    pub fn remove_endpoint(&mut self, endpoint_id: u32) -> Result<usize, MapOpError> {
        let cookies: Vec<u64> = self
            .entries()?
            .into_iter()
            .filter(|(_, owner)| {
                matches!(owner, NetnsOwner::Pod { endpoint_id: id, .. } if *id == endpoint_id)
            })
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in &cookies {
            self.remove(*cookie)?;
        }
        Ok(cookies.len())
    }

    /// Every recorded namespace.
    pub fn entries(&self) -> Result<Vec<(u64, NetnsOwner)>, MapOpError> {
        let mut all = Vec::new();
        for item in self.map.iter() {
            let (cookie, raw) = item.map_err(map_err(LB_NETNS_MAP, "list"))?;
            all.push((cookie, NetnsOwner::from_raw(&raw)));
        }
        all.sort_by_key(|(cookie, _)| *cookie);
        Ok(all)
    }
}
