//! Who may call kino-policy-compiler: its authorization table, enforced for every request
//! by the service kit's layer (`kino_service_kit::authz`). Admin may call every method
//! listed; a method missing here is denied to everyone.

use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::principal::Role;

const AGENT: Access = Access::Roles(&[Role::Agent]);
const OPERATOR: Access = Access::Roles(&[Role::Operator]);
const READ: Access = Access::Authenticated;

/// `kino.policy.v1.PolicyService`.
pub static AUTHORIZATION: &[MethodRule] = &[
    // What the cluster enforces: operators (the Kubernetes operator feeding NetworkPolicies)
    // and admin (`kino policy import|delete`).
    ("/kino.policy.v1.PolicyService/ImportPolicies", OPERATOR),
    ("/kino.policy.v1.PolicyService/DeletePolicy", OPERATOR),
    // Validation stores nothing.
    ("/kino.policy.v1.PolicyService/ValidatePolicies", READ),
    ("/kino.policy.v1.PolicyService/GetPolicy", READ),
    ("/kino.policy.v1.PolicyService/ListPolicies", READ),
    // Identities of endpoints: allocated and released by the agents that run them.
    ("/kino.policy.v1.PolicyService/AllocateIdentity", AGENT),
    ("/kino.policy.v1.PolicyService/ReleaseIdentity", AGENT),
    ("/kino.policy.v1.PolicyService/GetIdentity", READ),
    ("/kino.policy.v1.PolicyService/ListIdentities", READ),
    // The compiled policy the agents apply, and explanations of it.
    ("/kino.policy.v1.PolicyService/WatchEndpointPolicy", READ),
    ("/kino.policy.v1.PolicyService/GetEndpointPolicy", READ),
    ("/kino.policy.v1.PolicyService/TracePolicy", READ),
    // Which endpoints enforce a revision (`kino policy import --wait`, `kino status`).
    ("/kino.policy.v1.PolicyService/GetPolicyRealization", READ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_method_has_a_rule() {
        let unlisted = kino_service_kit::authz::unlisted_methods(
            AUTHORIZATION,
            "kino.policy.v1.PolicyService",
        );
        assert!(
            unlisted.is_empty(),
            "no authorization rule for {unlisted:?}"
        );
    }
}
