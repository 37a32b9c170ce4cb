//! The reference evaluator: the policy semantics (DESIGN §4, module docs of
//! [`crate::compile`]) read directly off the policies for one flow, with no identities,
//! selector cache, CIDR identities, ipcache, precedence resolution or lookup order. It is
//! slow and obviously correct on purpose; the property tests check the compiler against it.

use std::net::IpAddr;

use crate::compile::{CompilerConfig, EnforcementMode};
use crate::labels::Labels;
use crate::policy::model::{
    CidrRule, Direction, Entity, K8sPeer, K8sRule, PeerRule, Policy, PolicySpec, PortRule, Protocol,
};
use crate::policy_map::Verdict;
use crate::selector::{Operator, Selector};

/// The other side of a flow, as it really is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A cluster endpoint with these labels.
    Endpoint(Labels),
    /// The local node.
    Host,
    /// Another node.
    RemoteNode,
    /// An address outside the cluster.
    World(IpAddr),
}

/// One side's question: may `local` send (egress) / receive (ingress) this traffic?
#[derive(Clone, Debug)]
pub struct Question<'a> {
    /// The endpoint whose policy applies.
    pub local: &'a Labels,
    /// Direction seen from it.
    pub direction: Direction,
    /// The other side.
    pub remote: &'a Peer,
    /// IANA protocol.
    pub protocol: u8,
    /// Destination port (0 without ports).
    pub port: u16,
}

/// The verdict of the policies for one side of a flow.
pub fn verdict(config: &CompilerConfig, policies: &[Policy], q: &Question) -> Verdict {
    if config.mode == EnforcementMode::Never {
        return Verdict::Allow;
    }
    // Every (allow peers, deny peers, default deny) part of a rule selecting `local` in
    // this direction.
    let mut parts: Vec<Part> = Vec::new();
    for policy in policies {
        let ns = &policy.key.namespace;
        match &policy.spec {
            PolicySpec::Kino(kino) => {
                for rule in &kino.rules {
                    let in_ns = ns.is_empty() || q.local.namespace() == Some(ns.as_str());
                    if !(in_ns && selects(&rule.endpoint_selector, q.local)) {
                        continue;
                    }
                    let (allow, deny, dd) = match q.direction {
                        Direction::Ingress => {
                            (&rule.ingress, &rule.ingress_deny, rule.default_deny.ingress)
                        }
                        Direction::Egress => {
                            (&rule.egress, &rule.egress_deny, rule.default_deny.egress)
                        }
                    };
                    if allow.is_empty() && deny.is_empty() {
                        continue;
                    }
                    parts.push(Part::Kino {
                        namespace: ns,
                        allow,
                        deny,
                        default_deny: dd != Some(false),
                    });
                }
            }
            PolicySpec::K8s(k8s) => {
                if q.local.namespace() != Some(ns.as_str()) || !selects(&k8s.pod_selector, q.local)
                {
                    continue;
                }
                let (on, rules) = match q.direction {
                    Direction::Ingress => (k8s.ingress_type, &k8s.ingress),
                    Direction::Egress => (k8s.egress_type, &k8s.egress),
                };
                if on {
                    parts.push(Part::K8s {
                        namespace: ns,
                        rules,
                    });
                }
            }
        }
    }
    let enforced = config.mode == EnforcementMode::Always || !parts.is_empty();
    if !enforced {
        return Verdict::Allow;
    }
    let denied = parts.iter().any(|p| match p {
        Part::Kino {
            namespace, deny, ..
        } => deny.iter().any(|r| kino_matches(r, namespace, q)),
        Part::K8s { .. } => false,
    });
    if denied {
        return Verdict::Deny;
    }
    let allowed = parts.iter().any(|p| match p {
        Part::Kino {
            namespace, allow, ..
        } => allow.iter().any(|r| kino_matches(r, namespace, q)),
        Part::K8s { namespace, rules } => rules.iter().any(|r| k8s_matches(r, namespace, q)),
    });
    let no_default_deny = config.mode == EnforcementMode::Default
        && !parts.is_empty()
        && parts.iter().all(|p| {
            matches!(
                p,
                Part::Kino {
                    default_deny: false,
                    ..
                }
            )
        });
    let localhost =
        q.direction == Direction::Ingress && config.allow_localhost && *q.remote == Peer::Host;
    if allowed || no_default_deny || localhost {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

enum Part<'a> {
    Kino {
        namespace: &'a str,
        allow: &'a [PeerRule],
        deny: &'a [PeerRule],
        default_deny: bool,
    },
    K8s {
        namespace: &'a str,
        rules: &'a [K8sRule],
    },
}

/// Does the selector select these labels? Each requirement against the labels of its key
/// (of the key's source, or of every source when it names none).
fn selects(selector: &Selector, labels: &Labels) -> bool {
    selector.requirements().all(|req| {
        let values: Vec<String> = labels
            .iter()
            .filter(|l| {
                l.key == req.key.key && req.key.source.as_ref().is_none_or(|s| *s == l.source)
            })
            .map(|l| l.value)
            .collect();
        let any_in = values.iter().any(|v| req.values.contains(v));
        match req.operator {
            Operator::In => any_in,
            Operator::NotIn => !any_in,
            Operator::Exists => !values.is_empty(),
            Operator::DoesNotExist => values.is_empty(),
        }
    })
}

fn ports_match(ports: &[PortRule], protocol: u8, port: u16) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            let last = if p.end_port == 0 { p.port } else { p.end_port };
            let port_ok = p.port == 0 || (p.port <= port && port <= last);
            let proto_ok = match p.protocol {
                Protocol::Any if p.port == 0 => true,
                Protocol::Any => [6, 17, 132].contains(&protocol),
                other => other.number() == protocol,
            };
            port_ok && proto_ok
        })
}

