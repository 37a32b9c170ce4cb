//! Flow events (issue #6), kernel side: the `kino_events` BPF ring buffer the datapath
//! reports drops and new connections' policy verdicts to, its per-CPU
//! `kino_event_counters` (events emitted, events lost because the ring was full), the
//! `#[repr(C)]` mirror of `struct flow_event` (checked against the object's BTF by the
//! tests) and its decoded form [`FlowEvent`]. The flow observer ([`crate::flows`]) reads them
//! through [`EventRing`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};

use super::maps::{DropReason, FAMILY_IPV4, FAMILY_IPV6, MapOpError};
use super::policy::{DIR_EGRESS, DIR_INGRESS, Direction};
use crate::netlink::MacAddr;

/// Name of the ring buffer of flow events (pinned under the node's pin directory).
pub const EVENTS_MAP: &str = "kino_events";
/// Name of the per-CPU counters of emitted and lost events.
pub const EVENT_COUNTERS_MAP: &str = "kino_event_counters";
/// `KINO_EVENTS_RING_BYTES`: default size of the ring buffer.
pub const EVENTS_RING_BYTES: u32 = 4_194_304;

/// `KINO_EVENT_DROP`.
pub const EVENT_DROP: u8 = 1;
/// `KINO_EVENT_POLICY_VERDICT`.
pub const EVENT_POLICY_VERDICT: u8 = 2;
/// `KINO_EVENT_FORWARDED`.
pub const EVENT_FORWARDED: u8 = 1;
/// `KINO_EVENT_DROPPED`.
pub const EVENT_DROPPED: u8 = 2;
/// `KINO_EVENT_AUDIT`.
pub const EVENT_AUDIT: u8 = 3;
/// `KINO_OBS_FROM_ENDPOINT`.
pub const OBS_FROM_ENDPOINT: u8 = 1;
/// `KINO_OBS_TO_ENDPOINT`.
pub const OBS_TO_ENDPOINT: u8 = 2;
/// `KINO_MATCH_NONE`.
pub const MATCH_NONE: u8 = 0;
/// `KINO_MATCH_L3_L4`.
pub const MATCH_L3_L4: u8 = 1;
/// `KINO_MATCH_L3_ONLY`.
pub const MATCH_L3_ONLY: u8 = 2;
/// `KINO_MATCH_L4_ONLY`.
pub const MATCH_L4_ONLY: u8 = 3;
/// `KINO_MATCH_ALL`.
pub const MATCH_ALL: u8 = 4;
/// `KINO_MATCH_NOT_ENFORCED`.
pub const MATCH_NOT_ENFORCED: u8 = 5;
/// `KINO_EVENT_F_SRC_IDENTITY`: `src_identity` is the datapath's.
pub const EVENT_F_SRC_IDENTITY: u8 = 1 << 0;
/// `KINO_EVENT_F_DST_IDENTITY`: `dst_identity` is the datapath's.
pub const EVENT_F_DST_IDENTITY: u8 = 1 << 1;
/// `KINO_EVENT_F_REPLY_KNOWN`: conntrack classified the packet.
pub const EVENT_F_REPLY_KNOWN: u8 = 1 << 2;
/// `KINO_EVENT_F_REPLY`: ... as a reply.
pub const EVENT_F_REPLY: u8 = 1 << 3;

/// `struct flow_event`: one record of `kino_events`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEventRaw {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Local endpoint of the observation point (0: unknown lxc).
    pub endpoint_id: u32,
    /// Source identity (with [`EVENT_F_SRC_IDENTITY`]).
    pub src_identity: u32,
    /// Destination identity (with [`EVENT_F_DST_IDENTITY`]).
    pub dst_identity: u32,
    /// Packet length.
    pub len: u32,
    /// Ethertype, host order.
    pub ethertype: u16,
    /// `KINO_FAMILY_*`, 0 when not IP.
    pub family: u8,
    /// IP protocol.
    pub protocol: u8,
    /// Source address (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port, network order as stored (the two bytes in order).
    pub sport: [u8; 2],
    /// Destination port, network order as stored.
    pub dport: [u8; 2],
    /// `KINO_EVENT_*` type.
    pub r#type: u8,
    /// Verdict.
    pub verdict: u8,
    /// `KINO_DROP_*`.
    pub drop_reason: u8,
    /// `KINO_DIR_*`, 0 for none.
    pub direction: u8,
    /// `KINO_OBS_*`.
    pub obs_point: u8,
    /// `KINO_MATCH_*`.
    pub match_type: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// `KINO_EVENT_F_*`.
    pub flags: u8,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 6],
}

