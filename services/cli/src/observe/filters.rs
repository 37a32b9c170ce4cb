//! `kino observe`'s filter flags as `kino.flow.v1` filters, with Hubble's semantics:
//!
//! - `--from-X` constrains the source, `--to-X` the destination, `--X` (pod, namespace,
//!   label, ip, port, identity) either side: it makes two filters, one with X as source and
//!   one with X as destination, OR'ed;
//! - other flags (protocol, verdict, drop reason, type, traffic direction, node) apply to
//!   every filter;
//! - a flag repeated ORs its values; different flags AND;
//! - `--not` negates the ONE filter flag that follows it: negated flags build the blacklist
//!   the same way (a flow matching it is not shown).

use kino_api::flow as pb;
use kino_api::types as pbt;

/// Which side a flag constrains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The source (`--from-*`).
    From,
    /// The destination (`--to-*`).
    To,
    /// Either side (`--pod`, `--ip`, …).
    Either,
    /// Not side-specific (`--protocol`, `--verdict`, …).
    Flow,
}

/// What a flag filters on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `[namespace/]pod` (namespace "default" when omitted).
    Pod,
    /// A namespace.
    Namespace,
    /// A label selector.
    Label,
    /// An IP or CIDR.
    Ip,
    /// A port.
    Port,
    /// A security identity.
    Identity,
    /// tcp, udp, icmp, icmpv6, sctp.
    Protocol,
    /// FORWARDED, DROPPED, AUDIT, ERROR.
    Verdict,
    /// A drop reason name (POLICY_DENIED or DROP_REASON_POLICY_DENIED).
    DropReason,
    /// drop, policy-verdict, trace.
    EventType,
    /// ingress, egress.
    TrafficDirection,
    /// A node name pattern (`*` wildcard).
    NodeName,
}

/// One occurrence of a filter flag on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// The side it constrains.
    pub side: Side,
    /// What it filters on.
    pub field: Field,
    /// The value given.
    pub value: String,
    /// Whether `--not` preceded it.
    pub negated: bool,
}

/// A filter flag's value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct FlagError {
    /// The flag, e.g. `--verdict`.
    pub flag: String,
    /// The value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// The flag of a side and field, for messages.
pub fn flag_name(side: Side, field: Field) -> String {
    let name = match field {
        Field::Pod => "pod",
        Field::Namespace => "namespace",
        Field::Label => "label",
        Field::Ip => "ip",
        Field::Port => "port",
        Field::Identity => "identity",
        Field::Protocol => "protocol",
        Field::Verdict => "verdict",
        Field::DropReason => "drop-reason",
        Field::EventType => "type",
        Field::TrafficDirection => "traffic-direction",
        Field::NodeName => "node-name",
    };
    match side {
        Side::From => format!("--from-{name}"),
        Side::To => format!("--to-{name}"),
        Side::Either | Side::Flow => format!("--{name}"),
    }
}

/// A source and a destination filter built together (Hubble's "left" and "right").
#[derive(Default)]
struct Pair {
    left: pb::FlowFilter,
    right: pb::FlowFilter,
    either: bool,
    used: bool,
}

/// Pushes onto the source (`source`) or destination field of `f`.
fn side_values(f: &mut pb::FlowFilter, field: Field, source: bool) -> &mut Vec<String> {
    match (field, source) {
        (Field::Pod | Field::Namespace, true) => &mut f.source_pod,
        (Field::Pod | Field::Namespace, false) => &mut f.destination_pod,
        (Field::Label, true) => &mut f.source_label,
        (Field::Label, false) => &mut f.destination_label,
        (_, true) => &mut f.source_ip,
        (_, false) => &mut f.destination_ip,
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| "not a number".to_owned())
}

/// The value as a filter element, for side fields.
enum SideValue {
    Text(String),
    Port(u32),
    Identity(u32),
}

fn side_value(field: Field, value: &str) -> Result<SideValue, String> {
    Ok(match field {
        Field::Pod => SideValue::Text(if value.contains('/') {
            value.to_owned()
        } else {
            format!("default/{value}")
        }),
        Field::Namespace => {
            if value.is_empty() || value.contains('/') {
                return Err("a namespace name".to_owned());
            }
            SideValue::Text(format!("{value}/"))
        }
        Field::Label | Field::Ip => SideValue::Text(value.to_owned()),
        Field::Port => {
            let port: u32 = number(value)?;
            if port > 65535 {
                return Err("ports are 0..=65535".to_owned());
            }
            SideValue::Port(port)
        }
        Field::Identity => SideValue::Identity(number(value)?),
        _ => unreachable!("not a side field"),
    })
}

fn push_side(f: &mut pb::FlowFilter, field: Field, source: bool, value: &SideValue) {
    match value {
        SideValue::Text(text) => side_values(f, field, source).push(text.clone()),
        SideValue::Port(port) if source => f.source_port.push(*port),
        SideValue::Port(port) => f.destination_port.push(*port),
        SideValue::Identity(id) if source => f.source_identity.push(*id),
        SideValue::Identity(id) => f.destination_identity.push(*id),
    }
}

