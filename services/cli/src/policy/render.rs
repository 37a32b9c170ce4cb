//! What `kino policy import/validate/list/get/delete` print for people: the import outcome
//! with its revision, validation errors with their field paths, the policy table
//! (NAMESPACE NAME KIND SELECTS REVISION) and a readable summary of one policy's rules.

use std::fmt::Write as _;

use kino_api::policy as pb;
use kino_api::types::{Direction, Protocol};

use crate::table;

/// `namespace/name`; `/name` for a cluster-wide policy (what `kino policy get` takes).
pub fn ref_text(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn policy_ref_text(policy: Option<&pb::PolicyRef>) -> String {
    policy.map_or_else(|| "?".to_owned(), |p| ref_text(&p.namespace, &p.name))
}

/// The kind as the document names it (`CiliumNetworkPolicy` stays so); from the stored kind
/// when the source does not say.
pub fn kind_text(policy: &pb::Policy) -> String {
    let written = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&policy.source)
        .ok()
        .and_then(|doc| doc.get("kind").and_then(|k| k.as_str()).map(str::to_owned));
    written.unwrap_or_else(|| stored_kind_text(policy.kind, &policy.namespace).to_owned())
}

/// The kind of a stored policy by its enum (a Kinocilium policy without a namespace is
/// cluster-wide).
pub fn stored_kind_text(kind: i32, namespace: &str) -> &'static str {
    match pb::PolicyKind::try_from(kind) {
        Ok(pb::PolicyKind::KinoNetworkPolicy) if namespace.is_empty() => {
            "KinoClusterwideNetworkPolicy"
        }
        Ok(pb::PolicyKind::KinoNetworkPolicy) => "KinoNetworkPolicy",
        Ok(pb::PolicyKind::K8sNetworkPolicy) => "NetworkPolicy",
        _ => "?",
    }
}

/// A label selector as kubectl writes one: `app=web,env in (a,b),tier,!legacy`; `(all)`
/// when empty (it selects everything in scope), `(none)` when absent.
pub fn selector_text(selector: Option<&pb::LabelSelector>) -> String {
    let Some(selector) = selector else {
        return "(none)".to_owned();
    };
    let mut labels: Vec<(&String, &String)> = selector.match_labels.iter().collect();
    labels.sort();
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for e in &selector.match_expressions {
        let values = e.values.join(",");
        parts.push(match pb::SelectorOperator::try_from(e.operator) {
            Ok(pb::SelectorOperator::In) => format!("{} in ({values})", e.key),
            Ok(pb::SelectorOperator::NotIn) => format!("{} notin ({values})", e.key),
            Ok(pb::SelectorOperator::Exists) => e.key.clone(),
            Ok(pb::SelectorOperator::DoesNotExist) => format!("!{}", e.key),
            _ => format!("{} ?({values})", e.key),
        });
    }
    if parts.is_empty() {
        "(all)".to_owned()
    } else {
        parts.join(",")
    }
}

/// What a policy selects: its rules' endpoint selectors (Kinocilium), its podSelector
/// (Kubernetes).
pub fn selects_text(policy: &pb::Policy) -> String {
    match &policy.spec {
        Some(pb::policy::Spec::KinoNetworkPolicy(kino)) => {
            let mut selectors: Vec<String> = Vec::new();
            for rule in &kino.rules {
                let text = selector_text(rule.endpoint_selector.as_ref());
                if !selectors.contains(&text) {
                    selectors.push(text);
                }
            }
            if selectors.is_empty() {
                "(none)".to_owned()
            } else {
                selectors.join("; ")
            }
        }
        Some(pb::policy::Spec::K8sNetworkPolicy(k8s)) => {
            selector_text(Some(&k8s.pod_selector.clone().unwrap_or_default()))
        }
        None => "?".to_owned(),
    }
}

/// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`; `ANY` when unspecified.
pub fn protocol_text(protocol: i32) -> String {
    match Protocol::try_from(protocol) {
        Ok(Protocol::Unspecified) => "ANY".to_owned(),
        Ok(Protocol::Tcp) => "TCP".to_owned(),
        Ok(Protocol::Udp) => "UDP".to_owned(),
        Ok(Protocol::Sctp) => "SCTP".to_owned(),
        Ok(Protocol::Icmp) => "ICMP".to_owned(),
        Ok(Protocol::Icmpv6) => "ICMPv6".to_owned(),
        Err(_) => format!("protocol {protocol}"),
    }
}

