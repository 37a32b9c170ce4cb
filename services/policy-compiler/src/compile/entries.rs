//! One identity's policy from the rules selecting it: raw entries per block, peer and port,
//! enforcement per direction, then the policy map's resolution. The incremental compiler
//! checks itself against this ([`super::Compiler::compile_from_scratch`]) and trace uses
//! it for the one remote it asks about.

use std::collections::BTreeSet;

use super::rules::{DirectionRules, Rule, port_keys};
use super::selectors::PeerSelector;
use super::{CompilerConfig, EnforcementMode};
use crate::identity;
use crate::policy::model::Direction;
use crate::policy_map::{
    self, CompiledPolicy, Enforcement, NumericIdentity, RawEntry, Verdict, WILDCARD_IDENTITY,
};

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
