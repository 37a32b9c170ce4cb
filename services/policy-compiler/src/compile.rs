//! The compiler: policies + identities → per endpoint identity, its policy-map entries and
//! enforcement per direction (see [`crate::policy_map`] for the form and the lookup).
//!
//! Semantics (DESIGN §4, Cilium's):
//! - A rule applies to the endpoint identities its subject selects: `endpointSelector`
//!   (Kinocilium) or `podSelector` (NetworkPolicy), restricted to the policy's namespace
//!   for namespaced policies.
//! - Enforcement per direction: mode `never` → off; `always` → on; `default` → on once a
//!   rule selecting the identity has that direction (Kinocilium: a non-empty `ingress` or
//!   `ingressDeny` list, resp. egress; NetworkPolicy: its policyTypes). If every such rule
//!   says `enableDefaultDeny: {<direction>: false}`, the direction gets an allow-all entry
//!   (denies still apply).
//! - Peers resolve to identities through a selector cache (Cilium's SelectorCache):
//!   endpoint selectors match endpoint identities (in the policy's namespace unless the
//!   selector names a namespace label); CIDRs match CIDR identities (a prefix P is matched
//!   by `Q except E…` when Q covers P and no E does); entities: host → 1, remote-node → 6,
//!   world → 2 and every CIDR identity, cluster → every endpoint identity and 1, 3, 4, 5, 6,
//!   all → the wildcard 0. A rule with ports but no peer applies to every peer (0); a rule
//!   with neither adds nothing (it only turns enforcement on).
//! - CIDR rules produce CIDR identities (never CIDR keys): each prefix any policy names
//!   (CIDRs and their exceptions) gets a CIDR identity and an ipcache entry, so the
//!   datapath's ipcache longest-prefix match yields the identity and the policy map stays
//!   keyed by identity only. CIDR rules thus never match cluster endpoints or nodes, whose
//!   longer ipcache entries win (Cilium's behaviour).
//! - Ports: none = every protocol and port; ANY with a port = TCP, UDP and SCTP on it.
//! - allow-localhost (on by default, as Cilium's `--allow-localhost=auto`): enforced ingress
//!   always allows the local host (identity 1) unless a deny rule matches it.
//!
//! Incremental: a policy change touches the identities its old and new rules select, plus
//! the subjects of rules whose peer selectors gain or lose identities (e.g. new CIDR
//! identities); an identity change touches itself and the subjects of rules whose peer
//! selectors match it. Only those identities are recompiled. A CIDR identity can only be
//! matched by the CIDR selectors whose CIDR covers its prefix and by entities, so those are
//! looked up (CIDR selectors indexed by CIDR, CIDR identities by prefix) rather than every
//! selector tried against every identity.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::cidr::Cidr;
use crate::identity::{self, IdentityClass, IdentityInfo};
use crate::labels::Labels;
use crate::policy::model::{
    CidrRule, Direction, Entity, K8sPeer, K8sRule, PeerRule, Policy, PolicyKey, PolicyKind,
    PolicySpec, PortRule, Protocol, RuleRef,
};
use crate::policy_map::{
    self, CompiledPolicy, Enforcement, NumericIdentity, RawEntry, Verdict, WILDCARD_IDENTITY,
};
use crate::selector::Selector;

/// When policy is enforced (DESIGN §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    /// A direction is enforced once a rule selects the endpoint for it.
    #[default]
    Default,
    /// Always enforced.
    Always,
    /// Never enforced.
    Never,
}

impl std::str::FromStr for EnforcementMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(EnforcementMode::Default),
            "always" => Ok(EnforcementMode::Always),
            "never" => Ok(EnforcementMode::Never),
            _ => Err(format!(
                "{s:?} is not an enforcement mode (default, always, never)"
            )),
        }
    }
}

/// Compiler settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompilerConfig {
    /// The enforcement mode.
    pub mode: EnforcementMode,
    /// Enforced ingress always allows the local host (identity 1).
    pub allow_localhost: bool,
}

impl Default for CompilerConfig {
    fn default() -> Self {
        CompilerConfig {
            mode: EnforcementMode::Default,
            allow_localhost: true,
        }
    }
}

/// One rule of one policy: `(policy, index)`.
pub type RuleId = (PolicyKey, usize);

