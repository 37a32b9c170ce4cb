//! What a rule coming or going does to the incremental compiler: its peer selectors enter
//! or leave the selector cache (a new selector finds its matches among the identities, a
//! CIDR one names prefixes that get CIDR identities), and its subjects gain or lose its
//! contributions.

use std::collections::BTreeSet;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use super::{CachedSelector, Compiler, account_rule, blocks};
use crate::cidr::Cidr;
use crate::compile::rules::{Rule, RuleId};
use crate::compile::selectors::PeerSelector;
use crate::identity;
use crate::policy::model::Entity;
use crate::policy_map::NumericIdentity;

impl Compiler {
    pub(super) fn remove_rule(&mut self, id: &RuleId) {
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

    pub(super) fn unref_prefix(&mut self, prefix: Cidr) {
        if let Some(count) = self.prefix_refs.get_mut(&prefix) {
            *count -= 1;
            if *count == 0 {
                self.prefix_refs.remove(&prefix);
                self.pending_prefixes.insert(prefix);
            }
        }
    }

    pub(super) fn add_rule(&mut self, rule: Rule) {
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
}
