//! Property tests: random policies (Kinocilium and Kubernetes NetworkPolicy), random label
//! sets and every flow between them, the world and the nodes. The compiled output, looked
//! up exactly as the datapath does (ipcache longest-prefix match for the remote identity,
//! then the policy map's first-hit lookup), must give the reference evaluator's verdict;
//! and the incremental compiler must end in the same state as a compilation from scratch.
//! TracePolicy's verdict for each side is checked against the reference as well.
//! Random histories of policy, identity and endpoint changes check the deltas: each step's
//! record, applied to the state before, gives the state after; a stream client following
//! them (live, or resuming) holds what the view holds; and the end state is a fresh
//! compiler's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kino_policy_compiler::cidr::Cidr;
use kino_policy_compiler::compile::{CompilerConfig, EnforcementMode};
use kino_policy_compiler::ipcache::EndpointRef;
use kino_policy_compiler::labels::{Label, Labels};
use kino_policy_compiler::policy::model::{
    CidrRule, DefaultDeny, Direction, Entity, K8sPeer, K8sPolicy, K8sRule, KinoPolicy, KinoRule,
    PeerRule, Policy, PolicyKey, PolicyKind, PolicySpec, PortRule, Protocol, SourceFormat,
};
use kino_policy_compiler::policy_map::{Enforcement, MapEntry, MapKey};
use kino_policy_compiler::reference::{self, Peer, Question};
use kino_policy_compiler::selector::{Operator, Requirement, Selector, SelectorKey};
use kino_policy_compiler::stream::{Interest, Replica, Subscriber};
use kino_policy_compiler::trace::{self, TraceSubject};
use kino_policy_compiler::view::{Change, EndpointRecord, NodeRecord, View};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

const NAMESPACES: [&str; 2] = ["blue", "red"];
const LOCAL_NODE: &str = "n1";
const HOST_IP: &str = "192.0.2.1";
const REMOTE_NODE_IP: &str = "192.0.2.2";

const CIDRS: [&str; 14] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.0.0.128/25",
    "10.1.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "192.168.1.0/24",
    "192.168.1.0/25",
    "192.168.1.7/32",
    "192.0.2.0/24",
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
];

const WORLD_IPS: [&str; 10] = [
    "10.0.0.200",
    "10.0.0.100",
    "10.1.2.3",
    "172.16.5.4",
    "192.168.1.7",
    "192.168.1.200",
    "192.168.2.1",
    "8.8.8.8",
    "2001:db8::1",
    "2001:db8:1::5",
];

/// (protocol, port) of the flows tried.
const FLOWS: [(u8, u16); 9] = [
    (6, 80),
    (6, 81),
    (6, 443),
    (6, 8085),
    (17, 53),
    (17, 1000),
    (132, 80),
    (1, 0),
    (58, 0),
];

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap()
}

// ---- strategies ----------------------------------------------------------------------------

fn endpoint_labels() -> impl Strategy<Value = Labels> {
    (
        select(&NAMESPACES[..]),
        select(&["web", "db", "lb"][..]),
        proptest::option::of(select(&["front", "back"][..])),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ns, app, tier, prod, k8s_tier)| {
            let mut labels = Labels::new();
            labels.insert(Label::new("container", "namespace", ns));
            labels.insert(Label::new("container", "app", app));
            let team = if ns == "blue" { "a" } else { "b" };
            labels.insert(Label::new(
                "k8s",
                "io.cilium.k8s.namespace.labels.team",
                team,
            ));
            if let Some(tier) = tier {
                let source = if k8s_tier { "k8s" } else { "container" };
                labels.insert(Label::new(source, "tier", tier));
            }
            if prod {
                labels.insert(Label::new("container", "env", "prod"));
            }
            labels
        })
}

