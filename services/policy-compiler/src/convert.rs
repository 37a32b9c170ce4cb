//! Conversions between the domain types and `kino.policy.v1` / `kino.types.v1` messages:
//! the stored forms (policies, identities' labels, times) the service and the datastore
//! follower share, and the compiled policy the API returns. Stored policies are read back
//! through [`policy_from_proto`], which checks what it reads (a record written by something
//! else must not become a wider policy). The stream's messages are converted in the gRPC
//! layer (`grpc/watch.rs`), next to the only code that sends them.

use std::collections::BTreeSet;
use std::time::SystemTime;

use kino_api::policy as pb;
use kino_api::quote::quote;
use kino_api::types as pbt;

use crate::cidr::Cidr;
use crate::labels::{Label, Labels};
use crate::policy::model::{
    CidrRule, DefaultDeny, Direction, Entity, K8sPeer, K8sPolicy, K8sRule, KinoPolicy, KinoRule,
    PeerRule, Policy, PolicyKey, PolicyKind, PolicySpec, PortRule, Protocol, RuleRef, SourceFormat,
};
use crate::policy::{DocumentError, validate};
use crate::policy_map::{CompiledPolicy, Enforcement, MapEntry, MapKey, Verdict};
use crate::selector::{Operator, Requirement, Selector, SelectorKey};

// ---- labels ------------------------------------------------------------------------------

/// Proto labels → domain (empty sources read as `unspec`).
pub fn labels_from_proto(labels: &pbt::Labels) -> Labels {
    labels
        .labels
        .iter()
        .map(|l| Label::new(&l.source, &l.key, &l.value))
        .collect()
}

/// Domain labels → proto, sorted.
pub fn labels_to_proto(labels: &Labels) -> pbt::Labels {
    pbt::Labels {
        labels: labels
            .iter()
            .map(|l| pbt::Label {
                key: l.key,
                value: l.value,
                source: l.source,
            })
            .collect(),
    }
}

// ---- policies ----------------------------------------------------------------------------

fn protocol_to_proto(p: Protocol) -> i32 {
    let p = match p {
        Protocol::Any => pbt::Protocol::Unspecified,
        Protocol::Tcp => pbt::Protocol::Tcp,
        Protocol::Udp => pbt::Protocol::Udp,
        Protocol::Sctp => pbt::Protocol::Sctp,
        Protocol::Icmp => pbt::Protocol::Icmp,
        Protocol::Icmpv6 => pbt::Protocol::Icmpv6,
    };
    p as i32
}

/// A proto protocol number → domain.
pub fn protocol_from_proto(p: i32) -> Result<Protocol, String> {
    u8::try_from(p)
        .ok()
        .and_then(Protocol::from_number)
        .ok_or_else(|| format!("{p} is not a protocol"))
}

/// Domain direction → proto.
pub fn direction_to_proto(d: Direction) -> i32 {
    match d {
        Direction::Ingress => pbt::Direction::Ingress as i32,
        Direction::Egress => pbt::Direction::Egress as i32,
    }
}

fn direction_from_proto(d: i32) -> Result<Direction, String> {
    match pbt::Direction::try_from(d) {
        Ok(pbt::Direction::Ingress) => Ok(Direction::Ingress),
        Ok(pbt::Direction::Egress) => Ok(Direction::Egress),
        _ => Err(format!("{d} is not a direction")),
    }
}

/// Domain verdict → proto.
pub fn verdict_to_proto(v: Verdict) -> i32 {
    match v {
        Verdict::Allow => pbt::PolicyVerdict::Allow as i32,
        Verdict::Deny => pbt::PolicyVerdict::Deny as i32,
    }
}

/// Domain selector → proto.
pub fn selector_to_proto(s: &Selector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: s.match_labels.clone().into_iter().collect(),
        match_expressions: s
            .match_expressions
            .iter()
            .map(|r| pb::LabelSelectorRequirement {
                key: r.key.to_string(),
                operator: match r.operator {
                    Operator::In => pb::SelectorOperator::In,
                    Operator::NotIn => pb::SelectorOperator::NotIn,
                    Operator::Exists => pb::SelectorOperator::Exists,
                    Operator::DoesNotExist => pb::SelectorOperator::DoesNotExist,
                } as i32,
                values: r.values.iter().cloned().collect(),
            })
            .collect(),
    }
}