/// Parses a protocol name.
pub fn protocol(value: &str) -> Result<pbt::Protocol, String> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "tcp" => pbt::Protocol::Tcp,
        "udp" => pbt::Protocol::Udp,
        "icmp" | "icmpv4" => pbt::Protocol::Icmp,
        "icmpv6" => pbt::Protocol::Icmpv6,
        "sctp" => pbt::Protocol::Sctp,
        _ => return Err("one of tcp, udp, icmp, icmpv6, sctp".to_owned()),
    })
}

/// Parses a verdict name.
pub fn verdict(value: &str) -> Result<pb::Verdict, String> {
    pb::Verdict::from_str_name(&format!("VERDICT_{}", value.to_ascii_uppercase()))
        .filter(|v| *v != pb::Verdict::Unspecified)
        .ok_or_else(|| "one of FORWARDED, DROPPED, AUDIT, ERROR".to_owned())
}

/// Parses a drop reason name, with or without its `DROP_REASON_` prefix.
pub fn drop_reason(value: &str) -> Result<pbt::DropReason, String> {
    let upper = value.to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with("DROP_REASON_") {
        upper
    } else {
        format!("DROP_REASON_{upper}")
    };
    pbt::DropReason::from_str_name(&name)
        .filter(|r| *r != pbt::DropReason::Unspecified)
        .ok_or_else(|| {
            "a drop reason such as POLICY_DENIED, POLICY_DENY, SPOOFED_SOURCE, INVALID_PACKET, UNSUPPORTED_L3_PROTOCOL, UNKNOWN_ENDPOINT".to_owned()
        })
}

fn apply_flow_field(f: &mut pb::FlowFilter, field: Field, value: &str) -> Result<(), String> {
    match field {
        Field::Protocol => f.protocol.push(protocol(value)? as i32),
        Field::Verdict => f.verdict.push(verdict(value)? as i32),
        Field::DropReason => f.drop_reason.push(drop_reason(value)? as i32),
        Field::EventType => f
            .event_type
            .push(match value.to_ascii_lowercase().as_str() {
                "drop" => pb::FlowEventType::Drop,
                "policy-verdict" | "policy_verdict" => pb::FlowEventType::PolicyVerdict,
                "trace" => pb::FlowEventType::Trace,
                "sock-lb" | "sock_lb" => pb::FlowEventType::SockLb,
                _ => return Err("one of drop, policy-verdict, trace, sock-lb".to_owned()),
            } as i32),
        Field::TrafficDirection => {
            f.traffic_direction
                .push(match value.to_ascii_lowercase().as_str() {
                    "ingress" => pbt::Direction::Ingress,
                    "egress" => pbt::Direction::Egress,
                    _ => return Err("ingress or egress".to_owned()),
                } as i32)
        }
        Field::NodeName => f.node_name.push(value.to_owned()),
        _ => unreachable!("a side field"),
    }
    Ok(())
}

