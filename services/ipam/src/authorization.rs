//! Who may call kino-ipam: its authorization table, enforced for every request by the
//! service kit's layer (`kino_service_kit::authz`). Admin may call every method listed;
//! a method missing here is denied to everyone. The node-scoped methods also hold an
//! agent to its own node (`grpc.rs`, with `Caller::check_node`).

use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::principal::Role;

const AGENT: Access = Access::Roles(&[Role::Agent]);
const OPERATOR: Access = Access::Roles(&[Role::Operator]);
const READ: Access = Access::Authenticated;

/// `kino.ipam.v1.IpamService` and `kino.node.v1.NodeService` (both served by kino-ipam).
pub static AUTHORIZATION: &[MethodRule] = &[
    // Pools are the cluster's address plan: operators (and admin) only.
    ("/kino.ipam.v1.IpamService/CreatePool", OPERATOR),
    ("/kino.ipam.v1.IpamService/DeletePool", OPERATOR),
    ("/kino.ipam.v1.IpamService/GetPool", READ),
    ("/kino.ipam.v1.IpamService/ListPools", READ),
    // A node's pod CIDRs: its agent takes them; only an explicit node deletion gives them
    // back (the operator, or admin with `kino node delete`).
    ("/kino.ipam.v1.IpamService/AllocateNodeCidrs", AGENT),
    ("/kino.ipam.v1.IpamService/ReleaseNodeCidrs", OPERATOR),
    ("/kino.ipam.v1.IpamService/GetNodeCidrs", READ),
    // Endpoint addresses: the agent of the endpoint's node.
    ("/kino.ipam.v1.IpamService/Allocate", AGENT),
    ("/kino.ipam.v1.IpamService/Release", AGENT),
    ("/kino.ipam.v1.IpamService/Gc", AGENT),
    ("/kino.ipam.v1.IpamService/ListAllocations", READ),
    ("/kino.ipam.v1.IpamService/PoolStatus", READ),
    // Nodes (issue 11 item 1): anyone authenticated reads, deletion is an operator's act.
    ("/kino.node.v1.NodeService/ListNodes", READ),
    ("/kino.node.v1.NodeService/GetNode", READ),
    ("/kino.node.v1.NodeService/DeleteNode", OPERATOR),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ipam_and_node_method_has_a_rule() {
        for service in ["kino.ipam.v1.IpamService", "kino.node.v1.NodeService"] {
            let unlisted = kino_service_kit::authz::unlisted_methods(AUTHORIZATION, service);
            assert!(
                unlisted.is_empty(),
                "no authorization rule for {unlisted:?}"
            );
        }
    }
}