/// Proto selector → domain.
pub fn selector_from_proto(s: &pb::LabelSelector) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for r in &s.match_expressions {
        let operator = match pb::SelectorOperator::try_from(r.operator) {
            Ok(pb::SelectorOperator::In) => Operator::In,
            Ok(pb::SelectorOperator::NotIn) => Operator::NotIn,
            Ok(pb::SelectorOperator::Exists) => Operator::Exists,
            Ok(pb::SelectorOperator::DoesNotExist) => Operator::DoesNotExist,
            _ => return Err(format!("selector operator {} is not valid", r.operator)),
        };
        if matches!(operator, Operator::In | Operator::NotIn) && r.values.is_empty() {
            return Err(format!(
                "selector requirement on {} has no values",
                quote(&r.key)
            ));
        }
        validate::selector_key(&r.key)?;
        for value in &r.values {
            validate::selector_value(&r.key, value)?;
        }
        expressions.push(Requirement {
            key: SelectorKey::parse(&r.key),
            operator,
            values: r.values.iter().cloned().collect(),
        });
    }
    for (key, value) in &s.match_labels {
        validate::selector_key(key)?;
        validate::selector_value(key, value)?;
    }
    Ok(Selector {
        match_labels: s.match_labels.clone().into_iter().collect(),
        match_expressions: expressions,
    })
}

fn cidr_rule_to_proto(r: &CidrRule) -> pb::CidrRule {
    pb::CidrRule {
        cidr: r.cidr.to_string(),
        except: r.except.iter().map(|e| e.to_string()).collect(),
    }
}

fn cidr_rule_from_proto(r: &pb::CidrRule) -> Result<CidrRule, String> {
    let cidr: Cidr = r.cidr.parse()?;
    let except = r
        .except
        .iter()
        .map(|e| e.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CidrRule { cidr, except })
}

fn port_to_proto(p: &PortRule) -> pb::PortProtocol {
    pb::PortProtocol {
        port: p.port as u32,
        end_port: p.end_port as u32,
        protocol: protocol_to_proto(p.protocol),
    }
}

fn port_from_proto(port: u32, end_port: u32, protocol: i32) -> Result<PortRule, String> {
    let port16 = u16::try_from(port).map_err(|_| format!("{port} is not a port"))?;
    let end16 = u16::try_from(end_port).map_err(|_| format!("{end_port} is not a port"))?;
    if end16 != 0 && end16 <= port16 {
        return Err(format!("port range {port}-{end_port} is empty"));
    }
    Ok(PortRule {
        port: port16,
        end_port: end16,
        protocol: protocol_from_proto(protocol)?,
    })
}

fn entity_to_proto(e: Entity) -> i32 {
    let e = match e {
        Entity::Host => pb::Entity::Host,
        Entity::RemoteNode => pb::Entity::RemoteNode,
        Entity::World => pb::Entity::World,
        Entity::Cluster => pb::Entity::Cluster,
        Entity::All => pb::Entity::All,
    };
    e as i32
}

fn entity_from_proto(e: i32) -> Result<Entity, String> {
    Ok(match pb::Entity::try_from(e) {
        Ok(pb::Entity::Host) => Entity::Host,
        Ok(pb::Entity::RemoteNode) => Entity::RemoteNode,
        Ok(pb::Entity::World) => Entity::World,
        Ok(pb::Entity::Cluster) => Entity::Cluster,
        Ok(pb::Entity::All) => Entity::All,
        _ => return Err(format!("{e} is not an entity")),
    })
}

fn peer_rule_to_proto(r: &PeerRule) -> pb::PeerRule {
    pb::PeerRule {
        endpoints: r.endpoints.iter().map(selector_to_proto).collect(),
        cidrs: r.cidrs.iter().map(|c| c.to_string()).collect(),
        cidr_sets: r.cidr_sets.iter().map(cidr_rule_to_proto).collect(),
        entities: r.entities.iter().map(|e| entity_to_proto(*e)).collect(),
        ports: r.ports.iter().map(port_to_proto).collect(),
    }
}