/// A subject selector: endpoint identities matching `selector` (in `namespace` if set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The selector.
    pub selector: Selector,
    /// The policy's namespace for namespaced policies.
    pub namespace: Option<String>,
}

impl Subject {
    /// True when the subject selects `info`.
    pub fn matches(&self, info: &IdentityInfo) -> bool {
        info.is_endpoint()
            && in_namespace(&self.namespace, &info.labels)
            && self.selector.matches(&info.labels)
    }
}

fn in_namespace(namespace: &Option<String>, labels: &Labels) -> bool {
    namespace
        .as_deref()
        .is_none_or(|ns| labels.namespace() == Some(ns))
}

/// A peer selector: a set of remote identities, cached with its matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerSelector {
    /// Kinocilium fromEndpoints / toEndpoints.
    Endpoints {
        /// The selector.
        selector: Selector,
        /// Implicit namespace (namespaced policy, selector without a namespace label).
        namespace: Option<String>,
    },
    /// A NetworkPolicy peer with podSelector and / or namespaceSelector.
    K8s {
        /// podSelector.
        pod: Option<Selector>,
        /// namespaceSelector.
        namespace_selector: Option<Selector>,
        /// The policy's namespace (pods' namespace when namespaceSelector is absent).
        policy_namespace: String,
    },
    /// A CIDR minus exceptions (fromCIDR, fromCIDRSet, ipBlock).
    Cidr(CidrRule),
    /// An entity other than `all`.
    Entity(Entity),
}

impl PeerSelector {
    /// True when the selector matches `info`.
    pub fn matches(&self, info: &IdentityInfo) -> bool {
        match self {
            PeerSelector::Endpoints {
                selector,
                namespace,
            } => {
                info.is_endpoint()
                    && in_namespace(namespace, &info.labels)
                    && selector.matches(&info.labels)
            }
            PeerSelector::K8s {
                pod,
                namespace_selector,
                policy_namespace,
            } => {
                info.is_endpoint()
                    && match namespace_selector {
                        Some(ns) => ns.matches_map(&info.labels.namespace_labels()),
                        None => info.labels.namespace() == Some(policy_namespace.as_str()),
                    }
                    && pod.as_ref().is_none_or(|p| p.matches(&info.labels))
            }
            PeerSelector::Cidr(rule) => match &info.class {
                IdentityClass::Cidr(prefix) => {
                    rule.cidr.covers(prefix) && !rule.except.iter().any(|e| e.covers(prefix))
                }
                _ => false,
            },
            PeerSelector::Entity(entity) => match entity {
                Entity::Host => info.id == identity::HOST,
                Entity::RemoteNode => info.id == identity::REMOTE_NODE,
                Entity::World => {
                    info.id == identity::WORLD || matches!(info.class, IdentityClass::Cidr(_))
                }
                Entity::Cluster => {
                    info.is_endpoint()
                        || matches!(
                            info.id,
                            identity::HOST
                                | identity::UNMANAGED
                                | identity::HEALTH
                                | identity::INIT
                                | identity::REMOTE_NODE
                        )
                }
                Entity::All => true,
            },
        }
    }