fn requirement() -> impl Strategy<Value = Requirement> {
    (
        select(
            &[
                "app",
                "tier",
                "env",
                "k8s:tier",
                "container:tier",
                "namespace",
            ][..],
        ),
        select(
            &[
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ][..],
        ),
        subsequence(
            &["web", "db", "lb", "front", "back", "prod", "blue", "red"][..],
            1..3,
        ),
    )
        .prop_map(|(key, operator, values)| Requirement {
            key: SelectorKey::parse(key),
            operator,
            values: match operator {
                Operator::In | Operator::NotIn => values.iter().map(|v| v.to_string()).collect(),
                _ => BTreeSet::new(),
            },
        })
}

fn selector() -> impl Strategy<Value = Selector> {
    (
        proptest::option::of(select(&["web", "db", "lb"][..])),
        proptest::option::of((
            select(&["tier", "k8s:tier", "any:tier"][..]),
            select(&["front", "back"][..]),
        )),
        proptest::option::of(select(&NAMESPACES[..])),
        proptest::collection::vec(requirement(), 0..2),
    )
        .prop_map(|(app, tier, ns, match_expressions)| {
            let mut match_labels = BTreeMap::new();
            if let Some(app) = app {
                match_labels.insert("app".to_owned(), app.to_owned());
            }
            if let Some((key, value)) = tier {
                match_labels.insert(key.to_owned(), value.to_owned());
            }
            if let Some(ns) = ns {
                match_labels.insert("io.kubernetes.pod.namespace".to_owned(), ns.to_owned());
            }
            Selector {
                match_labels,
                match_expressions,
            }
        })
}

fn cidr_rule() -> impl Strategy<Value = CidrRule> {
    (select(&CIDRS[..]), subsequence(&CIDRS[..], 0..3)).prop_map(|(c, excepts)| {
        let c = cidr(c);
        CidrRule {
            cidr: c,
            except: excepts
                .iter()
                .map(|e| cidr(e))
                .filter(|e| c.covers(e))
                .collect(),
        }
    })
}

fn port_rule(k8s: bool) -> impl Strategy<Value = PortRule> {
    let protocols: &'static [Protocol] = if k8s {
        &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
    } else {
        &[
            Protocol::Any,
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Icmp,
            Protocol::Icmpv6,
        ]
    };
    (
        select(protocols),
        select(&[0u16, 53, 80, 443, 8080][..]),
        select(&[0u16, 10, 1000][..]),
    )
        .prop_map(|(protocol, port, span)| {
            if !matches!(
                protocol,
                Protocol::Any | Protocol::Tcp | Protocol::Udp | Protocol::Sctp
            ) || port == 0
            {
                return PortRule {
                    port: 0,
                    end_port: 0,
                    protocol,
                };
            }
            PortRule {
                port,
                end_port: if span == 0 { 0 } else { port + span },
                protocol,
            }
        })
}

fn peer_rule() -> impl Strategy<Value = PeerRule> {
    (
        proptest::collection::vec(selector(), 0..3),
        proptest::collection::vec(select(&CIDRS[..]), 0..2),
        proptest::collection::vec(cidr_rule(), 0..2),
        subsequence(
            &[
                Entity::Host,
                Entity::RemoteNode,
                Entity::World,
                Entity::Cluster,
                Entity::All,
            ][..],
            0..2,
        ),
        proptest::collection::vec(port_rule(false), 0..3),
        0..6u8,
    )
        .prop_map(|(endpoints, cidrs, cidr_sets, entities, ports, shape)| {
            // Bias towards simpler rules so every kind of peer gets exercised on its own.
            let mut rule = PeerRule {
                endpoints,
                cidrs: cidrs.iter().map(|c| cidr(c)).collect(),
                cidr_sets,
                entities,
                ports,
            };
            match shape {
                0 => {
                    rule.cidrs.clear();
                    rule.cidr_sets.clear();
                    rule.entities.clear();
                }
                1 => {
                    rule.endpoints.clear();
                    rule.entities.clear();
                }
                2 => {
                    rule.endpoints.clear();
                    rule.cidrs.clear();
                    rule.cidr_sets.clear();
                }
                3 => {
                    rule.endpoints.clear();
                    rule.cidrs.clear();
                    rule.cidr_sets.clear();
                    rule.entities.clear();
                }
                _ => {}
            }
            rule
        })
}

