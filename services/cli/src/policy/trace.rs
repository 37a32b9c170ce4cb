//! `kino policy trace`: the flow's two sides as given on the command line (labels, a pod, an
//! identity or an address), how a pod is resolved (the agent's endpoint, else its
//! standalone labels), the destination port, and the verdict with the rules behind it
//! printed as the TracePolicy RPC returns them — as `cilium policy trace` does.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use kino_api::agent::Endpoint;
use kino_api::policy as pb;
use kino_api::types::{Labels, PodRef, PolicyVerdict, Protocol};

use super::render::{direction_text, port_text, protocol_text, ref_text};
use crate::endpoint::{EndpointError, Lookup};
use crate::labels::{labels_inline, parse_labels};

/// One side of a traced flow as written on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerArg {
    /// `k=v,k2=v2` with optional `source:` prefixes.
    Labels(Labels),
    /// `NAMESPACE/POD` (or `pod:NAMESPACE/POD`, `pod:POD` in `default`).
    Pod(PodRef),
    /// A numeric identity.
    Identity(u32),
    /// An IP address (resolved through the ipcache; world when unknown).
    Ip(IpAddr),
}

impl PeerArg {
    /// Parses a `--src` / `--dst` value.
    pub fn parse(text: &str) -> Result<PeerArg, String> {
        let text = text.trim();
        let pod = |t: &str| match t.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PeerArg::Pod(PodRef {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                }))
            }
            None if !t.is_empty() => Ok(PeerArg::Pod(PodRef {
                namespace: "default".to_owned(),
                name: t.to_owned(),
            })),
            _ => Err(format!("{t:?} is not NAMESPACE/POD")),
        };
        if let Some(rest) = text.strip_prefix("pod:") {
            return pod(rest);
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(id) if id > 0 => Ok(PeerArg::Identity(id)),
                _ => Err(format!("{text:?} is not an identity (1 and up)")),
            };
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(PeerArg::Ip(ip));
        }
        if text.contains('=') || text.contains(':') {
            return parse_labels(text).map(PeerArg::Labels);
        }
        if text.contains('/') {
            return pod(text);
        }
        Err(format!(
            "{text:?} is not a peer: give labels (app=web,k8s:env=prod), NAMESPACE/POD, an identity number or an IP address"
        ))
    }
}

/// The destination port and protocol: `80/tcp`, `53/UDP`, `80` (TCP), `icmp`, `tcp` (any
/// port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortArg {
    /// 0 for none / every port.
    pub port: u32,
    /// The protocol.
    pub protocol: Protocol,
}

impl PortArg {
    /// Parses a `--dport` value.
    pub fn parse(text: &str) -> Result<PortArg, String> {
        let text = text.trim();
        let protocol_of = |name: &str| match name.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            "icmp" => Ok(Protocol::Icmp),
            "icmpv6" => Ok(Protocol::Icmpv6),
            "any" => Ok(Protocol::Unspecified),
            _ => Err(format!(
                "{name:?} is not a protocol: tcp, udp, sctp, icmp, icmpv6 or any"
            )),
        };
        let (port, protocol) = match text.split_once('/') {
            Some((port, protocol)) => (port, protocol_of(protocol)?),
            None if text.bytes().all(|b| b.is_ascii_digit()) => (text, Protocol::Tcp),
            None => ("0", protocol_of(text)?),
        };
        let port: u32 = match port.parse() {
            Ok(port) if port <= 65535 => port,
            _ => return Err(format!("{port:?} is not a port (0-65535)")),
        };
        if port != 0 && matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
            return Err(format!(
                "{} has no ports: write --dport {}",
                protocol_text(protocol as i32),
                text.split('/').nth(1).unwrap_or("icmp")
            ));
        }
        if port != 0 && protocol == Protocol::Unspecified {
            return Err(format!(
                "a port needs its protocol: write {port}/tcp, {port}/udp or {port}/sctp"
            ));
        }
        Ok(PortArg { port, protocol })
    }

    fn text(&self) -> String {
        port_text(self.port, 0, self.protocol as i32)
    }
}

