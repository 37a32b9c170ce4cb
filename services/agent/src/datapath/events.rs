//! Flow events (issue #6), kernel side: the `kino_events` BPF ring buffer the datapath
//! reports drops and new connections' policy verdicts to, its per-CPU
//! `kino_event_counters` (events emitted, events lost because the ring was full), and the
//! decoded form [`FlowEvent`] of a `struct flow_event` record (its `#[repr(C)]` mirror is in
//! [`super::abi`]). The flow observer ([`crate::flows`]) reads them through [`EventRing`].

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};

use super::abi::{
    Direction, DropReason, EVENT_AUDIT, EVENT_COUNTERS_MAP, EVENT_DROP, EVENT_DROPPED,
    EVENT_F_DST_IDENTITY, EVENT_F_REPLY, EVENT_F_REPLY_KNOWN, EVENT_F_SRC_IDENTITY,
    EVENT_FORWARDED, EVENT_POLICY_VERDICT, EVENT_SOCK_LB, EVENTS_MAP, EventCountersRaw,
    FlowEventRaw, MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_NONE,
    MATCH_NOT_ENFORCED, OBS_FROM_ENDPOINT, OBS_SOCK, OBS_TO_ENDPOINT, SockLbEventRaw,
    addr_from_raw,
};
use super::map_access::{MapOpError, open_pinned};
use crate::netlink::MacAddr;

/// The events' ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::EVENTS_RING_BYTES;

/// What kind of event the datapath reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A packet was dropped.
    Drop,
    /// A new connection was allowed at an enforcement point.
    PolicyVerdict,
    /// A socket's connect (or UDP send) to a service frontend was translated to a backend
    /// (issue #14; `FlowEvent::service` says which).
    SockLb,
}

/// What happened to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventVerdict {
    /// Passed on.
    Forwarded,
    /// Dropped.
    Dropped,
    /// Policy audit mode: denied but forwarded (reserved; the datapath has no audit mode yet).
    Audit,
}

/// Which program saw the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObservationPoint {
    /// `from_container`: the pod sent it.
    FromEndpoint,
    /// `to_container`: the stack delivers it to the pod.
    ToEndpoint,
    /// A socket program (connect, sendmsg): before any packet.
    Socket,
}

/// A socket translation: the frontend the socket asked for went to this backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockTranslation {
    /// The frontend's id (the service's frontend, cluster-wide).
    pub frontend_id: u32,
    /// The backend chosen.
    pub backend: IpAddr,
    /// Its port.
    pub backend_port: u16,
}

/// Which kind of policy entry decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MatchType {
    /// No entry (default deny), or no policy decision.
    #[default]
    None,
    /// An entry for the peer's identity and a port.
    L3L4,
    /// An entry for the peer's identity, every port.
    L3Only,
    /// An entry for every peer and a port.
    L4Only,
    /// An entry for every peer and every port.
    All,
    /// The direction is not enforced.
    NotEnforced,
}

/// A flow event as the datapath reported it, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC nanoseconds at which it was reported.
    pub ktime_ns: u64,
    /// Interface the program ran on (an lxc).
    pub ifindex: u32,
    /// Local endpoint of the observation point; 0 for a packet on an unknown lxc.
    pub endpoint_id: u32,
    /// Source identity, when the datapath knew it.
    pub src_identity: Option<u32>,
    /// Destination identity, when the datapath knew it.
    pub dst_identity: Option<u32>,
    /// Packet length in bytes.
    pub len: u32,
    /// Ethertype (0 when the Ethernet header was truncated).
    pub ethertype: u16,
    /// Source address, for IP packets.
    pub src_ip: Option<IpAddr>,
    /// Destination address, for IP packets.
    pub dst_ip: Option<IpAddr>,
    /// IP protocol (0 when not IP).
    pub protocol: u8,
    /// Source port (TCP, UDP, SCTP).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Kind.
    pub kind: EventKind,
    /// Verdict.
    pub verdict: EventVerdict,
    /// Why it was dropped.
    pub drop_reason: Option<DropReason>,
    /// Direction of the enforcement point, seen from `endpoint_id`.
    pub direction: Option<Direction>,
    /// Program that saw it.
    pub point: Option<ObservationPoint>,
    /// Which kind of policy entry decided.
    pub match_type: MatchType,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40,
    /// CWR 0x80).
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type.
    pub icmp_type: u8,
    /// ICMP / ICMPv6 code.
    pub icmp_code: u8,
    /// Reply of a tracked connection, when conntrack classified the packet.
    pub is_reply: Option<bool>,
    /// Source MAC.
    pub src_mac: MacAddr,
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// For [`EventKind::SockLb`]: the backend the frontend (`dst_ip`/`dst_port`) went to.
    pub service: Option<SockTranslation>,
}