fn default_deny() -> impl Strategy<Value = Option<bool>> {
    select(&[None, None, None, Some(true), Some(false)][..])
}

fn kino_rule() -> impl Strategy<Value = KinoRule> {
    (
        selector(),
        proptest::collection::vec(peer_rule(), 0..3),
        proptest::collection::vec(peer_rule(), 0..2),
        proptest::collection::vec(peer_rule(), 0..3),
        proptest::collection::vec(peer_rule(), 0..2),
        default_deny(),
        default_deny(),
    )
        .prop_map(
            |(endpoint_selector, ingress, ingress_deny, egress, egress_deny, i, e)| KinoRule {
                path: String::new(),
                endpoint_selector,
                ingress,
                ingress_deny,
                egress,
                egress_deny,
                default_deny: DefaultDeny {
                    ingress: i,
                    egress: e,
                },
                description: String::new(),
            },
        )
}

fn k8s_peer() -> impl Strategy<Value = K8sPeer> {
    prop_oneof![
        (
            proptest::option::of(selector()),
            proptest::option::of(ns_selector())
        )
            .prop_map(|(pod, namespace)| match (pod, namespace) {
                (None, None) => K8sPeer::Selectors {
                    pod: Some(Selector::everything()),
                    namespace: None,
                },
                (pod, namespace) => K8sPeer::Selectors { pod, namespace },
            }),
        cidr_rule().prop_map(K8sPeer::IpBlock),
    ]
}

fn ns_selector() -> impl Strategy<Value = Selector> {
    select(vec![
        Selector::everything(),
        Selector::labels([("team", "a")]),
        Selector::labels([("kubernetes.io/metadata.name", "red")]),
    ])
}

fn k8s_rule() -> impl Strategy<Value = K8sRule> {
    (
        proptest::collection::vec(k8s_peer(), 0..3),
        proptest::collection::vec(port_rule(true), 0..3),
    )
        .prop_map(|(peers, ports)| K8sRule { peers, ports })
}

fn policy(index: usize) -> impl Strategy<Value = Policy> {
    let kino = (
        select(&["", "blue", "red"][..]),
        proptest::collection::vec(kino_rule(), 1..3),
    )
        .prop_map(move |(ns, mut rules)| {
            for (i, rule) in rules.iter_mut().enumerate() {
                rule.path = format!("specs[{i}]");
            }
            make_policy(
                ns,
                index,
                PolicyKind::Kino,
                PolicySpec::Kino(KinoPolicy { rules }),
            )
        });
    let k8s = (
        select(&NAMESPACES[..]),
        selector(),
        proptest::collection::vec(k8s_rule(), 0..3),
        proptest::collection::vec(k8s_rule(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(ns, pod_selector, ingress, egress, ingress_type, egress_type)| {
                make_policy(
                    ns,
                    index,
                    PolicyKind::K8s,
                    PolicySpec::K8s(K8sPolicy {
                        pod_selector,
                        ingress,
                        egress,
                        ingress_type,
                        egress_type,
                    }),
                )
            },
        );
    prop_oneof![3 => kino, 2 => k8s]
}

fn make_policy(ns: &str, index: usize, kind: PolicyKind, spec: PolicySpec) -> Policy {
    Policy {
        key: PolicyKey {
            namespace: ns.to_owned(),
            name: format!("p{index}"),
        },
        kind,
        metadata_labels: BTreeMap::new(),
        source: String::new(),
        format: SourceFormat::Yaml,
        spec,
    }
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    (1..5usize).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>())
}

fn config() -> impl Strategy<Value = CompilerConfig> {
    (
        select(
            &[
                EnforcementMode::Default,
                EnforcementMode::Default,
                EnforcementMode::Always,
                EnforcementMode::Never,
            ][..],
        ),
        any::<bool>(),
    )
        .prop_map(|(mode, allow_localhost)| CompilerConfig {
            mode,
            allow_localhost,
        })
}

// ---- the world ---------------------------------------------------------------------------

struct World {
    endpoints: Vec<(Labels, u32, IpAddr)>,
    identities: BTreeMap<Labels, u32>,
}

fn world(labels: &[Labels]) -> World {
    let mut identities = BTreeMap::new();
    let mut endpoints = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let next = 256 + identities.len() as u32;
        let id = *identities.entry(l.clone()).or_insert(next);
        endpoints.push((l.clone(), id, format!("10.0.0.{}", i + 1).parse().unwrap()));
    }
    World {
        endpoints,
        identities,
    }
}

