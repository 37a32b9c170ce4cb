//! Flow filters as `kino.flow.v1.FlowFilter` defines them (Hubble's semantics): every field
//! optional; the values of one field are OR'ed, different fields AND'ed. A
//! [`FlowSelection`] sends a flow when it matches any whitelist filter (or there is none)
//! and no blacklist filter (the "not" form), inside the optional time window.
//!
//! The textual forms (CIDRs, pod patterns, label selectors, node name globs) are parsed here
//! once, so matching a flow never parses anything.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use kino_api::flow::{FlowEventType as ApiEventType, Verdict as ApiVerdict};
use kino_api::types::DropReason as ApiDropReason;

use super::flow::{Flow, Label, Peer};
use crate::datapath::Direction;

/// A filter value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {reason}")]
pub struct FilterError {
    /// The filter field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// An address or CIDR: `10.0.1.23`, `10.0.0.0/16`, `fd00::/64` (host bits are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Whether `ip` is inside (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| "not an IP address or CIDR".to_owned())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, len })
    }
}

/// `[namespace/]name-prefix`: `shop/web` (pods of shop whose name starts with web),
/// `shop/` (every pod of shop), `web` (pods starting with web in any namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPattern {
    namespace: Option<String>,
    name_prefix: String,
}

impl PodPattern {
    /// Whether the peer is a pod this pattern names.
    pub fn matches(&self, peer: &Peer) -> bool {
        if peer.pod_name.is_empty() {
            return false;
        }
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == peer.namespace)
            && peer.pod_name.starts_with(&self.name_prefix)
    }
}