fn peer_rule_from_proto(r: &pb::PeerRule) -> Result<PeerRule, String> {
    Ok(PeerRule {
        endpoints: r
            .endpoints
            .iter()
            .map(selector_from_proto)
            .collect::<Result<_, _>>()?,
        cidrs: r
            .cidrs
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<_, _>>()?,
        cidr_sets: r
            .cidr_sets
            .iter()
            .map(cidr_rule_from_proto)
            .collect::<Result<_, _>>()?,
        entities: r
            .entities
            .iter()
            .map(|e| entity_from_proto(*e))
            .collect::<Result<_, _>>()?,
        ports: r
            .ports
            .iter()
            .map(|p| port_from_proto(p.port, p.end_port, p.protocol))
            .collect::<Result<_, _>>()?,
    })
}

fn k8s_rule_to_proto(r: &K8sRule) -> pb::K8sNetworkPolicyRule {
    pb::K8sNetworkPolicyRule {
        peers: r
            .peers
            .iter()
            .map(|p| match p {
                K8sPeer::Selectors { pod, namespace } => pb::K8sNetworkPolicyPeer {
                    pod_selector: pod.as_ref().map(selector_to_proto),
                    namespace_selector: namespace.as_ref().map(selector_to_proto),
                    ip_block: None,
                },
                K8sPeer::IpBlock(block) => pb::K8sNetworkPolicyPeer {
                    pod_selector: None,
                    namespace_selector: None,
                    ip_block: Some(cidr_rule_to_proto(block)),
                },
            })
            .collect(),
        ports: r
            .ports
            .iter()
            .map(|p| pb::K8sNetworkPolicyPort {
                protocol: protocol_to_proto(p.protocol),
                port: p.port as u32,
                end_port: p.end_port as u32,
            })
            .collect(),
    }
}

fn k8s_rule_from_proto(r: &pb::K8sNetworkPolicyRule) -> Result<K8sRule, String> {
    let mut peers = Vec::new();
    for p in &r.peers {
        peers.push(
            match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
                (Some(block), None, None) => K8sPeer::IpBlock(cidr_rule_from_proto(block)?),
                (None, pod, ns) if pod.is_some() || ns.is_some() => K8sPeer::Selectors {
                    pod: pod.as_ref().map(selector_from_proto).transpose()?,
                    namespace: ns.as_ref().map(selector_from_proto).transpose()?,
                },
                _ => {
                    return Err(
                        "a peer needs exactly ip_block, or pod / namespace selectors".into(),
                    );
                }
            },
        );
    }
    Ok(K8sRule {
        peers,
        ports: r
            .ports
            .iter()
            .map(|p| port_from_proto(p.port, p.end_port, p.protocol))
            .collect::<Result<_, _>>()?,
    })
}

/// A domain policy → its stored form (without import_time).
pub fn policy_to_proto(p: &Policy) -> pb::Policy {
    let spec = match &p.spec {
        PolicySpec::Kino(k) => pb::policy::Spec::KinoNetworkPolicy(pb::KinoNetworkPolicy {
            rules: k
                .rules
                .iter()
                .map(|r| pb::PolicyRule {
                    endpoint_selector: Some(selector_to_proto(&r.endpoint_selector)),
                    ingress: r.ingress.iter().map(peer_rule_to_proto).collect(),
                    ingress_deny: r.ingress_deny.iter().map(peer_rule_to_proto).collect(),
                    egress: r.egress.iter().map(peer_rule_to_proto).collect(),
                    egress_deny: r.egress_deny.iter().map(peer_rule_to_proto).collect(),
                    description: r.description.clone(),
                    enable_default_deny: (r.default_deny != DefaultDeny::default()).then_some(
                        pb::DefaultDeny {
                            ingress: r.default_deny.ingress,
                            egress: r.default_deny.egress,
                        },
                    ),
                    path: r.path.clone(),
                })
                .collect(),
        }),
        PolicySpec::K8s(k) => {
            let mut types = Vec::new();
            if k.ingress_type {
                types.push(pbt::Direction::Ingress as i32);
            }
            if k.egress_type {
                types.push(pbt::Direction::Egress as i32);
            }
            pb::policy::Spec::K8sNetworkPolicy(pb::K8sNetworkPolicy {
                pod_selector: Some(selector_to_proto(&k.pod_selector)),
                ingress: k.ingress.iter().map(k8s_rule_to_proto).collect(),
                egress: k.egress.iter().map(k8s_rule_to_proto).collect(),
                policy_types: types,
            })
        }
    };
    pb::Policy {
        namespace: p.key.namespace.clone(),
        name: p.key.name.clone(),
        kind: match p.kind {
            PolicyKind::Kino => pb::PolicyKind::KinoNetworkPolicy,
            PolicyKind::K8s => pb::PolicyKind::K8sNetworkPolicy,
        } as i32,
        metadata_labels: p.metadata_labels.clone().into_iter().collect(),
        source: p.source.clone(),
        source_format: match p.format {
            SourceFormat::Yaml => pb::SourceFormat::Yaml,
            SourceFormat::Json => pb::SourceFormat::Json,
        } as i32,
        spec: Some(spec),
        import_time: None,
    }
}

