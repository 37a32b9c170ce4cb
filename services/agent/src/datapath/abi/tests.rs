//! Proves the ABI instead of trusting it: every `#[repr(C)]` mirror against the struct of the
//! same name in the compiled object's BTF (size, every member's offset, no member left
//! unmirrored), every constant against its `#define` in `bpf/kino_maps.h`, and every map of
//! the object against the names, key and value sizes and capacities this module gives it.

use std::collections::HashMap;
use std::mem::offset_of;

use super::*;

/// `bpf/kino_maps.h`, the header this module mirrors.
const HEADER: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/kino_maps.h"));

/// LPM trie keys start with `prefixlen`, which the Rust mirrors leave to aya's
/// `lpm_trie::Key`: their members sit 4 bytes on.
const LPM: usize = 4;

/// A minimal reader of BTF (the kernel's format, little endian): struct and union names,
/// sizes and member offsets — all this test needs.
mod btf {
    use std::collections::HashMap;

    pub struct Member {
        pub name: String,
        pub bit_offset: u32,
    }

    pub struct Composite {
        pub size: u32,
        pub members: Vec<Member>,
    }

    fn u32_at(data: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
    }

    fn string_at(strings: &[u8], offset: u32) -> String {
        let tail = &strings[offset as usize..];
        let end = tail.iter().position(|&b| b == 0).expect("NUL-terminated");
        String::from_utf8_lossy(&tail[..end]).into_owned()
    }

    /// Named structs of the `.BTF` section `data`, by name.
    pub fn structs(data: &[u8]) -> HashMap<String, Composite> {
        assert_eq!(u16::from_le_bytes([data[0], data[1]]), 0xeb9f, "BTF magic");
        let header_len = u32_at(data, 4) as usize;
        let (type_off, type_len) = (u32_at(data, 8) as usize, u32_at(data, 12) as usize);
        let (str_off, str_len) = (u32_at(data, 16) as usize, u32_at(data, 20) as usize);
        let types = &data[header_len + type_off..header_len + type_off + type_len];
        let strings = &data[header_len + str_off..header_len + str_off + str_len];
        let mut found = HashMap::new();
        let mut at = 0;
        while at < types.len() {
            let name_off = u32_at(types, at);
            let info = u32_at(types, at + 4);
            let size = u32_at(types, at + 8);
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kflag = info >> 31;
            match kind {
                // struct, union: vlen members of {name_off, type, offset}
                4 | 5 => {
                    let members = (0..vlen)
                        .map(|i| {
                            let m = at + i * 12;
                            let offset = u32_at(types, m + 8);
                            Member {
                                name: string_at(strings, u32_at(types, m)),
                                bit_offset: if kflag == 1 {
                                    offset & 0xff_ffff
                                } else {
                                    offset
                                },
                            }
                        })
                        .collect();
                    if kind == 4 && name_off != 0 {
                        found.insert(string_at(strings, name_off), Composite { size, members });
                    }
                    at += vlen * 12;
                }
                1 | 14 | 17 => at += 4,     // int, var, decl_tag
                3 => at += 12,              // array
                6 | 13 => at += vlen * 8,   // enum, func_proto
                15 | 19 => at += vlen * 12, // datasec, enum64
                2 | 7..=12 | 16 | 18 => {}  // no trailing data
                other => panic!("unknown BTF kind {other}"),
            }
        }
        found
    }
}

fn object_btf() -> HashMap<String, btf::Composite> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(DATAPATH_OBJECT).expect("the embedded object is ELF");
    let section = file
        .section_by_name(".BTF")
        .expect("the object has BTF (-g)");
    btf::structs(section.data().expect("BTF section data"))
}

fn assert_layout(
    structs: &HashMap<String, btf::Composite>,
    name: &str,
    size: usize,
    members: &[(&str, usize)],
) {
    let found = structs
        .get(name)
        .unwrap_or_else(|| panic!("struct {name} not in the object's BTF"));
    assert_eq!(found.size as usize, size, "size of struct {name}");
    let named: Vec<_> = found
        .members
        .iter()
        .filter(|m| !m.name.is_empty())
        .collect();
    assert_eq!(
        named.len() + found.members.iter().filter(|m| m.name.is_empty()).count(),
        found.members.len()
    );
    for (member, offset) in members {
        let in_btf = found
            .members
            .iter()
            .find(|m| m.name == *member)
            .unwrap_or_else(|| panic!("{name}.{member} not in the BTF"));
        assert_eq!(
            in_btf.bit_offset as usize,
            offset * 8,
            "offset of {name}.{member}"
        );
    }
    let mirrored: Vec<&str> = members.iter().map(|(m, _)| *m).collect();
    for member in &found.members {
        assert!(
            member.name.is_empty() || mirrored.contains(&member.name.as_str()),
            "{name}.{} is in the C header but not mirrored in Rust",
            member.name
        );
    }
}