impl Pair {
    fn apply(&mut self, o: &Occurrence) -> Result<(), String> {
        self.used = true;
        match o.side {
            Side::Flow => {
                apply_flow_field(&mut self.left, o.field, &o.value)?;
                apply_flow_field(&mut self.right, o.field, &o.value)?;
            }
            side => {
                let value = side_value(o.field, &o.value)?;
                match side {
                    Side::From => {
                        push_side(&mut self.left, o.field, true, &value);
                        push_side(&mut self.right, o.field, true, &value);
                    }
                    Side::To => {
                        push_side(&mut self.left, o.field, false, &value);
                        push_side(&mut self.right, o.field, false, &value);
                    }
                    _ => {
                        push_side(&mut self.left, o.field, true, &value);
                        push_side(&mut self.right, o.field, false, &value);
                        self.either = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn filters(self) -> Vec<pb::FlowFilter> {
        match (self.used, self.either) {
            (false, _) => Vec::new(),
            (true, false) => vec![self.left],
            (true, true) => vec![self.left, self.right],
        }
    }
}

/// The (whitelist, blacklist) of the occurrences, in command-line order.
pub fn build(
    occurrences: &[Occurrence],
) -> Result<(Vec<pb::FlowFilter>, Vec<pb::FlowFilter>), FlagError> {
    let (mut whitelist, mut blacklist) = (Pair::default(), Pair::default());
    for o in occurrences {
        let pair = if o.negated {
            &mut blacklist
        } else {
            &mut whitelist
        };
        pair.apply(o).map_err(|reason| FlagError {
            flag: format!(
                "{}{}",
                if o.negated { "--not " } else { "" },
                flag_name(o.side, o.field)
            ),
            value: o.value.clone(),
            reason,
        })?;
    }
    Ok((whitelist.filters(), blacklist.filters()))
}

/// Marks which filter flags a `--not` precedes: `flags` are (command-line index, side,
/// field, value) of every filter flag value, `nots` the indices of every `--not`. An
/// error when a `--not` is not followed by a filter flag.
pub fn order(
    mut flags: Vec<(usize, Side, Field, String)>,
    nots: &[usize],
) -> Result<Vec<Occurrence>, String> {
    flags.sort_by_key(|f| f.0);
    let mut occurrences = Vec::with_capacity(flags.len());
    let mut nots: Vec<usize> = nots.to_vec();
    nots.sort_unstable();
    let mut next_not = nots.iter().peekable();
    for (index, side, field, value) in flags {
        let mut negated = false;
        // Every --not before this flag (and after the previous one) negates it: one at most.
        while next_not.next_if(|not| **not < index).is_some() {
            if negated {
                return Err("--not must be followed by one filter flag (e.g. --not --namespace kube-system)".to_owned());
            }
            negated = true;
        }
        occurrences.push(Occurrence {
            side,
            field,
            value,
            negated,
        });
    }
    if next_not.next().is_some() {
        return Err(
            "--not must be followed by a filter flag (e.g. --not --namespace kube-system)"
                .to_owned(),
        );
    }
    Ok(occurrences)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(side: Side, field: Field, value: &str, negated: bool) -> Occurrence {
        Occurrence {
            side,
            field,
            value: value.to_owned(),
            negated,
        }
    }

    #[test]
    fn from_and_to_make_one_filter() {
        let (white, black) = build(&[
            o(Side::From, Field::Pod, "shop/client", false),
            o(Side::To, Field::Port, "80", false),
            o(Side::Flow, Field::Verdict, "dropped", false),
        ])
        .unwrap();
        assert!(black.is_empty());
        assert_eq!(white.len(), 1);
        assert_eq!(white[0].source_pod, ["shop/client"]);
        assert_eq!(white[0].destination_port, [80]);
        assert_eq!(white[0].verdict, [pb::Verdict::Dropped as i32]);
    }

    #[test]
    fn either_side_flags_make_two_ored_filters() {
        let (white, _) = build(&[
            o(Side::Either, Field::Pod, "web", false),
            o(Side::Flow, Field::Protocol, "tcp", false),
        ])
        .unwrap();
        assert_eq!(white.len(), 2);
        assert_eq!(white[0].source_pod, ["default/web"], "default namespace");
        assert!(white[0].destination_pod.is_empty());
        assert_eq!(white[1].destination_pod, ["default/web"]);
        assert!(white[1].source_pod.is_empty());
        for f in &white {
            assert_eq!(
                f.protocol,
                [pbt::Protocol::Tcp as i32],
                "flow flags on both"
            );
        }
        let (white, _) = build(&[
            o(Side::Either, Field::Namespace, "shop", false),
            o(Side::Either, Field::Namespace, "kube-system", false),
        ])
        .unwrap();
        assert_eq!(white[0].source_pod, ["shop/", "kube-system/"], "OR within");
    }

    #[test]
    fn not_builds_the_blacklist() {
        let (white, black) = build(&[
            o(Side::Flow, Field::Verdict, "DROPPED", false),
            o(Side::Either, Field::Namespace, "kube-system", true),
        ])
        .unwrap();
        assert_eq!(white.len(), 1);
        assert_eq!(black.len(), 2);
        assert_eq!(black[0].source_pod, ["kube-system/"]);
        assert_eq!(black[1].destination_pod, ["kube-system/"]);
        assert!(black[0].verdict.is_empty(), "the verdict is not negated");
    }

    #[test]
    fn values_are_checked() {
        for (occurrence, flag) in [
            (o(Side::Flow, Field::Verdict, "maybe", false), "--verdict"),
            (o(Side::Flow, Field::Protocol, "gre", false), "--protocol"),
            (o(Side::To, Field::Port, "70000", false), "--to-port"),
            (
                o(Side::From, Field::Identity, "x", true),
                "--not --from-identity",
            ),
            (
                o(Side::Flow, Field::DropReason, "bored", false),
                "--drop-reason",
            ),
        ] {
            let error = build(&[occurrence]).expect_err(flag);
            assert_eq!(error.flag, flag);
        }
        assert_eq!(
            drop_reason("policy-denied"),
            Ok(pbt::DropReason::PolicyDenied)
        );
        assert_eq!(
            drop_reason("DROP_REASON_SPOOFED_SOURCE"),
            Ok(pbt::DropReason::SpoofedSource)
        );
        assert_eq!(verdict("audit"), Ok(pb::Verdict::Audit));
    }

    #[test]
    fn not_applies_to_the_next_filter_flag_only() {
        let flags = vec![
            (5, Side::Flow, Field::Verdict, "DROPPED".to_owned()),
            (2, Side::Either, Field::Pod, "web".to_owned()),
            (9, Side::To, Field::Port, "80".to_owned()),
        ];
        let ordered = order(flags.clone(), &[4]).unwrap();
        let negated: Vec<bool> = ordered.iter().map(|o| o.negated).collect();
        assert_eq!(negated, [false, true, false]);
        assert_eq!(ordered[1].field, Field::Verdict);
        assert!(order(flags.clone(), &[10]).is_err(), "trailing --not");
        assert!(order(flags.clone(), &[3, 4]).is_err(), "--not --not");
        assert!(order(flags, &[]).unwrap().iter().all(|o| !o.negated));
    }
}