    /// The prefixes the selector names (they get CIDR identities).
    fn prefixes(&self) -> Vec<Cidr> {
        match self {
            PeerSelector::Cidr(rule) => std::iter::once(rule.cidr)
                .chain(rule.except.iter().copied())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One allow or deny block of a rule: peers × ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBlock {
    /// The rule it comes from.
    pub rule: Arc<RuleRef>,
    /// Allow or deny.
    pub verdict: Verdict,
    /// Every peer (identity 0).
    pub wildcard: bool,
    /// Peer selectors.
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

    fn selectors(&self) -> impl Iterator<Item = &PeerSelector> {
        [&self.ingress, &self.egress]
            .into_iter()
            .flatten()
            .flat_map(|d| d.blocks.iter())
            .flat_map(|b| b.selectors.iter())
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
    let mut block = PeerBlock {
        rule: r,
        verdict,
        wildcard: rule.has_no_peer() && !rule.ports.is_empty(),
        selectors: Vec::new(),
        ports: rule.ports.clone(),
    };
    for selector in &rule.endpoints {
        block.selectors.push(PeerSelector::Endpoints {
            selector: selector.clone(),
            namespace: if selector.names_namespace() {
                None
            } else {
                namespace.clone()
            },
        });
    }
    for cidr in &rule.cidrs {
        block.selectors.push(PeerSelector::Cidr(CidrRule {
            cidr: *cidr,
            except: Vec::new(),
        }));
    }
    for set in &rule.cidr_sets {
        block.selectors.push(PeerSelector::Cidr(set.clone()));
    }
    for entity in &rule.entities {
        match entity {
            Entity::All => block.wildcard = true,
            e => block.selectors.push(PeerSelector::Entity(*e)),
        }
    }
    block
}

fn k8s_block(rule: &K8sRule, r: Arc<RuleRef>, namespace: &str) -> PeerBlock {
    let mut block = PeerBlock {
        rule: r,
        verdict: Verdict::Allow,
        wildcard: rule.peers.is_empty(),
        selectors: Vec::new(),
        ports: rule.ports.clone(),
    };
    for peer in &rule.peers {
        block.selectors.push(match peer {
            K8sPeer::Selectors { pod, namespace: ns } => PeerSelector::K8s {
                pod: pod.clone(),
                namespace_selector: ns.clone(),
                policy_namespace: namespace.to_owned(),
            },
            K8sPeer::IpBlock(cidr) => PeerSelector::Cidr(cidr.clone()),
        });
    }
    block
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

/// Compiles one identity's policy from the rules selecting it; `remotes` resolves a peer
/// selector to the identities it matches. The compiler passes its selector cache; trace
/// passes the one remote it asks about. Same code either way.
pub fn compile_identity<'r>(
    config: &CompilerConfig,
    identity: NumericIdentity,
    rules: impl Iterator<Item = &'r Rule> + Clone,
    remotes: &dyn Fn(&PeerSelector) -> Vec<NumericIdentity>,
) -> CompiledPolicy {
    let mut policy = CompiledPolicy {
        identity,
        ..CompiledPolicy::default()
    };
    policy.selected_by = rules.clone().map(|r| r.id.0.clone()).collect();
    let raw = raw_entries(config, rules, remotes, &mut policy.enforcement);
    policy.entries = policy_map::resolve(&raw);
    policy
}

/// The raw entries of the rules selecting an identity, and its enforcement.
pub fn raw_entries<'r>(
    config: &CompilerConfig,
    rules: impl Iterator<Item = &'r Rule> + Clone,
    remotes: &dyn Fn(&PeerSelector) -> Vec<NumericIdentity>,
    enforcement: &mut Enforcement,
) -> Vec<RawEntry> {
    let mut raw = Vec::new();
    for direction in Direction::BOTH {
        let parts: Vec<&DirectionRules> = rules
            .clone()
            .filter_map(|r| r.direction(direction))
            .collect();
        let enforced = match config.mode {
            EnforcementMode::Never => false,
            EnforcementMode::Always => true,
            EnforcementMode::Default => !parts.is_empty(),
        };
        enforcement.set(direction, enforced);
        if !enforced {
            continue;
        }
        for part in &parts {
            for block in &part.blocks {
                let mut ids: BTreeSet<NumericIdentity> = BTreeSet::new();
                if block.wildcard {
                    ids.insert(WILDCARD_IDENTITY);
                }
                for selector in &block.selectors {
                    ids.extend(remotes(selector));
                }
                let ports: Vec<(u8, Option<(u16, u16)>)> = if block.ports.is_empty() {
                    vec![(0, None)]
                } else {
                    block.ports.iter().flat_map(port_keys).collect()
                };
                for remote in &ids {
                    for (protocol, range) in &ports {
                        raw.push(RawEntry {
                            direction,
                            remote: *remote,
                            protocol: *protocol,
                            ports: *range,
                            verdict: block.verdict,
                            rule: Some(block.rule.clone()),
                        });
                    }
                }
            }
        }
        if config.mode == EnforcementMode::Default
            && !parts.is_empty()
            && parts.iter().all(|p| !p.default_deny)
        {
            for part in &parts {
                raw.push(RawEntry {
                    direction,
                    remote: WILDCARD_IDENTITY,
                    protocol: 0,
                    ports: None,
                    verdict: Verdict::Allow,
                    rule: Some(part.default_deny_ref.clone()),
                });
            }
        }
        if direction == Direction::Ingress && config.allow_localhost {
            raw.push(RawEntry {
                direction,
                remote: identity::HOST,
                protocol: 0,
                ports: None,
                verdict: Verdict::Allow,
                rule: None,
            });
        }
    }
    raw
}

/// A cached peer selector: the identities it matches and the rules using it.
#[derive(Clone, Debug, Default)]
struct CachedSelector {
    matches: BTreeSet<NumericIdentity>,
    users: BTreeSet<RuleId>,
}

/// The change of one identity's compiled policy.
#[derive(Clone, Debug)]
pub struct IdentityChange {
    /// The identity.
    pub identity: NumericIdentity,
    /// The policy before (None: it had none).
    pub old: Option<Arc<CompiledPolicy>>,
    /// The policy after (None: the identity is gone).
    pub new: Option<Arc<CompiledPolicy>>,
}

/// The incremental compiler: the state of every input and every identity's policy.
#[derive(Debug)]
pub struct Compiler {
    config: CompilerConfig,
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
    identities: BTreeMap<NumericIdentity, IdentityInfo>,
    cidr_ids: BTreeMap<Cidr, NumericIdentity>,
    rules: BTreeMap<RuleId, Arc<Rule>>,
    subjects: BTreeMap<RuleId, BTreeSet<NumericIdentity>>,
    rules_by_subject: BTreeMap<NumericIdentity, BTreeSet<RuleId>>,
    selectors: BTreeMap<PeerSelector, CachedSelector>,
    /// The CIDR selectors of `selectors` by their CIDR (not their exceptions), so the
    /// selectors of a CIDR identity are found by looking up its prefix's supernets.
    cidr_selectors: BTreeMap<Cidr, BTreeSet<PeerSelector>>,
    /// The CIDR identities of `identities` by prefix, so the identities of a CIDR selector
    /// are found by a range of prefixes.
    cidr_prefixes: BTreeMap<Cidr, NumericIdentity>,
    compiled: BTreeMap<NumericIdentity, Arc<CompiledPolicy>>,
    dirty: BTreeSet<NumericIdentity>,
}

/// The entity selectors: with the CIDR selectors, the only selectors that can match a CIDR
/// identity (endpoint and NetworkPolicy selectors match endpoint identities only).
fn entity_selectors() -> [PeerSelector; 5] {
    [
        Entity::Host,
        Entity::RemoteNode,
        Entity::World,
        Entity::Cluster,
        Entity::All,
    ]
    .map(PeerSelector::Entity)
}

impl Compiler {
    /// A compiler knowing only the reserved identities.
    pub fn new(config: CompilerConfig) -> Compiler {
        let mut compiler = Compiler {
            config,
            policies: BTreeMap::new(),
            identities: BTreeMap::new(),
            cidr_ids: BTreeMap::new(),
            rules: BTreeMap::new(),
            subjects: BTreeMap::new(),
            rules_by_subject: BTreeMap::new(),
            selectors: BTreeMap::new(),
            cidr_selectors: BTreeMap::new(),
            cidr_prefixes: BTreeMap::new(),
            compiled: BTreeMap::new(),
            dirty: BTreeSet::new(),
        };
        for info in identity::all_reserved() {
            compiler.add_identity(info);
        }
        compiler
    }

    /// The settings.
    pub fn config(&self) -> &CompilerConfig {
        &self.config
    }

    /// Every known identity (reserved, endpoint and CIDR).
    pub fn identities(&self) -> &BTreeMap<NumericIdentity, IdentityInfo> {
        &self.identities
    }

    /// The CIDR identity of every prefix named by a policy.
    pub fn cidr_identities(&self) -> &BTreeMap<Cidr, NumericIdentity> {
        &self.cidr_ids
    }

    /// Every stored policy.
    pub fn policies(&self) -> &BTreeMap<PolicyKey, Arc<Policy>> {
        &self.policies
    }

    /// Every rule.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values().map(|r| r.as_ref())
    }

    /// The compiled policy of an endpoint identity.
    pub fn policy(&self, identity: NumericIdentity) -> Option<&Arc<CompiledPolicy>> {
        self.compiled.get(&identity)
    }

    /// Every compiled policy.
    pub fn compiled(&self) -> &BTreeMap<NumericIdentity, Arc<CompiledPolicy>> {
        &self.compiled
    }

    /// The rules selecting an identity.
    pub fn rules_selecting(&self, identity: NumericIdentity) -> Vec<&Rule> {
        self.rules_by_subject
            .get(&identity)
            .into_iter()
            .flatten()
            .filter_map(|id| self.rules.get(id).map(|r| r.as_ref()))
            .collect()
    }

    /// Adds or replaces a policy.
    pub fn upsert_policy(&mut self, policy: Policy) {
        let key = policy.key.clone();
        if self.policies.get(&key).is_some_and(|p| **p == policy) {
            return;
        }
        self.remove_rules(&key);
        let policy = Arc::new(policy);
        for rule in rules_of(&policy) {
            self.add_rule(rule);
        }
        self.policies.insert(key, policy);
        self.refresh_cidr_identities();
    }

    /// Removes a policy.
    pub fn delete_policy(&mut self, key: &PolicyKey) {
        if self.policies.remove(key).is_some() {
            self.remove_rules(key);
            self.refresh_cidr_identities();
        }
    }

    /// Adds an endpoint identity, or changes its labels.
    pub fn upsert_identity(&mut self, id: NumericIdentity, labels: Labels) {
        let info = IdentityInfo::endpoint(id, labels);
        match self.identities.get(&id) {
            Some(old) if *old == info => return,
            Some(_) => self.remove_identity(id),
            None => {}
        }
        self.add_identity(info);
    }

    /// Removes an endpoint identity.
    pub fn delete_identity(&mut self, id: NumericIdentity) {
        if self
            .identities
            .get(&id)
            .is_some_and(IdentityInfo::is_endpoint)
        {
            self.remove_identity(id);
        }
    }

    fn remove_rules(&mut self, key: &PolicyKey) {
        let ids: Vec<RuleId> = self
            .rules
            .range((key.clone(), 0)..=(key.clone(), usize::MAX))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(rule) = self.rules.remove(&id) else {
                continue;
            };
            for subject in self.subjects.remove(&id).unwrap_or_default() {
                self.dirty.insert(subject);
                if let Some(set) = self.rules_by_subject.get_mut(&subject) {
                    set.remove(&id);
                }
            }
            for selector in rule.selectors() {
                if let Some(cached) = self.selectors.get_mut(selector) {
                    cached.users.remove(&id);
                    if cached.users.is_empty() {
                        self.selectors.remove(selector);
                        if let PeerSelector::Cidr(rule) = selector
                            && let Some(set) = self.cidr_selectors.get_mut(&rule.cidr)
                        {
                            set.remove(selector);
                            if set.is_empty() {
                                self.cidr_selectors.remove(&rule.cidr);
                            }
                        }
                    }
                }
            }
        }
    }

    fn add_rule(&mut self, rule: Rule) {
        let id = rule.id.clone();
        let subjects: BTreeSet<NumericIdentity> = self
            .identities
            .values()
            .filter(|info| rule.subject.matches(info))
            .map(|info| info.id)
            .collect();
        for subject in &subjects {
            self.dirty.insert(*subject);
            self.rules_by_subject
                .entry(*subject)
                .or_default()
                .insert(id.clone());
        }
        self.subjects.insert(id.clone(), subjects);
        for selector in rule.selectors() {
            let cached = match self.selectors.entry(selector.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let identities = &self.identities;
                    let matches = match selector {
                        // Only CIDR identities, and only those whose prefix lies in the
                        // CIDR's range of prefixes, can match.
                        PeerSelector::Cidr(cidr_rule) => {
                            let (lo, hi) = cidr_rule.cidr.covered_bounds();
                            self.cidr_prefixes
                                .range(lo..=hi)
                                .map(|(_, id)| *id)
                                .filter(|id| {
                                    identities.get(id).is_some_and(|i| selector.matches(i))
                                })
                                .collect()
                        }
                        _ => identities
                            .values()
                            .filter(|info| selector.matches(info))
                            .map(|info| info.id)
                            .collect(),
                    };
                    if let PeerSelector::Cidr(cidr_rule) = selector {
                        self.cidr_selectors
                            .entry(cidr_rule.cidr)
                            .or_default()
                            .insert(selector.clone());
                    }
                    entry.insert(CachedSelector {
                        matches,
                        users: BTreeSet::new(),
                    })
                }
            };
            cached.users.insert(id.clone());
        }
        self.rules.insert(id, Arc::new(rule));
    }