/// The value of `#define name` in the header, without its comment.
fn define(name: &str) -> &'static str {
    let prefix = format!("#define {name} ");
    let line = HEADER
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("#define {name} not in kino_maps.h"));
    line[prefix.len()..]
        .split("/*")
        .next()
        .expect("a value")
        .trim()
}

/// The bit a flag `#define name (1U << n)` stands for.
fn define_bit(name: &str) -> u32 {
    let text = define(name);
    let shift: u32 = text
        .strip_prefix("(1U <<")
        .and_then(|t| t.strip_suffix(')'))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} = {text}: expected (1U << n)"));
    1 << shift
}

/// Asserts each `(#define, value)`; large numbers are written without separators in C.
fn assert_defines(defines: &[(&str, u64)]) {
    for (name, value) in defines {
        assert_eq!(define(name), value.to_string(), "{name}");
    }
}

/// Asserts each `(#define, bit)` of a flag.
fn assert_flags(flags: &[(&str, u32)]) {
    for (name, bit) in flags {
        assert_eq!(define_bit(name), *bit, "{name}");
    }
}

#[test]
fn endpoint_mirrors_match_the_object_btf() {
    let structs = object_btf();
    assert_layout(
        &structs,
        "endpoint_key",
        size_of::<EndpointKeyRaw>(),
        &[
            ("family", offset_of!(EndpointKeyRaw, family)),
            ("pad", offset_of!(EndpointKeyRaw, pad)),
        ],
    );
    // The anonymous union {ip4, ip6} is `addr` at offset 0.
    let key = &structs["endpoint_key"];
    assert_eq!(key.members[0].name, "");
    assert_eq!(
        key.members[0].bit_offset as usize,
        offset_of!(EndpointKeyRaw, addr) * 8
    );
    assert_layout(
        &structs,
        "endpoint_info",
        size_of::<EndpointInfoRaw>(),
        &[
            ("ifindex", offset_of!(EndpointInfoRaw, ifindex)),
            ("endpoint_id", offset_of!(EndpointInfoRaw, endpoint_id)),
            ("identity", offset_of!(EndpointInfoRaw, identity)),
            ("flags", offset_of!(EndpointInfoRaw, flags)),
            ("ipv4", offset_of!(EndpointInfoRaw, ipv4)),
            ("ipv6", offset_of!(EndpointInfoRaw, ipv6)),
            ("mac", offset_of!(EndpointInfoRaw, mac)),
            ("node_mac", offset_of!(EndpointInfoRaw, node_mac)),
        ],
    );
    assert_layout(
        &structs,
        "endpoint_metrics",
        size_of::<EndpointMetricsRaw>(),
        &[
            (
                "from_container_packets",
                offset_of!(EndpointMetricsRaw, from_container_packets),
            ),
            (
                "from_container_bytes",
                offset_of!(EndpointMetricsRaw, from_container_bytes),
            ),
            (
                "to_container_packets",
                offset_of!(EndpointMetricsRaw, to_container_packets),
            ),
            (
                "to_container_bytes",
                offset_of!(EndpointMetricsRaw, to_container_bytes),
            ),
            (
                "local_redirect_packets",
                offset_of!(EndpointMetricsRaw, local_redirect_packets),
            ),
            (
                "to_stack_packets",
                offset_of!(EndpointMetricsRaw, to_stack_packets),
            ),
            ("drops", offset_of!(EndpointMetricsRaw, drops)),
        ],
    );
}