/// `80/TCP`, `80-90/TCP`; the protocol alone for every port.
pub fn port_text(port: u32, end_port: u32, protocol: i32) -> String {
    let protocol = protocol_text(protocol);
    match (port, end_port) {
        (0, _) => protocol,
        (port, 0) => format!("{port}/{protocol}"),
        (port, end) => format!("{port}-{end}/{protocol}"),
    }
}

/// `ingress` / `egress`.
pub fn direction_text(direction: i32) -> &'static str {
    match Direction::try_from(direction) {
        Ok(Direction::Ingress) => "ingress",
        Ok(Direction::Egress) => "egress",
        _ => "?",
    }
}

fn entity_text(entity: i32) -> &'static str {
    match pb::Entity::try_from(entity) {
        Ok(pb::Entity::Host) => "host",
        Ok(pb::Entity::RemoteNode) => "remote-node",
        Ok(pb::Entity::World) => "world",
        Ok(pb::Entity::Cluster) => "cluster",
        Ok(pb::Entity::All) => "all",
        _ => "?",
    }
}

fn cidr_text(rule: &pb::CidrRule) -> String {
    if rule.except.is_empty() {
        format!("CIDR {}", rule.cidr)
    } else {
        format!("CIDR {} except {}", rule.cidr, rule.except.join(", "))
    }
}