    fn add_identity(&mut self, info: IdentityInfo) {
        let id = info.id;
        if info.is_endpoint() {
            self.dirty.insert(id);
            for rule in self.rules.values() {
                if rule.subject.matches(&info) {
                    self.subjects.entry(rule.id.clone()).or_default().insert(id);
                    self.rules_by_subject
                        .entry(id)
                        .or_default()
                        .insert(rule.id.clone());
                }
            }
        }
        if let IdentityClass::Cidr(prefix) = &info.class {
            // Only the CIDR selectors whose CIDR is a supernet of the prefix and the entity
            // selectors can match: look those up instead of trying every selector.
            let mut visit = |selector: &PeerSelector| {
                if let Some(cached) = self.selectors.get_mut(selector)
                    && selector.matches(&info)
                {
                    cached.matches.insert(id);
                    for user in &cached.users {
                        self.dirty
                            .extend(self.subjects.get(user).into_iter().flatten().copied());
                    }
                }
            };
            for len in 0..=prefix.prefix_len() {
                for selector in self
                    .cidr_selectors
                    .get(&prefix.supernet(len))
                    .into_iter()
                    .flatten()
                {
                    visit(selector);
                }
            }
            for selector in &entity_selectors() {
                visit(selector);
            }
            self.cidr_prefixes.insert(*prefix, id);
        } else {
            for (selector, cached) in self.selectors.iter_mut() {
                if selector.matches(&info) {
                    cached.matches.insert(id);
                    for user in &cached.users {
                        self.dirty
                            .extend(self.subjects.get(user).into_iter().flatten().copied());
                    }
                }
            }
        }
        self.identities.insert(id, info);
    }

