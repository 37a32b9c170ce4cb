//! The node's routing configuration in the kernel (issue #13): `kino_node_config`, read by
//! the programs on every packet that is not for a local pod. In tunnel mode a packet for
//! another node's prefix is encapsulated and sent through `kino_vxlan`; in native mode, and
//! before the agent configures the node ([`RoutingConfig::None`], a single node), it goes to
//! the stack. The map is pinned, so the configuration survives an agent restart; the agent
//! writes it at every start-up (`Datapath::set_node_config`).

use std::fmt;

use aya::maps::{Array, Map, MapData};

use super::abi::{NODE_CONFIG_MAP, NodeConfigRaw, ROUTING_NATIVE, ROUTING_NONE, ROUTING_TUNNEL};
use super::map_access::{MapOpError, map_err};

/// How pod traffic leaves the node for other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoutingConfig {
    /// Not configured: nothing is encapsulated (what a single node needs).
    #[default]
    None,
    /// VXLAN: packets for another node's prefix (their ipcache entry names the node) are
    /// encapsulated with the source's identity as VNI and sent through the device
    /// `vxlan_ifindex` (`kino_vxlan`, `devices::ensure_vxlan`), whose tc programs must be
    /// attached (`Datapath::attach_device` with `Hook::OVERLAY`).
    Tunnel {
        /// `kino_vxlan`'s ifindex in the node's namespace.
        vxlan_ifindex: u32,
    },
    /// No encapsulation: the stack routes other nodes' prefixes (routes via their underlay
    /// addresses); the receiver takes the source's identity from its ipcache.
    Native,
}

impl RoutingConfig {
    /// `tunnel`, `native` or `none`, for logs and status.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoutingConfig::None => "none",
            RoutingConfig::Tunnel { .. } => "tunnel",
            RoutingConfig::Native => "native",
        }
    }

    fn to_raw(self) -> NodeConfigRaw {
        match self {
            RoutingConfig::None => NodeConfigRaw::default(),
            RoutingConfig::Tunnel { vxlan_ifindex } => NodeConfigRaw {
                routing_mode: ROUTING_TUNNEL,
                vxlan_ifindex,
            },
            RoutingConfig::Native => NodeConfigRaw {
                routing_mode: ROUTING_NATIVE,
                vxlan_ifindex: 0,
            },
        }
    }

    fn from_raw(raw: NodeConfigRaw) -> Option<Self> {
        match raw.routing_mode {
            ROUTING_NONE => Some(RoutingConfig::None),
            ROUTING_TUNNEL => Some(RoutingConfig::Tunnel {
                vxlan_ifindex: raw.vxlan_ifindex,
            }),
            ROUTING_NATIVE => Some(RoutingConfig::Native),
            _ => None,
        }
    }
}

impl fmt::Display for RoutingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingConfig::Tunnel { vxlan_ifindex } => {
                write!(f, "tunnel (kino_vxlan ifindex {vxlan_ifindex})")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// The node configuration map, typed.
pub struct NodeConfigMap {
    array: Array<MapData, NodeConfigRaw>,
}

impl fmt::Debug for NodeConfigMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfigMap").finish_non_exhaustive()
    }
}

impl NodeConfigMap {
    /// Wraps the map taken from a loaded object.
    pub fn new(map: Map) -> Result<Self, MapOpError> {
        Ok(Self {
            array: Array::try_from(map).map_err(map_err(NODE_CONFIG_MAP, "open"))?,
        })
    }

    /// Writes the routing configuration; packets see it from the next one on.
    pub fn set(&mut self, routing: RoutingConfig) -> Result<(), MapOpError> {
        self.array
            .set(0, routing.to_raw(), 0)
            .map_err(map_err(NODE_CONFIG_MAP, format!("set routing {routing}")))
    }

    /// The routing configuration the programs use now.
    pub fn get(&self) -> Result<RoutingConfig, NodeConfigError> {
        let raw = self
            .array
            .get(&0, 0)
            .map_err(map_err(NODE_CONFIG_MAP, "read"))?;
        RoutingConfig::from_raw(raw).ok_or(NodeConfigError::UnknownMode(raw.routing_mode))
    }
}

/// Reading the node configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The map operation failed.
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// The map holds a routing mode this agent does not know (another agent version wrote
    /// it).
    #[error(
        "BPF map {NODE_CONFIG_MAP} holds routing mode {0}, which this agent does not know; \
         set the node configuration again (the agent does at start-up)"
    )]
    UnknownMode(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_configs_round_trip_through_the_raw_value() {
        for routing in [
            RoutingConfig::None,
            RoutingConfig::Native,
            RoutingConfig::Tunnel { vxlan_ifindex: 42 },
        ] {
            assert_eq!(RoutingConfig::from_raw(routing.to_raw()), Some(routing));
        }
        let unknown = NodeConfigRaw {
            routing_mode: 9,
            vxlan_ifindex: 0,
        };
        assert_eq!(RoutingConfig::from_raw(unknown), None);
        assert_eq!(RoutingConfig::default().to_raw(), NodeConfigRaw::default());
    }
}
