//! Policy trace: the verdict of a flow and the rules behind it, computed with the
//! compiler's own code ([`compile::compile_identity`] and [`CompiledPolicy::decide`](crate::policy_map::CompiledPolicy::decide)),
//! restricted to the one remote identity asked about.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::compile::{self, PeerSelector, Rule};
use crate::error::PolicyError;
use crate::identity::{self, IdentityClass, IdentityInfo};
use crate::labels::Labels;
use crate::policy::model::{Direction, Protocol, RuleRef};
use crate::policy_map::{Enforcement, MapEntry, MapKey, NumericIdentity, Verdict};
use crate::view::View;

/// Stands for a label set no identity has yet.
pub const UNALLOCATED: NumericIdentity = u32::MAX;

/// How a side of the flow is named.
#[derive(Clone, Debug)]
pub enum TraceSubject {
    /// A label set.
    Labels(Labels),
    /// A pod (namespace, name), resolved through the Endpoint resources.
    Pod(String, String),
    /// A numeric identity.
    Identity(NumericIdentity),
    /// An address, resolved through the ipcache.
    Ip(IpAddr),
}

/// Why one side reached its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceReason {
    /// Not enforced in this direction.
    NotEnforced,
    /// This side is not an endpoint.
    NotAnEndpoint,
    /// An allow rule matched, no deny.
    AllowedByRule,
    /// A deny rule matched.
    DeniedByRule,
    /// Enforced and nothing allowed it.
    DefaultDeny,
    /// The local host, always allowed in.
    AllowedLocalhost,
}

/// One side's evaluation.
#[derive(Clone, Debug)]
pub struct SideTrace {
    /// Egress at the source or ingress at the destination.
    pub direction: Direction,
    /// The endpoint whose policy is evaluated (0 when not an endpoint, or unallocated).
    pub local_identity: NumericIdentity,
    /// The other side (0 when unallocated).
    pub remote_identity: NumericIdentity,
    /// Enforced?
    pub enforced: bool,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: TraceReason,
    /// Allow rules that matched.
    pub allowed_by: Vec<Arc<RuleRef>>,
    /// Deny rules that matched.
    pub denied_by: Vec<Arc<RuleRef>>,
    /// The policy-map entry the lookup hits.
    pub matched_entry: Option<(MapKey, MapEntry)>,
}

/// A trace.
#[derive(Clone, Debug)]
pub struct Trace {
    /// ALLOW only if both sides allow.
    pub verdict: Verdict,
    /// Egress at the source.
    pub egress: SideTrace,
    /// Ingress at the destination.
    pub ingress: SideTrace,
    /// What `kino policy trace` prints.
    pub explanation: Vec<String>,
    /// The view's revision.
    pub revision: i64,
}

/// A resolved side.
struct Side {
    info: IdentityInfo,
    reported: NumericIdentity,
    name: String,
}

fn resolve(view: &View, subject: &TraceSubject, field: &str) -> Result<Side, PolicyError> {
    let compiler = view.compiler();
    match subject {
        TraceSubject::Labels(labels) => {
            if labels.is_empty() {
                return Err(PolicyError::invalid(field, "give at least one label"));
            }
            Ok(match compiler.identity_by_labels(labels) {
                Some(info) => Side {
                    info: info.clone(),
                    reported: info.id,
                    name: format!("{labels} (identity {})", info.id),
                },
                None => Side {
                    info: IdentityInfo::endpoint(UNALLOCATED, labels.clone()),
                    reported: 0,
                    name: format!("{labels} (no identity allocated yet)"),
                },
            })
        }
        TraceSubject::Identity(id) => {
            let info = compiler.identities().get(id).cloned().ok_or_else(|| {
                PolicyError::NotFound(format!("{field}: identity {id} is not known"))
            })?;
            Ok(Side {
                name: format!("identity {id} ({})", info.labels),
                reported: *id,
                info,
            })
        }
        TraceSubject::Pod(ns, name) => {
            let endpoint = view
                .endpoints()
                .find(|e| {
                    e.key
                        .pod
                        .as_ref()
                        .is_some_and(|(n, p)| n == ns && p == name)
                })
                .ok_or_else(|| {
                    PolicyError::NotFound(format!("{field}: no endpoint of pod {ns}/{name}"))
                })?;
            let info = compiler
                .identities()
                .get(&endpoint.identity)
                .cloned()
                .ok_or_else(|| {
                    PolicyError::FailedPrecondition(format!(
                        "{field}: pod {ns}/{name} has no identity yet (identity {})",
                        endpoint.identity
                    ))
                })?;
            Ok(Side {
                name: format!("pod {ns}/{name} (identity {})", info.id),
                reported: info.id,
                info,
            })
        }
        TraceSubject::Ip(ip) => {
            let id = view
                .ipcache()
                .lookup(*ip)
                .map_or(identity::WORLD, |e| e.identity);
            let info = compiler
                .identities()
                .get(&id)
                .cloned()
                .unwrap_or_else(|| identity::reserved(identity::WORLD).expect("world"));
            Ok(Side {
                name: format!("{ip} (identity {id}, {})", info.labels),
                reported: info.id,
                info,
            })
        }
    }
}