    fn remove_identity(&mut self, id: NumericIdentity) {
        let Some(info) = self.identities.remove(&id) else {
            return;
        };
        self.dirty.insert(id);
        for rule_id in self.rules_by_subject.remove(&id).unwrap_or_default() {
            if let Some(set) = self.subjects.get_mut(&rule_id) {
                set.remove(&id);
            }
        }
        if let IdentityClass::Cidr(prefix) = &info.class {
            // The selectors holding the identity are those matching it (see add_identity).
            let mut visit = |selector: &PeerSelector| {
                if let Some(cached) = self.selectors.get_mut(selector)
                    && cached.matches.remove(&id)
                {
                    for user in &cached.users {
                        self.dirty
                            .extend(self.subjects.get(user).into_iter().flatten().copied());
                    }
                }
            };
            for len in 0..=prefix.prefix_len() {
                for selector in self
                    .cidr_selectors
                    .get(&prefix.supernet(len))
                    .into_iter()
                    .flatten()
                {
                    visit(selector);
                }
            }
            for selector in &entity_selectors() {
                visit(selector);
            }
            if self.cidr_prefixes.get(prefix) == Some(&id) {
                self.cidr_prefixes.remove(prefix);
            }
            return;
        }
        for cached in self.selectors.values_mut() {
            if cached.matches.remove(&id) {
                for user in &cached.users {
                    self.dirty
                        .extend(self.subjects.get(user).into_iter().flatten().copied());
                }
            }
        }
    }