/// Which side's policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TraceDirection {
    /// Egress at the source and ingress at the destination: both must allow.
    #[default]
    Both,
    /// Only the destination's ingress policy.
    Ingress,
    /// Only the source's egress policy.
    Egress,
}

/// A side of the flow as sent to the compiler, with what it was given as.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPeer {
    /// What TracePolicy gets.
    pub peer: pb::trace_peer::Peer,
    /// How to name it in the output.
    pub shown: String,
    /// How a pod was resolved, when it was not the agent's endpoint (printed as a note).
    pub note: Option<String>,
}

/// The labels the standalone agent gives a pod (`container:namespace`, `container:pod`).
fn standalone_pod_labels(pod: &PodRef) -> Labels {
    let label = |key: &str, value: &str| kino_api::types::Label {
        key: key.to_owned(),
        value: value.to_owned(),
        source: "container".to_owned(),
    };
    Labels {
        labels: vec![label("namespace", &pod.namespace), label("pod", &pod.name)],
    }
}

/// A pod side from the agent's answer: its endpoint's identity (or labels, before it has
/// one); when the agent does not know the pod or does not answer, the pod's standalone
/// labels `container:namespace=NS,container:pod=NAME`.
pub fn pod_peer(pod: &PodRef, agent: Result<Endpoint, EndpointError>) -> ResolvedPeer {
    let name = format!("{}/{}", pod.namespace, pod.name);
    let fallback = |why: String| {
        let labels = standalone_pod_labels(pod);
        ResolvedPeer {
            shown: format!("pod {name} [{}]", labels_inline(Some(&labels))),
            note: Some(format!(
                "pod {name}: {why}; traced with its standalone labels {}",
                labels_inline(Some(&labels))
            )),
            peer: pb::trace_peer::Peer::Labels(labels),
        }
    };
    match agent {
        Ok(endpoint) if endpoint.identity != 0 => ResolvedPeer {
            peer: pb::trace_peer::Peer::Identity(endpoint.identity),
            shown: format!(
                "pod {name} (endpoint {}, identity {})",
                endpoint.id, endpoint.identity
            ),
            note: None,
        },
        Ok(endpoint) => match endpoint.labels.filter(|l| !l.labels.is_empty()) {
            Some(labels) => ResolvedPeer {
                shown: format!(
                    "pod {name} (endpoint {}) [{}]",
                    endpoint.id,
                    labels_inline(Some(&labels))
                ),
                note: None,
                peer: pb::trace_peer::Peer::Labels(labels),
            },
            None => fallback(format!(
                "endpoint {} has no labels yet on the agent",
                endpoint.id
            )),
        },
        Err(EndpointError::NotFound { target, .. }) => {
            fallback(format!("not an endpoint of the agent at {target}"))
        }
        Err(EndpointError::Agent(error)) => {
            fallback(format!("the agent at {} did not answer", error.target))
        }
    }
}

/// Resolves a side: pods through the agent at `agent_socket`, the rest as given.
pub async fn resolve(arg: &PeerArg, agent_socket: &str, timeout: Duration) -> ResolvedPeer {
    use pb::trace_peer::Peer;
    match arg {
        PeerArg::Labels(labels) => ResolvedPeer {
            peer: Peer::Labels(labels.clone()),
            shown: labels_inline(Some(labels)),
            note: None,
        },
        PeerArg::Identity(id) => ResolvedPeer {
            peer: Peer::Identity(*id),
            shown: format!("identity {id}"),
            note: None,
        },
        PeerArg::Ip(ip) => ResolvedPeer {
            peer: Peer::Ip(ip.to_string()),
            shown: ip.to_string(),
            note: None,
        },
        PeerArg::Pod(pod) => {
            let lookup = Lookup::Pod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            };
            let agent = crate::endpoint::get(agent_socket, timeout, &lookup).await;
            pod_peer(pod, agent)
        }
    }
}

