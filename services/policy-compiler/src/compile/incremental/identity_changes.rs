//! What an identity coming or going does to the incremental compiler: as a remote, the
//! cached selectors that match it add or drop it (and its contributions in their blocks'
//! subjects); as an endpoint, it becomes a subject of the rules selecting it. Only the
//! selectors that could match it are tried (a CIDR identity: the CIDR selectors of its
//! prefix's supernets and the entities). Also the CIDR identities of the prefixes policies
//! name.

use super::{Compiler, account_rule, match_targets};
use crate::cidr::Cidr;
use crate::compile::contributions::{Contribution, IdentityState};
use crate::compile::selectors::{PeerSelector, entity_selectors};
use crate::identity::{IdentityClass, IdentityInfo};
use crate::policy::model::Direction;
use crate::policy_map::NumericIdentity;

impl Compiler {
    /// The cached selectors that may match a CIDR identity of `prefix`: the CIDR selectors
    /// whose CIDR is a supernet of it, and the entities.
    pub(super) fn selectors_of_prefix(&mut self, prefix: &Cidr) -> Vec<PeerSelector> {
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
    pub(super) fn candidate_selectors(&mut self, info: &IdentityInfo) -> Vec<PeerSelector> {
        match &info.class {
            IdentityClass::Cidr(prefix) => self.selectors_of_prefix(prefix),
            _ => {
                self.work.scanned += self.identity_selectors.len() as u64;
                self.identity_selectors.iter().cloned().collect()
            }
        }
    }

    pub(super) fn add_identity(&mut self, info: IdentityInfo) {
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

    pub(super) fn remove_identity(&mut self, id: NumericIdentity) {
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
    pub(super) fn account_match(
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
    /// [`CidrIdentities`](crate::identity::CidrIdentities)); only the prefixes whose naming
    /// changed are looked at.
    pub(super) fn refresh_cidr_identities(&mut self) {
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
}
