//! What the rules selecting one endpoint identity contribute to its policy map, kept between
//! changes so that a change re-resolves only the `(direction, remote)` groups it touched.
//!
//! [`crate::policy_map::resolve`] resolves each `(direction, remote)` group from the
//! group's own raw entries plus the direction's wildcard-remote ones, so:
//! - a contribution to remote R ≠ 0 changes only R's group;
//! - a contribution to the wildcard (0), the built-in allow-all of `enableDefaultDeny: false`,
//!   or a change of enforcement may change every group of the direction.
//!
//! Contributions are counted (a remote reached through two selectors of one block counts
//! twice) so that adding and removing them in any order lands on the same multiset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::rules::{PeerBlock, port_keys};
use super::{CompilerConfig, EnforcementMode, Work};
use crate::identity;
use crate::policy::model::{Direction, PolicyKey, RuleRef};
use crate::policy_map::{
    self, Enforcement, EntryChange, MapEntry, MapKey, NumericIdentity, RawEntry, Verdict,
    WILDCARD_IDENTITY,
};

/// One raw entry of a group, without the group's direction and remote.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Contribution {
    protocol: u8,
    ports: Option<(u16, u16)>,
    verdict: Verdict,
    rule: Option<Arc<RuleRef>>,
}

impl Contribution {
    fn raw(&self, direction: Direction, remote: NumericIdentity) -> RawEntry {
        RawEntry {
            direction,
            remote,
            protocol: self.protocol,
            ports: self.ports,
            verdict: self.verdict,
            rule: self.rule.clone(),
        }
    }
}

/// The contributions of a block to each remote it reaches: one per port key.
pub(super) fn block_contributions(block: &PeerBlock) -> Vec<Contribution> {
    let ports: Vec<(u8, Option<(u16, u16)>)> = if block.ports.is_empty() {
        vec![(0, None)]
    } else {
        block.ports.iter().flat_map(port_keys).collect()
    };
    ports
        .into_iter()
        .map(|(protocol, ports)| Contribution {
            protocol,
            ports,
            verdict: block.verdict,
            rule: Some(block.rule.clone()),
        })
        .collect()
}

/// The rules of one direction selecting the identity.
#[derive(Debug, Default)]
struct DirectionParts {
    /// Rules with a part for the direction.
    rules: usize,
    /// Those keeping default deny.
    default_deny: usize,
    /// The `enableDefaultDeny: false` references of the others, counted.
    allow_all: BTreeMap<Arc<RuleRef>, usize>,
}

/// The compilation state of one endpoint identity.
#[derive(Debug, Default)]
pub(super) struct IdentityState {
    /// Contributions by `(direction, remote)`, counted.
    groups: BTreeMap<(Direction, NumericIdentity), BTreeMap<Contribution, usize>>,
    /// Per direction (ingress, egress).
    parts: [DirectionParts; 2],
    /// Policies with a rule selecting the identity, with their number of such rules.
    selected_by: BTreeMap<PolicyKey, usize>,
    /// Directions whose every group must be re-resolved.
    dirty_all: [bool; 2],
    /// Groups to re-resolve.
    dirty_groups: BTreeSet<(Direction, NumericIdentity)>,
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

fn count(counter: &mut usize, delta: isize) {
    *counter = counter
        .checked_add_signed(delta)
        .expect("contribution counts never go below zero");
}

impl IdentityState {
    /// A state with nothing compiled yet: every group of both directions is to be resolved
    /// (the identity is new, or its labels changed and what it had compiled may differ).
    pub(super) fn new() -> IdentityState {
        IdentityState {
            dirty_all: [true, true],
            ..IdentityState::default()
        }
    }

    /// Adds (`delta` 1) or removes (-1) a contribution to `(direction, remote)`.
    pub(super) fn contribute(
        &mut self,
        direction: Direction,
        remote: NumericIdentity,
        contribution: &Contribution,
        delta: isize,
        work: &mut Work,
    ) {
        work.contributions += 1;
        let group = self.groups.entry((direction, remote)).or_default();
        let counter = group.entry(contribution.clone()).or_default();
        count(counter, delta);
        if *counter == 0 {
            group.remove(contribution);
            if group.is_empty() {
                self.groups.remove(&(direction, remote));
            }
        }
        self.mark(direction, remote);
    }