/// The TracePolicy request for a flow.
pub fn request(
    src: &ResolvedPeer,
    dst: &ResolvedPeer,
    port: Option<PortArg>,
) -> pb::TracePolicyRequest {
    let port = port.unwrap_or(PortArg {
        port: 0,
        protocol: Protocol::Unspecified,
    });
    pb::TracePolicyRequest {
        source: Some(pb::TracePeer {
            peer: Some(src.peer.clone()),
        }),
        destination: Some(pb::TracePeer {
            peer: Some(dst.peer.clone()),
        }),
        destination_port: port.port,
        protocol: port.protocol as i32,
    }
}

fn verdict_word(verdict: i32) -> &'static str {
    match PolicyVerdict::try_from(verdict) {
        Ok(PolicyVerdict::Allow) => "ALLOWED",
        Ok(PolicyVerdict::Deny) => "DENIED",
        _ => "UNKNOWN",
    }
}

fn reason_text(reason: i32) -> &'static str {
    match pb::TraceReason::try_from(reason) {
        Ok(pb::TraceReason::NotEnforced) => "policy is not enforced in this direction",
        Ok(pb::TraceReason::NotAnEndpoint) => "not a cluster endpoint: no policy applies",
        Ok(pb::TraceReason::AllowedByRule) => "an allow rule matched and no deny rule did",
        Ok(pb::TraceReason::DeniedByRule) => "a deny rule matched; deny wins over allow",
        Ok(pb::TraceReason::DefaultDeny) => "enforced and no rule allows it: default deny",
        Ok(pb::TraceReason::AllowedLocalhost) => {
            "the local host may always reach endpoints (allow-localhost)"
        }
        _ => "no reason given",
    }
}

/// `shop/web spec.ingress[0] (KinoNetworkPolicy): lb may reach web`.
fn rule_text(rule: &pb::RuleRef) -> String {
    let policy = rule
        .policy
        .as_ref()
        .map_or_else(|| "?".to_owned(), |p| ref_text(&p.namespace, &p.name));
    let namespace = rule.policy.as_ref().map_or("", |p| p.namespace.as_str());
    let mut text = format!(
        "{policy} {} ({})",
        rule.path,
        super::render::stored_kind_text(rule.kind, namespace)
    );
    if !rule.description.is_empty() {
        let _ = write!(text, ": {}", rule.description);
    }
    text
}

fn identity_text(id: u32) -> String {
    match id {
        0 => "labels without an identity yet".to_owned(),
        id => format!("identity {id}"),
    }
}

fn entry_text(entry: &pb::PolicyMapEntry) -> String {
    let Some(key) = &entry.key else {
        return "?".to_owned();
    };
    let remote = match &key.remote {
        Some(pb::policy_map_key::Remote::RemoteIdentity(0)) | None => "*".to_owned(),
        Some(pb::policy_map_key::Remote::RemoteIdentity(id)) => id.to_string(),
        Some(pb::policy_map_key::Remote::RemoteCidr(cidr)) => cidr.clone(),
    };
    let port = match (key.port, key.end_port) {
        (0, _) => "*".to_owned(),
        (port, 0) => port.to_string(),
        (port, end) => format!("{port}-{end}"),
    };
    format!(
        "{} remote={remote} {port}/{} → {}",
        direction_text(key.direction),
        protocol_text(key.protocol),
        match PolicyVerdict::try_from(entry.verdict) {
            Ok(PolicyVerdict::Allow) => "allow",
            Ok(PolicyVerdict::Deny) => "deny",
            _ => "?",
        }
    )
}