/// A record of the ring could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// The record is shorter than `struct flow_event`.
    #[error("flow event of {0} bytes, expected at least {size}", size = size_of::<FlowEventRaw>())]
    Short(usize),
    /// A field holds a value this agent does not know (a newer datapath?).
    #[error("flow event with unknown {field} {value}")]
    Unknown {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u8,
    },
}

impl FlowEvent {
    /// Decodes one ring record.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventDecodeError> {
        if bytes.len() < size_of::<FlowEventRaw>() {
            return Err(EventDecodeError::Short(bytes.len()));
        }
        // SAFETY: `bytes` holds at least size_of::<FlowEventRaw>() bytes and every bit
        // pattern is a valid FlowEventRaw (integers and byte arrays); read_unaligned copes
        // with any alignment.
        let raw: FlowEventRaw =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEventRaw>()) };
        let mut event = Self::from_raw(&raw)?;
        if event.kind == EventKind::SockLb {
            if bytes.len() < size_of::<SockLbEventRaw>() {
                return Err(EventDecodeError::Short(bytes.len()));
            }
            // SAFETY: as above, for the longer record a socket translation is.
            let sock: SockLbEventRaw =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SockLbEventRaw>()) };
            event.service =
                addr_from_raw(raw.family, &sock.backend_addr).map(|backend| SockTranslation {
                    frontend_id: sock.frontend_id,
                    backend,
                    backend_port: u16::from_be_bytes(sock.backend_port),
                });
        }
        Ok(event)
    }

    /// Decodes a raw event.
    pub fn from_raw(raw: &FlowEventRaw) -> Result<Self, EventDecodeError> {
        let unknown = |field, value| EventDecodeError::Unknown { field, value };
        let kind = match raw.r#type {
            EVENT_DROP => EventKind::Drop,
            EVENT_POLICY_VERDICT => EventKind::PolicyVerdict,
            EVENT_SOCK_LB => EventKind::SockLb,
            other => return Err(unknown("type", other)),
        };
        let verdict = match raw.verdict {
            EVENT_FORWARDED => EventVerdict::Forwarded,
            EVENT_DROPPED => EventVerdict::Dropped,
            EVENT_AUDIT => EventVerdict::Audit,
            other => return Err(unknown("verdict", other)),
        };
        let drop_reason = match verdict {
            EventVerdict::Forwarded => None,
            EventVerdict::Dropped | EventVerdict::Audit => Some(
                DropReason::ALL
                    .into_iter()
                    .find(|r| *r as u8 == raw.drop_reason)
                    .ok_or_else(|| unknown("drop reason", raw.drop_reason))?,
            ),
        };
        let direction = match raw.direction {
            0 => None,
            other => Some(Direction::from_raw(other).ok_or_else(|| unknown("direction", other))?),
        };
        let point = match raw.obs_point {
            0 => None,
            OBS_FROM_ENDPOINT => Some(ObservationPoint::FromEndpoint),
            OBS_TO_ENDPOINT => Some(ObservationPoint::ToEndpoint),
            OBS_SOCK => Some(ObservationPoint::Socket),
            other => return Err(unknown("observation point", other)),
        };
        let match_type = match raw.match_type {
            MATCH_NONE => MatchType::None,
            MATCH_L3_L4 => MatchType::L3L4,
            MATCH_L3_ONLY => MatchType::L3Only,
            MATCH_L4_ONLY => MatchType::L4Only,
            MATCH_ALL => MatchType::All,
            MATCH_NOT_ENFORCED => MatchType::NotEnforced,
            other => return Err(unknown("match type", other)),
        };
        let flag = |bit: u8| raw.flags & bit != 0;
        Ok(FlowEvent {
            ktime_ns: raw.ktime_ns,
            ifindex: raw.ifindex,
            endpoint_id: raw.endpoint_id,
            src_identity: flag(EVENT_F_SRC_IDENTITY).then_some(raw.src_identity),
            dst_identity: flag(EVENT_F_DST_IDENTITY).then_some(raw.dst_identity),
            len: raw.len,
            ethertype: raw.ethertype,
            src_ip: addr_from_raw(raw.family, &raw.saddr),
            dst_ip: addr_from_raw(raw.family, &raw.daddr),
            protocol: raw.protocol,
            src_port: u16::from_be_bytes(raw.sport),
            dst_port: u16::from_be_bytes(raw.dport),
            kind,
            verdict,
            drop_reason,
            direction,
            point,
            match_type,
            tcp_flags: raw.tcp_flags,
            icmp_type: raw.icmp_type,
            icmp_code: raw.icmp_code,
            is_reply: flag(EVENT_F_REPLY_KNOWN).then_some(flag(EVENT_F_REPLY)),
            src_mac: MacAddr(raw.src_mac),
            dst_mac: MacAddr(raw.dst_mac),
            service: None,
        })
    }
}

