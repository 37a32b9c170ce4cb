//! Rules in the compiler's form: each policy kind's rules become subjects, per-direction
//! allow and deny blocks of peer selectors × ports, each citing the rule it comes from.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::selectors::{PeerSelector, Subject};
use crate::policy::model::{
    CidrRule, Direction, Entity, K8sPeer, K8sRule, PeerRule, Policy, PolicyKey, PolicySpec,
    PortRule, Protocol, RuleRef,
};
use crate::policy_map::Verdict;

/// One rule of one policy: `(policy, index)`.
pub type RuleId = (PolicyKey, usize);

/// One allow or deny block of a rule: peers × ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBlock {
    /// The rule it comes from.
    pub rule: Arc<RuleRef>,
    /// Allow or deny.
    pub verdict: Verdict,
    /// Every peer (identity 0).
    pub wildcard: bool,
    /// Peer selectors, each once.
    pub selectors: Vec<PeerSelector>,
    /// Ports; empty = every protocol and port.
    pub ports: Vec<PortRule>,
}

/// What a rule says about one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionRules {
    /// False when the rule says `enableDefaultDeny: false` for the direction.
    pub default_deny: bool,
    /// Cited for the allow-all entry when default deny is off.
    pub default_deny_ref: Arc<RuleRef>,
    /// Allow and deny blocks.
    pub blocks: Vec<PeerBlock>,
}

/// A rule in the compiler's form, from either policy kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its id.
    pub id: RuleId,
    /// The endpoints it applies to.
    pub subject: Subject,
    /// Ingress part, if the rule has one.
    pub ingress: Option<DirectionRules>,
    /// Egress part, if the rule has one.
    pub egress: Option<DirectionRules>,
}

impl Rule {
    /// The part of a direction.
    pub fn direction(&self, direction: Direction) -> Option<&DirectionRules> {
        match direction {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}

fn rule_ref(
    policy: &Policy,
    path: String,
    direction: Direction,
    deny: bool,
    description: &str,
) -> Arc<RuleRef> {
    Arc::new(RuleRef {
        policy: policy.key.clone(),
        kind: policy.kind,
        path,
        direction,
        deny,
        description: description.to_owned(),
    })
}

/// The rules of a policy in the compiler's form.
pub fn rules_of(policy: &Policy) -> Vec<Rule> {
    let namespace = (!policy.key.namespace.is_empty()).then(|| policy.key.namespace.clone());
    match &policy.spec {
        PolicySpec::Kino(kino) => kino
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let direction_rules =
                    |direction: Direction,
                     allow: &[PeerRule],
                     deny: &[PeerRule],
                     default_deny: Option<bool>| {
                        if allow.is_empty() && deny.is_empty() {
                            return None;
                        }
                        let (allow_field, deny_field) = match direction {
                            Direction::Ingress => ("ingress", "ingressDeny"),
                            Direction::Egress => ("egress", "egressDeny"),
                        };
                        let mut blocks = Vec::new();
                        for (field, rules, verdict) in [
                            (allow_field, allow, Verdict::Allow),
                            (deny_field, deny, Verdict::Deny),
                        ] {
                            for (j, peer_rule) in rules.iter().enumerate() {
                                let r = rule_ref(
                                    policy,
                                    format!("{}.{field}[{j}]", rule.path),
                                    direction,
                                    verdict == Verdict::Deny,
                                    &rule.description,
                                );
                                blocks.push(kino_block(peer_rule, r, verdict, &namespace));
                            }
                        }
                        Some(DirectionRules {
                            default_deny: default_deny != Some(false),
                            default_deny_ref: rule_ref(
                                policy,
                                format!("{}.enableDefaultDeny.{}", rule.path, direction.as_str()),
                                direction,
                                false,
                                &rule.description,
                            ),
                            blocks,
                        })
                    };
                Rule {
                    id: (policy.key.clone(), i),
                    subject: Subject {
                        selector: rule.endpoint_selector.clone(),
                        namespace: namespace.clone(),
                    },
                    ingress: direction_rules(
                        Direction::Ingress,
                        &rule.ingress,
                        &rule.ingress_deny,
                        rule.default_deny.ingress,
                    ),
                    egress: direction_rules(
                        Direction::Egress,
                        &rule.egress,
                        &rule.egress_deny,
                        rule.default_deny.egress,
                    ),
                }
            })
            .collect(),
        PolicySpec::K8s(k8s) => {
            let ns = policy.key.namespace.clone();
            let direction_rules = |direction: Direction, enabled: bool, rules: &[K8sRule]| {
                if !enabled {
                    return None;
                }
                let field = direction.as_str();
                let blocks = rules
                    .iter()
                    .enumerate()
                    .map(|(j, rule)| {
                        let r =
                            rule_ref(policy, format!("spec.{field}[{j}]"), direction, false, "");
                        k8s_block(rule, r, &ns)
                    })
                    .collect();
                Some(DirectionRules {
                    default_deny: true,
                    default_deny_ref: rule_ref(
                        policy,
                        "spec.policyTypes".into(),
                        direction,
                        false,
                        "",
                    ),
                    blocks,
                })
            };
            vec![Rule {
                id: (policy.key.clone(), 0),
                subject: Subject {
                    selector: k8s.pod_selector.clone(),
                    namespace: Some(ns.clone()),
                },
                ingress: direction_rules(Direction::Ingress, k8s.ingress_type, &k8s.ingress),
                egress: direction_rules(Direction::Egress, k8s.egress_type, &k8s.egress),
            }]
        }
    }
}