/// `struct event_counters`: one CPU's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventCountersRaw {
    /// Events submitted to the ring.
    pub emitted: u64,
    /// Events lost: the ring was full.
    pub lost: u64,
}

// SAFETY: plain `#[repr(C)]` integers and byte arrays with no padding (checked against the
// BTF by the tests and by the size asserts below).
unsafe impl aya::Pod for FlowEventRaw {}
// SAFETY: as above.
unsafe impl aya::Pod for EventCountersRaw {}

const _: () = assert!(size_of::<FlowEventRaw>() == 96);
const _: () = assert!(size_of::<EventCountersRaw>() == 16);

/// What kind of event the datapath reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A packet was dropped.
    Drop,
    /// A new connection was allowed at an enforcement point.
    PolicyVerdict,
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

fn addr(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
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
        Self::from_raw(&raw)
    }

    /// Decodes a raw event.
    pub fn from_raw(raw: &FlowEventRaw) -> Result<Self, EventDecodeError> {
        let unknown = |field, value| EventDecodeError::Unknown { field, value };
        let kind = match raw.r#type {
            EVENT_DROP => EventKind::Drop,
            EVENT_POLICY_VERDICT => EventKind::PolicyVerdict,
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
            DIR_INGRESS => Some(Direction::Ingress),
            DIR_EGRESS => Some(Direction::Egress),
            other => return Err(unknown("direction", other)),
        };
        let point = match raw.obs_point {
            0 => None,
            OBS_FROM_ENDPOINT => Some(ObservationPoint::FromEndpoint),
            OBS_TO_ENDPOINT => Some(ObservationPoint::ToEndpoint),
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
            src_ip: addr(raw.family, &raw.saddr),
            dst_ip: addr(raw.family, &raw.daddr),
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

fn open_pin(pin_dir: &Path, name: &'static str) -> Result<Map, MapOpError> {
    let path = pin_dir.join(name);
    let op = |what: String| {
        move |source| MapOpError {
            map: name,
            op: what,
            source,
        }
    };
    let data = MapData::from_pin(&path).map_err(op(format!("open pin {}", path.display())))?;
    Map::from_map_data(data).map_err(op("open".to_owned()))
}

impl EventRing {
    /// Opens `kino_events` and `kino_event_counters` pinned in `pin_dir` (the datapath
    /// must have been loaded there). One reader per ring: a second one would steal events.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapOpError> {
        let ring =
            RingBuf::try_from(open_pin(pin_dir, EVENTS_MAP)?).map_err(|source| MapOpError {
                map: EVENTS_MAP,
                op: "open as a ring buffer".into(),
                source,
            })?;
        let counters =
            PerCpuArray::try_from(open_pin(pin_dir, EVENT_COUNTERS_MAP)?).map_err(|source| {
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

    #[test]
    fn rust_mirrors_match_the_object_btf() {
        use crate::datapath::maps::tests::{assert_layout, object_btf};
        use std::mem::offset_of;
        let structs = object_btf();
        assert_layout(
            &structs,
            "flow_event",
            size_of::<FlowEventRaw>(),
            &[
                ("ktime_ns", offset_of!(FlowEventRaw, ktime_ns)),
                ("ifindex", offset_of!(FlowEventRaw, ifindex)),
                ("endpoint_id", offset_of!(FlowEventRaw, endpoint_id)),
                ("src_identity", offset_of!(FlowEventRaw, src_identity)),
                ("dst_identity", offset_of!(FlowEventRaw, dst_identity)),
                ("len", offset_of!(FlowEventRaw, len)),
                ("ethertype", offset_of!(FlowEventRaw, ethertype)),
                ("family", offset_of!(FlowEventRaw, family)),
                ("protocol", offset_of!(FlowEventRaw, protocol)),
                ("saddr", offset_of!(FlowEventRaw, saddr)),
                ("daddr", offset_of!(FlowEventRaw, daddr)),
                ("sport", offset_of!(FlowEventRaw, sport)),
                ("dport", offset_of!(FlowEventRaw, dport)),
                ("type", offset_of!(FlowEventRaw, r#type)),
                ("verdict", offset_of!(FlowEventRaw, verdict)),
                ("drop_reason", offset_of!(FlowEventRaw, drop_reason)),
                ("direction", offset_of!(FlowEventRaw, direction)),
                ("obs_point", offset_of!(FlowEventRaw, obs_point)),
                ("match_type", offset_of!(FlowEventRaw, match_type)),
                ("tcp_flags", offset_of!(FlowEventRaw, tcp_flags)),
                ("icmp_type", offset_of!(FlowEventRaw, icmp_type)),
                ("icmp_code", offset_of!(FlowEventRaw, icmp_code)),
                ("flags", offset_of!(FlowEventRaw, flags)),
                ("src_mac", offset_of!(FlowEventRaw, src_mac)),
                ("dst_mac", offset_of!(FlowEventRaw, dst_mac)),
                ("pad", offset_of!(FlowEventRaw, pad)),
            ],
        );
        assert_layout(
            &structs,
            "event_counters",
            size_of::<EventCountersRaw>(),
            &[
                ("emitted", offset_of!(EventCountersRaw, emitted)),
                ("lost", offset_of!(EventCountersRaw, lost)),
            ],
        );
    }

    #[test]
    fn header_constants_match() {
        let header = include_str!("../../bpf/kino_maps.h");
        let define = |name: &str| -> String {
            let line = header
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("#define {name} not in kino_maps.h"));
            let value = line[format!("#define {name} ").len()..]
                .split("/*")
                .next()
                .expect("a value")
                .trim()
                .to_owned();
            match value
                .strip_prefix("(1U <<")
                .and_then(|t| t.strip_suffix(')'))
            {
                Some(shift) => (1u64 << shift.trim().parse::<u32>().expect("shift")).to_string(),
                None => value,
            }
        };
        for (name, value) in [
            ("KINO_EVENTS_RING_BYTES", u64::from(EVENTS_RING_BYTES)),
            ("KINO_EVENT_DROP", EVENT_DROP.into()),
            ("KINO_EVENT_POLICY_VERDICT", EVENT_POLICY_VERDICT.into()),
            ("KINO_EVENT_FORWARDED", EVENT_FORWARDED.into()),
            ("KINO_EVENT_DROPPED", EVENT_DROPPED.into()),
            ("KINO_EVENT_AUDIT", EVENT_AUDIT.into()),
            ("KINO_OBS_FROM_ENDPOINT", OBS_FROM_ENDPOINT.into()),
            ("KINO_OBS_TO_ENDPOINT", OBS_TO_ENDPOINT.into()),
            ("KINO_MATCH_NONE", MATCH_NONE.into()),
            ("KINO_MATCH_L3_L4", MATCH_L3_L4.into()),
            ("KINO_MATCH_L3_ONLY", MATCH_L3_ONLY.into()),
            ("KINO_MATCH_L4_ONLY", MATCH_L4_ONLY.into()),
            ("KINO_MATCH_ALL", MATCH_ALL.into()),
            ("KINO_MATCH_NOT_ENFORCED", MATCH_NOT_ENFORCED.into()),
            ("KINO_EVENT_F_SRC_IDENTITY", EVENT_F_SRC_IDENTITY.into()),
            ("KINO_EVENT_F_DST_IDENTITY", EVENT_F_DST_IDENTITY.into()),
            ("KINO_EVENT_F_REPLY_KNOWN", EVENT_F_REPLY_KNOWN.into()),
            ("KINO_EVENT_F_REPLY", EVENT_F_REPLY.into()),
        ] {
            assert_eq!(define(name), value.to_string(), "{name}");
        }
    }
}
