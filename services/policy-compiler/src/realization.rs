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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompilerConfig;
    use crate::ipcache::EndpointRef;
    use crate::labels::Labels;
    use crate::policy::parse_documents;
    use crate::view::{Change, EndpointRecord};

    const WEB: &str = "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{}]\n";

    fn endpoint(node: &str, id: u32, identity: u32, ip: &str) -> Change {
        Change::UpsertEndpoint(EndpointRecord {
            key: EndpointRef {
                node_name: node.into(),
                endpoint_id: id,
                pod: Some(("shop".into(), format!("pod-{id}"))),
                ..EndpointRef::default()
            },
            identity,
            addresses: vec![ip.parse().unwrap()],
        })
    }

    /// web (256) on two nodes, lb (257) on one; the policy selects web.
    fn view() -> View {
        let mut view = View::new(CompilerConfig::default(), 100);
        let policy = parse_documents(WEB, "default").policies.remove(0);
        view.apply(
            10,
            vec![
                Change::UpsertIdentity(
                    256,
                    Labels::parse_list("container:app=web,container:namespace=shop").unwrap(),
                ),
                Change::UpsertIdentity(
                    257,
                    Labels::parse_list("container:app=lb,container:namespace=shop").unwrap(),
                ),
                endpoint("n1", 1, 256, "10.0.1.2"),
                endpoint("n1", 2, 257, "10.0.1.3"),
                endpoint("n2", 1, 256, "10.0.2.2"),
                Change::UpsertPolicy(Box::new(policy)),
            ],
        );
        view
    }

    fn report(revision: i64, endpoints: &[(u32, u32, i64)]) -> NodeReport {
        NodeReport {
            revision,
            endpoints: endpoints
                .iter()
                .map(|(id, identity, realized)| (*id, (*identity, *realized)))
                .collect(),
        }
    }

    fn query(revision: i64) -> RealizationQuery {
        RealizationQuery {
            policies: vec![PolicyKey {
                namespace: "shop".into(),
                name: "web".into(),
            }],
            identities: Vec::new(),
            revision,
        }
    }

    #[test]
    fn only_the_selected_endpoints_are_compared_each_with_why_not() {
        let view = view();
        let reports: BTreeMap<String, NodeReport> = [
            ("n1".to_owned(), report(10, &[(1, 256, 10), (2, 257, 10)])),
            ("n2".to_owned(), report(9, &[(1, 256, 9)])),
        ]
        .into();
        let r = compare(&view, &query(10), &reports);
        let seen: Vec<(&str, u32, bool)> = r
            .endpoints
            .iter()
            .map(|e| (e.node.as_str(), e.endpoint_id, e.realized))
            .collect();
        assert_eq!(seen, [("n1", 1, true), ("n2", 1, false)]);
        assert_eq!(r.pending(), 1);
        assert_eq!(r.min_realized(), 9);
        assert_eq!(
            r.endpoints[1].reason,
            "its agent realized revision 9, below 10"
        );
        // Every endpoint when nothing is named.
        let all = compare(&view, &RealizationQuery::default(), &reports);
        assert_eq!(all.endpoints.len(), 3);
    }

    #[test]
    fn silence_a_missing_endpoint_another_identity_or_a_lagging_view_is_not_realized() {
        let view = view();
        let reports: BTreeMap<String, NodeReport> =
            [("n1".to_owned(), report(12, &[(1, 257, 12)]))].into();
        let r = compare(&view, &query(10), &reports);
        assert!(
            r.endpoints[0]
                .reason
                .contains("enforces identity 257's policy"),
            "{:?}",
            r.endpoints[0]
        );
        assert!(
            r.endpoints[1]
                .reason
                .contains("agent of node n2 has not reported"),
            "{:?}",
            r.endpoints[1]
        );
        let reports: BTreeMap<String, NodeReport> = [("n1".to_owned(), report(12, &[]))].into();
        let r = compare(&view, &query(10), &reports);
        assert!(
            r.endpoints[0]
                .reason
                .contains("has not reported this endpoint yet")
        );
        // Reports ahead of the compiler's own view do not count: its selection is not final.
        let reports: BTreeMap<String, NodeReport> = [
            ("n1".to_owned(), report(12, &[(1, 256, 12)])),
            ("n2".to_owned(), report(12, &[(1, 256, 12)])),
        ]
        .into();
        let r = compare(&view, &query(11), &reports);
        assert_eq!(r.pending(), 2);
        assert!(
            r.endpoints[0]
                .reason
                .contains("view is at revision 10, below 11")
        );
        assert_eq!(compare(&view, &query(10), &reports).pending(), 0);
    }
}
