//! The ipcache's ABI: `kino_ipcache`, the LPM trie from address prefixes to security
//! identities (and the node hosting them), and the reserved identities the datapath knows.

/// Name of the ipcache trie.
pub const IPCACHE_MAP: &str = "kino_ipcache";
/// `KINO_IPCACHE_MAX_ENTRIES`: default capacity.
pub const IPCACHE_MAX_ENTRIES: u32 = 131_072;
/// `KINO_IPCACHE_PREFIX_STATIC`: prefix bits before the address (family, pad).
pub const IPCACHE_PREFIX_STATIC: u32 = 32;
/// `KINO_IPCACHE_F_TUNNEL_IPV6`.
pub const IPCACHE_F_TUNNEL_IPV6: u32 = 1;

/// `KINO_IDENTITY_UNKNOWN`: an endpoint whose identity is not known yet (and, in policy
/// keys, every peer).
pub const IDENTITY_UNKNOWN: u32 = 0;
/// `KINO_IDENTITY_HOST`: the local node.
pub const IDENTITY_HOST: u32 = 1;
/// `KINO_IDENTITY_WORLD`: outside the cluster; what an address without a prefix gets.
pub const IDENTITY_WORLD: u32 = 2;
/// `KINO_IDENTITY_REMOTE_NODE`: another node of the cluster.
pub const IDENTITY_REMOTE_NODE: u32 = 6;

/// `struct ipcache_key` without its leading `prefixlen` (aya's `lpm_trie::Key` adds it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheKeyRaw {
    /// `KINO_FAMILY_*`.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// IPv4 in the first 4 bytes, or the 16 IPv6 bytes; bits past the prefix zero.
    pub addr: [u8; 16],
}

/// `struct ipcache_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheEntryRaw {
    /// Security identity.
    pub identity: u32,
    /// `KINO_IPCACHE_F_*`.
    pub flags: u32,
    /// Node hosting the prefix (IPv4 in the first 4 bytes); zero for none.
    pub tunnel_endpoint: [u8; 16],
}

// SAFETY: plain `#[repr(C)]` integers and byte arrays without padding (sizes asserted below,
// offsets checked against the object's BTF by the tests).
unsafe impl aya::Pod for IpcacheKeyRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheEntryRaw {}

const _: () = assert!(size_of::<IpcacheKeyRaw>() == 20);
const _: () = assert!(size_of::<IpcacheEntryRaw>() == 24);
