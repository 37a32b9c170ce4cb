//! Who may call the datastore gateway, and who may write which kind.
//!
//! Two levels, both declarative: [`AUTHORIZATION`], the method table the service kit's layer
//! enforces for every request (who may call Create at all), and [`KIND_RULES`], the per-kind
//! rules the gRPC adapter applies to each write (who may create, update or delete a Node, an
//! IPAllocation, …). Reads (Get, List, Watch) are open to any authenticated caller: every
//! component needs the cluster's picture, as every Cilium agent reads every CiliumEndpoint.
//! Admin may do anything. An agent writes only its own node's records: the Node and
//! NodeHealth named after its node and the Endpoints in the namespace of its node.
//! Leases are kept alive or revoked only by the identity that granted them (or admin); the
//! gateway remembers the granter next to the lease (see `Gateway::grant_lease`).

use std::fmt;

use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::principal::{Caller, Role};

use crate::resource::ResourceKey;

const WRITERS: Access = Access::Roles(&[Role::Agent, Role::Ipam, Role::PolicyCompiler]);
const LEASE_HOLDERS: Access = Access::Roles(&[Role::Agent, Role::Operator]);
const READ: Access = Access::Authenticated;

/// `kino.datastore.v1.DatastoreService`: the method level. Writes are narrowed per kind by
/// [`KIND_RULES`], leases per granter.
pub static AUTHORIZATION: &[MethodRule] = &[
    ("/kino.datastore.v1.DatastoreService/Get", READ),
    ("/kino.datastore.v1.DatastoreService/List", READ),
    ("/kino.datastore.v1.DatastoreService/Watch", READ),
    ("/kino.datastore.v1.DatastoreService/Status", READ),
    ("/kino.datastore.v1.DatastoreService/Create", WRITERS),
    ("/kino.datastore.v1.DatastoreService/Update", WRITERS),
    ("/kino.datastore.v1.DatastoreService/Delete", WRITERS),
    // A node's liveness (the agent) and the operator's leader election.
    (
        "/kino.datastore.v1.DatastoreService/GrantLease",
        LEASE_HOLDERS,
    ),
    (
        "/kino.datastore.v1.DatastoreService/KeepAliveLease",
        LEASE_HOLDERS,
    ),
    (
        "/kino.datastore.v1.DatastoreService/RevokeLease",
        LEASE_HOLDERS,
    ),
    // Discarding history breaks every watcher behind it: admin only.
    (
        "/kino.datastore.v1.DatastoreService/Compact",
        Access::Roles(&[]),
    ),
];

/// A write verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Create.
    Create,
    /// Update.
    Update,
    /// Delete.
    Delete,
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Write::Create => "create",
            Write::Update => "update",
            Write::Delete => "delete",
        })
    }
}

/// Someone who may write a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Any caller of this role.
    Role(Role),
    /// An agent, for the resource named after its node (`Node/<node>`).
    AgentNamedAfterItsNode,
    /// An agent, for resources in the namespace of its node (`Endpoint <node>/<id>`).
    AgentInItsNodeNamespace,
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Writer::Role(role) => write!(f, "{role}"),
            Writer::AgentNamedAfterItsNode => {
                f.write_str("the agent of the node it is named after")
            }
            Writer::AgentInItsNodeNamespace => {
                f.write_str("the agent of the node that is its namespace")
            }
        }
    }
}

/// Who may create/update and who may delete one kind.
#[derive(Debug, Clone, Copy)]
pub struct KindRule {
    /// The kind.
    pub kind: &'static str,
    /// Who may create and update it.
    pub write: &'static [Writer],
    /// Who may delete it.
    pub delete: &'static [Writer],
}

const OWN_NODE: &[Writer] = &[Writer::AgentNamedAfterItsNode];
/// Explicit node deletion (kino-ipam's NodeService) removes a node's records.
const OWN_NODE_OR_IPAM: &[Writer] = &[Writer::AgentNamedAfterItsNode, Writer::Role(Role::Ipam)];
const OWN_ENDPOINTS: &[Writer] = &[Writer::AgentInItsNodeNamespace];
const OWN_ENDPOINTS_OR_IPAM: &[Writer] =
    &[Writer::AgentInItsNodeNamespace, Writer::Role(Role::Ipam)];
const IPAM: &[Writer] = &[Writer::Role(Role::Ipam)];
const COMPILER: &[Writer] = &[Writer::Role(Role::PolicyCompiler)];

