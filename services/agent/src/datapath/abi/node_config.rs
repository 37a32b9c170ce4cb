//! The node's routing configuration's ABI (issue #13): `kino_node_config`, an array of one
//! `struct node_config` the agent writes at start-up — how pod traffic crosses nodes (tunnel
//! or native) and, in tunnel mode, the ifindex of `kino_vxlan`.

/// Name of the node configuration array.
pub const NODE_CONFIG_MAP: &str = "kino_node_config";

/// `KINO_ROUTING_NONE`: not configured (one node): nothing is encapsulated.
pub const ROUTING_NONE: u32 = 0;
/// `KINO_ROUTING_TUNNEL`: other nodes' prefixes go through `kino_vxlan`.
pub const ROUTING_TUNNEL: u32 = 1;
/// `KINO_ROUTING_NATIVE`: no encapsulation; the stack routes to other nodes.
pub const ROUTING_NATIVE: u32 = 2;

/// `KINO_IDENTITY_CLUSTER_MIN`: the smallest identity a VNI may carry besides remote-node.
pub const IDENTITY_CLUSTER_MIN: u32 = 256;
/// `KINO_TUNNEL_TTL`: TTL of the outer header of encapsulated packets.
pub const TUNNEL_TTL: u32 = 64;

/// `struct node_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfigRaw {
    /// `KINO_ROUTING_*`.
    pub routing_mode: u32,
    /// `kino_vxlan`'s ifindex (tunnel mode).
    pub vxlan_ifindex: u32,
}

// SAFETY: plain `#[repr(C)]` integers without padding (size asserted below, offsets checked
// against the object's BTF by the tests).
unsafe impl aya::Pod for NodeConfigRaw {}

const _: () = assert!(size_of::<NodeConfigRaw>() == 8);
