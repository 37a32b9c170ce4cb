//! The records kino-ipam keeps in the datastore, as domain types, and their protobuf specs
//! (`kino.ipam.v1` IPPool, NodeAllocation, IPAllocation, OwnerClaim). The same messages
//! are the API's, so `grpc` reuses the `to_proto` side. Each is a service-kit record
//! [`Spec`]; the agents' Node and NodeHealth records, which the node deletion reads and
//! removes, are specs there (the API messages as they are).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kino_api::ipam as pb;
use kino_api::types::IpFamily;
use kino_service_kit::records::Spec;

use crate::owner::Owner;
use crate::pool::{FamilyPool, PoolConfig, PoolPhase, RawFamily, gateway_of};
use crate::prefix::{Family, IpPrefix};

/// A pool as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Its configuration.
    pub config: PoolConfig,
    /// Where it is in its life.
    pub phase: PoolPhase,
    /// When it was created.
    pub create_time: SystemTime,
}

/// One block given to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBlock {
    /// The block.
    pub cidr: IpPrefix,
    /// When it was given.
    pub allocate_time: SystemTime,
}

/// The blocks of one pool given to one node (also the spec of a block claim, with one block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBlocks {
    /// The pool.
    pub pool: String,
    /// The node.
    pub node: String,
    /// The blocks, in the order given.
    pub blocks: Vec<NodeBlock>,
    /// ReleaseNodeCidrs is giving them back.
    pub releasing: bool,
}

impl NodeBlocks {
    /// The blocks of one family, in the order given.
    pub fn of_family(&self, family: Family) -> impl Iterator<Item = &IpPrefix> {
        self.blocks
            .iter()
            .map(|b| &b.cidr)
            .filter(move |c| c.family() == family)
    }

    /// The block holding `addr`, if the node has it.
    pub fn block_of(&self, addr: IpAddr) -> Option<IpPrefix> {
        self.blocks
            .iter()
            .map(|b| b.cidr)
            .find(|c| c.contains(addr))
    }

    /// Whether the node has `block`.
    pub fn has(&self, block: &IpPrefix) -> bool {
        self.blocks.iter().any(|b| b.cidr == *block)
    }
}

/// One address handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub address: IpAddr,
    /// The node block it comes from.
    pub block: IpPrefix,
    /// Its pool.
    pub pool: String,
    /// The node it is allocated on.
    pub node: String,
    /// Who holds it.
    pub owner: Owner,
    /// When.
    pub allocate_time: SystemTime,
}

impl Allocation {
    /// The address's family.
    pub fn family(&self) -> Family {
        Family::of(self.address)
    }
}

/// Which address an owner holds, or is being given, in one family of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Who.
    pub owner: Owner,
    /// The family.
    pub family: Family,
    /// The pool.
    pub pool: String,
    /// The node.
    pub node: String,
    /// The address being allocated or held.
    pub address: IpAddr,
    /// Whether the address's record exists and the owner holds it.
    pub bound: bool,
    /// When the claim last changed.
    pub update_time: SystemTime,
}

impl Spec for Pool {
    const KIND: &'static str = "IPPool";
    const MESSAGE: &'static str = "kino.ipam.v1.IPPool";
    type Proto = pb::IpPool;

    fn to_proto(&self) -> pb::IpPool {
        let family = |p: &FamilyPool| pb::PoolFamily {
            cidrs: p.cidrs.iter().map(ToString::to_string).collect(),
            node_mask_size: u32::from(p.node_mask),
        };
        pb::IpPool {
            name: self.config.name.clone(),
            ipv4: self.config.ipv4.as_ref().map(family),
            ipv6: self.config.ipv6.as_ref().map(family),
            create_time: Some(timestamp(self.create_time)),
            phase: match self.phase {
                PoolPhase::Creating => pb::PoolPhase::Creating,
                PoolPhase::Ready => pb::PoolPhase::Ready,
                PoolPhase::Deleting => pb::PoolPhase::Deleting,
            } as i32,
        }
    }

    fn from_proto(p: pb::IpPool) -> Result<Self, String> {
        let raw = |f: &pb::PoolFamily| RawFamily {
            cidrs: f.cidrs.clone(),
            node_mask_size: f.node_mask_size,
        };
        let config = PoolConfig::validate(
            "pool",
            &p.name,
            p.ipv4.as_ref().map(raw).as_ref(),
            p.ipv6.as_ref().map(raw).as_ref(),
        )
        .map_err(|e| e.to_string())?;
        let phase = match p.phase() {
            pb::PoolPhase::Creating => PoolPhase::Creating,
            pb::PoolPhase::Deleting => PoolPhase::Deleting,
            pb::PoolPhase::Ready | pb::PoolPhase::Unspecified => PoolPhase::Ready,
        };
        Ok(Pool {
            config,
            phase,
            create_time: system_time(p.create_time),
        })
    }
}

impl Spec for NodeBlocks {
    const KIND: &'static str = "NodeAllocation";
    const MESSAGE: &'static str = "kino.ipam.v1.NodeAllocation";
    type Proto = pb::NodeAllocation;

    fn to_proto(&self) -> pb::NodeAllocation {
        pb::NodeAllocation {
            pool: self.pool.clone(),
            node: self.node.clone(),
            cidrs: self
                .blocks
                .iter()
                .map(|b| pb::NodeCidr {
                    cidr: b.cidr.to_string(),
                    family: family_to_proto(b.cidr.family()) as i32,
                    gateway: gateway_of(&b.cidr).to_string(),
                    allocate_time: Some(timestamp(b.allocate_time)),
                })
                .collect(),
            releasing: self.releasing,
        }
    }