#[test]
fn ipcache_mirrors_match_the_object_btf() {
    let structs = object_btf();
    assert_layout(
        &structs,
        "ipcache_key",
        LPM + size_of::<IpcacheKeyRaw>(),
        &[
            ("prefixlen", 0),
            ("family", LPM + offset_of!(IpcacheKeyRaw, family)),
            ("pad", LPM + offset_of!(IpcacheKeyRaw, pad)),
            ("addr", LPM + offset_of!(IpcacheKeyRaw, addr)),
        ],
    );
    assert_layout(
        &structs,
        "ipcache_entry",
        size_of::<IpcacheEntryRaw>(),
        &[
            ("identity", offset_of!(IpcacheEntryRaw, identity)),
            ("flags", offset_of!(IpcacheEntryRaw, flags)),
            (
                "tunnel_endpoint",
                offset_of!(IpcacheEntryRaw, tunnel_endpoint),
            ),
        ],
    );
}

#[test]
fn policy_mirrors_match_the_object_btf() {
    let structs = object_btf();
    assert_layout(
        &structs,
        "policy_key",
        LPM + size_of::<PolicyKeyRaw>(),
        &[
            ("prefixlen", 0),
            ("endpoint_id", LPM + offset_of!(PolicyKeyRaw, endpoint_id)),
            (
                "remote_identity",
                LPM + offset_of!(PolicyKeyRaw, remote_identity),
            ),
            ("direction", LPM + offset_of!(PolicyKeyRaw, direction)),
            ("protocol", LPM + offset_of!(PolicyKeyRaw, protocol)),
            ("dport", LPM + offset_of!(PolicyKeyRaw, dport)),
            ("pad", LPM + offset_of!(PolicyKeyRaw, pad)),
        ],
    );
    assert_layout(
        &structs,
        "policy_entry",
        size_of::<PolicyEntryRaw>(),
        &[
            ("verdict", offset_of!(PolicyEntryRaw, verdict)),
            ("pad", offset_of!(PolicyEntryRaw, pad)),
            ("port", offset_of!(PolicyEntryRaw, port)),
            ("end_port", offset_of!(PolicyEntryRaw, end_port)),
            ("pad2", offset_of!(PolicyEntryRaw, pad2)),
            ("packets", offset_of!(PolicyEntryRaw, packets)),
            ("bytes", offset_of!(PolicyEntryRaw, bytes)),
        ],
    );
    assert_layout(
        &structs,
        "endpoint_policy",
        size_of::<EndpointPolicyRaw>(),
        &[
            ("flags", offset_of!(EndpointPolicyRaw, flags)),
            ("generation", offset_of!(EndpointPolicyRaw, generation)),
            ("revision", offset_of!(EndpointPolicyRaw, revision)),
        ],
    );
}

#[test]
fn conntrack_mirrors_match_the_object_btf() {
    let structs = object_btf();
    assert_layout(
        &structs,
        "ct_key",
        size_of::<CtKeyRaw>(),
        &[
            ("saddr", offset_of!(CtKeyRaw, saddr)),
            ("daddr", offset_of!(CtKeyRaw, daddr)),
            ("sport", offset_of!(CtKeyRaw, sport)),
            ("dport", offset_of!(CtKeyRaw, dport)),
            ("protocol", offset_of!(CtKeyRaw, protocol)),
            ("family", offset_of!(CtKeyRaw, family)),
            ("direction", offset_of!(CtKeyRaw, direction)),
            ("pad", offset_of!(CtKeyRaw, pad)),
        ],
    );
    assert_layout(
        &structs,
        "ct_entry",
        size_of::<CtEntryRaw>(),
        &[
            ("tx_packets", offset_of!(CtEntryRaw, tx_packets)),
            ("tx_bytes", offset_of!(CtEntryRaw, tx_bytes)),
            ("rx_packets", offset_of!(CtEntryRaw, rx_packets)),
            ("rx_bytes", offset_of!(CtEntryRaw, rx_bytes)),
            ("expires", offset_of!(CtEntryRaw, expires)),
            ("flags", offset_of!(CtEntryRaw, flags)),
            ("src_identity", offset_of!(CtEntryRaw, src_identity)),
            ("endpoint_id", offset_of!(CtEntryRaw, endpoint_id)),
            (
                "policy_generation",
                offset_of!(CtEntryRaw, policy_generation),
            ),
            ("remote_identity", offset_of!(CtEntryRaw, remote_identity)),
        ],
    );
}