fn node(name: &str, ip: &str) -> Change {
    Change::UpsertNode(NodeRecord {
        name: name.into(),
        addresses: vec![ip.parse().unwrap()],
        tunnel: Some(ip.parse().unwrap()),
        pod_cidrs: Vec::new(),
    })
}

fn inputs(w: &World) -> Vec<Change> {
    let mut changes = vec![node(LOCAL_NODE, HOST_IP), node("n2", REMOTE_NODE_IP)];
    for (labels, id) in &w.identities {
        changes.push(Change::UpsertIdentity(*id, labels.clone()));
    }
    for (i, (_, id, ip)) in w.endpoints.iter().enumerate() {
        changes.push(Change::UpsertEndpoint(EndpointRecord {
            key: EndpointRef {
                node_name: if i % 2 == 0 {
                    LOCAL_NODE.into()
                } else {
                    "n2".into()
                },
                endpoint_id: i as u32 + 1,
                ..EndpointRef::default()
            },
            identity: *id,
            addresses: vec![*ip],
        }));
    }
    changes
}

/// Checks every flow; returns the number of verdicts compared.
fn check_flows(
    view: &View,
    w: &World,
    config: &CompilerConfig,
    policies: &[Policy],
) -> Result<usize, TestCaseError> {
    let mut remotes: Vec<(Peer, IpAddr)> = w
        .endpoints
        .iter()
        .map(|(l, _, ip)| (Peer::Endpoint(l.clone()), *ip))
        .collect();
    remotes.push((Peer::Host, HOST_IP.parse().unwrap()));
    remotes.push((Peer::RemoteNode, REMOTE_NODE_IP.parse().unwrap()));
    for ip in WORLD_IPS {
        let ip: IpAddr = ip.parse().unwrap();
        remotes.push((Peer::World(ip), ip));
    }
    let mut checked = 0;
    for (local, local_id, _) in &w.endpoints {
        let compiled = view
            .compiler()
            .policy(*local_id)
            .ok_or_else(|| TestCaseError::fail(format!("no policy for identity {local_id}")))?;
        for (remote, remote_ip) in &remotes {
            let remote_identity = view
                .ipcache()
                .lookup(*remote_ip)
                .map(|e| e.for_node(Some(LOCAL_NODE)).identity)
                .unwrap_or(0);
            for direction in Direction::BOTH {
                for (protocol, port) in FLOWS {
                    let expected = reference::verdict(
                        config,
                        policies,
                        &Question {
                            local,
                            direction,
                            remote,
                            protocol,
                            port,
                        },
                    );
                    let decision = compiled.decide(direction, remote_identity, protocol, port);
                    prop_assert_eq!(
                        decision.verdict,
                        expected,
                        "local {} ({}) {:?} remote {:?} ({} → identity {}) proto {} port {}\nentries: {:#?}\nenforcement: {:?}",
                        local,
                        local_id,
                        direction,
                        remote,
                        remote_ip,
                        remote_identity,
                        protocol,
                        port,
                        compiled
                            .entries
                            .keys()
                            .map(|k| k.to_string())
                            .collect::<Vec<_>>(),
                        compiled.enforcement
                    );
                    checked += 1;
                    // Trace (same code as the compiler) must say the same. The host is
                    // left out: by address, trace sees a node address as remote-node.
                    if *remote != Peer::Host {
                        let protocol = Protocol::from_number(protocol).unwrap();
                        let (src, dst) = match direction {
                            Direction::Egress => (
                                TraceSubject::Identity(*local_id),
                                TraceSubject::Ip(*remote_ip),
                            ),
                            Direction::Ingress => (
                                TraceSubject::Ip(*remote_ip),
                                TraceSubject::Identity(*local_id),
                            ),
                        };
                        let t = trace::trace(view, &src, &dst, protocol, port).unwrap();
                        let side = match direction {
                            Direction::Egress => &t.egress,
                            Direction::Ingress => &t.ingress,
                        };
                        prop_assert_eq!(
                            side.verdict,
                            expected,
                            "trace disagrees: {:?}",
                            t.explanation
                        );
                    }
                }
            }
        }
    }
    Ok(checked)
}

