//! The incremental compiler: the state of every input (policies and their rules, identities,
//! the selector cache, each endpoint identity's contributions) and every identity's compiled
//! policy, and the public entry points that change it. What a rule coming or going does is in
//! [`rule_changes`], what an identity coming or going does in [`identity_changes`]; both
//! mark the subjects they touch dirty, and [`Compiler::recompile`] turns the dirty ones into
//! [`IdentityChange`]s.

mod identity_changes;
mod rule_changes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::contributions::{Contribution, IdentityState, block_contributions};
use super::entries::compile_identity;
use super::rules::{PeerBlock, Rule, RuleId, rules_of};
use super::selectors::PeerSelector;
use super::{CompilerConfig, Work};
use crate::cidr::Cidr;
use crate::identity::{self, CidrIdentities, IdentityInfo};
use crate::labels::Labels;
use crate::policy::model::{Direction, Policy, PolicyKey};
use crate::policy_map::{
    CompiledPolicy, Enforcement, EntryChange, MapEntry, MapKey, NumericIdentity, WILDCARD_IDENTITY,
};

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

    /// The identities a cached peer selector matches (tests look into the selector cache).
    #[cfg(test)]
    pub(super) fn selector_matches(&self, selector: &PeerSelector) -> &BTreeSet<NumericIdentity> {
        &self.selectors[selector].matches
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