    /// Gives every prefix named by a policy its CIDR identity, adding and removing CIDR
    /// identities as prefixes come and go.
    fn refresh_cidr_identities(&mut self) {
        let prefixes: BTreeSet<Cidr> = self
            .selectors
            .keys()
            .flat_map(PeerSelector::prefixes)
            .collect();
        // The numbering is a function of the set alone: an unchanged set keeps it.
        if prefixes.iter().eq(self.cidr_ids.keys()) {
            return;
        }
        let wanted = identity::cidr_identities(&prefixes);
        if wanted == self.cidr_ids {
            return;
        }
        let old = std::mem::take(&mut self.cidr_ids);
        for (prefix, id) in &old {
            if wanted.get(prefix) != Some(id) {
                self.remove_identity(*id);
            }
        }
        for (prefix, id) in &wanted {
            if old.get(prefix) != Some(id) {
                self.add_identity(IdentityInfo::cidr(*id, *prefix));
            }
        }
        self.cidr_ids = wanted;
    }

    /// Recompiles the identities touched since the last call; returns what changed.
    pub fn recompile(&mut self) -> Vec<IdentityChange> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut changes = Vec::new();
        for id in dirty {
            let old = self.compiled.get(&id).cloned();
            let new = match self.identities.get(&id) {
                Some(info) if info.is_endpoint() => {
                    let rules = self.rules_selecting(id);
                    let selectors = &self.selectors;
                    let remotes = |s: &PeerSelector| -> Vec<NumericIdentity> {
                        selectors
                            .get(s)
                            .map(|c| c.matches.iter().copied().collect())
                            .unwrap_or_default()
                    };
                    Some(compile_identity(
                        &self.config,
                        id,
                        rules.into_iter(),
                        &remotes,
                    ))
                }
                _ => None,
            };
            if old.as_deref() == new.as_ref() {
                continue;
            }
            let new = new.map(Arc::new);
            match &new {
                Some(policy) => self.compiled.insert(id, policy.clone()),
                None => self.compiled.remove(&id),
            };
            changes.push(IdentityChange {
                identity: id,
                old,
                new,
            });
        }
        changes
    }

    /// The rules whose subject selects an arbitrary label set (for trace of labels that
    /// no identity has yet).
    pub fn rules_selecting_labels(&self, labels: &Labels) -> Vec<&Rule> {
        let probe = IdentityInfo::endpoint(0, labels.clone());
        self.rules
            .values()
            .filter(|r| r.subject.matches(&probe))
            .map(|r| r.as_ref())
            .collect()
    }

    /// The identity whose labels are exactly `labels` (reserved or endpoint).
    pub fn identity_by_labels(&self, labels: &Labels) -> Option<&IdentityInfo> {
        self.identities.values().find(|i| &i.labels == labels)
    }
}