#[test]
fn event_mirrors_match_the_object_btf() {
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
fn node_config_mirrors_match_the_object_btf() {
    let structs = object_btf();
    assert_layout(
        &structs,
        "node_config",
        size_of::<NodeConfigRaw>(),
        &[
            ("routing_mode", offset_of!(NodeConfigRaw, routing_mode)),
            ("vxlan_ifindex", offset_of!(NodeConfigRaw, vxlan_ifindex)),
        ],
    );
}

#[test]
fn node_config_constants_match_the_header() {
    assert_defines(&[
        ("KINO_ROUTING_NONE", ROUTING_NONE.into()),
        ("KINO_ROUTING_TUNNEL", ROUTING_TUNNEL.into()),
        ("KINO_ROUTING_NATIVE", ROUTING_NATIVE.into()),
        ("KINO_IDENTITY_CLUSTER_MIN", IDENTITY_CLUSTER_MIN.into()),
        ("KINO_TUNNEL_TTL", TUNNEL_TTL.into()),
    ]);
}

#[test]
fn endpoint_constants_match_the_header() {
    assert_defines(&[
        ("KINO_MAX_ENDPOINTS", MAX_ENDPOINTS.into()),
        ("KINO_FAMILY_IPV4", FAMILY_IPV4.into()),
        ("KINO_FAMILY_IPV6", FAMILY_IPV6.into()),
        ("KINO_DROP_REASONS", DROP_REASONS as u64),
    ]);
    assert_flags(&[("KINO_EP_F_IPV6", EP_F_IPV6)]);
    for reason in DropReason::ALL {
        assert_eq!(
            define(&format!("KINO_DROP_{}", reason.as_str())),
            (reason as usize).to_string(),
            "{reason:?}"
        );
    }
}

#[test]
fn ipcache_constants_match_the_header() {
    assert_defines(&[
        ("KINO_IPCACHE_MAX_ENTRIES", IPCACHE_MAX_ENTRIES.into()),
        ("KINO_IDENTITY_UNKNOWN", IDENTITY_UNKNOWN.into()),
        ("KINO_IDENTITY_HOST", IDENTITY_HOST.into()),
        ("KINO_IDENTITY_WORLD", IDENTITY_WORLD.into()),
        ("KINO_IDENTITY_REMOTE_NODE", IDENTITY_REMOTE_NODE.into()),
        ("KINO_IPCACHE_PREFIX_STATIC", IPCACHE_PREFIX_STATIC.into()),
    ]);
    assert_flags(&[("KINO_IPCACHE_F_TUNNEL_IPV6", IPCACHE_F_TUNNEL_IPV6)]);
}

#[test]
fn policy_constants_match_the_header() {
    assert_defines(&[
        ("KINO_POLICY_MAX_ENTRIES", POLICY_MAX_ENTRIES.into()),
        ("KINO_MAX_ENDPOINT_ID", MAX_ENDPOINT_ID.into()),
        ("KINO_DIR_INGRESS", DIR_INGRESS.into()),
        ("KINO_DIR_EGRESS", DIR_EGRESS.into()),
        ("KINO_VERDICT_ALLOW", VERDICT_ALLOW.into()),
        ("KINO_VERDICT_DENY", VERDICT_DENY.into()),
        (
            "KINO_POLICY_PREFIX_ANY_PROTO",
            POLICY_PREFIX_ANY_PROTO.into(),
        ),
        ("KINO_POLICY_PREFIX_ANY_PORT", POLICY_PREFIX_ANY_PORT.into()),
        ("KINO_POLICY_PREFIX_FULL", POLICY_PREFIX_FULL.into()),
    ]);
    assert_flags(&[
        ("KINO_POLICY_F_INGRESS", POLICY_F_INGRESS),
        ("KINO_POLICY_F_EGRESS", POLICY_F_EGRESS),
    ]);
    for direction in Direction::BOTH {
        assert_eq!(Direction::from_raw(direction.raw()), Some(direction));
    }
    assert_eq!(Direction::from_raw(0), None);
}

#[test]
fn conntrack_constants_match_the_header() {
    assert_defines(&[("KINO_CT_MAX_ENTRIES", CT_MAX_ENTRIES.into())]);
    assert_flags(&[
        ("KINO_CT_F_TX_CLOSING", CT_F_TX_CLOSING),
        ("KINO_CT_F_RX_CLOSING", CT_F_RX_CLOSING),
        ("KINO_CT_F_SEEN_NON_SYN", CT_F_SEEN_NON_SYN),
    ]);
}

#[test]
fn event_constants_match_the_header() {
    assert_defines(&[
        ("KINO_EVENTS_RING_BYTES", EVENTS_RING_BYTES.into()),
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
    ]);
    assert_flags(&[
        ("KINO_EVENT_F_SRC_IDENTITY", EVENT_F_SRC_IDENTITY.into()),
        ("KINO_EVENT_F_DST_IDENTITY", EVENT_F_DST_IDENTITY.into()),
        ("KINO_EVENT_F_REPLY_KNOWN", EVENT_F_REPLY_KNOWN.into()),
        ("KINO_EVENT_F_REPLY", EVENT_F_REPLY.into()),
    ]);
}

/// The object's map definitions, by name.
fn object_maps() -> HashMap<String, aya_obj::Map> {
    aya_obj::Object::parse(DATAPATH_OBJECT)
        .expect("the embedded object parses")
        .maps
}

#[test]
fn all_maps_are_exactly_the_pinned_maps_of_the_object() {
    // The loader adopts, checks and removes pins by this list: a pinned map missing from it
    // would be left behind, a name in it that the object does not pin would never be found.
    let mut pinned: Vec<String> = object_maps()
        .into_iter()
        .filter(|(_, map)| map.pinning() == aya_obj::maps::PinningType::ByName)
        .map(|(name, _)| name)
        .collect();
    pinned.sort();
    let mut listed: Vec<String> = ALL_MAPS.iter().map(|m| (*m).to_owned()).collect();
    listed.sort();
    assert_eq!(pinned, listed);
}

#[test]
fn each_map_of_the_object_has_the_mirrored_key_and_value() {
    // The BTF test proves the structs; this proves each map is declared with them.
    let maps = object_maps();
    let u32_size = size_of::<u32>();
    for (name, key, value) in [
        (
            ENDPOINTS_MAP,
            size_of::<EndpointKeyRaw>(),
            size_of::<EndpointInfoRaw>(),
        ),
        (LXC_MAP, u32_size, size_of::<EndpointInfoRaw>()),
        (METRICS_MAP, u32_size, size_of::<EndpointMetricsRaw>()),
        (
            IPCACHE_MAP,
            LPM + size_of::<IpcacheKeyRaw>(),
            size_of::<IpcacheEntryRaw>(),
        ),
        (
            POLICY_MAP,
            LPM + size_of::<PolicyKeyRaw>(),
            size_of::<PolicyEntryRaw>(),
        ),
        (EP_POLICY_MAP, u32_size, size_of::<EndpointPolicyRaw>()),
        (CT_MAP, size_of::<CtKeyRaw>(), size_of::<CtEntryRaw>()),
        (EVENTS_MAP, 0, 0),
        (EVENT_COUNTERS_MAP, u32_size, size_of::<EventCountersRaw>()),
        (NODE_CONFIG_MAP, u32_size, size_of::<NodeConfigRaw>()),
    ] {
        let map = maps
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the object"));
        assert_eq!(map.key_size() as usize, key, "key size of {name}");
        assert_eq!(map.value_size() as usize, value, "value size of {name}");
    }
}

#[test]
fn sized_maps_default_to_the_capacities_the_object_declares() {
    let maps = object_maps();
    for (name, capacity) in MapCapacities::default().sized() {
        assert!(ALL_MAPS.contains(&name), "{name} is a pinned map");
        assert_eq!(maps[name].max_entries(), capacity, "capacity of {name}");
    }
    assert_eq!(maps[ENDPOINTS_MAP].max_entries(), MAX_ENDPOINTS);
    assert_eq!(maps[EP_POLICY_MAP].max_entries(), MAX_ENDPOINT_ID + 1);
}

#[test]
fn addresses_round_trip_through_the_raw_union() {
    for text in ["10.1.2.3", "0.0.0.0", "fd00::5", "::1"] {
        let addr: std::net::IpAddr = text.parse().expect("an address");
        let (family, raw) = addr_to_raw(addr);
        assert_eq!(addr_from_raw(family, &raw), Some(addr), "{text}");
    }
    let (family, raw) = addr_to_raw("10.1.2.3".parse().expect("v4"));
    assert_eq!(family, FAMILY_IPV4);
    assert_eq!(raw[..5], [10, 1, 2, 3, 0]);
    assert_eq!(addr_from_raw(9, &raw), None, "unknown family");
}

/// The load balancer's mirrors and maps (issue #14), against the socket LB object.
mod lb;