/// Explains the flow `source → destination` on `protocol` / `port`.
pub fn trace(
    view: &View,
    source: &TraceSubject,
    destination: &TraceSubject,
    protocol: Protocol,
    port: u16,
) -> Result<Trace, PolicyError> {
    let src = resolve(view, source, "source")?;
    let dst = resolve(view, destination, "destination")?;
    let proto = protocol.number();
    let egress = side(view, Direction::Egress, &src, &dst, proto, port);
    let ingress = side(view, Direction::Ingress, &dst, &src, proto, port);
    let verdict = if egress.verdict == Verdict::Allow && ingress.verdict == Verdict::Allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    let flow = if port == 0 {
        protocol.as_str().to_owned()
    } else {
        format!("{port}/{}", protocol.as_str())
    };
    let mut explanation = vec![format!("{} → {} on {flow}", src.name, dst.name)];
    for (who, side) in [(&src.name, &egress), (&dst.name, &ingress)] {
        explanation.push(describe(who, side));
    }
    explanation.push(format!(
        "final verdict: {}",
        if verdict == Verdict::Allow {
            "ALLOWED"
        } else {
            "DENIED"
        }
    ));
    Ok(Trace {
        verdict,
        egress,
        ingress,
        explanation,
        revision: view.revision(),
    })
}