fn render_side(out: &mut String, title: &str, side: &pb::DirectionTrace) {
    let (here, there) = if title == "Egress" {
        ("source", "destination")
    } else {
        ("destination", "source")
    };
    let _ = writeln!(
        out,
        "{title} policy of the {here} ({}), toward the {there} ({}):",
        identity_text(side.local_identity),
        identity_text(side.remote_identity)
    );
    let _ = writeln!(
        out,
        "  enforced: {}",
        if side.enforced { "yes" } else { "no" }
    );
    for (label, rules) in [
        ("allowed by", &side.allowed_by),
        ("denied by", &side.denied_by),
    ] {
        if rules.is_empty() {
            let _ = writeln!(out, "  {label}: no rule");
        } else {
            let _ = writeln!(out, "  {label}:");
            for rule in rules {
                let _ = writeln!(out, "    * {}", rule_text(rule));
            }
        }
    }
    if let Some(entry) = &side.matched_entry {
        let _ = writeln!(out, "  policy-map entry hit: {}", entry_text(entry));
    }
    let _ = writeln!(
        out,
        "  {title} verdict: {} ({})",
        verdict_word(side.verdict).to_lowercase(),
        reason_text(side.reason)
    );
}

/// The verdict that decides for `direction`.
pub fn decisive_verdict(response: &pb::TracePolicyResponse, direction: TraceDirection) -> i32 {
    let side = |s: &Option<pb::DirectionTrace>| s.as_ref().map_or(0, |s| s.verdict);
    match direction {
        TraceDirection::Both => response.verdict,
        TraceDirection::Egress => side(&response.egress),
        TraceDirection::Ingress => side(&response.ingress),
    }
}

/// The trace for people, laid out like `cilium policy trace`.
pub fn render(
    response: &pb::TracePolicyResponse,
    src: &ResolvedPeer,
    dst: &ResolvedPeer,
    port: Option<PortArg>,
    direction: TraceDirection,
) -> String {
    let mut out = String::new();
    let flow = port.map_or_else(
        || "any port (only rules without ports match)".to_owned(),
        |p| p.text(),
    );
    out.push_str("----------------------------------------------------------------\n");
    let _ = writeln!(out, "Tracing from: {}", src.shown);
    let _ = writeln!(out, "          to: {}", dst.shown);
    let _ = writeln!(out, "        port: {flow}");
    for note in [&src.note, &dst.note].into_iter().flatten() {
        let _ = writeln!(out, "note: {note}");
    }
    out.push('\n');
    if direction != TraceDirection::Ingress
        && let Some(egress) = &response.egress
    {
        render_side(&mut out, "Egress", egress);
        out.push('\n');
    }
    if direction != TraceDirection::Egress
        && let Some(ingress) = &response.ingress
    {
        render_side(&mut out, "Ingress", ingress);
        out.push('\n');
    }
    let scope = match direction {
        TraceDirection::Both => "",
        TraceDirection::Ingress => " (ingress only)",
        TraceDirection::Egress => " (egress only)",
    };
    let _ = writeln!(
        out,
        "Final verdict{scope}: {}",
        verdict_word(decisive_verdict(response, direction))
    );
    let _ = writeln!(out, "Policy revision: {}", response.revision);
    out
}

#[cfg(test)]
mod tests {
    use kino_api::types::Direction;

    use super::*;
    use crate::agent::{AgentCallError, AgentFailure};