/// Per kind: who writes it. A kind without a rule is written by admin only.
pub static KIND_RULES: &[KindRule] = &[
    KindRule {
        // kino-ipam marks a node it is deleting (`deletion_time`), so that its agent waits
        // and an interrupted deletion is finished.
        kind: "Node",
        write: OWN_NODE_OR_IPAM,
        delete: OWN_NODE_OR_IPAM,
    },
    KindRule {
        kind: "NodeHealth",
        write: OWN_NODE,
        delete: OWN_NODE_OR_IPAM,
    },
    KindRule {
        // What the node's datapath enforces (`kino policy import --wait`); gone with the node.
        kind: "PolicyRealization",
        write: OWN_NODE,
        delete: OWN_NODE_OR_IPAM,
    },
    KindRule {
        kind: "Endpoint",
        write: OWN_ENDPOINTS,
        delete: OWN_ENDPOINTS_OR_IPAM,
    },
    KindRule {
        kind: "IPPool",
        write: IPAM,
        delete: IPAM,
    },
    KindRule {
        kind: "NodeAllocation",
        write: IPAM,
        delete: IPAM,
    },
    KindRule {
        kind: "IPAllocation",
        write: IPAM,
        delete: IPAM,
    },
    // Services (kino.service.v1) and their frontend and id claims: kino-ipam serves the
    // API and is their only writer; every agent reads them.
    KindRule {
        kind: "Service",
        write: IPAM,
        delete: IPAM,
    },
    KindRule {
        kind: "ServiceFrontend",
        write: IPAM,
        delete: IPAM,
    },
    KindRule {
        kind: "ServiceFrontendId",
        write: IPAM,
        delete: IPAM,
    },
    KindRule {
        kind: "Identity",
        write: COMPILER,
        delete: COMPILER,
    },
    KindRule {
        kind: "Policy",
        write: COMPILER,
        delete: COMPILER,
    },
    KindRule {
        kind: "IPCacheEntry",
        write: COMPILER,
        delete: COMPILER,
    },
];

/// A write the kind rules refuse; the message names the caller, the write and who may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Whether `caller` may `write` the resource `key`.
pub fn authorize_write(caller: &Caller, write: Write, key: &ResourceKey) -> Result<(), Denied> {
    if caller.is_admin() {
        return Ok(());
    }
    let Some(rule) = KIND_RULES.iter().find(|rule| rule.kind == key.kind()) else {
        return Err(Denied(format!(
            "{caller} may not {write} {key}: kind {} has no writer but admin",
            key.kind()
        )));
    };
    let writers = match write {
        Write::Create | Write::Update => rule.write,
        Write::Delete => rule.delete,
    };
    if writers.iter().any(|writer| admits(writer, caller, key)) {
        return Ok(());
    }
    let who: Vec<String> = writers.iter().map(ToString::to_string).collect();
    let why = match (caller.role(), caller.node()) {
        (Some(Role::Agent), Some(node))
            if writers.iter().any(|w| !matches!(w, Writer::Role(_))) =>
        {
            format!("; an agent writes only its own node's ({node:?}) records")
        }
        _ => String::new(),
    };
    Err(Denied(format!(
        "{caller} may not {write} {key}: {} {}s are written by {} (and admin){why}",
        write,
        key.kind(),
        who.join(", ")
    )))
}