    fn from_proto(p: pb::NodeAllocation) -> Result<Self, String> {
        let blocks = p
            .cidrs
            .into_iter()
            .map(|c| {
                Ok(NodeBlock {
                    cidr: c.cidr.parse().map_err(|e| format!("cidrs: {e}"))?,
                    allocate_time: system_time(c.allocate_time),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(NodeBlocks {
            pool: p.pool,
            node: p.node,
            blocks,
            releasing: p.releasing,
        })
    }
}

impl Spec for Allocation {
    const KIND: &'static str = "IPAllocation";
    const MESSAGE: &'static str = "kino.ipam.v1.IPAllocation";
    type Proto = pb::IpAllocation;

    fn to_proto(&self) -> pb::IpAllocation {
        pb::IpAllocation {
            address: self.address.to_string(),
            family: family_to_proto(self.family()) as i32,
            prefix_length: u32::from(self.block.prefix_len()),
            gateway: gateway_of(&self.block).to_string(),
            node_cidr: self.block.to_string(),
            pool: self.pool.clone(),
            node: self.node.clone(),
            owner: Some(owner_to_proto(&self.owner)),
            allocate_time: Some(timestamp(self.allocate_time)),
        }
    }

    fn from_proto(p: pb::IpAllocation) -> Result<Self, String> {
        let address: IpAddr = p
            .address
            .parse()
            .map_err(|_| format!("address {:?} is not an IP address", p.address))?;
        let block: IpPrefix = p.node_cidr.parse().map_err(|e| format!("node_cidr: {e}"))?;
        if !block.contains(address) {
            return Err(format!(
                "address {address} is outside its node_cidr {block}"
            ));
        }
        Ok(Allocation {
            address,
            block,
            pool: p.pool,
            node: p.node,
            owner: owner_from_proto(p.owner.unwrap_or_default()),
            allocate_time: system_time(p.allocate_time),
        })
    }
}

impl Spec for Claim {
    const KIND: &'static str = "IPAllocation";
    const MESSAGE: &'static str = "kino.ipam.v1.OwnerClaim";
    type Proto = pb::OwnerClaim;

    fn to_proto(&self) -> pb::OwnerClaim {
        pb::OwnerClaim {
            owner: Some(owner_to_proto(&self.owner)),
            family: family_to_proto(self.family) as i32,
            pool: self.pool.clone(),
            node: self.node.clone(),
            address: self.address.to_string(),
            bound: self.bound,
            update_time: Some(timestamp(self.update_time)),
        }
    }

    fn from_proto(p: pb::OwnerClaim) -> Result<Self, String> {
        let family = family_from_proto(p.family()).ok_or("family is not set")?;
        let address: IpAddr = p
            .address
            .parse()
            .map_err(|_| format!("address {:?} is not an IP address", p.address))?;
        Ok(Claim {
            owner: owner_from_proto(p.owner.unwrap_or_default()),
            family,
            pool: p.pool,
            node: p.node,
            address,
            bound: p.bound,
            update_time: system_time(p.update_time),
        })
    }
}

/// Domain family → protobuf.
pub fn family_to_proto(family: Family) -> IpFamily {
    match family {
        Family::V4 => IpFamily::Ipv4,
        Family::V6 => IpFamily::Ipv6,
    }
}

/// Protobuf family → domain; `None` when unspecified.
pub fn family_from_proto(family: IpFamily) -> Option<Family> {
    match family {
        IpFamily::Ipv4 => Some(Family::V4),
        IpFamily::Ipv6 => Some(Family::V6),
        IpFamily::Unspecified => None,
    }
}

/// Domain owner → protobuf.
pub fn owner_to_proto(owner: &Owner) -> pb::Owner {
    pb::Owner {
        container_id: owner.container_id.clone(),
        ifname: owner.ifname.clone(),
        pod_namespace: owner.pod_namespace.clone(),
        pod_name: owner.pod_name.clone(),
    }
}

/// Protobuf owner → domain (unvalidated).
pub fn owner_from_proto(owner: pb::Owner) -> Owner {
    Owner {
        container_id: owner.container_id,
        ifname: owner.ifname,
        pod_namespace: owner.pod_namespace,
        pod_name: owner.pod_name,
    }
}

/// A time as a protobuf timestamp.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as a time (the epoch when unset or negative).
pub fn system_time(ts: Option<prost_types::Timestamp>) -> SystemTime {
    match ts {
        Some(ts) if ts.seconds >= 0 => {
            UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos.clamp(0, 999_999_999) as u32)
        }
        _ => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let now = system_time(Some(timestamp(SystemTime::now())));
        let block: IpPrefix = "10.0.1.0/24".parse().unwrap();
        let alloc = Allocation {
            address: "10.0.1.7".parse().unwrap(),
            block,
            pool: "default".into(),
            node: "n1".into(),
            owner: Owner {
                container_id: "c".into(),
                ifname: "eth0".into(),
                pod_namespace: "ns".into(),
                pod_name: "p".into(),
            },
            allocate_time: now,
        };
        let proto = alloc.to_proto();
        assert_eq!(proto.gateway, "10.0.1.1");
        assert_eq!(proto.prefix_length, 24);
        assert_eq!(Allocation::from_proto(proto), Ok(alloc.clone()));
        let claim = Claim {
            owner: alloc.owner.clone(),
            family: Family::V4,
            pool: "default".into(),
            node: "n1".into(),
            address: alloc.address,
            bound: true,
            update_time: now,
        };
        assert_eq!(Claim::from_proto(claim.to_proto()), Ok(claim));
        let nodes = NodeBlocks {
            pool: "default".into(),
            node: "n1".into(),
            blocks: vec![NodeBlock {
                cidr: block,
                allocate_time: now,
            }],
            releasing: false,
        };
        assert_eq!(NodeBlocks::from_proto(nodes.to_proto()), Ok(nodes));
    }
}