    #[test]
    fn peers_parse_as_labels_pods_identities_and_addresses() {
        let PeerArg::Labels(labels) = PeerArg::parse("k8s:app=web,env=prod").unwrap() else {
            panic!("labels");
        };
        assert_eq!(labels_inline(Some(&labels)), "k8s:app=web,unspec:env=prod");
        assert!(matches!(
            PeerArg::parse("reserved:host"),
            Ok(PeerArg::Labels(_))
        ));
        assert_eq!(
            PeerArg::parse("shop/web"),
            Ok(PeerArg::Pod(PodRef {
                namespace: "shop".into(),
                name: "web".into()
            }))
        );
        assert_eq!(
            PeerArg::parse("pod:web"),
            Ok(PeerArg::Pod(PodRef {
                namespace: "default".into(),
                name: "web".into()
            }))
        );
        assert_eq!(PeerArg::parse("256"), Ok(PeerArg::Identity(256)));
        assert_eq!(
            PeerArg::parse("fd00::1"),
            Ok(PeerArg::Ip("fd00::1".parse().unwrap()))
        );
        assert_eq!(
            PeerArg::parse("10.0.0.7"),
            Ok(PeerArg::Ip("10.0.0.7".parse().unwrap()))
        );
        assert!(matches!(
            PeerArg::parse("k8s:app.kubernetes.io/name=web"),
            Ok(PeerArg::Labels(_))
        ));
        for bad in ["", "web", "0", "a/b/c", "/web", "k8s:=x"] {
            assert!(PeerArg::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_parse_with_protocols() {
        let p = |port, protocol| Ok(PortArg { port, protocol });
        assert_eq!(PortArg::parse("80/tcp"), p(80, Protocol::Tcp));
        assert_eq!(PortArg::parse("53/UDP"), p(53, Protocol::Udp));
        assert_eq!(PortArg::parse("8080"), p(8080, Protocol::Tcp));
        assert_eq!(PortArg::parse("icmp"), p(0, Protocol::Icmp));
        assert_eq!(PortArg::parse("sctp"), p(0, Protocol::Sctp));
        assert_eq!(PortArg::parse("0/any"), p(0, Protocol::Unspecified));
        for bad in ["70000/tcp", "80/gre", "8/icmp", "80/any", "x/tcp", ""] {
            assert!(PortArg::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            PortArg::parse("80-90/tcp").unwrap_err(),
            "\"80-90\" is not a port (0-65535)"
        );
    }

    fn pod() -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn a_pod_is_the_agents_endpoint_else_its_standalone_labels() {
        let mut endpoint = crate::endpoint::tests::sample_endpoint();
        let resolved = pod_peer(&pod(), Ok(endpoint.clone()));
        assert_eq!(resolved.peer, pb::trace_peer::Peer::Identity(4321));
        assert_eq!(resolved.note, None);
        assert!(
            resolved.shown.contains("endpoint 1234"),
            "{}",
            resolved.shown
        );

        endpoint.identity = 0;
        let resolved = pod_peer(&pod(), Ok(endpoint));
        let pb::trace_peer::Peer::Labels(labels) = &resolved.peer else {
            panic!("{resolved:?}");
        };
        assert_eq!(
            labels_inline(Some(labels)),
            "container:app=web,k8s:io.kubernetes.pod.namespace=default"
        );

        let down = AgentCallError {
            target: "unix:/run/kino/agent.sock".into(),
            rpc: "GetEndpoint",
            failure: AgentFailure::Unreachable("No such file or directory".into()),
        };
        let resolved = pod_peer(&pod(), Err(EndpointError::Agent(down)));
        let pb::trace_peer::Peer::Labels(labels) = &resolved.peer else {
            panic!("{resolved:?}");
        };
        assert_eq!(
            labels_inline(Some(labels)),
            "container:namespace=shop,container:pod=web"
        );
        let note = resolved.note.expect("a note");
        assert!(
            note.contains("the agent at unix:/run/kino/agent.sock did not answer"),
            "{note}"
        );
        let missing = EndpointError::NotFound {
            lookup: "pod shop/web".into(),
            target: "unix:/a.sock".into(),
        };
        let resolved = pod_peer(&pod(), Err(missing));
        assert!(
            resolved
                .note
                .unwrap()
                .contains("not an endpoint of the agent")
        );
    }

    fn rule(path: &str, deny: bool) -> pb::RuleRef {
        pb::RuleRef {
            policy: Some(pb::PolicyRef {
                namespace: "shop".into(),
                name: "web".into(),
            }),
            kind: pb::PolicyKind::KinoNetworkPolicy as i32,
            path: path.into(),
            direction: Direction::Ingress as i32,
            deny,
            description: "lb may reach web".into(),
        }
    }

    pub(crate) fn sample_trace() -> pb::TracePolicyResponse {
        pb::TracePolicyResponse {
            verdict: PolicyVerdict::Allow as i32,
            egress: Some(pb::DirectionTrace {
                direction: Direction::Egress as i32,
                local_identity: 257,
                remote_identity: 256,
                enforced: false,
                verdict: PolicyVerdict::Allow as i32,
                reason: pb::TraceReason::NotEnforced as i32,
                ..Default::default()
            }),
            ingress: Some(pb::DirectionTrace {
                direction: Direction::Ingress as i32,
                local_identity: 256,
                remote_identity: 257,
                enforced: true,
                verdict: PolicyVerdict::Allow as i32,
                reason: pb::TraceReason::AllowedByRule as i32,
                allowed_by: vec![rule("spec.ingress[0]", false)],
                denied_by: vec![],
                matched_entry: Some(pb::PolicyMapEntry {
                    key: Some(pb::PolicyMapKey {
                        direction: Direction::Ingress as i32,
                        remote: Some(pb::policy_map_key::Remote::RemoteIdentity(257)),
                        protocol: Protocol::Tcp as i32,
                        port: 80,
                        end_port: 90,
                    }),
                    verdict: PolicyVerdict::Allow as i32,
                    derived_from: vec![rule("spec.ingress[0]", false)],
                }),
            }),
            explanation: vec![],
            revision: 12,
        }
    }

    #[test]
    fn the_trace_shows_each_side_its_rules_and_the_verdict() {
        let src = ResolvedPeer {
            peer: pb::trace_peer::Peer::Identity(257),
            shown: "identity 257".into(),
            note: None,
        };
        let dst = ResolvedPeer {
            peer: pb::trace_peer::Peer::Identity(256),
            shown: "pod shop/web [container:namespace=shop,container:pod=web]".into(),
            note: Some("pod shop/web: the agent did not answer".into()),
        };
        let port = Some(PortArg::parse("80/tcp").unwrap());
        let text = render(&sample_trace(), &src, &dst, port, TraceDirection::Both);
        for expected in [
            "Tracing from: identity 257\n",
            "          to: pod shop/web [container:namespace=shop,container:pod=web]\n",
            "        port: 80/TCP\n",
            "note: pod shop/web: the agent did not answer\n",
            "Egress policy of the source (identity 257), toward the destination (identity 256):\n  enforced: no\n",
            "  Egress verdict: allowed (policy is not enforced in this direction)\n",
            "Ingress policy of the destination (identity 256), toward the source (identity 257):\n  enforced: yes\n",
            "  allowed by:\n    * shop/web spec.ingress[0] (KinoNetworkPolicy): lb may reach web\n",
            "  denied by: no rule\n",
            "  policy-map entry hit: ingress remote=257 80-90/TCP → allow\n",
            "  Ingress verdict: allowed (an allow rule matched and no deny rule did)\n",
            "Final verdict: ALLOWED\n",
            "Policy revision: 12\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let text = render(&sample_trace(), &src, &dst, port, TraceDirection::Ingress);
        assert!(!text.contains("Egress policy"), "{text}");
        assert!(
            text.contains("Final verdict (ingress only): ALLOWED"),
            "{text}"
        );
        let mut denied = sample_trace();
        denied.verdict = PolicyVerdict::Deny as i32;
        denied.egress.as_mut().unwrap().verdict = PolicyVerdict::Deny as i32;
        assert_eq!(
            decisive_verdict(&denied, TraceDirection::Ingress),
            PolicyVerdict::Allow as i32
        );
        assert_eq!(
            decisive_verdict(&denied, TraceDirection::Both),
            PolicyVerdict::Deny as i32
        );
    }

    #[test]
    fn the_request_carries_both_sides_and_the_port() {
        let src = ResolvedPeer {
            peer: pb::trace_peer::Peer::Ip("192.0.2.1".into()),
            shown: String::new(),
            note: None,
        };
        let request = request(&src, &src, Some(PortArg::parse("53/udp").unwrap()));
        assert_eq!(request.destination_port, 53);
        assert_eq!(request.protocol, Protocol::Udp as i32);
        let request = self::request(&src, &src, None);
        assert_eq!((request.destination_port, request.protocol), (0, 0));
    }
}