    fn mark(&mut self, direction: Direction, remote: NumericIdentity) {
        if remote == WILDCARD_IDENTITY {
            self.dirty_all[slot(direction)] = true;
        } else if !self.dirty_all[slot(direction)] {
            self.dirty_groups.insert((direction, remote));
        }
    }

    /// Counts a rule's part for a direction in (1) or out (-1): enforcement and the built-in
    /// allow-all depend on the set of parts.
    pub(super) fn account_part(
        &mut self,
        config: &CompilerConfig,
        direction: Direction,
        default_deny: bool,
        default_deny_ref: &Arc<RuleRef>,
        delta: isize,
    ) {
        let before = self.allow_all_active(config, direction);
        let parts = &mut self.parts[slot(direction)];
        count(&mut parts.rules, delta);
        if default_deny {
            count(&mut parts.default_deny, delta);
        } else {
            let counter = parts.allow_all.entry(default_deny_ref.clone()).or_default();
            count(counter, delta);
            if *counter == 0 {
                parts.allow_all.remove(default_deny_ref);
            }
        }
        let after = self.allow_all_active(config, direction);
        // The built-in allow-all is a wildcard entry: when it comes, goes or changes its
        // rules, every group of the direction sees it.
        if before != after || ((before || after) && !default_deny) {
            self.dirty_all[slot(direction)] = true;
        }
    }

    /// Counts a rule selecting the identity in (1) or out (-1) of `selected_by`.
    pub(super) fn account_policy(&mut self, policy: &PolicyKey, delta: isize) {
        let counter = self.selected_by.entry(policy.clone()).or_default();
        count(counter, delta);
        if *counter == 0 {
            self.selected_by.remove(policy);
        }
    }

    /// The policies with a rule selecting the identity.
    pub(super) fn selected_by(&self) -> BTreeSet<PolicyKey> {
        self.selected_by.keys().cloned().collect()
    }

    /// Enforcement per direction.
    pub(super) fn enforcement(&self, config: &CompilerConfig) -> Enforcement {
        let mut enforcement = Enforcement::default();
        for direction in Direction::BOTH {
            let enforced = match config.mode {
                EnforcementMode::Never => false,
                EnforcementMode::Always => true,
                EnforcementMode::Default => self.parts[slot(direction)].rules > 0,
            };
            enforcement.set(direction, enforced);
        }
        enforcement
    }

    /// Every rule selecting the identity for the direction says `enableDefaultDeny: false`.
    fn allow_all_active(&self, config: &CompilerConfig, direction: Direction) -> bool {
        let parts = &self.parts[slot(direction)];
        config.mode == EnforcementMode::Default && parts.rules > 0 && parts.default_deny == 0
    }

    /// The group's own raw entries (rules' and built-in ones), as `raw_entries` gives them.
    fn own_entries(
        &self,
        config: &CompilerConfig,
        direction: Direction,
        remote: NumericIdentity,
        out: &mut Vec<RawEntry>,
    ) {
        if let Some(group) = self.groups.get(&(direction, remote)) {
            out.extend(group.keys().map(|c| c.raw(direction, remote)));
        }
        if remote == WILDCARD_IDENTITY && self.allow_all_active(config, direction) {
            out.extend(
                self.parts[slot(direction)]
                    .allow_all
                    .keys()
                    .map(|rule| RawEntry {
                        direction,
                        remote,
                        protocol: 0,
                        ports: None,
                        verdict: Verdict::Allow,
                        rule: Some(rule.clone()),
                    }),
            );
        }
        if remote == identity::HOST && direction == Direction::Ingress && config.allow_localhost {
            out.push(RawEntry {
                direction,
                remote,
                protocol: 0,
                ports: None,
                verdict: Verdict::Allow,
                rule: None,
            });
        }
    }