impl FromStr for PodPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name_prefix) = match s.split_once('/') {
            Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
            None => (None, s.to_owned()),
        };
        if namespace.as_deref().is_some_and(str::is_empty) || name_prefix.contains('/') {
            return Err("expected [namespace/]pod-name-prefix".to_owned());
        }
        if namespace.is_none() && name_prefix.is_empty() {
            return Err("empty pod pattern".to_owned());
        }
        Ok(PodPattern {
            namespace,
            name_prefix,
        })
    }
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key` or `key in (a,b)` / `key=a` (values empty: only existence).
    In {
        source: Option<String>,
        key: String,
        values: Vec<String>,
    },
    /// `!key` or `key notin (a,b)` / `key!=a` (values empty: absence).
    NotIn {
        source: Option<String>,
        key: String,
        values: Vec<String>,
    },
}

/// A label selector in Kubernetes selector syntax with Cilium's sources:
/// `k8s:app=web,env!=prod`, `app in (a,b)`, `tier`, `!canary`. A key without a source
/// (or with `any:`) matches labels of every source. Requirements separated by commas are
/// AND'ed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn split_source(key: &str) -> (Option<String>, String) {
    match key.split_once(':') {
        Some(("any", key)) => (None, key.trim().to_owned()),
        Some((source, key)) => (Some(source.trim().to_owned()), key.trim().to_owned()),
        None => (None, key.trim().to_owned()),
    }
}

/// Splits on commas that are not inside parentheses.
fn split_requirements(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn set_values(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| "expected a value set like (a,b)".to_owned())?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if values.iter().any(String::is_empty) {
        return Err("empty value in set".to_owned());
    }
    Ok(values)
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_requirements(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err("empty requirement".to_owned());
            }
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                let (source, key) = split_source(key);
                Requirement::NotIn {
                    source,
                    key,
                    values: vec![value.trim().to_owned()],
                }
            } else if let Some((key, value)) = part.split_once('=') {
                let value = value.strip_prefix('=').unwrap_or(value);
                let (source, key) = split_source(key);
                Requirement::In {
                    source,
                    key,
                    values: vec![value.trim().to_owned()],
                }
            } else if let Some((key, set)) = part.split_once(" notin ") {
                let (source, key) = split_source(key);
                Requirement::NotIn {
                    source,
                    key,
                    values: set_values(set)?,
                }
            } else if let Some((key, set)) = part.split_once(" in ") {
                let (source, key) = split_source(key);
                Requirement::In {
                    source,
                    key,
                    values: set_values(set)?,
                }
            } else if let Some(key) = part.strip_prefix('!') {
                let (source, key) = split_source(key);
                Requirement::NotIn {
                    source,
                    key,
                    values: Vec::new(),
                }
            } else {
                let (source, key) = split_source(part);
                Requirement::In {
                    source,
                    key,
                    values: Vec::new(),
                }
            };
            let (Requirement::In { key, .. } | Requirement::NotIn { key, .. }) = &requirement;
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("bad key in {part:?}"));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }
}

impl LabelSelector {
    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &[Label]) -> bool {
        fn values<'a>(
            labels: &'a [Label],
            source: &'a Option<String>,
            key: &'a str,
        ) -> impl Iterator<Item = &'a str> {
            labels
                .iter()
                .filter(move |l| l.key == key && source.as_ref().is_none_or(|s| *s == l.source))
                .map(|l| l.value.as_str())
        }
        self.requirements.iter().all(|r| match r {
            Requirement::In {
                source,
                key,
                values: wanted,
            } => values(labels, source, key)
                .any(|v| wanted.is_empty() || wanted.iter().any(|w| w == v)),
            Requirement::NotIn {
                source,
                key,
                values: unwanted,
            } => {
                if unwanted.is_empty() {
                    values(labels, source, key).next().is_none()
                } else {
                    !values(labels, source, key).any(|v| unwanted.iter().any(|u| u == v))
                }
            }
        })
    }
}

/// A node name pattern; `*` matches any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    /// A pattern.
    pub fn new(pattern: &str) -> Self {
        NamePattern(pattern.to_owned())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

/// The IP version of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// One side's criteria of a filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SideFilter {
    /// Addresses or CIDRs.
    pub ip: Vec<Cidr>,
    /// Pods.
    pub pod: Vec<PodPattern>,
    /// Label selectors.
    pub label: Vec<LabelSelector>,
    /// Identities.
    pub identity: Vec<u32>,
    /// Ports (TCP, UDP, SCTP).
    pub port: Vec<u16>,
}

impl SideFilter {
    fn matches(&self, peer: &Peer, ip: Option<IpAddr>, port: Option<u16>) -> bool {
        (self.ip.is_empty() || ip.is_some_and(|ip| self.ip.iter().any(|c| c.contains(ip))))
            && (self.pod.is_empty() || self.pod.iter().any(|p| p.matches(peer)))
            && (self.label.is_empty()
                || peer
                    .labels
                    .as_ref()
                    .is_some_and(|labels| self.label.iter().any(|s| s.matches(labels))))
            && (self.identity.is_empty() || self.identity.contains(&peer.identity))
            && (self.port.is_empty() || port.is_some_and(|p| self.port.contains(&p)))
    }
}

/// One `FlowFilter`: the set fields must all match; within a field any value may.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Criteria on the source.
    pub source: SideFilter,
    /// Criteria on the destination.
    pub destination: SideFilter,
    /// L4 protocols (IANA numbers).
    pub protocol: Vec<u8>,
    /// Verdicts (API vocabulary).
    pub verdict: Vec<ApiVerdict>,
    /// Drop reasons (API vocabulary).
    pub drop_reason: Vec<ApiDropReason>,
    /// Traffic directions.
    pub direction: Vec<Direction>,
    /// Event types (API vocabulary).
    pub kind: Vec<ApiEventType>,
    /// Reply (true) or original direction (false); a flow whose state is unknown matches
    /// neither.
    pub reply: Vec<bool>,
    /// TCP flag sets: a flow matches one if it has every flag of it.
    pub tcp_flags: Vec<u8>,
    /// Node name patterns.
    pub node_name: Vec<NamePattern>,
    /// IP versions.
    pub ip_version: Vec<IpVersion>,
}

fn any_of<T: PartialEq>(wanted: &[T], value: Option<T>) -> bool {
    wanted.is_empty() || value.is_some_and(|v| wanted.contains(&v))
}

impl FlowFilter {
    /// Whether the flow satisfies this filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        let ports = flow.l4.and_then(|l4| l4.ports());
        let (src_ip, dst_ip) = match flow.ip {
            Some((s, d)) => (Some(s), Some(d)),
            None => (None, None),
        };
        self.source
            .matches(&flow.source, src_ip, ports.map(|p| p.0))
            && self
                .destination
                .matches(&flow.destination, dst_ip, ports.map(|p| p.1))
            && any_of(&self.protocol, flow.protocol())
            && any_of(&self.verdict, Some(flow.api_verdict()))
            && (self.drop_reason.is_empty()
                || (flow.drop_reason.is_some()
                    && self.drop_reason.contains(&flow.api_drop_reason())))
            && any_of(&self.direction, flow.direction)
            && any_of(&self.kind, Some(flow.api_event_type()))
            && any_of(&self.reply, flow.is_reply)
            && (self.tcp_flags.is_empty()
                || matches!(flow.l4, Some(super::flow::L4::Tcp { flags, .. })
                    if self.tcp_flags.iter().any(|want| flags & want == *want)))
            && (self.node_name.is_empty()
                || self.node_name.iter().any(|p| p.matches(&flow.node_name)))
            && any_of(
                &self.ip_version,
                src_ip.map(|ip| {
                    if ip.is_ipv4() {
                        IpVersion::V4
                    } else {
                        IpVersion::V6
                    }
                }),
            )
    }

    /// Parses a list of textual values of `field` with `parse`.
    pub fn parse_all<T>(
        field: &'static str,
        values: &[String],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, FilterError> {
        values
            .iter()
            .map(|v| {
                parse(v).map_err(|reason| FilterError {
                    field,
                    value: v.clone(),
                    reason,
                })
            })
            .collect()
    }
}

/// Which flows a client gets: whitelist minus blacklist, within [since, until].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowSelection {
    /// A flow must match one of these (any flow when empty).
    pub whitelist: Vec<FlowFilter>,
    /// A flow must match none of these.
    pub blacklist: Vec<FlowFilter>,
    /// Only flows at or after this time.
    pub since: Option<SystemTime>,
    /// Only flows at or before this time.
    pub until: Option<SystemTime>,
}

impl FlowSelection {
    /// Whether the flow is selected.
    pub fn matches(&self, flow: &Flow) -> bool {
        self.since.is_none_or(|since| flow.time >= since)
            && self.until.is_none_or(|until| flow.time <= until)
            && (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::datapath::DropReason;
    use crate::datapath::events::{EventKind, EventVerdict, MatchType};
    use crate::flows::flow::L4;

    fn peer(ns: &str, pod: &str, identity: u32, app: &str) -> Peer {
        Peer {
            endpoint_id: identity - 200,
            identity,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: Some(Arc::from(vec![
                Label::new("container", "app", app),
                Label::new("container", "namespace", ns),
                Label::new("k8s", "env", "prod"),
            ])),
            node_name: "node-1".into(),
        }
    }

    /// shop/client:43512 -> shop/web:80 TCP SYN, dropped by web's ingress policy.
    fn dropped() -> Flow {
        Flow {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000),
            verdict: EventVerdict::Dropped,
            drop_reason: Some(DropReason::PolicyDeniedIngress),
            kind: EventKind::Drop,
            ethernet: None,
            ip: Some((
                "10.244.0.10".parse().unwrap(),
                "10.244.0.11".parse().unwrap(),
            )),
            l4: Some(L4::Tcp {
                src_port: 43512,
                dst_port: 80,
                flags: 0x02,
            }),
            source: peer("shop", "client", 300, "client"),
            destination: peer("shop", "web-0", 301, "web"),
            node_name: Arc::from("node-1"),
            direction: Some(Direction::Ingress),
            interface: None,
            is_reply: Some(false),
            point: None,
            match_type: MatchType::None,
            service: None,
        }
    }

    /// shop/web-0 -> world 8.8.8.8:53 UDP, forwarded.
    fn forwarded() -> Flow {
        Flow {
            verdict: EventVerdict::Forwarded,
            drop_reason: None,
            kind: EventKind::PolicyVerdict,
            ip: Some(("10.244.0.11".parse().unwrap(), "8.8.8.8".parse().unwrap())),
            l4: Some(L4::Udp {
                src_port: 5353,
                dst_port: 53,
            }),
            source: peer("shop", "web-0", 301, "web"),
            destination: Peer {
                identity: 2,
                ..Peer::default()
            },
            direction: Some(Direction::Egress),
            match_type: MatchType::L3L4,
            ..dropped()
        }
    }

    fn filter(build: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
        let mut f = FlowFilter::default();
        build(&mut f);
        f
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        assert!(FlowFilter::default().matches(&dropped()));
        assert!(FlowSelection::default().matches(&forwarded()));
    }

    #[test]
    fn values_of_one_field_are_ored() {
        let f = filter(|f| {
            f.source.pod = vec!["shop/nobody".parse().unwrap(), "shop/cli".parse().unwrap()]
        });
        assert!(f.matches(&dropped()));
        assert!(!f.matches(&forwarded()));
        let f = filter(|f| f.verdict = vec![ApiVerdict::Forwarded, ApiVerdict::Audit]);
        assert!(!f.matches(&dropped()));
        assert!(f.matches(&forwarded()));
        let f = filter(|f| f.destination.port = vec![443, 80]);
        assert!(f.matches(&dropped()));
        assert!(!f.matches(&forwarded()));
    }

    #[test]
    fn different_fields_are_anded() {
        let both = filter(|f| {
            f.source.pod = vec!["shop/client".parse().unwrap()];
            f.verdict = vec![ApiVerdict::Dropped];
            f.protocol = vec![6];
            f.drop_reason = vec![ApiDropReason::PolicyDenied];
        });
        assert!(both.matches(&dropped()));
        let wrong_protocol = FlowFilter {
            protocol: vec![17],
            ..both.clone()
        };
        assert!(!wrong_protocol.matches(&dropped()));
        let wrong_reason = FlowFilter {
            drop_reason: vec![ApiDropReason::SpoofedSource],
            ..both
        };
        assert!(!wrong_reason.matches(&dropped()));
    }

    #[test]
    fn ips_match_by_address_or_cidr_per_side() {
        let f = filter(|f| f.source.ip = vec!["10.244.0.0/24".parse().unwrap()]);
        assert!(f.matches(&dropped()) && f.matches(&forwarded()));
        let f = filter(|f| f.destination.ip = vec!["8.8.8.8".parse().unwrap()]);
        assert!(!f.matches(&dropped()) && f.matches(&forwarded()));
        let f = filter(|f| f.destination.ip = vec!["fd00::/8".parse().unwrap()]);
        assert!(!f.matches(&dropped()), "families never match across");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("web".parse::<Cidr>().is_err());
        assert!(
            "10.244.0.99/24"
                .parse::<Cidr>()
                .unwrap()
                .contains("10.244.0.3".parse().unwrap()),
            "host bits are ignored"
        );
    }

    #[test]
    fn pods_and_namespaces() {
        let ns: PodPattern = "shop/".parse().unwrap();
        assert!(ns.matches(&dropped().source));
        assert!(!ns.matches(&forwarded().destination), "world is no pod");
        let any_ns: PodPattern = "web".parse().unwrap();
        assert!(any_ns.matches(&dropped().destination));
        let other: PodPattern = "other/web".parse().unwrap();
        assert!(!other.matches(&dropped().destination));
        for bad in ["", "/web", "a/b/c"] {
            assert!(bad.parse::<PodPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn label_selectors() {
        let labels = dropped().destination.labels.unwrap();
        for (selector, expected) in [
            ("app=web", true),
            ("container:app=web", true),
            ("any:app=web", true),
            ("k8s:app=web", false),
            ("app==web", true),
            ("app!=web", false),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("app", true),
            ("!app", false),
            ("!canary", true),
            ("app=web,k8s:env=prod", true),
            ("app=web,env=dev", false),
        ] {
            let parsed: LabelSelector = selector
                .parse()
                .unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(parsed.matches(&labels), expected, "{selector}");
        }
        for bad in ["", "app in a,b", "a b=c", "=x", "app in ()"] {
            assert!(bad.parse::<LabelSelector>().is_err(), "{bad:?}");
        }
        let f = filter(|f| {
            f.destination.label = vec!["app=db".parse().unwrap(), "app=web".parse().unwrap()]
        });
        assert!(f.matches(&dropped()));
        let f = filter(|f| f.source.label = vec!["app=web".parse().unwrap()]);
        assert!(!f.matches(&dropped()));
    }

    #[test]
    fn identities_directions_replies_flags_nodes() {
        let f = filter(|f| f.destination.identity = vec![2]);
        assert!(!f.matches(&dropped()) && f.matches(&forwarded()));
        let f = filter(|f| f.direction = vec![Direction::Egress]);
        assert!(!f.matches(&dropped()) && f.matches(&forwarded()));
        let f = filter(|f| f.reply = vec![true]);
        assert!(!f.matches(&dropped()));
        let mut unknown = dropped();
        unknown.is_reply = None;
        let f = filter(|f| f.reply = vec![false]);
        assert!(f.matches(&dropped()) && !f.matches(&unknown));
        let f = filter(|f| f.tcp_flags = vec![0x12, 0x02]);
        assert!(f.matches(&dropped()), "SYN is in the second set");
        let f = filter(|f| f.tcp_flags = vec![0x12]);
        assert!(!f.matches(&dropped()), "SYN-ACK needs both");
        assert!(!f.matches(&forwarded()), "UDP has no flags");
        let f = filter(|f| f.node_name = vec![NamePattern::new("node-*")]);
        assert!(f.matches(&dropped()));
        let f = filter(|f| f.node_name = vec![NamePattern::new("other")]);
        assert!(!f.matches(&dropped()));
        let f = filter(|f| f.kind = vec![ApiEventType::PolicyVerdict]);
        assert!(!f.matches(&dropped()) && f.matches(&forwarded()));
        let f = filter(|f| f.ip_version = vec![IpVersion::V6]);
        assert!(!f.matches(&dropped()));
    }

    #[test]
    fn a_deny_rule_is_policy_deny_default_deny_policy_denied() {
        assert_eq!(dropped().api_drop_reason(), ApiDropReason::PolicyDenied);
        let mut by_rule = dropped();
        by_rule.match_type = MatchType::L3Only;
        assert_eq!(by_rule.api_drop_reason(), ApiDropReason::PolicyDeny);
        assert_eq!(forwarded().api_drop_reason(), ApiDropReason::Unspecified);
        let f = filter(|f| f.drop_reason = vec![ApiDropReason::Unspecified]);
        assert!(
            !f.matches(&forwarded()),
            "a forwarded flow has no reason to match"
        );
    }

    #[test]
    fn name_patterns() {
        for (pattern, name, expected) in [
            ("node-1", "node-1", true),
            ("node-1", "node-10", false),
            ("node-*", "node-10", true),
            ("*-1", "node-1", true),
            ("*", "anything", true),
            ("n*e*1", "node-1", true),
            ("n*x*", "node-1", false),
        ] {
            assert_eq!(
                NamePattern::new(pattern).matches(name),
                expected,
                "{pattern} {name}"
            );
        }
    }

    #[test]
    fn whitelist_or_minus_blacklist_within_the_window() {
        let only_drops = FlowFilter {
            verdict: vec![ApiVerdict::Dropped],
            ..FlowFilter::default()
        };
        let to_world = FlowFilter {
            destination: SideFilter {
                identity: vec![2],
                ..SideFilter::default()
            },
            ..FlowFilter::default()
        };
        let selection = FlowSelection {
            whitelist: vec![only_drops.clone(), to_world.clone()],
            ..FlowSelection::default()
        };
        assert!(selection.matches(&dropped()) && selection.matches(&forwarded()));
        let not_drops = FlowSelection {
            blacklist: vec![only_drops.clone()],
            ..FlowSelection::default()
        };
        assert!(!not_drops.matches(&dropped()) && not_drops.matches(&forwarded()));
        let both = FlowSelection {
            whitelist: vec![to_world],
            blacklist: vec![only_drops],
            ..FlowSelection::default()
        };
        assert!(!both.matches(&dropped()) && both.matches(&forwarded()));
        let t = dropped().time;
        let window = FlowSelection {
            since: Some(t),
            until: Some(t),
            ..FlowSelection::default()
        };
        assert!(window.matches(&dropped()));
        let later = FlowSelection {
            since: Some(t + std::time::Duration::from_millis(1)),
            ..FlowSelection::default()
        };
        assert!(!later.matches(&dropped()));
    }
}
