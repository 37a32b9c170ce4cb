//! Realization: whether the agents enforce a policy revision. Each agent reports, per
//! endpoint, the revision its datapath realizes (its node's `PolicyRealization` record);
//! this compares those reports with a revision, for the endpoints a set of policies selects
//! (GetPolicyRealization: `kino policy import --wait`, `kino status`).
//!
//! The comparison lives here rather than in the CLI because only the compiler knows which
//! endpoints a policy selects (its compiled `selected_by`) and whether its own view has
//! reached the revision in question — before that, the selection is not final.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::PolicyKey;
use crate::policy_map::NumericIdentity;
use crate::view::View;

/// One node's report, as its agent wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// The last synced revision of the agent's policy stream.
    pub revision: i64,
    /// Endpoint id → (identity, realized revision).
    pub endpoints: BTreeMap<u32, (NumericIdentity, i64)>,
}

/// Which endpoints to compare, and with what.
#[derive(Clone, Debug, Default)]
pub struct RealizationQuery {
    /// Endpoints whose identity one of these policies selects.
    pub policies: Vec<PolicyKey>,
    /// Endpoints with one of these identities.
    pub identities: Vec<NumericIdentity>,
    /// The revision to compare with.
    pub revision: i64,
}

/// One endpoint, compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRealization {
    /// Its node.
    pub node: String,
    /// Its id on the node.
    pub endpoint_id: u32,
    /// Its pod (namespace, name), when known.
    pub pod: Option<(String, String)>,
    /// Its identity.
    pub identity: NumericIdentity,
    /// The revision its agent reports realized for it (0: not reported).
    pub realized_revision: i64,
    /// Whether it enforces the revision compared with.
    pub realized: bool,
    /// Why not, when it does not.
    pub reason: String,
}

/// The comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realization {
    /// The revision compared with.
    pub revision: i64,
    /// The compiler's view revision.
    pub compiler_revision: i64,
    /// The selected endpoints, by node then id.
    pub endpoints: Vec<EndpointRealization>,
}

impl Realization {
    /// How many selected endpoints do not enforce the revision.
    pub fn pending(&self) -> usize {
        self.endpoints.iter().filter(|e| !e.realized).count()
    }

    /// The lowest realized revision of the selected endpoints (0 when none is selected).
    pub fn min_realized(&self) -> i64 {
        self.endpoints
            .iter()
            .map(|e| e.realized_revision)
            .min()
            .unwrap_or(0)
    }
}

/// Compares the view's endpoints selected by `query` with the nodes' reports.
pub fn compare(
    view: &View,
    query: &RealizationQuery,
    reports: &BTreeMap<String, NodeReport>,
) -> Realization {
    let compiler_revision = view.revision();
    let everything = query.policies.is_empty() && query.identities.is_empty();
    let mut selected: BTreeSet<NumericIdentity> = query.identities.iter().copied().collect();
    if !query.policies.is_empty() {
        let wanted: BTreeSet<&PolicyKey> = query.policies.iter().collect();
        for (id, policy) in view.compiler().compiled() {
            if policy.selected_by.iter().any(|key| wanted.contains(key)) {
                selected.insert(*id);
            }
        }
    }
    let caught_up = compiler_revision >= query.revision;
    let mut endpoints: Vec<EndpointRealization> = view
        .endpoints()
        .filter(|e| everything || selected.contains(&e.identity))
        .map(|e| {
            let node = &e.key.node_name;
            let id = e.key.endpoint_id;
            let reported = reports.get(node).map(|r| (r, r.endpoints.get(&id)));
            let (realized_revision, mut reason) = match reported {
                None => (
                    0,
                    format!(
                        "the agent of node {node} has not reported what it enforces (is it running and of this version?)"
                    ),
                ),
                Some((report, None)) => (
                    0,
                    format!(
                        "the agent of node {node} has not reported this endpoint yet (its report is at revision {})",
                        report.revision
                    ),
                ),
                Some((_, Some((identity, _)))) if *identity != e.identity => (
                    0,
                    format!(
                        "its agent enforces identity {identity}'s policy, its Endpoint record says identity {} (a label change in flight)",
                        e.identity
                    ),
                ),
                Some((_, Some((_, revision)))) if *revision < query.revision => (
                    *revision,
                    format!(
                        "its agent realized revision {revision}, below {}",
                        query.revision
                    ),
                ),
                Some((_, Some((_, revision)))) => (*revision, String::new()),
            };
            if reason.is_empty() && !caught_up {
                reason = format!(
                    "the policy-compiler's view is at revision {compiler_revision}, below {}",
                    query.revision
                );
            }
            EndpointRealization {
                node: node.clone(),
                endpoint_id: id,
                pod: e.key.pod.clone(),
                identity: e.identity,
                realized_revision,
                realized: reason.is_empty(),
                reason,
            }
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.node, a.endpoint_id).cmp(&(&b.node, b.endpoint_id)));
    Realization {
        revision: query.revision,
        compiler_revision,
        endpoints,
    }
}
