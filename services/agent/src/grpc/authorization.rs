//! Who may call the agent: the authorization tables of its two servers, enforced for every
//! request by the service kit's layer (`kino_service_kit::authz`).
//!
//! The local API listens only on a unix socket of mode 0600, so its callers (kino-cni run by
//! the container runtime, `kino` as root) are the socket's owner and count as admin; its
//! table still lists every method, so an RPC added later is closed until listed. The flow
//! observer listens on TCP with mTLS: flows reveal every pod's traffic, so only operators,
//! admin and the cluster's flow relay (`kino-flow-relay`, which serves them merged to the
//! same callers) read them.

use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::principal::Role;

const ADMIN: Access = Access::Roles(&[]);
const FLOW_READERS: Access = Access::Roles(&[Role::Operator, Role::FlowRelay]);

/// `kino.agent.v1.AgentService` (unix socket).
pub static AGENT_API: &[MethodRule] = &[
    ("/kino.agent.v1.AgentService/CreateEndpoint", ADMIN),
    ("/kino.agent.v1.AgentService/DeleteEndpoint", ADMIN),
    ("/kino.agent.v1.AgentService/CheckEndpoint", ADMIN),
    ("/kino.agent.v1.AgentService/ListEndpoints", ADMIN),
    ("/kino.agent.v1.AgentService/GetEndpoint", ADMIN),
    ("/kino.agent.v1.AgentService/UpdateEndpointLabels", ADMIN),
    ("/kino.agent.v1.AgentService/Status", ADMIN),
    ("/kino.agent.v1.AgentService/Gc", ADMIN),
    ("/kino.agent.v1.AgentService/ListBpfEndpoints", ADMIN),
    ("/kino.agent.v1.AgentService/ListBpfIpcache", ADMIN),
    ("/kino.agent.v1.AgentService/ListBpfPolicy", ADMIN),
    ("/kino.agent.v1.AgentService/ListBpfConntrack", ADMIN),
    ("/kino.agent.v1.AgentService/ListBpfLoadBalancer", ADMIN),
];

/// `kino.flow.v1.FlowService` (TCP, mTLS).
pub static FLOWS: &[MethodRule] = &[
    ("/kino.flow.v1.FlowService/GetFlows", FLOW_READERS),
    ("/kino.flow.v1.FlowService/ServerStatus", FLOW_READERS),
];

#[cfg(test)]
mod tests {
    use super::*;
    use kino_service_kit::authz::unlisted_methods;

    #[test]
    fn every_agent_and_flow_method_has_a_rule() {
        let unlisted = unlisted_methods(AGENT_API, "kino.agent.v1.AgentService");
        assert!(
            unlisted.is_empty(),
            "no authorization rule for {unlisted:?}"
        );
        let unlisted = unlisted_methods(FLOWS, "kino.flow.v1.FlowService");
        assert!(
            unlisted.is_empty(),
            "no authorization rule for {unlisted:?}"
        );
    }
}