/// The datapath's event counters, summed over CPUs (since the maps were created: they
/// survive agent restarts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// Events submitted to the ring.
    pub emitted: u64,
    /// Events lost because the ring was full.
    pub lost: u64,
}

/// The node's flow event ring and counters, opened from their pins: the reader side.
pub struct EventRing {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, EventCountersRaw>,
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing").finish_non_exhaustive()
    }
}

impl EventRing {
    /// Opens `kino_events` and `kino_event_counters` pinned in `pin_dir` (the datapath
    /// must have been loaded there). One reader per ring: a second one would steal events.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapOpError> {
        let ring =
            RingBuf::try_from(open_pinned(pin_dir, EVENTS_MAP)?).map_err(|source| MapOpError {
                map: EVENTS_MAP,
                op: "open as a ring buffer".into(),
                source,
            })?;
        let counters =
            PerCpuArray::try_from(open_pinned(pin_dir, EVENT_COUNTERS_MAP)?).map_err(|source| {
                MapOpError {
                    map: EVENT_COUNTERS_MAP,
                    op: "open".into(),
                    source,
                }
            })?;
        Ok(EventRing { ring, counters })
    }

    /// The next record, if one is ready (never blocks): its decoded event or why not.
    pub fn next_event(&mut self) -> Option<Result<FlowEvent, EventDecodeError>> {
        let item = self.ring.next()?;
        Some(FlowEvent::decode(&item))
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<EventCounters, MapOpError> {
        let values = self.counters.get(&0, 0).map_err(|source| MapOpError {
            map: EVENT_COUNTERS_MAP,
            op: "read".into(),
            source,
        })?;
        Ok(values
            .iter()
            .fold(EventCounters::default(), |sum, cpu| EventCounters {
                emitted: sum.emitted + cpu.emitted,
                lost: sum.lost + cpu.lost,
            }))
    }
}

impl AsFd for EventRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventRing {
    /// The ring's fd: readable (epoll) when records are ready.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::{DIR_INGRESS, FAMILY_IPV4, FAMILY_IPV6};
    use std::net::Ipv6Addr;

    fn raw() -> FlowEventRaw {
        let mut raw = FlowEventRaw {
            ktime_ns: 5_000_000_000,
            ifindex: 12,
            endpoint_id: 101,
            src_identity: 300,
            dst_identity: 301,
            len: 98,
            ethertype: 0x0800,
            family: FAMILY_IPV4,
            protocol: 6,
            sport: 43512u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            r#type: EVENT_DROP,
            verdict: EVENT_DROPPED,
            drop_reason: DropReason::PolicyDeniedIngress as u8,
            direction: DIR_INGRESS,
            obs_point: OBS_FROM_ENDPOINT,
            match_type: MATCH_NONE,
            tcp_flags: 0x02,
            flags: EVENT_F_SRC_IDENTITY | EVENT_F_DST_IDENTITY | EVENT_F_REPLY_KNOWN,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            ..FlowEventRaw::default()
        };
        raw.saddr[..4].copy_from_slice(&[10, 244, 0, 10]);
        raw.daddr[..4].copy_from_slice(&[10, 244, 0, 11]);
        raw
    }