/// A stored policy → domain, checking it.
pub fn policy_from_proto(p: &pb::Policy) -> Result<Policy, String> {
    let kind = match pb::PolicyKind::try_from(p.kind) {
        Ok(pb::PolicyKind::KinoNetworkPolicy) => PolicyKind::Kino,
        Ok(pb::PolicyKind::K8sNetworkPolicy) => PolicyKind::K8s,
        _ => return Err(format!("kind {} is not a policy kind", p.kind)),
    };
    let spec = match (&p.spec, kind) {
        (Some(pb::policy::Spec::KinoNetworkPolicy(k)), PolicyKind::Kino) => {
            let mut rules = Vec::new();
            for (i, r) in k.rules.iter().enumerate() {
                let dd = r.enable_default_deny.unwrap_or_default();
                rules.push(KinoRule {
                    path: if r.path.is_empty() {
                        format!("specs[{i}]")
                    } else {
                        r.path.clone()
                    },
                    endpoint_selector: selector_from_proto(
                        r.endpoint_selector
                            .as_ref()
                            .ok_or("a rule has no endpoint selector")?,
                    )?,
                    ingress: r
                        .ingress
                        .iter()
                        .map(peer_rule_from_proto)
                        .collect::<Result<_, _>>()?,
                    ingress_deny: r
                        .ingress_deny
                        .iter()
                        .map(peer_rule_from_proto)
                        .collect::<Result<_, _>>()?,
                    egress: r
                        .egress
                        .iter()
                        .map(peer_rule_from_proto)
                        .collect::<Result<_, _>>()?,
                    egress_deny: r
                        .egress_deny
                        .iter()
                        .map(peer_rule_from_proto)
                        .collect::<Result<_, _>>()?,
                    default_deny: DefaultDeny {
                        ingress: dd.ingress,
                        egress: dd.egress,
                    },
                    description: r.description.clone(),
                });
            }
            PolicySpec::Kino(KinoPolicy { rules })
        }
        (Some(pb::policy::Spec::K8sNetworkPolicy(k)), PolicyKind::K8s) => {
            if p.namespace.is_empty() {
                return Err("a NetworkPolicy needs a namespace".into());
            }
            let types: BTreeSet<i32> = k.policy_types.iter().copied().collect();
            PolicySpec::K8s(K8sPolicy {
                pod_selector: selector_from_proto(
                    k.pod_selector
                        .as_ref()
                        .ok_or("a NetworkPolicy has no pod selector")?,
                )?,
                ingress: k
                    .ingress
                    .iter()
                    .map(k8s_rule_from_proto)
                    .collect::<Result<_, _>>()?,
                egress: k
                    .egress
                    .iter()
                    .map(k8s_rule_from_proto)
                    .collect::<Result<_, _>>()?,
                ingress_type: types.contains(&(pbt::Direction::Ingress as i32)),
                egress_type: types.contains(&(pbt::Direction::Egress as i32)),
            })
        }
        _ => return Err("the parsed form does not match the kind".into()),
    };
    Ok(Policy {
        key: PolicyKey {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        },
        kind,
        metadata_labels: p.metadata_labels.clone().into_iter().collect(),
        source: p.source.clone(),
        format: if p.source_format == pb::SourceFormat::Json as i32 {
            SourceFormat::Json
        } else {
            SourceFormat::Yaml
        },
        spec,
    })
}