    /// The resolved entries of one group (empty when the direction is not enforced or the
    /// group has no entry of its own).
    fn resolve_group(
        &self,
        config: &CompilerConfig,
        enforcement: Enforcement,
        direction: Direction,
        remote: NumericIdentity,
        work: &mut Work,
    ) -> BTreeMap<MapKey, MapEntry> {
        let mut out = BTreeMap::new();
        if !enforcement.get(direction) {
            return out;
        }
        let mut raw = Vec::new();
        self.own_entries(config, direction, remote, &mut raw);
        if raw.is_empty() {
            return out;
        }
        if remote != WILDCARD_IDENTITY {
            self.own_entries(config, direction, WILDCARD_IDENTITY, &mut raw);
        }
        work.groups += 1;
        work.keys += raw.len() as u64;
        let group: Vec<&RawEntry> = raw.iter().collect();
        policy_map::resolve_group(direction, remote, &group, &mut out);
        out
    }

    /// The remotes a full re-resolution of a direction covers: those with contributions,
    /// the built-in ones, and those with entries now.
    fn remotes(
        &self,
        direction: Direction,
        current: &BTreeMap<MapKey, MapEntry>,
        work: &mut Work,
    ) -> BTreeSet<NumericIdentity> {
        let mut remotes: BTreeSet<NumericIdentity> = self
            .groups
            .range((direction, 0)..=(direction, NumericIdentity::MAX))
            .map(|((_, remote), _)| *remote)
            .collect();
        remotes.insert(WILDCARD_IDENTITY);
        remotes.insert(identity::HOST);
        let (lo, hi) = group_bounds(direction, None);
        for key in current.range(lo..=hi).map(|(k, _)| k) {
            work.keys += 1;
            remotes.insert(key.remote);
        }
        work.keys += remotes.len() as u64;
        remotes
    }

    /// Re-resolves what is dirty into `entries`, with `enforcement` the identity's
    /// enforcement before (directions whose enforcement changes are re-resolved whole);
    /// returns every entry that changed.
    pub(super) fn apply_dirty(
        &mut self,
        config: &CompilerConfig,
        before: Enforcement,
        entries: &mut BTreeMap<MapKey, MapEntry>,
        work: &mut Work,
    ) -> Vec<EntryChange> {
        let after = self.enforcement(config);
        let mut changes = Vec::new();
        let dirty_groups = std::mem::take(&mut self.dirty_groups);
        for direction in Direction::BOTH {
            let all = std::mem::take(&mut self.dirty_all[slot(direction)])
                || before.get(direction) != after.get(direction);
            let remotes = if all {
                self.remotes(direction, entries, work)
            } else {
                dirty_groups
                    .range((direction, 0)..=(direction, NumericIdentity::MAX))
                    .map(|(_, remote)| *remote)
                    .collect()
            };
            for remote in remotes {
                let new = self.resolve_group(config, after, direction, remote, work);
                replace_group(entries, direction, remote, new, &mut changes, work);
            }
        }
        changes
    }
}

/// The key range of a direction's group of `remote` (every remote when `None`).
fn group_bounds(direction: Direction, remote: Option<NumericIdentity>) -> (MapKey, MapKey) {
    let (first, last) = remote.map_or((0, NumericIdentity::MAX), |r| (r, r));
    let key = |remote, protocol, port| MapKey {
        direction,
        remote,
        protocol,
        port,
        end_port: port,
    };
    (key(first, 0, 0), key(last, u8::MAX, u16::MAX))
}

/// Makes the group of `(direction, remote)` in `entries` equal to `new`, noting each change.
fn replace_group(
    entries: &mut BTreeMap<MapKey, MapEntry>,
    direction: Direction,
    remote: NumericIdentity,
    mut new: BTreeMap<MapKey, MapEntry>,
    changes: &mut Vec<EntryChange>,
    work: &mut Work,
) {
    let (lo, hi) = group_bounds(direction, Some(remote));
    let old: Vec<MapKey> = entries.range(lo..=hi).map(|(k, _)| *k).collect();
    work.keys += old.len() as u64;
    for key in old {
        match new.remove(&key) {
            Some(entry) if entries.get(&key) == Some(&entry) => {}
            Some(entry) => {
                let old = entries.insert(key, entry.clone());
                changes.push(EntryChange {
                    key,
                    old,
                    new: Some(entry),
                });
            }
            None => {
                let old = entries.remove(&key);
                changes.push(EntryChange {
                    key,
                    old,
                    new: None,
                });
            }
        }
    }
    for (key, entry) in new {
        entries.insert(key, entry.clone());
        changes.push(EntryChange {
            key,
            old: None,
            new: Some(entry),
        });
    }
}
