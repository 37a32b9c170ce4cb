//! Who may call the relay: the same as the agents' flow observers it reads (flows reveal
//! every pod's traffic), enforced by the service kit's layer for every request.

use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::principal::Role;

const OPERATOR: Access = Access::Roles(&[Role::Operator]);

/// `kino.flow.v1.FlowService` as the relay serves it.
pub static AUTHORIZATION: &[MethodRule] = &[
    ("/kino.flow.v1.FlowService/GetFlows", OPERATOR),
    ("/kino.flow.v1.FlowService/ServerStatus", OPERATOR),
];

#[cfg(test)]
mod tests {
    use super::*;
    use kino_service_kit::authz::unlisted_methods;

    #[test]
    fn every_flow_method_has_a_rule() {
        let unlisted = unlisted_methods(AUTHORIZATION, "kino.flow.v1.FlowService");
        assert!(
            unlisted.is_empty(),
            "no authorization rule for {unlisted:?}"
        );
    }
}