/// A policy key → proto.
pub fn policy_ref(key: &PolicyKey) -> pb::PolicyRef {
    pb::PolicyRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// A document error → proto.
pub fn document_error_to_proto(e: &DocumentError) -> pb::PolicyError {
    pb::PolicyError {
        document_index: e.document as u32,
        policy: e.policy.as_ref().map(policy_ref),
        path: e.path.clone(),
        message: e.message.clone(),
        line: e.line,
    }
}

/// A rule reference → proto.
pub fn rule_ref_to_proto(r: &RuleRef) -> pb::RuleRef {
    pb::RuleRef {
        policy: Some(policy_ref(&r.policy)),
        kind: match r.kind {
            PolicyKind::Kino => pb::PolicyKind::KinoNetworkPolicy,
            PolicyKind::K8s => pb::PolicyKind::K8sNetworkPolicy,
        } as i32,
        path: r.path.clone(),
        direction: direction_to_proto(r.direction),
        deny: r.deny,
        description: r.description.clone(),
    }
}

// ---- compiled policy ---------------------------------------------------------------------

/// A map key → proto.
pub fn map_key_to_proto(k: &MapKey) -> pb::PolicyMapKey {
    pb::PolicyMapKey {
        direction: direction_to_proto(k.direction),
        remote: Some(pb::policy_map_key::Remote::RemoteIdentity(k.remote)),
        protocol: k.protocol as i32,
        port: k.port as u32,
        end_port: k.end_port as u32,
    }
}

/// A proto map key → domain (for clients and tests).
pub fn map_key_from_proto(k: &pb::PolicyMapKey) -> Result<MapKey, String> {
    let remote = match &k.remote {
        Some(pb::policy_map_key::Remote::RemoteIdentity(id)) => *id,
        None => 0,
        Some(pb::policy_map_key::Remote::RemoteCidr(c)) => {
            return Err(format!(
                "remote CIDR {c} keys are not produced by this compiler"
            ));
        }
    };
    Ok(MapKey {
        direction: direction_from_proto(k.direction)?,
        remote,
        protocol: u8::try_from(k.protocol)
            .map_err(|_| format!("{} is not a protocol", k.protocol))?,
        port: u16::try_from(k.port).map_err(|_| format!("{} is not a port", k.port))?,
        end_port: u16::try_from(k.end_port).map_err(|_| format!("{} is not a port", k.end_port))?,
    })
}

/// A map entry → proto.
pub fn map_entry_to_proto(k: &MapKey, e: &MapEntry) -> pb::PolicyMapEntry {
    pb::PolicyMapEntry {
        key: Some(map_key_to_proto(k)),
        verdict: verdict_to_proto(e.verdict),
        derived_from: e
            .derived_from
            .iter()
            .map(|r| rule_ref_to_proto(r))
            .collect(),
    }
}

/// Enforcement → proto.
pub fn enforcement_to_proto(e: Enforcement) -> pbt::PolicyEnforcement {
    pbt::PolicyEnforcement {
        ingress: e.ingress,
        egress: e.egress,
    }
}

/// A compiled policy → proto.
pub fn compiled_to_proto(p: &CompiledPolicy, labels: &Labels, revision: i64) -> pb::EndpointPolicy {
    pb::EndpointPolicy {
        identity: p.identity,
        labels: Some(labels_to_proto(labels)),
        enforcement: Some(enforcement_to_proto(p.enforcement)),
        entries: p
            .entries
            .iter()
            .map(|(k, e)| map_entry_to_proto(k, e))
            .collect(),
        selected_by: p.selected_by.iter().map(policy_ref).collect(),
        revision,
    }
}

/// A time → proto.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A proto time → domain.
pub fn time_from_proto(t: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_documents;

    #[test]
    fn policies_round_trip_through_their_stored_form() {
        let text = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: a, labels: {team: x}}
specs:
- endpointSelector: {matchLabels: {app: web}, matchExpressions: [{key: "k8s:env", operator: NotIn, values: [dev]}]}
  enableDefaultDeny: {egress: false}
  ingress:
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    fromEntities: [host, cluster]
    toPorts: [{ports: [{port: "80", endPort: 90, protocol: UDP}, {protocol: ICMP}]}]
  egressDeny: [{toCIDR: [fd00::/8]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}, {podSelector: {matchLabels: {a: b}}, namespaceSelector: {matchLabels: {t: x}}}, {ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 53, protocol: UDP}]
"#;
        let out = parse_documents(text, "ns");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        for policy in out.policies {
            let back = policy_from_proto(&policy_to_proto(&policy)).unwrap();
            assert_eq!(back, policy);
        }
    }
}
