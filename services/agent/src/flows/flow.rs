//! A flow: one datapath event with both sides resolved (endpoint, identity, pod, labels) —
//! what the observer keeps in its ring, filters and streams. The `kino.flow.v1` adapter turns
//! it into the API's `Flow`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use kino_api::flow::{FlowEventType as ApiEventType, Verdict as ApiVerdict};
use kino_api::types::DropReason as ApiDropReason;

use crate::datapath::events::{EventKind, EventVerdict, MatchType, ObservationPoint};
use crate::datapath::{Direction, DropReason};
use crate::netlink::MacAddr;

/// IANA protocol numbers the observer names.
pub mod protocol {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// One security label, `source:key=value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Where it comes from: `k8s`, `container`, `reserved`, `cidr`, …
    pub source: String,
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
}

impl Label {
    /// A label.
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label {
            source: source.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A set of labels, shared between flows of the same peer.
pub type Labels = Arc<[Label]>;

/// One side of a flow as the observer resolved it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    /// Endpoint id on this node; 0 when not a local endpoint.
    pub endpoint_id: u32,
    /// Security identity (0 = not known).
    pub identity: u32,
    /// Pod namespace; empty when not a pod (or not known).
    pub namespace: String,
    /// Pod name; empty when not a pod (or not known).
    pub pod_name: String,
    /// Security labels.
    pub labels: Option<Labels>,
    /// Node the endpoint lives on, when known.
    pub node_name: String,
}

/// The L4 header of a flow's packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flags byte (FIN 0x01 … CWR 0x80).
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// SCTP.
    Sctp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP (IPv4).
    Icmpv4 {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
    },
    /// ICMPv6.
    Icmpv6 {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
    },
}

impl L4 {
    /// The header of protocol `protocol` with these fields; `None` for other protocols.
    pub fn new(
        protocol: u8,
        src_port: u16,
        dst_port: u16,
        tcp_flags: u8,
        icmp: (u8, u8),
    ) -> Option<Self> {
        Some(match protocol {
            protocol::TCP => L4::Tcp {
                src_port,
                dst_port,
                flags: tcp_flags,
            },
            protocol::UDP => L4::Udp { src_port, dst_port },
            protocol::SCTP => L4::Sctp { src_port, dst_port },
            protocol::ICMP => L4::Icmpv4 {
                icmp_type: icmp.0,
                code: icmp.1,
            },
            protocol::ICMPV6 => L4::Icmpv6 {
                icmp_type: icmp.0,
                code: icmp.1,
            },
            _ => return None,
        })
    }

    /// The IANA protocol number.
    pub fn protocol(&self) -> u8 {
        match self {
            L4::Tcp { .. } => protocol::TCP,
            L4::Udp { .. } => protocol::UDP,
            L4::Sctp { .. } => protocol::SCTP,
            L4::Icmpv4 { .. } => protocol::ICMP,
            L4::Icmpv6 { .. } => protocol::ICMPV6,
        }
    }

    /// (source, destination) ports of TCP, UDP and SCTP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match *self {
            L4::Tcp {
                src_port, dst_port, ..
            }
            | L4::Udp { src_port, dst_port }
            | L4::Sctp { src_port, dst_port } => Some((src_port, dst_port)),
            L4::Icmpv4 { .. } | L4::Icmpv6 { .. } => None,
        }
    }
}

/// The interface a flow was observed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// ifindex.
    pub index: u32,
    /// Name, when known.
    pub name: String,
}

/// One observed flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// When the datapath reported it.
    pub time: SystemTime,
    /// What happened to the packet.
    pub verdict: EventVerdict,
    /// Why it was dropped (datapath vocabulary; see [`Flow::api_drop_reason`]).
    pub drop_reason: Option<DropReason>,
    /// Kind of event.
    pub kind: EventKind,
    /// (source, destination) MACs.
    pub ethernet: Option<(MacAddr, MacAddr)>,
    /// (source, destination) addresses.
    pub ip: Option<(IpAddr, IpAddr)>,
    /// L4 header.
    pub l4: Option<L4>,
    /// The source side.
    pub source: Peer,
    /// The destination side.
    pub destination: Peer,
    /// Node where it was observed.
    pub node_name: Arc<str>,
    /// Direction seen from the local endpoint whose enforcement point reported it.
    pub direction: Option<Direction>,
    /// Interface it was observed on.
    pub interface: Option<Interface>,
    /// Reply of a tracked connection (when known).
    pub is_reply: Option<bool>,
    /// Program that saw it.
    pub point: Option<ObservationPoint>,
    /// Which kind of policy entry decided.
    pub match_type: MatchType,
    /// A socket translation's backend (issue #14).
    pub service: Option<crate::datapath::events::SockTranslation>,
}

impl Flow {
    /// The drop reason in the API's vocabulary (Cilium's codes): both policy reasons are
    /// `POLICY_DENIED` (the direction tells them apart) when no entry allowed the packet
    /// (default deny), `POLICY_DENY` when a deny entry matched.
    pub fn api_drop_reason(&self) -> ApiDropReason {
        let Some(reason) = self.drop_reason else {
            return ApiDropReason::Unspecified;
        };
        match reason {
            DropReason::UnknownEndpoint => ApiDropReason::UnknownEndpoint,
            DropReason::InvalidPacket => ApiDropReason::InvalidPacket,
            DropReason::SpoofedSource => ApiDropReason::SpoofedSource,
            DropReason::UnsupportedL3 => ApiDropReason::UnsupportedL3Protocol,
            DropReason::CtInvalid => ApiDropReason::CtUnknownState,
            DropReason::ErrorRetrievingTunnelKey => ApiDropReason::ErrorRetrievingTunnelKey,
            DropReason::UnknownSender => ApiDropReason::UnknownSender,
            DropReason::InvalidIdentity => ApiDropReason::InvalidIdentity,
            DropReason::NoTunnelEndpoint => ApiDropReason::NoTunnelEndpoint,
            DropReason::PolicyDenied | DropReason::PolicyDeniedIngress => {
                if matches!(self.match_type, MatchType::None | MatchType::NotEnforced) {
                    ApiDropReason::PolicyDenied
                } else {
                    ApiDropReason::PolicyDeny
                }
            }
        }
    }

    /// The verdict in the API's vocabulary.
    pub fn api_verdict(&self) -> ApiVerdict {
        match self.verdict {
            EventVerdict::Forwarded => ApiVerdict::Forwarded,
            EventVerdict::Dropped => ApiVerdict::Dropped,
            EventVerdict::Audit => ApiVerdict::Audit,
        }
    }

    /// The event type in the API's vocabulary.
    pub fn api_event_type(&self) -> ApiEventType {
        match self.kind {
            EventKind::Drop => ApiEventType::Drop,
            EventKind::PolicyVerdict => ApiEventType::PolicyVerdict,
            EventKind::SockLb => ApiEventType::SockLb,
        }
    }

    /// The IP protocol of the packet, when it is IP.
    pub fn protocol(&self) -> Option<u8> {
        self.l4.map(|l4| l4.protocol())
    }
}
