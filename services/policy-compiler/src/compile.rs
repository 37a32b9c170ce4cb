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
//! Incremental, at the grain of policy-map groups: a change costs what it touches, not what
//! is installed (100 000 CIDR entries beside a one-rule change cost that rule).
//! - Per endpoint identity the compiler keeps the raw contributions of the rules selecting
//!   it, grouped by `(direction, remote identity)` (`contributions`). A rule added or
//!   removed adds or removes its contributions (only the rules of a policy that differ from
//!   its stored version are replaced); a peer selector gaining or losing a remote adds or
//!   removes that remote's contributions in the subjects of the blocks using it.
//! - Only the groups whose contributions changed are re-resolved
//!   ([`policy_map::resolve_group`]) and compared with what the group held; the result is
//!   the delta itself ([`IdentityChange`]), never a comparison of whole policies. Wildcard
//!   contributions, the built-in allow-all and enforcement changes reach every group of the
//!   direction, so those re-resolve it whole.
//! - A CIDR identity can only be matched by the CIDR selectors whose CIDR covers its prefix
//!   and by entities, so those are looked up (CIDR selectors indexed by CIDR, CIDR
//!   identities by prefix) rather than every selector tried against every identity; an
//!   endpoint identity only by the other selectors. Prefixes are counted by the selectors
//!   naming them: one that comes gets a CIDR identity, one that goes loses it, the others
//!   keep theirs ([`CidrIdentities`]).
//! - [`Work`] counts what a change visits, so tests check these bounds without timings.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod contributions;

use contributions::{Contribution, IdentityState, block_contributions};

use crate::cidr::Cidr;
use crate::identity::{self, CidrIdentities, IdentityClass, IdentityInfo};
use crate::labels::Labels;
use crate::policy::model::{
    CidrRule, Direction, Entity, K8sPeer, K8sRule, PeerRule, Policy, PolicyKey, PolicyKind,
    PolicySpec, PortRule, Protocol, RuleRef,
};
use crate::policy_map::{
    self, CompiledPolicy, Enforcement, EntryChange, MapEntry, MapKey, NumericIdentity, RawEntry,
    Verdict, WILDCARD_IDENTITY,
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

/// A cached peer selector: the identities it matches and the blocks using it.
#[derive(Clone, Debug, Default)]
struct CachedSelector {
    matches: BTreeSet<NumericIdentity>,
    users: BTreeSet<BlockId>,
}

/// One allow or deny block: its rule, direction and index among the direction's blocks.
pub type BlockId = (RuleId, Direction, usize);

/// The change of one identity's compiled policy: what a stream needs to bring a client
/// from the policy before to the policy after, without either whole policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityChange {
    /// The identity.
    pub identity: NumericIdentity,
    /// It had a compiled policy before.
    pub existed: bool,
    /// It has one after (false: the identity is gone).
    pub exists: bool,
    /// Enforcement before (default when it did not exist).
    pub old_enforcement: Enforcement,
    /// Enforcement after (default when it is gone).
    pub new_enforcement: Enforcement,
    /// The entries that changed, by key, each with its value before and after. A policy
    /// that appears or disappears lists all its entries.
    pub entries: Vec<EntryChange>,
}

impl IdentityChange {
    /// Applies the change to a copy of the entries before; gives the entries after.
    pub fn apply_to(&self, entries: &mut BTreeMap<MapKey, MapEntry>) {
        for change in &self.entries {
            match &change.new {
                Some(entry) => entries.insert(change.key, entry.clone()),
                None => entries.remove(&change.key),
            };
        }
    }
}

/// Units of work the compiler did, counted so tests can check that a change costs what it
/// touches and not what is installed (deterministic, unlike timings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Raw contributions added or removed.
    pub contributions: u64,
    /// `(direction, remote)` groups resolved.
    pub groups: u64,
    /// Raw entries resolved and policy-map keys visited.
    pub keys: u64,
    /// Identities, selectors and prefixes looked at to find what a change touches.
    pub scanned: u64,
}

impl Work {
    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.contributions + self.groups + self.keys + self.scanned
    }

    /// The work done since `earlier`.
    pub fn since(&self, earlier: &Work) -> Work {
        Work {
            contributions: self.contributions - earlier.contributions,
            groups: self.groups - earlier.groups,
            keys: self.keys - earlier.keys,
            scanned: self.scanned - earlier.scanned,
        }
    }
}

