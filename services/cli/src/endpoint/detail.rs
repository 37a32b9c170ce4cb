//! `kino endpoint get` for people: the endpoint as indented `key: value` lines (YAML-like),
//! networking first-class as in `cilium endpoint get` (the lxc name and ifindex are what
//! `ip link` shows).

use std::fmt::Write as _;

use kino_api::agent::Endpoint;
use kino_api::types::{Direction, DropReason, PolicyEnforcementMode};

use super::json::timestamp_rfc3339;
use super::state_word;
use super::table::label_lines;

/// A proto enum name without its prefix, in Cilium's lower-case-with-dashes style.
fn enum_word(name: Option<&str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(name) => name
            .strip_prefix(prefix)
            .unwrap_or(name)
            .to_ascii_lowercase()
            .replace('_', "-"),
        None => raw.to_string(),
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Writes `pairs` at `indent`, values aligned.
fn block(out: &mut String, indent: usize, pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in pairs {
        let key = format!("{key}:");
        let _ = writeln!(out, "{:indent$}{key:<width$} {value}", "");
    }
}

fn heading(out: &mut String, indent: usize, key: &str) {
    let _ = writeln!(out, "{:indent$}{key}:", "");
}

fn list(out: &mut String, indent: usize, items: &[String]) {
    if items.is_empty() {
        let _ = writeln!(out, "{:indent$}[]", "");
    }
    for item in items {
        let _ = writeln!(out, "{:indent$}- {item}", "");
    }
}

/// The endpoint as indented text.
pub fn render_detail(e: &Endpoint) -> String {
    let mut out = String::new();
    let mut top = vec![
        ("id", e.id.to_string()),
        ("state", state_word(e.state()).to_owned()),
    ];
    if !e.state_reason.is_empty() {
        top.push(("state-reason", e.state_reason.clone()));
    }
    top.extend([
        ("node", or_dash(&e.node_name)),
        ("container-id", or_dash(&e.container_id)),
        ("cni-network", or_dash(&e.cni_network_name)),
        (
            "pod",
            e.pod
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{}/{}", p.namespace, p.name)),
        ),
        (
            "identity",
            if e.identity == 0 {
                "- (not resolved yet)".to_owned()
            } else {
                e.identity.to_string()
            },
        ),
        (
            "created",
            e.create_time
                .as_ref()
                .map_or("-".to_owned(), |t| timestamp_rfc3339(t.seconds, t.nanos)),
        ),
    ]);
    block(&mut out, 0, &top);

    heading(&mut out, 0, "labels");
    list(&mut out, 2, &label_lines(e));

    heading(&mut out, 0, "networking");
    match &e.networking {
        None => {
            let _ = writeln!(out, "  (none reported)");
        }
        Some(n) => {
            block(
                &mut out,
                2,
                &[
                    ("interface-name", or_dash(&n.interface_name)),
                    ("interface-index", n.interface_index.to_string()),
                    ("mac", or_dash(&n.mac)),
                    ("host-mac", or_dash(&n.host_mac)),
                    (
                        "container-interface-name",
                        or_dash(&n.container_interface_name),
                    ),
                    (
                        "container-interface-index",
                        n.container_interface_index.to_string(),
                    ),
                    ("netns", or_dash(&n.netns_path)),
                    ("mtu", n.mtu.to_string()),
                ],
            );
            heading(&mut out, 2, "addressing");
            let a = n.addressing.clone().unwrap_or_default();
            block(
                &mut out,
                4,
                &[
                    ("ipv4", or_dash(&a.ipv4)),
                    ("ipv4-gateway", or_dash(&a.ipv4_gateway)),
                    ("ipv6", or_dash(&a.ipv6)),
                    ("ipv6-gateway", or_dash(&a.ipv6_gateway)),
                    ("ipam-pool", or_dash(&a.ipam_pool)),
                ],
            );
        }
    }

    heading(&mut out, 0, "policy");
    match &e.policy {
        None => {
            let _ = writeln!(out, "  (none reported)");
        }
        Some(p) => {
            let enforced = |on: bool| if on { "Enabled" } else { "Disabled" }.to_owned();
            let (ingress, egress) = p
                .enforcement
                .as_ref()
                .map_or(("-".to_owned(), "-".to_owned()), |e| {
                    (enforced(e.ingress), enforced(e.egress))
                });
            block(
                &mut out,
                2,
                &[
                    ("ingress-enforcement", ingress),
                    ("egress-enforcement", egress),
                    (
                        "mode",
                        enum_word(
                            PolicyEnforcementMode::try_from(p.mode)
                                .ok()
                                .map(|m| m.as_str_name()),
                            "POLICY_ENFORCEMENT_MODE_",
                            p.mode,
                        ),
                    ),
                    ("audit-mode", p.audit_mode.to_string()),
                    ("realized-revision", p.realized_revision.to_string()),
                    ("desired-revision", p.desired_revision.to_string()),
                    ("ingress-entries", p.ingress_entries.to_string()),
                    ("egress-entries", p.egress_entries.to_string()),
                ],
            );
        }
    }

    heading(&mut out, 0, "counters");
    match &e.counters {
        None => {
            let _ = writeln!(out, "  (none reported)");
        }
        Some(c) => {
            block(
                &mut out,
                2,
                &[
                    (
                        "ingress",
                        format!("{} packets, {} bytes", c.ingress_packets, c.ingress_bytes),
                    ),
                    (
                        "egress",
                        format!("{} packets, {} bytes", c.egress_packets, c.egress_bytes),
                    ),
                ],
            );
            heading(&mut out, 2, "drops");
            let drops: Vec<String> = c
                .drops
                .iter()
                .map(|d| {
                    format!(
                        "{} {}: {} packets, {} bytes",
                        enum_word(
                            DropReason::try_from(d.reason).ok().map(|r| r.as_str_name()),
                            "DROP_REASON_",
                            d.reason
                        ),
                        enum_word(
                            Direction::try_from(d.direction)
                                .ok()
                                .map(|r| r.as_str_name()),
                            "DIRECTION_",
                            d.direction
                        ),
                        d.packets,
                        d.bytes
                    )
                })
                .collect();
            list(&mut out, 4, &drops);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tests::sample_endpoint;

    #[test]
    fn detail_shows_networking_labels_policy_and_counters() {
        let text = render_detail(&sample_endpoint());
        let expected = "\
id:           1234
state:        ready
node:         node-1
container-id: 3f6940ab5ab4
cni-network:  kino
pod:          default/web
identity:     4321
created:      -
labels:
  - container:app=web
  - k8s:io.kubernetes.pod.namespace=default
networking:
  interface-name:            lxc5f3a9c2e1b7d
  interface-index:           17
  mac:                       0a:58:0a:00:01:17
  host-mac:                  5e:3a:10:00:00:01
  container-interface-name:  eth0
  container-interface-index: 2
  netns:                     /run/netns/web
  mtu:                       1500
  addressing:
    ipv4:         10.0.1.23
    ipv4-gateway: 10.0.1.1
    ipv6:         -
    ipv6-gateway: -
    ipam-pool:    default
policy:
  ingress-enforcement: Enabled
  egress-enforcement:  Disabled
  mode:                default
  audit-mode:          false
  realized-revision:   7
  desired-revision:    7
  ingress-entries:     3
  egress-entries:      0
counters:
  ingress: 12 packets, 1176 bytes
  egress:  10 packets, 980 bytes
  drops:
    - policy-denied ingress: 2 packets, 196 bytes
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_bare_endpoint_still_renders() {
        let endpoint = Endpoint {
            id: 9,
            state_reason: "lxc9 vanished".into(),
            state: kino_api::agent::EndpointState::Invalid as i32,
            ..Endpoint::default()
        };
        let text = render_detail(&endpoint);
        assert!(text.contains("state:        invalid\n"), "{text}");
        assert!(text.contains("state-reason: lxc9 vanished\n"), "{text}");
        assert!(
            text.contains("identity:     - (not resolved yet)\n"),
            "{text}"
        );
        assert!(text.contains("labels:\n  []\n"), "{text}");
        assert!(text.contains("networking:\n  (none reported)\n"), "{text}");
    }
}
