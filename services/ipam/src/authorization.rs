//! Who may call kino-ipam: its authorization table, enforced for every request by the
//! service kit's layer (`kino_service_kit::authz`). Admin may call every method listed;
//! a method missing here is denied to everyone. The node-scoped methods also hold an
//! agent to its own node (`grpc.rs`, with `Caller::check_node`).

use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::principal::Role;

const AGENT: Access = Access::Roles(&[Role::Agent]);
const OPERATOR: Access = Access::Roles(&[Role::Operator]);
/// What every agent needs of the services (it watches their records through the gateway;
/// these are for a look-up and the service network at start-up), and the operator.
const AGENT_OR_OPERATOR: Access = Access::Roles(&[Role::Agent, Role::Operator]);
const READ: Access = Access::Authenticated;

/// `kino.ipam.v1.IpamService`, `kino.node.v1.NodeService` and
/// `kino.service.v1.LoadBalancingService` (all served by kino-ipam).
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
    // Services (issue 14): the operator (its Kubernetes feed) and admin change them;
    // agents read them and the service network.
    (
        "/kino.service.v1.LoadBalancingService/CreateService",
        OPERATOR,
    ),
    (
        "/kino.service.v1.LoadBalancingService/UpdateService",
        OPERATOR,
    ),
    (
        "/kino.service.v1.LoadBalancingService/DeleteService",
        OPERATOR,
    ),
    (
        "/kino.service.v1.LoadBalancingService/GetService",
        AGENT_OR_OPERATOR,
    ),
    (
        "/kino.service.v1.LoadBalancingService/ListServices",
        AGENT_OR_OPERATOR,
    ),
    (
        "/kino.service.v1.LoadBalancingService/GetServiceNetwork",
        AGENT_OR_OPERATOR,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ipam_node_and_service_method_has_a_rule() {
        for service in [
            "kino.ipam.v1.IpamService",
            "kino.node.v1.NodeService",
            "kino.service.v1.LoadBalancingService",
        ] {
            let unlisted = kino_service_kit::authz::unlisted_methods(AUTHORIZATION, service);
            assert!(
                unlisted.is_empty(),
                "no authorization rule for {unlisted:?}"
            );
        }
    }
}
