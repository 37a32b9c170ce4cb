//! One readable line per flow, like `hubble observe`'s compact output:
//!
//! ```text
//! Nov 26 08:30:01.123: shop/client:43512 (ID:300) -> shop/web:80 (ID:301) policy-verdict:none INGRESS Policy denied DROPPED (TCP Flags: SYN)
//! Nov 26 08:30:02.456: shop/client:43514 (ID:300) -> shop/web:8080 (ID:301) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)
//! ```
//!
//! Times are UTC. The arrow is `->` for a packet in its connection's original direction,
//! `<-` for a reply (the sides are swapped so the client stays on the left), `<>` when the
//! datapath did not know (drops before conntrack).

use std::time::{Duration, SystemTime};

use kino_api::flow as pb;
use kino_api::types as pbt;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mon DD HH:MM:SS.mmm` (UTC) of a protobuf timestamp.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "(no time)".to_owned();
    };
    let since_epoch = SystemTime::try_from(*ts)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (_, month, day) = civil_from_days(days as i64);
    format!(
        "{} {:02} {:02}:{:02}:{:02}.{:03}",
        MONTHS[(month - 1) as usize],
        day,
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// (year, month 1..=12, day 1..=31) of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn ports(flow: &pb::Flow) -> Option<(u32, u32)> {
    use pb::layer4::Protocol;
    match flow.l4.as_ref()?.protocol.as_ref()? {
        Protocol::Tcp(t) => Some((t.source_port, t.destination_port)),
        Protocol::Udp(u) => Some((u.source_port, u.destination_port)),
        Protocol::Sctp(s) => Some((s.source_port, s.destination_port)),
        Protocol::Icmpv4(_) | Protocol::Icmpv6(_) => None,
    }
}

fn identity(id: u32) -> String {
    match id {
        0 => String::new(),
        1 => " (host)".to_owned(),
        2 => " (world)".to_owned(),
        3 => " (unmanaged)".to_owned(),
        4 => " (health)".to_owned(),
        5 => " (init)".to_owned(),
        6 => " (remote-node)".to_owned(),
        id => format!(" (ID:{id})"),
    }
}

/// `ns/pod:port (ID:n)` or `ip:port (world)`.
fn side(endpoint: Option<&pb::Endpoint>, ip: &str, port: Option<u32>) -> String {
    let endpoint = endpoint.cloned().unwrap_or_default();
    let name = if endpoint.pod_name.is_empty() {
        if ip.contains(':') && port.is_some() {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        }
    } else if endpoint.namespace.is_empty() {
        endpoint.pod_name
    } else {
        format!("{}/{}", endpoint.namespace, endpoint.pod_name)
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{name}{port}{}", identity(endpoint.identity))
}

fn tcp_flags(flags: &pb::TcpFlags) -> String {
    let names: Vec<&str> = [
        (flags.syn, "SYN"),
        (flags.ack, "ACK"),
        (flags.fin, "FIN"),
        (flags.rst, "RST"),
        (flags.psh, "PSH"),
        (flags.urg, "URG"),
        (flags.ece, "ECE"),
        (flags.cwr, "CWR"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    names.join(", ")
}

fn icmpv4(icmp_type: u32, code: u32) -> String {
    match icmp_type {
        0 => "EchoReply".to_owned(),
        3 => format!("DestinationUnreachable(code {code})"),
        8 => "EchoRequest".to_owned(),
        11 => "TimeExceeded".to_owned(),
        _ => format!("type {icmp_type} code {code}"),
    }
}

fn icmpv6(icmp_type: u32, code: u32) -> String {
    match icmp_type {
        1 => format!("DestinationUnreachable(code {code})"),
        128 => "EchoRequest".to_owned(),
        129 => "EchoReply".to_owned(),
        133 => "RouterSolicitation".to_owned(),
        135 => "NeighborSolicitation".to_owned(),
        136 => "NeighborAdvertisement".to_owned(),
        _ => format!("type {icmp_type} code {code}"),
    }
}

/// What the packet was: `TCP Flags: SYN`, `UDP`, `ICMPv4 EchoRequest`.
fn summary(flow: &pb::Flow) -> String {
    use pb::layer4::Protocol;
    match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => format!(
            "TCP Flags: {}",
            t.flags.as_ref().map(tcp_flags).unwrap_or_default()
        ),
        Some(Protocol::Udp(_)) => "UDP".to_owned(),
        Some(Protocol::Sctp(_)) => "SCTP".to_owned(),
        Some(Protocol::Icmpv4(i)) => format!("ICMPv4 {}", icmpv4(i.r#type, i.code)),
        Some(Protocol::Icmpv6(i)) => format!("ICMPv6 {}", icmpv6(i.r#type, i.code)),
        None if flow.ip.is_some() => "IP".to_owned(),
        None => "non-IP".to_owned(),
    }
}

/// A drop reason as Cilium words it: `Policy denied`, `Spoofed source`.
pub fn drop_reason_text(reason: i32) -> String {
    match pbt::DropReason::try_from(reason) {
        Ok(pbt::DropReason::PolicyDeny) => "Policy denied by denylist".to_owned(),
        Ok(pbt::DropReason::UnsupportedL3Protocol) => "Unsupported L3 protocol".to_owned(),
        Ok(pbt::DropReason::Unspecified) => "Unknown reason".to_owned(),
        Ok(other) => {
            let words = other
                .as_str_name()
                .trim_start_matches("DROP_REASON_")
                .to_ascii_lowercase()
                .replace('_', " ");
            let mut chars = words.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
        Err(_) => format!("reason {reason}"),
    }
}

fn match_type(value: i32) -> &'static str {
    match pb::PolicyMatchType::try_from(value) {
        Ok(pb::PolicyMatchType::L3L4) => "L3-L4",
        Ok(pb::PolicyMatchType::L3Only) => "L3-Only",
        Ok(pb::PolicyMatchType::L4Only) => "L4-Only",
        Ok(pb::PolicyMatchType::All) => "all",
        Ok(pb::PolicyMatchType::NotEnforced) => "not-enforced",
        _ => "none",
    }
}

fn direction(value: i32) -> Option<&'static str> {
    match pbt::Direction::try_from(value) {
        Ok(pbt::Direction::Ingress) => Some("INGRESS"),
        Ok(pbt::Direction::Egress) => Some("EGRESS"),
        _ => None,
    }
}

fn is_policy_reason(reason: i32) -> bool {
    reason == pbt::DropReason::PolicyDenied as i32 || reason == pbt::DropReason::PolicyDeny as i32
}

/// The verdict part: `policy-verdict:L3-L4 EGRESS ALLOWED`,
/// `policy-verdict:none INGRESS Policy denied DROPPED`, `EGRESS Spoofed source DROPPED`.
fn what(flow: &pb::Flow) -> String {
    let mut words: Vec<String> = Vec::new();
    let policy = flow.event_type == pb::FlowEventType::PolicyVerdict as i32
        || is_policy_reason(flow.drop_reason);
    if policy {
        words.push(format!(
            "policy-verdict:{}",
            match_type(flow.policy_match_type)
        ));
    }
    if flow.event_type == pb::FlowEventType::SockLb as i32 {
        words.push("sock-lb".to_owned());
    }
    if let Some(direction) = direction(flow.traffic_direction) {
        words.push(direction.to_owned());
    }
    match pb::Verdict::try_from(flow.verdict) {
        Ok(pb::Verdict::Forwarded) if policy => words.push("ALLOWED".to_owned()),
        Ok(pb::Verdict::Forwarded) => words.push("FORWARDED".to_owned()),
        Ok(pb::Verdict::Audit) => {
            words.push(format!("{} AUDITED", drop_reason_text(flow.drop_reason)))
        }
        Ok(pb::Verdict::Dropped) => {
            words.push(format!("{} DROPPED", drop_reason_text(flow.drop_reason)))
        }
        Ok(pb::Verdict::Error) => words.push("ERROR".to_owned()),
        _ => words.push("UNKNOWN".to_owned()),
    }
    words.join(" ")
}

/// The compact line of a flow (no newline).
pub fn line(flow: &pb::Flow) -> String {
    let (src_ip, dst_ip) = flow
        .ip
        .as_ref()
        .map(|ip| (ip.source.as_str(), ip.destination.as_str()))
        .unwrap_or(("?", "?"));
    let ports = ports(flow);
    let mut src = side(flow.source.as_ref(), src_ip, ports.map(|p| p.0));
    let mut dst = side(flow.destination.as_ref(), dst_ip, ports.map(|p| p.1));
    let arrow = match flow.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            "<-"
        }
    };
    format!(
        "{}: {src} {arrow} {dst}{} {} ({})",
        time(flow.time.as_ref()),
        translation(flow.service.as_ref()),
        what(flow),
        summary(flow)
    )
}

/// A socket translation: ` (svc default/web) => 10.0.2.7:8080` (the service when known).
fn translation(service: Option<&pb::ServiceTranslation>) -> String {
    let Some(t) = service else {
        return String::new();
    };
    let svc = if t.service_name.is_empty() {
        format!(" (frontend {})", t.frontend_id)
    } else {
        format!(" (svc {}/{})", t.service_namespace, t.service_name)
    };
    let backend = if t.backend_address.contains(':') {
        format!("[{}]:{}", t.backend_address, t.backend_port)
    } else {
        format!("{}:{}", t.backend_address, t.backend_port)
    };
    format!("{svc} => {backend}")
}

/// The line of a lost-events report.
pub fn lost_line(lost: &pb::LostEvent, time_of: Option<&prost_types::Timestamp>) -> String {
    let source = match pb::LostEventSource::try_from(lost.source) {
        Ok(pb::LostEventSource::BpfRingBuffer) => "the datapath's ring buffer was full",
        Ok(pb::LostEventSource::ObserverQueue) => "the observer could not decode them",
        Ok(pb::LostEventSource::FlowRing) => "this client read too slowly",
        _ => "unknown source",
    };
    format!(
        "{}: EVENTS LOST: {} ({source})",
        time(time_of),
        lost.num_events_lost
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ns: &str, pod: &str, identity: u32) -> Option<pb::Endpoint> {
        Some(pb::Endpoint {
            namespace: ns.into(),
            pod_name: pod.into(),
            identity,
            ..Default::default()
        })
    }

    fn dropped() -> pb::Flow {
        pb::Flow {
            // 2023-11-26 08:30:01.123 UTC
            time: Some(prost_types::Timestamp {
                seconds: 1_700_987_401,
                nanos: 123_000_000,
            }),
            verdict: pb::Verdict::Dropped as i32,
            drop_reason: pbt::DropReason::PolicyDenied as i32,
            ip: Some(pb::Ip {
                source: "10.244.0.10".into(),
                destination: "10.244.0.11".into(),
                ip_version: pbt::IpFamily::Ipv4 as i32,
            }),
            l4: Some(pb::Layer4 {
                protocol: Some(pb::layer4::Protocol::Tcp(pb::Tcp {
                    source_port: 43512,
                    destination_port: 80,
                    flags: Some(pb::TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            source: endpoint("default", "client", 1234),
            destination: endpoint("default", "web", 5678),
            event_type: pb::FlowEventType::Drop as i32,
            traffic_direction: pbt::Direction::Ingress as i32,
            is_reply: Some(false),
            ..Default::default()
        }
    }

    #[test]
    fn a_socket_translation_shows_the_frontend_and_the_backend() {
        let mut flow = dropped();
        flow.verdict = pb::Verdict::Forwarded as i32;
        flow.drop_reason = 0;
        flow.event_type = pb::FlowEventType::SockLb as i32;
        flow.traffic_direction = pbt::Direction::Egress as i32;
        flow.ip.as_mut().unwrap().destination = "172.20.0.10".into();
        flow.destination = None;
        flow.service = Some(pb::ServiceTranslation {
            frontend_id: 7,
            service_namespace: "default".into(),
            service_name: "web".into(),
            backend_address: "10.0.2.7".into(),
            backend_port: 8080,
        });
        let text = line(&flow);
        assert!(
            text.contains(
                "-> 172.20.0.10:80 (svc default/web) => 10.0.2.7:8080 sock-lb EGRESS FORWARDED"
            ),
            "{text}"
        );
        flow.service.as_mut().unwrap().service_name.clear();
        flow.service.as_mut().unwrap().backend_address = "fd00::7".into();
        assert!(
            line(&flow).contains("(frontend 7) => [fd00::7]:8080"),
            "{}",
            line(&flow)
        );
    }

    #[test]
    fn a_policy_drop_reads_like_hubble() {
        assert_eq!(
            line(&dropped()),
            "Nov 26 08:30:01.123: default/client:43512 (ID:1234) -> default/web:80 (ID:5678) \
             policy-verdict:none INGRESS Policy denied DROPPED (TCP Flags: SYN)"
        );
    }

    #[test]
    fn allowed_connections_replies_and_other_drops() {
        let mut allowed = dropped();
        allowed.verdict = pb::Verdict::Forwarded as i32;
        allowed.drop_reason = 0;
        allowed.event_type = pb::FlowEventType::PolicyVerdict as i32;
        allowed.policy_match_type = pb::PolicyMatchType::L3L4 as i32;
        assert!(
            line(&allowed).ends_with("policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)"),
            "{}",
            line(&allowed)
        );
        let mut reply = allowed.clone();
        reply.is_reply = Some(true);
        assert!(
            line(&reply).contains("default/web:80 (ID:5678) <- default/client:43512 (ID:1234)"),
            "{}",
            line(&reply)
        );
        let mut spoofed = dropped();
        spoofed.drop_reason = pbt::DropReason::SpoofedSource as i32;
        spoofed.traffic_direction = pbt::Direction::Egress as i32;
        spoofed.is_reply = None;
        spoofed.destination = endpoint("", "", 2);
        spoofed.l4 = Some(pb::Layer4 {
            protocol: Some(pb::layer4::Protocol::Icmpv4(pb::Icmpv4 {
                r#type: 8,
                code: 0,
            })),
        });
        assert_eq!(
            line(&spoofed),
            "Nov 26 08:30:01.123: default/client (ID:1234) <> 10.244.0.11 (world) \
             EGRESS Spoofed source DROPPED (ICMPv4 EchoRequest)"
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_722), (2023, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(time(None), "(no time)");
    }

    #[test]
    fn lost_events_say_where() {
        let lost = pb::LostEvent {
            source: pb::LostEventSource::BpfRingBuffer as i32,
            num_events_lost: 12,
        };
        assert!(
            lost_line(&lost, None)
                .contains("EVENTS LOST: 12 (the datapath's ring buffer was full)")
        );
    }
}