    fn bytes(raw: &FlowEventRaw) -> Vec<u8> {
        // SAFETY: FlowEventRaw is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (raw as *const FlowEventRaw).cast::<u8>(),
                size_of::<FlowEventRaw>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn a_policy_drop_decodes() {
        let event = FlowEvent::decode(&bytes(&raw())).expect("decodes");
        assert_eq!(event.kind, EventKind::Drop);
        assert_eq!(event.verdict, EventVerdict::Dropped);
        assert_eq!(event.drop_reason, Some(DropReason::PolicyDeniedIngress));
        assert_eq!(event.direction, Some(Direction::Ingress));
        assert_eq!(event.point, Some(ObservationPoint::FromEndpoint));
        assert_eq!(event.src_ip, Some("10.244.0.10".parse().unwrap()));
        assert_eq!(event.dst_ip, Some("10.244.0.11".parse().unwrap()));
        assert_eq!((event.src_port, event.dst_port), (43512, 80));
        assert_eq!(
            (event.src_identity, event.dst_identity),
            (Some(300), Some(301))
        );
        assert_eq!(event.is_reply, Some(false));
        assert_eq!(event.src_mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn unknown_identities_and_reply_state_stay_unknown() {
        let mut raw = raw();
        raw.flags = EVENT_F_SRC_IDENTITY;
        raw.r#type = EVENT_POLICY_VERDICT;
        raw.verdict = EVENT_FORWARDED;
        let event = FlowEvent::from_raw(&raw).expect("decodes");
        assert_eq!(event.src_identity, Some(300));
        assert_eq!(event.dst_identity, None);
        assert_eq!(event.is_reply, None);
        assert_eq!(event.drop_reason, None, "forwarded: no reason");
        raw.family = 0;
        assert_eq!(FlowEvent::from_raw(&raw).unwrap().src_ip, None);
        raw.family = FAMILY_IPV6;
        raw.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            FlowEvent::from_raw(&raw).unwrap().src_ip,
            Some("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn a_socket_translation_decodes_with_its_backend() {
        let mut sock = crate::datapath::abi::SockLbEventRaw {
            flow: raw(),
            frontend_id: 7,
            backend_port: 8080u16.to_be_bytes(),
            ..Default::default()
        };
        sock.flow.r#type = EVENT_SOCK_LB;
        sock.flow.verdict = EVENT_FORWARDED;
        sock.flow.obs_point = OBS_SOCK;
        sock.backend_addr[..4].copy_from_slice(&[10, 0, 2, 7]);
        // SAFETY: plain old data without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&sock as *const SockLbEventRaw).cast::<u8>(),
                size_of::<SockLbEventRaw>(),
            )
        };
        let event = FlowEvent::decode(bytes).expect("decodes");
        assert_eq!(event.kind, EventKind::SockLb);
        assert_eq!(event.point, Some(ObservationPoint::Socket));
        assert_eq!(
            event.service,
            Some(SockTranslation {
                frontend_id: 7,
                backend: "10.0.2.7".parse().unwrap(),
                backend_port: 8080
            })
        );
        // A record cut after the flow part is short, not a guess.
        assert_eq!(
            FlowEvent::decode(&bytes[..size_of::<FlowEventRaw>()]),
            Err(EventDecodeError::Short(size_of::<FlowEventRaw>()))
        );
    }

    #[test]
    fn bad_records_are_errors_not_guesses() {
        assert_eq!(
            FlowEvent::decode(&[0u8; 10]),
            Err(EventDecodeError::Short(10))
        );
        let mut bad = raw();
        bad.r#type = 99;
        assert!(FlowEvent::from_raw(&bad).is_err());
        let mut bad = raw();
        bad.drop_reason = 77;
        assert!(FlowEvent::from_raw(&bad).is_err());
    }
}