/// One ingress / egress (deny) rule of a Kinocilium policy, e.g. `allow from endpoints
/// app=lb on 80-90/TCP`.
fn peer_rule_text(rule: &pb::PeerRule, egress: bool, deny: bool) -> String {
    let verb = if deny { "deny" } else { "allow" };
    let way = if egress { "to" } else { "from" };
    let mut peers: Vec<String> = Vec::new();
    peers.extend(
        rule.endpoints
            .iter()
            .map(|s| format!("endpoints {}", selector_text(Some(s)))),
    );
    peers.extend(rule.cidrs.iter().map(|c| format!("CIDR {c}")));
    peers.extend(rule.cidr_sets.iter().map(cidr_text));
    peers.extend(
        rule.entities
            .iter()
            .map(|e| format!("entity {}", entity_text(*e))),
    );
    if peers.is_empty() && rule.ports.is_empty() {
        return "no peer: only turns on default deny for this direction".to_owned();
    }
    let peers = if peers.is_empty() {
        "every peer".to_owned()
    } else {
        peers.join(" or ")
    };
    let ports = if rule.ports.is_empty() {
        "every port".to_owned()
    } else {
        rule.ports
            .iter()
            .map(|p| port_text(p.port, p.end_port, p.protocol))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{verb} {way} {peers} on {ports}")
}

fn k8s_peer_text(peer: &pb::K8sNetworkPolicyPeer) -> String {
    if let Some(block) = &peer.ip_block {
        return cidr_text(block);
    }
    match (&peer.pod_selector, &peer.namespace_selector) {
        (Some(pods), None) => format!("pods {}", selector_text(Some(pods))),
        (None, Some(namespaces)) => format!("namespaces {}", selector_text(Some(namespaces))),
        (Some(pods), Some(namespaces)) => format!(
            "pods {} in namespaces {}",
            selector_text(Some(pods)),
            selector_text(Some(namespaces))
        ),
        (None, None) => "nothing".to_owned(),
    }
}

fn k8s_rule_text(rule: &pb::K8sNetworkPolicyRule, egress: bool) -> String {
    let way = if egress { "to" } else { "from" };
    let peers = if rule.peers.is_empty() {
        "every peer".to_owned()
    } else {
        rule.peers
            .iter()
            .map(k8s_peer_text)
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let ports = if rule.ports.is_empty() {
        "every port".to_owned()
    } else {
        rule.ports
            .iter()
            .map(|p| port_text(p.port, p.end_port, p.protocol))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("allow {way} {peers} on {ports}")
}

/// The `kino policy import` outcome: one row per document, then the revision.
pub fn render_import(response: &pb::ImportPoliciesResponse) -> String {
    let rows: Vec<Vec<String>> = response
        .policies
        .iter()
        .map(|p| {
            let namespace = p.policy.as_ref().map_or("", |r| r.namespace.as_str());
            vec![
                policy_ref_text(p.policy.as_ref()),
                stored_kind_text(p.kind, namespace).to_owned(),
                match pb::ImportAction::try_from(p.action) {
                    Ok(pb::ImportAction::Created) => "created",
                    Ok(pb::ImportAction::Updated) => "updated",
                    Ok(pb::ImportAction::Unchanged) => "unchanged",
                    _ => "?",
                }
                .to_owned(),
                p.revision.to_string(),
            ]
        })
        .collect();
    let mut out = table::render(&["POLICY", "KIND", "ACTION", "REVISION"], &rows);
    let _ = writeln!(
        out,
        "Revision: {} (agents enforce these policies once their realized policy revision reaches it)",
        response.revision
    );
    out
}

/// One validation error: `document N (ns/name), PATH: PROBLEM`, with the line when known.
pub fn error_text(error: &pb::PolicyError) -> String {
    let mut head = format!("document {}", error.document_index);
    if let Some(policy) = error.policy.as_ref().filter(|p| !p.name.is_empty()) {
        let _ = write!(head, " ({})", ref_text(&policy.namespace, &policy.name));
    }
    if error.line > 0 {
        let _ = write!(head, ", line {}", error.line);
    }
    if error.path.is_empty() {
        format!("{head}: {}", error.message)
    } else {
        format!("{head}, {}: {}", error.path, error.message)
    }
}

/// The `kino policy validate` result for `file`: the valid documents, or every error.
pub fn render_validation(file: &str, response: &pb::ValidatePoliciesResponse) -> String {
    let mut out = String::new();
    if response.errors.is_empty() {
        let _ = writeln!(
            out,
            "{file}: {} valid policy document(s); nothing was stored",
            response.policies.len()
        );
    } else {
        let _ = writeln!(
            out,
            "{file}: {} error(s); `kino policy import` would store nothing",
            response.errors.len()
        );
        for error in &response.errors {
            let _ = writeln!(out, "  {}", error_text(error));
        }
        if !response.policies.is_empty() {
            out.push_str("Documents without errors:\n");
        }
    }
    let rows: Vec<Vec<String>> = response
        .policies
        .iter()
        .map(|policy| {
            vec![
                ref_text(&policy.namespace, &policy.name),
                kind_text(policy),
                format!("selects {}", selects_text(policy)),
            ]
        })
        .collect();
    // The table without its header row, indented under the summary.
    for line in table::render(&["", "", ""], &rows).lines().skip(1) {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// A stored policy with its revision (`-` when it vanished between list and get).
pub struct ListedPolicy {
    /// The policy.
    pub policy: pb::Policy,
    /// Its datastore revision, when known.
    pub revision: Option<i64>,
}

/// The `kino policy list` table.
pub fn render_list(policies: &[ListedPolicy]) -> String {
    if policies.is_empty() {
        return "No policies. `kino policy import FILE` stores some.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|listed| {
            let p = &listed.policy;
            vec![
                if p.namespace.is_empty() {
                    "-".to_owned()
                } else {
                    p.namespace.clone()
                },
                p.name.clone(),
                kind_text(p),
                selects_text(p),
                listed
                    .revision
                    .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            ]
        })
        .collect();
    table::render(&["NAMESPACE", "NAME", "KIND", "SELECTS", "REVISION"], &rows)
}

/// The `kino policy get` summary: identity of the policy, then its rules one per line.
pub fn render_policy(policy: &pb::Policy, revision: i64) -> String {
    let mut out = String::new();
    let namespace = if policy.namespace.is_empty() {
        "- (cluster-wide)"
    } else {
        &policy.namespace
    };
    let mut labels: Vec<String> = policy
        .metadata_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    let imported = policy.import_time.as_ref().map_or_else(
        || "-".to_owned(),
        |t| crate::endpoint::timestamp_rfc3339(t.seconds, t.nanos),
    );
    for (key, value) in [
        ("Name", policy.name.clone()),
        ("Namespace", namespace.to_owned()),
        ("Kind", kind_text(policy)),
        (
            "Labels",
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels.join(",")
            },
        ),
        ("Revision", revision.to_string()),
        ("Imported", imported),
        ("Selects", selects_text(policy)),
    ] {
        let _ = writeln!(out, "{:<11}{value}", format!("{key}:"));
    }
    match &policy.spec {
        Some(pb::policy::Spec::KinoNetworkPolicy(kino)) => {
            out.push_str("Rules:\n");
            for rule in &kino.rules {
                render_kino_rule(&mut out, rule);
            }
        }
        Some(pb::policy::Spec::K8sNetworkPolicy(k8s)) => render_k8s(&mut out, k8s),
        None => out.push_str("Rules:     (not parsed)\n"),
    }
    out
}

fn render_kino_rule(out: &mut String, rule: &pb::PolicyRule) {
    let path = if rule.path.is_empty() {
        "spec"
    } else {
        &rule.path
    };
    let _ = write!(
        out,
        "  {path}: endpoints {}",
        selector_text(rule.endpoint_selector.as_ref())
    );
    if !rule.description.is_empty() {
        let _ = write!(out, " ({})", rule.description);
    }
    out.push('\n');
    let mut lines: Vec<(String, String)> = Vec::new();
    for (field, rules, egress, deny) in [
        ("ingress", &rule.ingress, false, false),
        ("ingressDeny", &rule.ingress_deny, false, true),
        ("egress", &rule.egress, true, false),
        ("egressDeny", &rule.egress_deny, true, true),
    ] {
        for (index, peer) in rules.iter().enumerate() {
            lines.push((
                format!("{field}[{index}]"),
                peer_rule_text(peer, egress, deny),
            ));
        }
    }
    if let Some(default_deny) = &rule.enable_default_deny {
        let mut set: Vec<String> = Vec::new();
        if let Some(ingress) = default_deny.ingress {
            set.push(format!("ingress {ingress}"));
        }
        if let Some(egress) = default_deny.egress {
            set.push(format!("egress {egress}"));
        }
        if !set.is_empty() {
            lines.push(("enableDefaultDeny".to_owned(), set.join(", ")));
        }
    }
    if lines.is_empty() {
        out.push_str("    (no ingress or egress rules)\n");
    }
    let width = lines.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    for (field, text) in lines {
        let _ = writeln!(out, "    {field:width$}   {text}");
    }
}

fn render_k8s(out: &mut String, k8s: &pb::K8sNetworkPolicy) {
    let types: Vec<&str> = k8s
        .policy_types
        .iter()
        .map(|d| match Direction::try_from(*d) {
            Ok(Direction::Ingress) => "Ingress",
            Ok(Direction::Egress) => "Egress",
            _ => "?",
        })
        .collect();
    let _ = writeln!(out, "{:<11}{}", "Types:", types.join(", "));
    out.push_str("Rules:\n");
    let mut lines: Vec<(String, String)> = Vec::new();
    for (field, rules, egress) in [
        ("ingress", &k8s.ingress, false),
        ("egress", &k8s.egress, true),
    ] {
        for (index, rule) in rules.iter().enumerate() {
            lines.push((format!("{field}[{index}]"), k8s_rule_text(rule, egress)));
        }
    }
    if lines.is_empty() {
        out.push_str("  (no rules: every selected pod is isolated in its policy types)\n");
    }
    let width = lines.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    for (field, text) in lines {
        let _ = writeln!(out, "  spec.{field:width$}   {text}");
    }
}

/// The `kino policy delete` outcome.
pub fn render_delete(policy: &pb::Policy, fallback: &str, revision: i64) -> String {
    let name = if policy.name.is_empty() {
        fallback.to_owned()
    } else {
        ref_text(&policy.namespace, &policy.name)
    };
    format!(
        "policy {name} deleted\nRevision: {revision} (agents stop enforcing it once their realized policy revision reaches it)\n"
    )
}

/// The document as imported, as YAML (a JSON document is converted, keys kept in order).
pub fn policy_yaml(policy: &pb::Policy) -> String {
    let is_json = policy.source_format == pb::SourceFormat::Json as i32
        || policy.source.trim_start().starts_with('{');
    let text = if is_json {
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&policy.source)
            .ok()
            .and_then(|value| serde_yaml_ng::to_string(&value).ok())
            .unwrap_or_else(|| policy.source.clone())
    } else {
        policy.source.clone()
    };
    let text = text.trim_matches('\n');
    let text = text.strip_prefix("---\n").unwrap_or(text);
    format!("{text}\n")
}

/// Several documents as one YAML stream (`kino policy list -o yaml`), re-importable.
pub fn policies_yaml(policies: &[ListedPolicy]) -> String {
    policies
        .iter()
        .map(|p| policy_yaml(&p.policy))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn selector(labels: &[(&str, &str)]) -> pb::LabelSelector {
        pb::LabelSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            match_expressions: vec![],
        }
    }

    /// The README's example `web` policy, parsed as the compiler stores it.
    pub(crate) fn web_policy() -> pb::Policy {
        let tcp = Protocol::Tcp as i32;
        pb::Policy {
            namespace: "shop".into(),
            name: "web".into(),
            kind: pb::PolicyKind::KinoNetworkPolicy as i32,
            metadata_labels: HashMap::new(),
            source: "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {}\n".into(),
            source_format: pb::SourceFormat::Yaml as i32,
            spec: Some(pb::policy::Spec::KinoNetworkPolicy(pb::KinoNetworkPolicy {
                rules: vec![pb::PolicyRule {
                    endpoint_selector: Some(selector(&[("app", "web")])),
                    ingress: vec![
                        pb::PeerRule {
                            endpoints: vec![selector(&[("app", "lb")])],
                            ports: vec![pb::PortProtocol {
                                port: 80,
                                end_port: 90,
                                protocol: tcp,
                            }],
                            ..Default::default()
                        },
                        pb::PeerRule {
                            entities: vec![pb::Entity::Host as i32],
                            ..Default::default()
                        },
                    ],
                    egress_deny: vec![pb::PeerRule {
                        cidr_sets: vec![pb::CidrRule {
                            cidr: "0.0.0.0/0".into(),
                            except: vec!["10.0.0.0/8".into()],
                        }],
                        ..Default::default()
                    }],
                    description: "lb may reach web".into(),
                    enable_default_deny: Some(pb::DefaultDeny {
                        ingress: None,
                        egress: Some(false),
                    }),
                    path: "spec".into(),
                    ..Default::default()
                }],
            })),
            import_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }
    }

    pub(crate) fn dns_policy() -> pb::Policy {
        pb::Policy {
            namespace: "shop".into(),
            name: "dns".into(),
            kind: pb::PolicyKind::K8sNetworkPolicy as i32,
            source: r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "dns"}}"#.into(),
            source_format: pb::SourceFormat::Json as i32,
            spec: Some(pb::policy::Spec::K8sNetworkPolicy(pb::K8sNetworkPolicy {
                pod_selector: Some(pb::LabelSelector::default()),
                ingress: vec![],
                egress: vec![pb::K8sNetworkPolicyRule {
                    peers: vec![],
                    ports: vec![pb::K8sNetworkPolicyPort {
                        protocol: Protocol::Udp as i32,
                        port: 53,
                        end_port: 0,
                    }],
                }],
                policy_types: vec![Direction::Egress as i32],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_read_like_kubectl() {
        let mut s = selector(&[("tier", "db"), ("app", "web")]);
        s.match_expressions = vec![
            pb::LabelSelectorRequirement {
                key: "env".into(),
                operator: pb::SelectorOperator::In as i32,
                values: vec!["a".into(), "b".into()],
            },
            pb::LabelSelectorRequirement {
                key: "legacy".into(),
                operator: pb::SelectorOperator::DoesNotExist as i32,
                values: vec![],
            },
        ];
        assert_eq!(
            selector_text(Some(&s)),
            "app=web,tier=db,env in (a,b),!legacy"
        );
        assert_eq!(selector_text(Some(&pb::LabelSelector::default())), "(all)");
        assert_eq!(selector_text(None), "(none)");
    }

    #[test]
    fn list_table_has_the_columns_and_the_written_kind() {
        let text = render_list(&[
            ListedPolicy {
                policy: dns_policy(),
                revision: Some(7),
            },
            ListedPolicy {
                policy: web_policy(),
                revision: None,
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAMESPACE", "NAME", "KIND", "SELECTS", "REVISION"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["shop", "dns", "NetworkPolicy", "(all)", "7"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["shop", "web", "CiliumNetworkPolicy", "app=web", "-"]
        );
        assert!(render_list(&[]).contains("kino policy import"));
    }

    #[test]
    fn summary_lists_every_rule_with_its_path() {
        let text = render_policy(&web_policy(), 12);
        for expected in [
            "Name:      web",
            "Namespace: shop",
            "Kind:      CiliumNetworkPolicy",
            "Revision:  12",
            "Imported:  2023-11-14T22:13:20Z",
            "spec: endpoints app=web (lb may reach web)",
            "ingress[0]          allow from endpoints app=lb on 80-90/TCP",
            "ingress[1]          allow from entity host on every port",
            "egressDeny[0]       deny to CIDR 0.0.0.0/0 except 10.0.0.0/8 on every port",
            "enableDefaultDeny   egress false",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let text = render_policy(&dns_policy(), 3);
        assert!(text.contains("Types:     Egress"), "{text}");
        assert!(
            text.contains("spec.egress[0]   allow to every peer on 53/UDP"),
            "{text}"
        );
    }

    #[test]
    fn import_and_validation_outcomes() {
        let response = pb::ImportPoliciesResponse {
            policies: vec![
                pb::ImportedPolicy {
                    policy: Some(pb::PolicyRef {
                        namespace: "shop".into(),
                        name: "web".into(),
                    }),
                    kind: pb::PolicyKind::KinoNetworkPolicy as i32,
                    action: pb::ImportAction::Created as i32,
                    revision: 10,
                },
                pb::ImportedPolicy {
                    policy: Some(pb::PolicyRef {
                        namespace: String::new(),
                        name: "all".into(),
                    }),
                    kind: pb::PolicyKind::KinoNetworkPolicy as i32,
                    action: pb::ImportAction::Unchanged as i32,
                    revision: 4,
                },
            ],
            revision: 10,
        };
        let text = render_import(&response);
        assert!(text.contains("shop/web   KinoNetworkPolicy "), "{text}");
        assert!(text.contains("created"), "{text}");
        assert!(
            text.contains("/all       KinoClusterwideNetworkPolicy   unchanged"),
            "{text}"
        );
        assert!(text.contains("Revision: 10 "), "{text}");

        let validation = pb::ValidatePoliciesResponse {
            policies: vec![web_policy()],
            errors: vec![
                pb::PolicyError {
                    document_index: 1,
                    policy: Some(pb::PolicyRef {
                        namespace: "shop".into(),
                        name: "broken".into(),
                    }),
                    path: "spec.ingress[0].toPorts[0].ports[1].port".into(),
                    message: "\"99999\" is not a port (1-65535)".into(),
                    line: 0,
                },
                pb::PolicyError {
                    document_index: 2,
                    policy: None,
                    path: String::new(),
                    message: "not YAML".into(),
                    line: 17,
                },
            ],
        };
        let text = render_validation("web.yaml", &validation);
        assert!(text.starts_with("web.yaml: 2 error(s)"), "{text}");
        assert!(
            text.contains("  document 1 (shop/broken), spec.ingress[0].toPorts[0].ports[1].port: \"99999\" is not a port (1-65535)"),
            "{text}"
        );
        assert!(text.contains("  document 2, line 17: not YAML"), "{text}");
    }

    #[test]
    fn yaml_is_the_document_as_imported() {
        let yaml = policy_yaml(&web_policy());
        assert!(yaml.starts_with("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"));
        let yaml = policy_yaml(&dns_policy());
        assert_eq!(
            yaml,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: dns\n"
        );
        let both = policies_yaml(&[
            ListedPolicy {
                policy: web_policy(),
                revision: None,
            },
            ListedPolicy {
                policy: dns_policy(),
                revision: None,
            },
        ]);
        assert_eq!(both.matches("---\n").count(), 1, "{both}");
    }
}