fn cidr_matches(rule: &CidrRule, remote: &Peer) -> bool {
    matches!(remote, Peer::World(ip) if rule.contains(*ip))
}

fn kino_matches(rule: &PeerRule, namespace: &str, q: &Question) -> bool {
    if !ports_match(&rule.ports, q.protocol, q.port) {
        return false;
    }
    if rule.has_no_peer() {
        return !rule.ports.is_empty();
    }
    let by_endpoint = rule.endpoints.iter().any(|s| match q.remote {
        Peer::Endpoint(labels) => {
            let ns_ok = namespace.is_empty()
                || s.names_namespace()
                || labels.namespace() == Some(namespace);
            ns_ok && selects(s, labels)
        }
        _ => false,
    });
    let by_cidr = rule
        .cidrs
        .iter()
        .any(|c| matches!(q.remote, Peer::World(ip) if c.contains(*ip)));
    let by_cidr_set = rule.cidr_sets.iter().any(|c| cidr_matches(c, q.remote));
    let by_entity = rule.entities.iter().any(|e| match e {
        Entity::Host => *q.remote == Peer::Host,
        Entity::RemoteNode => *q.remote == Peer::RemoteNode,
        Entity::World => matches!(q.remote, Peer::World(_)),
        Entity::Cluster => !matches!(q.remote, Peer::World(_)),
        Entity::All => true,
    });
    by_endpoint || by_cidr || by_cidr_set || by_entity
}

fn k8s_matches(rule: &K8sRule, namespace: &str, q: &Question) -> bool {
    if !ports_match(&rule.ports, q.protocol, q.port) {
        return false;
    }
    if rule.peers.is_empty() {
        return true;
    }
    rule.peers.iter().any(|peer| match peer {
        K8sPeer::IpBlock(block) => cidr_matches(block, q.remote),
        K8sPeer::Selectors { pod, namespace: ns } => match q.remote {
            Peer::Endpoint(labels) => {
                let ns_ok = match ns {
                    Some(sel) => sel.matches_map(&labels.namespace_labels()),
                    None => labels.namespace() == Some(namespace),
                };
                ns_ok && pod.as_ref().is_none_or(|s| selects(s, labels))
            }
            _ => false,
        },
    })
}