fn admits(writer: &Writer, caller: &Caller, key: &ResourceKey) -> bool {
    match writer {
        Writer::Role(role) => caller.role() == Some(*role),
        Writer::AgentNamedAfterItsNode => {
            caller.role() == Some(Role::Agent)
                && key.namespace().is_empty()
                && caller.node() == Some(key.name())
        }
        Writer::AgentInItsNodeNamespace => {
            caller.role() == Some(Role::Agent) && caller.node() == Some(key.namespace())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_service_kit::principal::Principal;

    fn caller(role: Role, name: &str) -> Caller {
        Caller::Certificate(Principal {
            name: name.to_owned(),
            role: Some(role),
            organizations: vec![role.as_str().to_owned()],
        })
    }

    fn key(kind: &str, namespace: &str, name: &str) -> ResourceKey {
        ResourceKey::new("key", kind, namespace, name).expect("valid key")
    }

    #[test]
    fn every_gateway_method_has_a_rule() {
        let unlisted = kino_service_kit::authz::unlisted_methods(
            AUTHORIZATION,
            "kino.datastore.v1.DatastoreService",
        );
        assert!(
            unlisted.is_empty(),
            "no authorization rule for {unlisted:?}"
        );
    }

    #[test]
    fn every_kind_has_a_writer_rule() {
        for kind in crate::resource::KINDS {
            assert!(
                KIND_RULES.iter().any(|rule| rule.kind == *kind),
                "kind {kind} has no rule in KIND_RULES"
            );
        }
    }

    #[test]
    fn an_agent_writes_its_own_node_records_only() {
        let agent = caller(Role::Agent, "kino-agent:n1");
        for write in [Write::Create, Write::Update, Write::Delete] {
            assert_eq!(
                authorize_write(&agent, write, &key("Node", "", "n1")),
                Ok(())
            );
            assert_eq!(
                authorize_write(&agent, write, &key("Endpoint", "n1", "7")),
                Ok(())
            );
            let denied = authorize_write(&agent, write, &key("Endpoint", "n2", "7"))
                .expect_err("another node's endpoint");
            assert!(denied.0.contains("\"kino-agent:n1\""), "{denied}");
            assert!(denied.0.contains("Endpoint n2/7"), "{denied}");
            assert!(denied.0.contains("own node's (\"n1\")"), "{denied}");
            assert!(authorize_write(&agent, write, &key("Node", "", "n2")).is_err());
            assert!(authorize_write(&agent, write, &key("Identity", "", "256")).is_err());
            assert!(
                authorize_write(&agent, write, &key("IPAllocation", "default", "10.0.0.2"))
                    .is_err()
            );
        }
    }

    #[test]
    fn only_ipam_writes_services_and_their_claims() {
        let ipam = caller(Role::Ipam, "ipam");
        let others = [
            caller(Role::Agent, "kino-agent:n1"),
            caller(Role::PolicyCompiler, "policy-compiler"),
            caller(Role::Operator, "operator"),
            caller(Role::FlowRelay, "flow-relay"),
        ];
        for k in [
            key("Service", "default", "web"),
            key("ServiceFrontend", "", "tcp-172.20.0.10-80"),
            key("ServiceFrontend", "", "tcp--30080"),
            key("ServiceFrontendId", "", "1"),
        ] {
            for write in [Write::Create, Write::Update, Write::Delete] {
                assert_eq!(authorize_write(&ipam, write, &k), Ok(()), "{write} {k}");
                assert_eq!(
                    authorize_write(&caller(Role::Admin, "admin"), write, &k),
                    Ok(()),
                    "admin {write} {k}"
                );
                for other in &others {
                    let denied =
                        authorize_write(other, write, &k).expect_err("only ipam writes services");
                    assert!(denied.0.contains("written by ipam"), "{denied}");
                }
            }
        }
    }

    #[test]
    fn services_write_their_own_kinds_and_ipam_may_delete_nodes() {
        let ipam = caller(Role::Ipam, "ipam");
        let compiler = caller(Role::PolicyCompiler, "policy-compiler");
        let k = key("IPAllocation", "default", "10.0.0.2");
        assert_eq!(authorize_write(&ipam, Write::Create, &k), Ok(()));
        assert!(authorize_write(&compiler, Write::Create, &k).is_err());
        let identity = key("Identity", "", "256");
        assert_eq!(authorize_write(&compiler, Write::Update, &identity), Ok(()));
        let denied = authorize_write(&ipam, Write::Create, &identity).expect_err("not ipam's");
        assert!(denied.0.contains("written by policy-compiler"), "{denied}");
        // Explicit node deletion: ipam marks the Node and deletes the node's records; it
        // writes no other record of a node.
        assert_eq!(
            authorize_write(&ipam, Write::Delete, &key("Node", "", "n1")),
            Ok(())
        );
        assert_eq!(
            authorize_write(&ipam, Write::Delete, &key("Endpoint", "n1", "3")),
            Ok(())
        );
        assert_eq!(
            authorize_write(&ipam, Write::Update, &key("Node", "", "n1")),
            Ok(())
        );
        assert!(authorize_write(&ipam, Write::Create, &key("NodeHealth", "", "n1")).is_err());
        assert!(authorize_write(&ipam, Write::Update, &key("Endpoint", "n1", "3")).is_err());
        // The operator writes through the services' APIs, not the datastore.
        let operator = caller(Role::Operator, "operator");
        assert!(authorize_write(&operator, Write::Delete, &key("Node", "", "n1")).is_err());
        // Admin may do anything.
        assert_eq!(
            authorize_write(&caller(Role::Admin, "admin"), Write::Delete, &identity),
            Ok(())
        );
    }
}