fn describe(who: &str, side: &SideTrace) -> String {
    let rules = |rules: &[Arc<RuleRef>]| {
        rules
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let what = match side.reason {
        TraceReason::NotEnforced => "not enforced: allowed".to_owned(),
        TraceReason::NotAnEndpoint => "not an endpoint, no policy applies: allowed".to_owned(),
        TraceReason::AllowedByRule => format!("allowed by {}", rules(&side.allowed_by)),
        TraceReason::DeniedByRule => format!(
            "denied by {} (deny wins over allow)",
            rules(&side.denied_by)
        ),
        TraceReason::DefaultDeny => {
            "enforced and no rule allows it: denied (default deny)".to_owned()
        }
        TraceReason::AllowedLocalhost => {
            "the local host may always reach endpoints (allow-localhost): allowed".to_owned()
        }
    };
    let entry = side
        .matched_entry
        .as_ref()
        .map(|(k, e)| format!(" [policy map: {k} → {:?}]", e.verdict))
        .unwrap_or_default();
    format!("{} at {who}: {what}{entry}", side.direction.as_str())
}

fn side(
    view: &View,
    direction: Direction,
    local: &Side,
    remote: &Side,
    protocol: u8,
    port: u16,
) -> SideTrace {
    let mut trace = SideTrace {
        direction,
        local_identity: local.reported,
        remote_identity: remote.reported,
        enforced: false,
        verdict: Verdict::Allow,
        reason: TraceReason::NotAnEndpoint,
        allowed_by: Vec::new(),
        denied_by: Vec::new(),
        matched_entry: None,
    };
    if local.info.class != IdentityClass::Endpoint {
        return trace;
    }
    let compiler = view.compiler();
    let rules: Vec<&Rule> = if local.info.id == UNALLOCATED {
        compiler.rules_selecting_labels(&local.info.labels)
    } else {
        compiler.rules_selecting(local.info.id)
    };
    let remote_info = &remote.info;
    let remote_id = remote_info.id;
    let resolver = |selector: &PeerSelector| -> Vec<NumericIdentity> {
        if selector.matches(remote_info) {
            vec![remote_id]
        } else {
            Vec::new()
        }
    };
    let config = compiler.config();
    let policy = compile::compile_identity(config, local.info.id, rules.iter().copied(), &resolver);
    let mut enforcement = Enforcement::default();
    let raw = compile::raw_entries(config, rules.iter().copied(), &resolver, &mut enforcement);
    let mut allowed: BTreeSet<Arc<RuleRef>> = BTreeSet::new();
    let mut denied: BTreeSet<Arc<RuleRef>> = BTreeSet::new();
    for entry in raw
        .iter()
        .filter(|e| e.direction == direction && e.matches(remote_id, protocol, port))
    {
        if let Some(rule) = &entry.rule {
            match entry.verdict {
                Verdict::Allow => allowed.insert(rule.clone()),
                Verdict::Deny => denied.insert(rule.clone()),
            };
        }
    }
    let decision = policy.decide(direction, remote_id, protocol, port);
    trace.enforced = decision.enforced;
    trace.verdict = decision.verdict;
    trace.allowed_by = allowed.into_iter().collect();
    trace.denied_by = denied.into_iter().collect();
    trace.matched_entry = decision.entry.map(|k| (k, policy.entries[&k].clone()));
    trace.reason = if !decision.enforced {
        TraceReason::NotEnforced
    } else if decision.verdict == Verdict::Deny {
        if trace.denied_by.is_empty() {
            TraceReason::DefaultDeny
        } else {
            TraceReason::DeniedByRule
        }
    } else if trace.allowed_by.is_empty() && remote_id == identity::HOST {
        TraceReason::AllowedLocalhost
    } else {
        TraceReason::AllowedByRule
    };
    trace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompilerConfig;
    use crate::policy::parse_documents;
    use crate::view::Change;

    #[test]
    fn explains_deny_over_allow_and_default_deny() {
        let text = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web}
spec:
  description: lb to web
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {env: bad}}]
"#;
        let out = parse_documents(text, "default");
        assert!(out.errors.is_empty());
        let mut view = View::new(CompilerConfig::default(), 10);
        let web = Labels::parse_list("container:namespace=default,container:app=web").unwrap();
        let lb = Labels::parse_list("container:namespace=default,container:app=lb").unwrap();
        view.apply(
            3,
            vec![
                Change::UpsertIdentity(300, web.clone()),
                Change::UpsertIdentity(301, lb.clone()),
                Change::UpsertPolicy(Box::new(out.policies[0].clone())),
            ],
        );
        let t = trace(
            &view,
            &TraceSubject::Labels(lb.clone()),
            &TraceSubject::Identity(300),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        assert_eq!(t.verdict, Verdict::Allow, "{:?}", t.explanation);
        assert_eq!(t.egress.reason, TraceReason::NotEnforced);
        assert_eq!(t.ingress.reason, TraceReason::AllowedByRule);
        assert_eq!(t.ingress.allowed_by[0].path, "spec.ingress[0]");
        let t = trace(
            &view,
            &TraceSubject::Labels(lb.clone()),
            &TraceSubject::Identity(300),
            Protocol::Tcp,
            81,
        )
        .unwrap();
        assert_eq!(t.ingress.reason, TraceReason::DefaultDeny);
        // An unallocated label set is evaluated as if it had an identity.
        let bad =
            Labels::parse_list("container:namespace=default,container:app=lb,container:env=bad")
                .unwrap();
        let t = trace(
            &view,
            &TraceSubject::Labels(bad),
            &TraceSubject::Labels(web),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        assert_eq!(t.verdict, Verdict::Deny);
        assert_eq!(t.ingress.reason, TraceReason::DeniedByRule);
        assert_eq!(t.ingress.remote_identity, 0);
        assert!(
            t.explanation.iter().any(|l| l.contains("deny wins")),
            "{:?}",
            t.explanation
        );
        let t = trace(
            &view,
            &TraceSubject::Ip("192.0.2.1".parse().unwrap()),
            &TraceSubject::Identity(300),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        assert_eq!(t.ingress.remote_identity, identity::WORLD);
        assert_eq!(t.ingress.reason, TraceReason::DefaultDeny);
    }
}
