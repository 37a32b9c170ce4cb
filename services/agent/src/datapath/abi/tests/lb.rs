//! The load balancer's ABI proven against `sock_lb.bpf.o`: every LB struct's layout in its
//! BTF, the constants in `kino_maps.h`, and its pinned maps — exactly [`LB_MAPS`] plus the
//! datapath's event maps it reports to (and the other datapath maps its shared header
//! declares, reused by pin name) — with the mirrored key and value sizes.

use std::collections::HashMap;
use std::mem::offset_of;

use super::*;

fn lb_btf() -> HashMap<String, btf::Composite> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(SOCK_LB_OBJECT).expect("the embedded object is ELF");
    let section = file
        .section_by_name(".BTF")
        .expect("the object has BTF (-g)");
    btf::structs(section.data().expect("BTF section data"))
}

#[test]
fn lb_mirrors_match_the_object_btf() {
    let s = lb_btf();
    assert_layout(
        &s,
        "lb_frontend_key",
        size_of::<LbFrontendKeyRaw>(),
        &[
            ("addr", offset_of!(LbFrontendKeyRaw, addr)),
            ("port", offset_of!(LbFrontendKeyRaw, port)),
            ("protocol", offset_of!(LbFrontendKeyRaw, protocol)),
            ("family", offset_of!(LbFrontendKeyRaw, family)),
        ],
    );
    assert_layout(
        &s,
        "lb_frontend",
        size_of::<LbFrontendRaw>(),
        &[
            ("id", offset_of!(LbFrontendRaw, id)),
            ("count", offset_of!(LbFrontendRaw, count)),
            ("total_weight", offset_of!(LbFrontendRaw, total_weight)),
            (
                "affinity_timeout",
                offset_of!(LbFrontendRaw, affinity_timeout),
            ),
            ("maglev_size", offset_of!(LbFrontendRaw, maglev_size)),
            ("flags", offset_of!(LbFrontendRaw, flags)),
            ("type", offset_of!(LbFrontendRaw, r#type)),
            ("pad", offset_of!(LbFrontendRaw, pad)),
        ],
    );
    assert_layout(
        &s,
        "lb_slot_key",
        size_of::<LbSlotKeyRaw>(),
        &[
            ("frontend_id", offset_of!(LbSlotKeyRaw, frontend_id)),
            ("slot", offset_of!(LbSlotKeyRaw, slot)),
        ],
    );
    assert_layout(
        &s,
        "lb_slot",
        size_of::<LbSlotRaw>(),
        &[
            ("backend_id", offset_of!(LbSlotRaw, backend_id)),
            ("weight_end", offset_of!(LbSlotRaw, weight_end)),
        ],
    );
    assert_layout(
        &s,
        "lb_backend",
        size_of::<LbBackendRaw>(),
        &[
            ("addr", offset_of!(LbBackendRaw, addr)),
            ("port", offset_of!(LbBackendRaw, port)),
            ("protocol", offset_of!(LbBackendRaw, protocol)),
            ("family", offset_of!(LbBackendRaw, family)),
            ("state", offset_of!(LbBackendRaw, state)),
            ("pad", offset_of!(LbBackendRaw, pad)),
            ("frontend_id", offset_of!(LbBackendRaw, frontend_id)),
        ],
    );
    assert_layout(
        &s,
        "lb_maglev_key",
        size_of::<LbMaglevKeyRaw>(),
        &[
            ("frontend_id", offset_of!(LbMaglevKeyRaw, frontend_id)),
            ("chunk", offset_of!(LbMaglevKeyRaw, chunk)),
        ],
    );
    assert_layout(
        &s,
        "lb_maglev_chunk",
        size_of::<LbMaglevChunkRaw>(),
        &[("backend_ids", offset_of!(LbMaglevChunkRaw, backend_ids))],
    );
    assert_layout(
        &s,
        "lb_affinity_key",
        size_of::<LbAffinityKeyRaw>(),
        &[
            ("client", offset_of!(LbAffinityKeyRaw, client)),
            ("frontend_id", offset_of!(LbAffinityKeyRaw, frontend_id)),
            ("family", offset_of!(LbAffinityKeyRaw, family)),
            ("pad", offset_of!(LbAffinityKeyRaw, pad)),
        ],
    );
    assert_layout(
        &s,
        "lb_affinity",
        size_of::<LbAffinityRaw>(),
        &[
            ("backend_id", offset_of!(LbAffinityRaw, backend_id)),
            ("last_used", offset_of!(LbAffinityRaw, last_used)),
        ],
    );
    assert_layout(
        &s,
        "lb_reverse_sk_key",
        size_of::<LbReverseSkKeyRaw>(),
        &[
            ("cookie", offset_of!(LbReverseSkKeyRaw, cookie)),
            ("addr", offset_of!(LbReverseSkKeyRaw, addr)),
            ("port", offset_of!(LbReverseSkKeyRaw, port)),
            ("family", offset_of!(LbReverseSkKeyRaw, family)),
            ("pad", offset_of!(LbReverseSkKeyRaw, pad)),
        ],
    );
    assert_layout(
        &s,
        "lb_reverse_sk",
        size_of::<LbReverseSkRaw>(),
        &[
            ("addr", offset_of!(LbReverseSkRaw, addr)),
            ("port", offset_of!(LbReverseSkRaw, port)),
            ("family", offset_of!(LbReverseSkRaw, family)),
            ("pad", offset_of!(LbReverseSkRaw, pad)),
            ("frontend_id", offset_of!(LbReverseSkRaw, frontend_id)),
        ],
    );
    assert_layout(
        &s,
        "lb_revnat",
        size_of::<LbRevnatRaw>(),
        &[
            ("addr", offset_of!(LbRevnatRaw, addr)),
            ("port", offset_of!(LbRevnatRaw, port)),
            ("protocol", offset_of!(LbRevnatRaw, protocol)),
            ("family", offset_of!(LbRevnatRaw, family)),
        ],
    );
    assert_layout(
        &s,
        "lb_netns",
        size_of::<LbNetnsRaw>(),
        &[
            ("endpoint_id", offset_of!(LbNetnsRaw, endpoint_id)),
            ("identity", offset_of!(LbNetnsRaw, identity)),
            ("flags", offset_of!(LbNetnsRaw, flags)),
            ("ipv4", offset_of!(LbNetnsRaw, ipv4)),
            ("ipv6", offset_of!(LbNetnsRaw, ipv6)),
        ],
    );
    assert_layout(
        &s,
        "sock_lb_event",
        size_of::<SockLbEventRaw>(),
        &[
            ("flow", offset_of!(SockLbEventRaw, flow)),
            ("backend_addr", offset_of!(SockLbEventRaw, backend_addr)),
            ("backend_port", offset_of!(SockLbEventRaw, backend_port)),
            ("pad", offset_of!(SockLbEventRaw, pad)),
            ("frontend_id", offset_of!(SockLbEventRaw, frontend_id)),
            ("backend_id", offset_of!(SockLbEventRaw, backend_id)),
            ("pad2", offset_of!(SockLbEventRaw, pad2)),
        ],
    );
}

#[test]
fn lb_constants_match_the_header() {
    assert_defines(&[
        ("KINO_LB_MAX_FRONTENDS", LB_MAX_FRONTENDS.into()),
        ("KINO_LB_MAX_BACKENDS", LB_MAX_BACKENDS.into()),
        ("KINO_LB_MAX_SLOTS", LB_MAX_SLOTS.into()),
        (
            "KINO_LB_AFFINITY_MAX_ENTRIES",
            LB_AFFINITY_MAX_ENTRIES.into(),
        ),
        (
            "KINO_LB_REVERSE_SK_MAX_ENTRIES",
            LB_REVERSE_SK_MAX_ENTRIES.into(),
        ),
        ("KINO_LB_NETNS_MAX_ENTRIES", LB_NETNS_MAX_ENTRIES.into()),
        ("KINO_LB_MAGLEV_CHUNK", LB_MAGLEV_CHUNK as u64),
        ("KINO_LB_SLOT_SEARCH_STEPS", LB_SLOT_SEARCH_STEPS.into()),
        ("KINO_LB_CLUSTER_IP", LB_CLUSTER_IP.into()),
        ("KINO_LB_NODE_PORT", LB_NODE_PORT.into()),
        ("KINO_LB_EXTERNAL_IP", LB_EXTERNAL_IP.into()),
        ("KINO_LB_BACKEND_ACTIVE", LB_BACKEND_ACTIVE.into()),
        ("KINO_LB_BACKEND_TERMINATING", LB_BACKEND_TERMINATING.into()),
        ("KINO_EVENT_SOCK_LB", EVENT_SOCK_LB.into()),
        ("KINO_OBS_SOCK", OBS_SOCK.into()),
    ]);
    assert_flags(&[
        ("KINO_LB_F_AFFINITY", LB_F_AFFINITY.into()),
        ("KINO_LB_F_MAGLEV", LB_F_MAGLEV.into()),
        ("KINO_LB_NETNS_F_IPV6", LB_NETNS_F_IPV6),
        ("KINO_LB_NETNS_F_HOST", LB_NETNS_F_HOST),
    ]);
    // 65535 backends (a frontend's most) need 17 halvings.
    const { assert!(1u64 << LB_SLOT_SEARCH_STEPS > 65_535) };
}

fn lb_object_maps() -> HashMap<String, aya_obj::Map> {
    aya_obj::Object::parse(SOCK_LB_OBJECT)
        .expect("the embedded object parses")
        .maps
}

#[test]
fn the_lb_object_pins_its_maps_and_the_datapaths() {
    let mut pinned: Vec<String> = lb_object_maps()
        .into_iter()
        .filter(|(_, map)| map.pinning() == aya_obj::maps::PinningType::ByName)
        .map(|(name, _)| name)
        .collect();
    pinned.sort();
    let mut listed: Vec<String> = LB_MAPS
        .iter()
        .chain(ALL_MAPS.iter())
        .map(|m| (*m).to_owned())
        .collect();
    listed.sort();
    assert_eq!(pinned, listed);
}

#[test]
fn each_lb_map_has_the_mirrored_key_and_value() {
    let maps = lb_object_maps();
    for (name, key, value, entries) in [
        (
            LB_FRONTENDS_MAP,
            size_of::<LbFrontendKeyRaw>(),
            size_of::<LbFrontendRaw>(),
            LB_MAX_FRONTENDS,
        ),
        (
            LB_SLOTS_MAP,
            size_of::<LbSlotKeyRaw>(),
            size_of::<LbSlotRaw>(),
            LB_MAX_SLOTS,
        ),
        (
            LB_BACKENDS_MAP,
            size_of::<u32>(),
            size_of::<LbBackendRaw>(),
            LB_MAX_BACKENDS,
        ),
        (
            LB_MAGLEV_MAP,
            size_of::<LbMaglevKeyRaw>(),
            size_of::<LbMaglevChunkRaw>(),
            LB_MAX_FRONTENDS,
        ),
        (
            LB_AFFINITY_MAP,
            size_of::<LbAffinityKeyRaw>(),
            size_of::<LbAffinityRaw>(),
            LB_AFFINITY_MAX_ENTRIES,
        ),
        (
            LB_REVERSE_SK_MAP,
            size_of::<LbReverseSkKeyRaw>(),
            size_of::<LbReverseSkRaw>(),
            LB_REVERSE_SK_MAX_ENTRIES,
        ),
        (
            LB_REVNAT_MAP,
            size_of::<u32>(),
            size_of::<LbRevnatRaw>(),
            LB_MAX_FRONTENDS,
        ),
        (
            LB_NETNS_MAP,
            size_of::<u64>(),
            size_of::<LbNetnsRaw>(),
            LB_NETNS_MAX_ENTRIES,
        ),
    ] {
        let map = maps
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the object"));
        assert_eq!(map.key_size() as usize, key, "key size of {name}");
        assert_eq!(map.value_size() as usize, value, "value size of {name}");
        assert_eq!(map.max_entries(), entries, "capacity of {name}");
    }
    // The datapath's maps it shares are declared exactly as the datapath declares them.
    let datapath = object_maps();
    for name in ALL_MAPS {
        let (ours, theirs) = (&maps[name], &datapath[name]);
        assert_eq!(
            (ours.key_size(), ours.value_size(), ours.max_entries()),
            (theirs.key_size(), theirs.value_size(), theirs.max_entries()),
            "{name}"
        );
    }
}