fn kino_block(
    rule: &PeerRule,
    r: Arc<RuleRef>,
    verdict: Verdict,
    namespace: &Option<String>,
) -> PeerBlock {
    let mut wildcard = rule.has_no_peer() && !rule.ports.is_empty();
    let mut selectors = Vec::new();
    for selector in &rule.endpoints {
        selectors.push(PeerSelector::Endpoints {
            selector: selector.clone(),
            namespace: if selector.names_namespace() {
                None
            } else {
                namespace.clone()
            },
        });
    }
    for cidr in &rule.cidrs {
        selectors.push(PeerSelector::Cidr(CidrRule {
            cidr: *cidr,
            except: Vec::new(),
        }));
    }
    for set in &rule.cidr_sets {
        selectors.push(PeerSelector::Cidr(set.clone()));
    }
    for entity in &rule.entities {
        match entity {
            Entity::All => wildcard = true,
            e => selectors.push(PeerSelector::Entity(*e)),
        }
    }
    PeerBlock {
        rule: r,
        verdict,
        wildcard,
        selectors: distinct(selectors),
        ports: rule.ports.clone(),
    }
}

fn k8s_block(rule: &K8sRule, r: Arc<RuleRef>, namespace: &str) -> PeerBlock {
    let selectors = rule
        .peers
        .iter()
        .map(|peer| match peer {
            K8sPeer::Selectors { pod, namespace: ns } => PeerSelector::K8s {
                pod: pod.clone(),
                namespace_selector: ns.clone(),
                policy_namespace: namespace.to_owned(),
            },
            K8sPeer::IpBlock(cidr) => PeerSelector::Cidr(cidr.clone()),
        })
        .collect();
    PeerBlock {
        rule: r,
        verdict: Verdict::Allow,
        wildcard: rule.peers.is_empty(),
        selectors: distinct(selectors),
        ports: rule.ports.clone(),
    }
}

/// The selectors without repeats, in their first order: a peer named twice in a block is
/// one peer (the selector cache counts each block's use of a selector once).
fn distinct(selectors: Vec<PeerSelector>) -> Vec<PeerSelector> {
    let mut seen = BTreeSet::new();
    selectors
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// The (protocol, port range) keys of a port rule; ANY with a port expands to TCP, UDP
/// and SCTP.
pub fn port_keys(rule: &PortRule) -> Vec<(u8, Option<(u16, u16)>)> {
    let ports = match (rule.port, rule.end_port) {
        (0, _) => None,
        (p, 0) => Some((p, p)),
        (p, e) => Some((p, e)),
    };
    match (rule.protocol, ports) {
        (Protocol::Any, None) => vec![(0, None)],
        (Protocol::Any, Some(range)) => [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .iter()
            .map(|p| (p.number(), Some(range)))
            .collect(),
        (p, ports) => vec![(p.number(), ports)],
    }
}