/// The incremental compiler: the state of every input and every identity's policy.
#[derive(Debug)]
pub struct Compiler {
    config: CompilerConfig,
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
    identities: BTreeMap<NumericIdentity, IdentityInfo>,
    cidr_ids: CidrIdentities,
    /// Cached CIDR selectors naming each prefix (as CIDR or exception); a prefix has a
    /// CIDR identity while it is named.
    prefix_refs: BTreeMap<Cidr, usize>,
    /// Prefixes whose count came to or left zero since the last refresh.
    pending_prefixes: BTreeSet<Cidr>,
    /// Prefixes whose CIDR identity came or went since the ipcache last took them.
    cidr_changes: BTreeSet<Cidr>,
    rules: BTreeMap<RuleId, Arc<Rule>>,
    subjects: BTreeMap<RuleId, BTreeSet<NumericIdentity>>,
    rules_by_subject: BTreeMap<NumericIdentity, BTreeSet<RuleId>>,
    selectors: BTreeMap<PeerSelector, CachedSelector>,
    /// The selectors of `selectors` other than CIDR ones: those that can match endpoint
    /// and reserved identities.
    identity_selectors: BTreeSet<PeerSelector>,
    /// The CIDR selectors of `selectors` by their CIDR (not their exceptions), so the
    /// selectors of a CIDR identity are found by looking up its prefix's supernets.
    cidr_selectors: BTreeMap<Cidr, BTreeSet<PeerSelector>>,
    /// The CIDR identities of `identities` by prefix, so the identities of a CIDR selector
    /// are found by a range of prefixes.
    cidr_prefixes: BTreeMap<Cidr, NumericIdentity>,
    /// The raw contributions of every endpoint identity.
    states: BTreeMap<NumericIdentity, IdentityState>,
    compiled: BTreeMap<NumericIdentity, Arc<CompiledPolicy>>,
    /// Entries summed over `compiled`.
    compiled_entries: usize,
    dirty: BTreeSet<NumericIdentity>,
    work: Work,
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

/// The blocks of a rule with their ids.
fn blocks(rule: &Rule) -> impl Iterator<Item = (BlockId, &PeerBlock)> {
    Direction::BOTH.into_iter().flat_map(move |direction| {
        rule.direction(direction)
            .into_iter()
            .flat_map(|part| part.blocks.iter().enumerate())
            .map(move |(i, block)| ((rule.id.clone(), direction, i), block))
    })
}

/// Counts a rule in (`delta` 1) or out (-1) of the contributions of a subject `identity`:
/// its parts, and each block's contributions to every remote its selectors match now.
fn account_rule(
    config: &CompilerConfig,
    selectors: &BTreeMap<PeerSelector, CachedSelector>,
    state: &mut IdentityState,
    rule: &Rule,
    delta: isize,
    work: &mut Work,
) {
    state.account_policy(&rule.id.0, delta);
    for direction in Direction::BOTH {
        let Some(part) = rule.direction(direction) else {
            continue;
        };
        state.account_part(
            config,
            direction,
            part.default_deny,
            &part.default_deny_ref,
            delta,
        );
        for block in &part.blocks {
            let contributions = block_contributions(block);
            let wildcard = block.wildcard.then_some(WILDCARD_IDENTITY);
            let matched = block
                .selectors
                .iter()
                .filter_map(|s| selectors.get(s))
                .flat_map(|cached| cached.matches.iter().copied());
            for remote in wildcard.into_iter().chain(matched) {
                for contribution in &contributions {
                    state.contribute(direction, remote, contribution, delta, work);
                }
            }
        }
    }
}

/// Where a selector's match of a remote contributes: each subject of each block using the
/// selector, with the block's direction and contributions.
fn match_targets(
    rules: &BTreeMap<RuleId, Arc<Rule>>,
    subjects: &BTreeMap<RuleId, BTreeSet<NumericIdentity>>,
    users: &BTreeSet<BlockId>,
) -> Vec<(NumericIdentity, Direction, Vec<Contribution>)> {
    let mut targets = Vec::new();
    for (rule_id, direction, index) in users {
        let Some(block) = rules
            .get(rule_id)
            .and_then(|r| r.direction(*direction))
            .and_then(|part| part.blocks.get(*index))
        else {
            continue;
        };
        let contributions = block_contributions(block);
        for subject in subjects.get(rule_id).into_iter().flatten() {
            targets.push((*subject, *direction, contributions.clone()));
        }
    }
    targets
}

impl Compiler {
    /// A compiler knowing only the reserved identities.
    pub fn new(config: CompilerConfig) -> Compiler {
        let mut compiler = Compiler {
            config,
            policies: BTreeMap::new(),
            identities: BTreeMap::new(),
            cidr_ids: CidrIdentities::new(),
            prefix_refs: BTreeMap::new(),
            pending_prefixes: BTreeSet::new(),
            cidr_changes: BTreeSet::new(),
            rules: BTreeMap::new(),
            subjects: BTreeMap::new(),
            rules_by_subject: BTreeMap::new(),
            selectors: BTreeMap::new(),
            identity_selectors: BTreeSet::new(),
            cidr_selectors: BTreeMap::new(),
            cidr_prefixes: BTreeMap::new(),
            states: BTreeMap::new(),
            compiled: BTreeMap::new(),
            compiled_entries: 0,
            dirty: BTreeSet::new(),
            work: Work::default(),
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

    /// The reserved and endpoint identities (not the CIDR ones, which sort after them).
    fn non_cidr_identities(&self) -> impl Iterator<Item = &IdentityInfo> {
        self.identities
            .range(..identity::LOCAL_SCOPE)
            .map(|(_, info)| info)
    }

    /// The CIDR identity of every prefix named by a policy.
    pub fn cidr_identities(&self) -> &BTreeMap<Cidr, NumericIdentity> {
        self.cidr_ids.all()
    }

    /// The prefixes whose CIDR identity came, changed or went since the last call, with
    /// their identity now (None: gone).
    pub fn take_cidr_changes(&mut self) -> Vec<(Cidr, Option<NumericIdentity>)> {
        std::mem::take(&mut self.cidr_changes)
            .into_iter()
            .map(|prefix| (prefix, self.cidr_ids.get(&prefix)))
            .collect()
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

    /// Policy-map entries summed over every compiled policy.
    pub fn compiled_entries(&self) -> usize {
        self.compiled_entries
    }

    /// The work done so far (see [`Work`]).
    pub fn work(&self) -> Work {
        self.work
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

    /// Adds or replaces a policy. Only the rules that differ from the stored version's
    /// are replaced.
    pub fn upsert_policy(&mut self, policy: Policy) {
        let key = policy.key.clone();
        if self.policies.get(&key).is_some_and(|p| **p == policy) {
            return;
        }
        let policy = Arc::new(policy);
        let mut new_rules = rules_of(&policy);
        let old_ids: Vec<RuleId> = self
            .rules
            .range((key.clone(), 0)..=(key.clone(), usize::MAX))
            .map(|(id, _)| id.clone())
            .collect();
        for id in old_ids {
            let same = new_rules
                .get(id.1)
                .is_some_and(|new| Some(new) == self.rules.get(&id).map(|r| r.as_ref()));
            if !same {
                self.remove_rule(&id);
            }
        }
        for rule in new_rules.drain(..) {
            if !self.rules.contains_key(&rule.id) {
                self.add_rule(rule);
            }
        }
        // The subjects' `selected_by` names the policy; nothing else changes when the
        // rules are the same.
        self.policies.insert(key, policy);
        self.refresh_cidr_identities();
    }

    /// Removes a policy.
    pub fn delete_policy(&mut self, key: &PolicyKey) {
        if self.policies.remove(key).is_some() {
            let ids: Vec<RuleId> = self
                .rules
                .range((key.clone(), 0)..=(key.clone(), usize::MAX))
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                self.remove_rule(&id);
            }
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

    fn remove_rule(&mut self, id: &RuleId) {
        let Some(rule) = self.rules.remove(id) else {
            return;
        };
        // Out of its subjects first, while the selectors still hold their matches.
        for subject in self.subjects.remove(id).unwrap_or_default() {
            self.dirty.insert(subject);
            if let Some(set) = self.rules_by_subject.get_mut(&subject) {
                set.remove(id);
                if set.is_empty() {
                    self.rules_by_subject.remove(&subject);
                }
            }
            if let Some(state) = self.states.get_mut(&subject) {
                account_rule(
                    &self.config,
                    &self.selectors,
                    state,
                    &rule,
                    -1,
                    &mut self.work,
                );
            }
        }
        for (block_id, block) in blocks(&rule) {
            for selector in &block.selectors {
                let Some(cached) = self.selectors.get_mut(selector) else {
                    continue;
                };
                cached.users.remove(&block_id);
                if !cached.users.is_empty() {
                    continue;
                }
                self.selectors.remove(selector);
                match selector {
                    PeerSelector::Cidr(cidr_rule) => {
                        if let Some(set) = self.cidr_selectors.get_mut(&cidr_rule.cidr) {
                            set.remove(selector);
                            if set.is_empty() {
                                self.cidr_selectors.remove(&cidr_rule.cidr);
                            }
                        }
                        for prefix in selector.prefixes() {
                            self.unref_prefix(prefix);
                        }
                    }
                    _ => {
                        self.identity_selectors.remove(selector);
                    }
                }
            }
        }
    }

    fn unref_prefix(&mut self, prefix: Cidr) {
        if let Some(count) = self.prefix_refs.get_mut(&prefix) {
            *count -= 1;
            if *count == 0 {
                self.prefix_refs.remove(&prefix);
                self.pending_prefixes.insert(prefix);
            }
        }
    }

    fn add_rule(&mut self, rule: Rule) {
        let id = rule.id.clone();
        // Selectors first, so the subjects see every remote they match.
        for (block_id, block) in blocks(&rule) {
            for selector in &block.selectors {
                let cached = match self.selectors.entry(selector.clone()) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let identities = &self.identities;
                        let scanned = &mut self.work.scanned;
                        let matches: BTreeSet<NumericIdentity> = match selector {
                            // Only CIDR identities, and only those whose prefix lies in the
                            // CIDR's range of prefixes, can match.
                            PeerSelector::Cidr(cidr_rule) => {
                                let (lo, hi) = cidr_rule.cidr.covered_bounds();
                                self.cidr_prefixes
                                    .range(lo..=hi)
                                    .inspect(|_| *scanned += 1)
                                    .map(|(_, id)| *id)
                                    .filter(|id| {
                                        identities.get(id).is_some_and(|i| selector.matches(i))
                                    })
                                    .collect()
                            }
                            // World matches every CIDR identity too; the other entities and
                            // the endpoint selectors match reserved and endpoint identities
                            // only.
                            PeerSelector::Entity(Entity::World | Entity::All) => identities
                                .range(..identity::LOCAL_SCOPE)
                                .inspect(|_| *scanned += 1)
                                .filter(|(_, info)| selector.matches(info))
                                .map(|(id, _)| *id)
                                .chain(self.cidr_prefixes.values().copied())
                                .collect(),
                            _ => identities
                                .range(..identity::LOCAL_SCOPE)
                                .inspect(|_| *scanned += 1)
                                .filter(|(_, info)| selector.matches(info))
                                .map(|(id, _)| *id)
                                .collect(),
                        };
                        match selector {
                            PeerSelector::Cidr(cidr_rule) => {
                                self.cidr_selectors
                                    .entry(cidr_rule.cidr)
                                    .or_default()
                                    .insert(selector.clone());
                                for prefix in selector.prefixes() {
                                    let count = self.prefix_refs.entry(prefix).or_default();
                                    *count += 1;
                                    if *count == 1 {
                                        self.pending_prefixes.insert(prefix);
                                    }
                                }
                            }
                            _ => {
                                self.identity_selectors.insert(selector.clone());
                            }
                        }
                        entry.insert(CachedSelector {
                            matches,
                            users: BTreeSet::new(),
                        })
                    }
                };
                cached.users.insert(block_id.clone());
            }
        }
        let scanned = &mut self.work.scanned;
        let subjects: BTreeSet<NumericIdentity> = self
            .identities
            .range(..identity::LOCAL_SCOPE)
            .inspect(|_| *scanned += 1)
            .filter(|(_, info)| rule.subject.matches(info))
            .map(|(id, _)| *id)
            .collect();
        for subject in &subjects {
            self.dirty.insert(*subject);
            self.rules_by_subject
                .entry(*subject)
                .or_default()
                .insert(id.clone());
            if let Some(state) = self.states.get_mut(subject) {
                account_rule(
                    &self.config,
                    &self.selectors,
                    state,
                    &rule,
                    1,
                    &mut self.work,
                );
            }
        }
        self.subjects.insert(id.clone(), subjects);
        self.rules.insert(id, Arc::new(rule));
    }

    /// The cached selectors that may match a CIDR identity of `prefix`: the CIDR selectors
    /// whose CIDR is a supernet of it, and the entities.
    fn selectors_of_prefix(&mut self, prefix: &Cidr) -> Vec<PeerSelector> {
        let mut out: Vec<PeerSelector> = Vec::new();
        for len in 0..=prefix.prefix_len() {
            self.work.scanned += 1;
            if let Some(set) = self.cidr_selectors.get(&prefix.supernet(len)) {
                out.extend(set.iter().cloned());
            }
        }
        out.extend(entity_selectors());
        out
    }

    /// The selectors that could match an identity: for a CIDR identity those of its prefix's
    /// supernets and the entities, for any other the non-CIDR selectors.
    fn candidate_selectors(&mut self, info: &IdentityInfo) -> Vec<PeerSelector> {
        match &info.class {
            IdentityClass::Cidr(prefix) => self.selectors_of_prefix(prefix),
            _ => {
                self.work.scanned += self.identity_selectors.len() as u64;
                self.identity_selectors.iter().cloned().collect()
            }
        }
    }

    fn add_identity(&mut self, info: IdentityInfo) {
        let id = info.id;
        // As a remote first (in the selectors' matches and their subjects' contributions),
        // then as a subject, so a rule selecting the identity on both sides counts it once.
        let candidates = self.candidate_selectors(&info);
        for selector in candidates {
            let Some(cached) = self.selectors.get_mut(&selector) else {
                continue;
            };
            if selector.matches(&info) && cached.matches.insert(id) {
                let targets = match_targets(&self.rules, &self.subjects, &cached.users);
                self.account_match(targets, id, 1);
            }
        }
        if let IdentityClass::Cidr(prefix) = &info.class {
            self.cidr_prefixes.insert(*prefix, id);
        }
        if info.is_endpoint() {
            self.dirty.insert(id);
            let mut state = IdentityState::new();
            self.work.scanned += self.rules.len() as u64;
            for rule in self.rules.values() {
                if rule.subject.matches(&info) {
                    self.subjects.entry(rule.id.clone()).or_default().insert(id);
                    self.rules_by_subject
                        .entry(id)
                        .or_default()
                        .insert(rule.id.clone());
                    account_rule(
                        &self.config,
                        &self.selectors,
                        &mut state,
                        rule,
                        1,
                        &mut self.work,
                    );
                }
            }
            self.states.insert(id, state);
        }
        self.identities.insert(id, info);
    }

    fn remove_identity(&mut self, id: NumericIdentity) {
        let Some(info) = self.identities.remove(&id) else {
            return;
        };
        // As a subject first (its own contributions go with it), then as a remote.
        if info.is_endpoint() {
            self.dirty.insert(id);
            self.states.remove(&id);
            for rule_id in self.rules_by_subject.remove(&id).unwrap_or_default() {
                if let Some(set) = self.subjects.get_mut(&rule_id) {
                    set.remove(&id);
                }
            }
        }
        // The selectors holding the identity are among those that could match it (see
        // add_identity).
        let candidates = self.candidate_selectors(&info);
        for selector in candidates {
            let Some(cached) = self.selectors.get_mut(&selector) else {
                continue;
            };
            if cached.matches.remove(&id) {
                let targets = match_targets(&self.rules, &self.subjects, &cached.users);
                self.account_match(targets, id, -1);
            }
        }
        if let IdentityClass::Cidr(prefix) = &info.class
            && self.cidr_prefixes.get(prefix) == Some(&id)
        {
            self.cidr_prefixes.remove(prefix);
        }
    }

    /// Counts a selector's match of `remote` in (`delta` 1) or out (-1) of the
    /// contributions of its targets (see [`match_targets`]).
    fn account_match(
        &mut self,
        targets: Vec<(NumericIdentity, Direction, Vec<Contribution>)>,
        remote: NumericIdentity,
        delta: isize,
    ) {
        for (subject, direction, contributions) in targets {
            if let Some(state) = self.states.get_mut(&subject) {
                self.dirty.insert(subject);
                for contribution in &contributions {
                    state.contribute(direction, remote, contribution, delta, &mut self.work);
                }
            }
        }
    }

    /// Gives the prefixes newly named by a policy their CIDR identity and takes it from
    /// those no longer named. Prefixes that stay keep their number (see
    /// [`CidrIdentities`]); only the prefixes whose naming changed are looked at.
    fn refresh_cidr_identities(&mut self) {
        let pending = std::mem::take(&mut self.pending_prefixes);
        let mut added = Vec::new();
        for prefix in pending {
            self.work.scanned += 1;
            let named = self.prefix_refs.contains_key(&prefix);
            match (named, self.cidr_ids.get(&prefix)) {
                (false, Some(id)) => {
                    self.cidr_ids.release(&prefix);
                    self.remove_identity(id);
                    self.cidr_changes.insert(prefix);
                }
                (true, None) => added.push(prefix),
                _ => {}
            }
        }
        // In sorted order, so prefixes named together get the numbers a fresh compiler
        // gives them.
        for prefix in added {
            let id = self.cidr_ids.allocate(prefix);
            self.add_identity(IdentityInfo::cidr(id, prefix));
            self.cidr_changes.insert(prefix);
        }
    }

    /// Recompiles what changed since the last call; returns the identities whose compiled
    /// policy changed, with the entries that changed.
    pub fn recompile(&mut self) -> Vec<IdentityChange> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut changes = Vec::new();
        for id in dirty {
            let Some(state) = self.states.get_mut(&id) else {
                // Gone: every entry goes.
                if let Some(old) = self.compiled.remove(&id) {
                    self.compiled_entries -= old.entries.len();
                    self.work.keys += old.entries.len() as u64;
                    changes.push(IdentityChange {
                        identity: id,
                        existed: true,
                        exists: false,
                        old_enforcement: old.enforcement,
                        new_enforcement: Enforcement::default(),
                        entries: old
                            .entries
                            .iter()
                            .map(|(key, entry)| EntryChange {
                                key: *key,
                                old: Some(entry.clone()),
                                new: None,
                            })
                            .collect(),
                    });
                }
                continue;
            };
            let existed = self.compiled.contains_key(&id);
            let arc = self.compiled.entry(id).or_insert_with(|| {
                Arc::new(CompiledPolicy {
                    identity: id,
                    ..CompiledPolicy::default()
                })
            });
            // Copies the policy only if a reader still holds this version.
            let policy = Arc::make_mut(arc);
            let before = policy.enforcement;
            let entries_before = policy.entries.len();
            let mut entries =
                state.apply_dirty(&self.config, before, &mut policy.entries, &mut self.work);
            policy.enforcement = state.enforcement(&self.config);
            let selected_by = state.selected_by();
            let selected_by_changed = policy.selected_by != selected_by;
            policy.selected_by = selected_by;
            self.compiled_entries = self.compiled_entries - entries_before + policy.entries.len();
            if existed && entries.is_empty() && before == policy.enforcement && !selected_by_changed
            {
                continue;
            }
            entries.sort_by_key(|change| change.key);
            changes.push(IdentityChange {
                identity: id,
                existed,
                exists: true,
                old_enforcement: before,
                new_enforcement: policy.enforcement,
                entries,
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
        self.non_cidr_identities().find(|i| &i.labels == labels)
    }

    /// An identity's policy compiled from scratch, from the rules selecting it and the
    /// selector cache (what the incremental state must equal; for tests and checks).
    pub fn compile_from_scratch(&self, identity: NumericIdentity) -> Option<CompiledPolicy> {
        if !self.identities.get(&identity)?.is_endpoint() {
            return None;
        }
        let rules = self.rules_selecting(identity);
        let remotes = |s: &PeerSelector| -> Vec<NumericIdentity> {
            self.selectors
                .get(s)
                .map(|c| c.matches.iter().copied().collect())
                .unwrap_or_default()
        };
        Some(compile_identity(
            &self.config,
            identity,
            rules.into_iter(),
            &remotes,
        ))
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
mod tests;
