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
//!   ([`crate::policy_map::resolve_group`]) and compared with what the group held; the result is
//!   the delta itself ([`IdentityChange`]), never a comparison of whole policies. Wildcard
//!   contributions, the built-in allow-all and enforcement changes reach every group of the
//!   direction, so those re-resolve it whole.
//! - A CIDR identity can only be matched by the CIDR selectors whose CIDR covers its prefix
//!   and by entities, so those are looked up (CIDR selectors indexed by CIDR, CIDR
//!   identities by prefix) rather than every selector tried against every identity; an
//!   endpoint identity only by the other selectors. Prefixes are counted by the selectors
//!   naming them: one that comes gets a CIDR identity, one that goes loses it, the others
//!   keep theirs ([`crate::identity::CidrIdentities`]).
//! - [`Work`] counts what a change visits, so tests check these bounds without timings.
//!
//! Where each part lives: `selectors.rs` (what a subject or peer selector matches),
//! `rules.rs` (policies → rules in the compiler's form), `entries.rs` (one identity's policy
//! from its rules, from scratch), `contributions.rs` (an endpoint identity's incremental
//! state), `incremental.rs` (the [`Compiler`]: its state, entry points and recompilation,
//! with what rules and identities coming or going do in `incremental/`).

mod contributions;
mod entries;
mod incremental;
mod rules;
mod selectors;

pub use entries::{compile_identity, raw_entries};
pub use incremental::{BlockId, Compiler, IdentityChange};
pub use rules::{DirectionRules, PeerBlock, Rule, RuleId, port_keys, rules_of};
pub use selectors::{PeerSelector, Subject};

use crate::policy::model::PolicyKind;

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

/// The kind of a policy, for display.
pub fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Kino => "KinoNetworkPolicy",
        PolicyKind::K8s => "NetworkPolicy",
    }
}

#[cfg(test)]
mod tests;