// ---- histories ---------------------------------------------------------------------------

/// Endpoints (and identities) of the histories: endpoint i is on n1 for even i, n2 else.
const HISTORY_ENDPOINTS: u32 = 4;

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    /// Store a policy (new, or a new version of one with the same name and namespace).
    Policy(Policy),
    /// Delete the i-th stored policy (modulo their number), if any.
    DeletePolicy(usize),
    /// Store an identity: new, or new labels for an existing one.
    Identity(u32, Labels),
    /// Delete an identity (endpoints may still name it).
    DeleteIdentity(u32),
    /// Give an endpoint another identity.
    Endpoint(u32, u32),
}

fn history_identity() -> impl Strategy<Value = u32> {
    (0..HISTORY_ENDPOINTS).prop_map(|i| 256 + i)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..4usize).prop_flat_map(policy).prop_map(Step::Policy),
        1 => any::<usize>().prop_map(Step::DeletePolicy),
        2 => (history_identity(), endpoint_labels()).prop_map(|(id, l)| Step::Identity(id, l)),
        1 => history_identity().prop_map(Step::DeleteIdentity),
        1 => (0..HISTORY_ENDPOINTS, history_identity()).prop_map(|(e, id)| Step::Endpoint(e, id)),
    ]
}

fn history_endpoint(index: u32, identity: u32) -> EndpointRecord {
    EndpointRecord {
        key: EndpointRef {
            node_name: if index.is_multiple_of(2) {
                LOCAL_NODE
            } else {
                "n2"
            }
            .into(),
            endpoint_id: index + 1,
            ..EndpointRef::default()
        },
        identity,
        addresses: vec![format!("10.0.0.{}", index + 1).parse().unwrap()],
    }
}

/// The inputs a history ended with.
#[derive(Clone, Debug, Default)]
struct Inputs {
    policies: BTreeMap<PolicyKey, Policy>,
    identities: BTreeMap<u32, Labels>,
    endpoints: BTreeMap<u32, u32>,
}

impl Inputs {
    /// The change a step means, noted in the inputs; None when it changes nothing.
    fn change(&mut self, step: Step) -> Option<Change> {
        Some(match step {
            Step::Policy(p) => {
                self.policies.insert(p.key.clone(), p.clone());
                Change::UpsertPolicy(Box::new(p))
            }
            Step::DeletePolicy(i) => {
                let key = self
                    .policies
                    .keys()
                    .nth(i % self.policies.len().max(1))?
                    .clone();
                self.policies.remove(&key);
                Change::DeletePolicy(key)
            }
            Step::Identity(id, labels) => {
                self.identities.insert(id, labels.clone());
                Change::UpsertIdentity(id, labels)
            }
            Step::DeleteIdentity(id) => {
                self.identities.remove(&id);
                Change::DeleteIdentity(id)
            }
            Step::Endpoint(e, id) => {
                self.endpoints.insert(e, id);
                Change::UpsertEndpoint(history_endpoint(e, id))
            }
        })
    }