/// The kind of a policy, for display.
pub fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Kino => "KinoNetworkPolicy",
        PolicyKind::K8s => "NetworkPolicy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_documents;

    fn policy(yaml: &str) -> Policy {
        let out = parse_documents(yaml, "shop");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        out.policies.into_iter().next().unwrap()
    }

    fn labels(text: &str) -> Labels {
        Labels::parse_list(text).unwrap()
    }

    fn entries(c: &Compiler, id: u32) -> Vec<String> {
        c.policy(id)
            .unwrap()
            .entries
            .iter()
            .map(|(k, e)| format!("{k} {:?}", e.verdict))
            .collect()
    }

    #[test]
    fn compiles_and_recompiles_incrementally() {
        let mut c = Compiler::new(CompilerConfig::default());
        c.upsert_identity(300, labels("container:namespace=shop,container:app=web"));
        c.upsert_identity(301, labels("container:namespace=shop,container:app=lb"));
        c.upsert_identity(302, labels("container:namespace=other,container:app=lb"));
        let changes = c.recompile();
        assert_eq!(changes.len(), 3);
        let p = c.policy(300).unwrap();
        assert_eq!(p.enforcement, Enforcement::default());
        assert!(p.entries.is_empty());

        c.upsert_policy(policy(
            r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}]
"#,
        ));
        let changes = c.recompile();
        assert_eq!(
            changes.iter().map(|c| c.identity).collect::<Vec<_>>(),
            vec![300]
        );
        let p = c.policy(300).unwrap();
        assert!(p.enforcement.ingress && !p.enforcement.egress);
        let cidr16 = c.cidr_identities()[&"192.168.0.0/16".parse().unwrap()];
        assert_eq!(
            entries(&c, 300),
            vec![
                "ingress 1 */ANY Allow".to_owned(),
                "ingress 301 80/TCP Allow".to_owned(),
                format!("ingress {cidr16} */ANY Allow"),
            ]
        );
        // A new matching peer identity recompiles only the subject.
        c.upsert_identity(
            303,
            labels("container:namespace=shop,container:app=lb,container:v=2"),
        );
        let changes = c.recompile();
        let ids: Vec<u32> = changes.iter().map(|c| c.identity).collect();
        assert_eq!(ids, vec![300, 303]);
        assert!(entries(&c, 300).contains(&"ingress 303 80/TCP Allow".to_owned()));
        // Deleting the policy lifts enforcement.
        c.delete_policy(&PolicyKey {
            namespace: "shop".into(),
            name: "web".into(),
        });
        c.recompile();
        assert!(c.policy(300).unwrap().entries.is_empty());
        assert!(c.cidr_identities().is_empty());
    }

    #[test]
    fn cidr_identities_are_selected_by_cidr_and_entity_rules() {
        let mut c = Compiler::new(CompilerConfig::default());
        c.upsert_identity(300, labels("container:namespace=shop,container:app=web"));
        c.upsert_identity(301, labels("container:namespace=shop,container:app=lb"));
        c.upsert_policy(policy(
            r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  egress:
  - toCIDR: [192.168.0.0/16]
"#,
        ));
        c.recompile();
        // Prefixes named later, by another policy, get CIDR identities that the rules
        // above select when their CIDR covers them (and no exception does); world selects
        // every CIDR identity.
        c.upsert_policy(policy(
            r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: lb}
spec:
  endpointSelector: {matchLabels: {app: lb}}
  egress:
  - toCIDR: [10.2.3.4/32, 10.1.5.0/24, 192.168.1.1/32, 172.16.0.0/12]
"#,
        ));
        c.recompile();
        let id = |p: &str| c.cidr_identities()[&p.parse::<Cidr>().unwrap()];
        let (host, in8, except, in16, other) = (
            id("10.2.3.4/32"),
            id("10.1.5.0/24"),
            id("10.1.0.0/16"),
            id("192.168.1.1/32"),
            id("172.16.0.0/12"),
        );
        let has = |c: &Compiler, entry: String| entries(c, 300).contains(&entry);
        assert!(has(&c, format!("ingress {host} 80/TCP Allow")));
        assert!(!has(&c, format!("ingress {in8} 80/TCP Allow")));
        assert!(!has(&c, format!("ingress {except} 80/TCP Allow")));
        assert!(!has(&c, format!("ingress {other} 80/TCP Allow")));
        for world in [host, in8, except, in16, other, identity::WORLD] {
            assert!(has(&c, format!("ingress {world} 443/TCP Allow")), "{world}");
        }
        assert!(has(&c, format!("egress {in16} */ANY Allow")));
        assert!(!has(&c, format!("egress {host} */ANY Allow")));
        // A selector added after the CIDR identities exist finds them too.
        c.upsert_policy(policy(
            r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web-more}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/14, except: [10.2.0.0/16]}]