    /// Everything at once, as a compiler starting now would load it.
    fn all(&self) -> Vec<Change> {
        let mut changes = vec![node(LOCAL_NODE, HOST_IP), node("n2", REMOTE_NODE_IP)];
        for (id, labels) in &self.identities {
            changes.push(Change::UpsertIdentity(*id, labels.clone()));
        }
        for (e, id) in &self.endpoints {
            changes.push(Change::UpsertEndpoint(history_endpoint(*e, *id)));
        }
        for p in self.policies.values() {
            changes.push(Change::UpsertPolicy(Box::new(p.clone())));
        }
        changes
    }
}

type Policies = BTreeMap<u32, (Enforcement, BTreeMap<MapKey, MapEntry>)>;

fn policies_of(view: &View) -> Policies {
    view.compiler()
        .compiled()
        .iter()
        .map(|(id, p)| (*id, (p.enforcement, p.entries.clone())))
        .collect()
}

fn cases() -> u32 {
    std::env::var("KINO_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// The compiled map lookup agrees with the reference evaluator on every flow.
    #[test]
    fn compiled_lookup_agrees_with_reference(
        config in config(),
        labels in proptest::collection::vec(endpoint_labels(), 1..7),
        policies in policies(),
    ) {
        let w = world(&labels);
        let mut view = View::new(config, 1000);
        let mut changes = inputs(&w);
        changes.extend(policies.iter().cloned().map(|p| Change::UpsertPolicy(Box::new(p))));
        view.apply(1, changes);
        let checked = check_flows(&view, &w, &config, &policies)?;
        prop_assert!(checked > 0);
    }

    /// Applying changes one at a time (policies added, replaced and removed, identities
    /// and endpoints coming and going) ends where a compilation from scratch does, and the
    /// compiled lookup then still agrees with the reference.
    #[test]
    fn incremental_equals_from_scratch(
        config in config(),
        labels in proptest::collection::vec(endpoint_labels(), 1..6),
        policies in policies(),
        extra in policy(9),
        order in any::<u64>(),
    ) {
        let w = world(&labels);
        // Incremental: shuffled inputs, one change per step, with an extra policy that is
        // added then deleted, and the first policy first added in another version.
        let mut steps: Vec<Change> = inputs(&w);
        steps.extend(policies.iter().cloned().map(|p| Change::UpsertPolicy(Box::new(p))));
        steps.push(Change::UpsertPolicy(Box::new(extra.clone())));
        let mut seed = order;
        for i in (1..steps.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (seed >> 33) as usize % (i + 1);
            steps.swap(i, j);
        }
        let mut incremental = View::new(config, 1000);
        if let Some(first) = policies.first() {
            let mut other = extra.clone();
            other.key = first.key.clone();
            incremental.apply(1, vec![Change::UpsertPolicy(Box::new(other))]);
        }
        for (i, step) in steps.into_iter().enumerate() {
            incremental.apply(i as i64 + 2, vec![step]);
        }
        incremental.apply(1000, vec![Change::DeletePolicy(extra.key.clone())]);

        let mut scratch = View::new(config, 1000);
        let mut all = inputs(&w);
        all.extend(policies.iter().cloned().map(|p| Change::UpsertPolicy(Box::new(p))));
        scratch.apply(1, all);

        prop_assert_eq!(incremental.compiler().compiled(), scratch.compiler().compiled());
        prop_assert_eq!(incremental.ipcache().entries(), scratch.ipcache().entries());
        check_flows(&incremental, &w, &config, &policies)?;
    }

    /// A random history of policy, identity and endpoint changes, one per step: each
    /// step's record, applied to the compiled policies and ipcache before it, gives those
    /// after it (its `old` sides being what was there); a live stream client and one
    /// resuming from the middle hold what the view holds; and the end state is that of a
    /// fresh compiler given the final inputs at once.
    #[test]
    fn deltas_replay_to_the_state_and_end_where_a_fresh_compiler_starts(
        config in config(),
        labels in proptest::collection::vec(endpoint_labels(), HISTORY_ENDPOINTS as usize),
        steps in proptest::collection::vec(step(), 1..24),
    ) {
        let mut inputs = Inputs::default();
        for (i, l) in labels.iter().enumerate() {
            inputs.identities.insert(256 + i as u32, l.clone());
            inputs.endpoints.insert(i as u32, 256 + i as u32);
        }
        let mut view = View::new(config, 1000);
        view.apply(1, inputs.all());
        view.reset_history();
        let mut policies = policies_of(&view);
        let mut ipcache = view.ipcache().entries().clone();
        let mut live = Subscriber::new(Interest::Node(LOCAL_NODE.into()), None, &view);
        let mut client = Replica::default();
        client.apply(&live.catch_up(&view));
        let middle = steps.len() / 2;
        let mut resumed_client = None;
        for (i, step) in steps.into_iter().enumerate() {
            if i == middle {
                resumed_client = Some(client.clone());
            }
            let Some(change) = inputs.change(step) else { continue };
            let revision = i as i64 + 2;
            if let Some(record) = view.apply(revision, vec![change.clone()]) {
                for c in &record.policies {
                    let held = policies.get(&c.identity);
                    prop_assert_eq!(c.existed, held.is_some(), "{:?}", change);
                    prop_assert_eq!(c.old_enforcement, held.map(|h| h.0).unwrap_or_default());
                    if !c.exists {
                        prop_assert_eq!(c.entries.len(), held.map_or(0, |h| h.1.len()));
                        policies.remove(&c.identity);
                        continue;
                    }
                    let held = policies.entry(c.identity).or_default();
                    for e in &c.entries {
                        prop_assert_eq!(held.1.get(&e.key), e.old.as_ref(), "{:?}: {}", change, e.key);
                    }
                    c.apply_to(&mut held.1);
                    held.0 = c.new_enforcement;
                }
                for c in &record.ipcache {
                    prop_assert_eq!(ipcache.get(&c.prefix), c.old.as_ref());
                    match &c.new {
                        Some(e) => ipcache.insert(c.prefix, e.clone()),
                        None => ipcache.remove(&c.prefix),
                    };
                }
            }
            prop_assert_eq!(&policies, &policies_of(&view), "after {:?}", change);
            prop_assert_eq!(&ipcache, view.ipcache().entries(), "after {:?}", change);
            for id in view.compiler().compiled().keys() {
                let scratch = view.compiler().compile_from_scratch(*id);
                prop_assert_eq!(
                    scratch.as_ref(),
                    view.compiler().policy(*id).map(|p| p.as_ref()),
                    "identity {} after {:?}", id, change
                );
            }
            client.apply(&live.catch_up(&view));
            prop_assert_eq!(&client, &Replica::of(&view, LOCAL_NODE), "after {:?}", change);
        }
        if let Some(mut resumed_client) = resumed_client {
            let mut resumed = Subscriber::new(
                Interest::Node(LOCAL_NODE.into()),
                Some(resumed_client.revision),
                &view,
            );
            let messages = resumed.catch_up(&view);
            prop_assert!(messages.iter().all(|m| !m.reset), "resumed within the history");
            resumed_client.apply(&messages);
            prop_assert_eq!(&resumed_client, &Replica::of(&view, LOCAL_NODE));
        }

        let mut fresh = View::new(config, 1000);
        fresh.apply(1, inputs.all());
        prop_assert_eq!(view.compiler().compiled(), fresh.compiler().compiled());
        prop_assert_eq!(view.compiler().cidr_identities(), fresh.compiler().cidr_identities());
        prop_assert_eq!(view.ipcache().entries(), fresh.ipcache().entries());
    }
}