"#,
        ));
        c.recompile();
        assert!(has(&c, format!("egress {in8} */ANY Allow")));
        assert!(!has(&c, format!("egress {host} */ANY Allow")));
        // The incremental state equals a compilation from scratch.
        let mut scratch = Compiler::new(CompilerConfig::default());
        scratch.upsert_identity(300, labels("container:namespace=shop,container:app=web"));
        scratch.upsert_identity(301, labels("container:namespace=shop,container:app=lb"));
        for p in c.policies().values() {
            scratch.upsert_policy((**p).clone());
        }
        scratch.recompile();
        assert_eq!(scratch.compiled(), c.compiled());
        // Prefixes no policy names any more leave every selector.
        c.delete_policy(&PolicyKey {
            namespace: "shop".into(),
            name: "lb".into(),
        });
        c.recompile();
        assert!(!c.cidr_identities().values().any(|i| *i == host));
        assert!(
            !entries(&c, 300)
                .iter()
                .any(|e| e.contains(&host.to_string()))
        );
        assert!(has(
            &c,
            format!("egress {} */ANY Allow", id_of(&c, "10.0.0.0/14"))
        ));
        let world: Vec<u32> = c.selectors[&PeerSelector::Entity(Entity::World)]
            .matches
            .iter()
            .copied()
            .collect();
        let mut expected: Vec<u32> = c.cidr_identities().values().copied().collect();
        expected.push(identity::WORLD);
        expected.sort();
        assert_eq!(world, expected);
    }

    fn id_of(c: &Compiler, prefix: &str) -> u32 {
        c.cidr_identities()[&prefix.parse::<Cidr>().unwrap()]
    }
}
