//! Kernel tests of how the programs sit on lxcs (netlink tc filters; pinned TCX links of
//! agents from before tc) and of endpoint MTUs: filters kept, replaced or re-attached by a
//! restarted agent, TCX links of an older agent adopted and removed on delete, veth MTUs
//! on both ends, bad MTUs refused with nothing left behind.
//!
//! Needs root, bpffs, `ip`, `tc` and `ping`; skips loudly outside CI without them. Every
//! namespace and pin is removed by guards, also when an assertion fails.

mod support;

use std::path::Path;

use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::{AttachChange, AttachMode, Datapath, EndpointEntry};
use kino_agent::endpoint::{EndpointError, create_endpoint, delete_endpoint, lxc_name};
use kino_agent::netlink::Netlink;
use support::{Pod, World, in_node, kernel_tests_possible, node_with_pods, run, run_ok};

/// `tc filter show dev <lxc> <hook>` in the namespace `ns`.
fn tc_filters(ns: &str, lxc: &str, hook: &str) -> String {
    let out = run(&[
        "ip", "netns", "exec", ns, "tc", "filter", "show", "dev", lxc, hook,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MTU of `ifname` in the namespace `ns` (`ip -o link`).
fn mtu_of(ns: &str, ifname: &str) -> u32 {
    let out = run(&[
        "ip", "netns", "exec", ns, "ip", "-o", "link", "show", ifname,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu for {ifname} in {ns}: {text}"))
}

/// The pod's lxc.
fn lxc(pod: &Pod) -> String {
    lxc_name(&pod.container_id, "eth0")
}

async fn ifindex(netlink: &Netlink, lxc: &str) -> u32 {
    netlink
        .link_by_name(lxc)
        .await
        .expect("lookup")
        .unwrap_or_else(|| panic!("{lxc} missing"))
        .index
}

fn changes(attachment: &kino_agent::datapath::LxcAttachment) -> Vec<Option<AttachChange>> {
    attachment.hooks.iter().map(|h| h.change).collect()
}

#[test]
fn a_restarted_agent_keeps_replaces_or_reattaches_its_filters() {
    if !kernel_tests_possible("a_restarted_agent_keeps_replaces_or_reattaches_its_filters") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, 0),
        Pod::new(&world, &ns[1], 1, 0),
    ];
    let (node_name, node_ns) = (world.node.clone(), node.name.clone());
    in_node(&node, move || async move {
        let (netlink, datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        assert!(a.ping(b.ip), "a cannot ping b");
        let entries: Vec<EndpointEntry> = datapath.maps().list().expect("list");

        // b loses its ingress filter (someone ran `tc filter del`), and the node's pins go
        // while no agent runs: the next agent creates new maps, so the programs left on the
        // lxcs read maps nobody writes any more.
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &node_ns,
            "tc",
            "filter",
            "del",
            "dev",
            &lxc(b),
            "ingress",
            "pref",
            "1",
            "handle",
            "0x1",
            "bpf",
        ]);
        assert_eq!(tc_filters(&node_ns, &lxc(b), "ingress"), "");
        drop(datapath);
        Datapath::remove_pins(Path::new(DEFAULT_PIN_ROOT), &node_name).expect("removing pins");
        let mut datapath =
            Datapath::load(Path::new(DEFAULT_PIN_ROOT), &node_name).expect("reloading");
        assert!(datapath.adoption().maps_reused.is_empty());
        for entry in &entries {
            datapath.maps_mut().upsert(entry).expect("re-entering");
        }

        // a: both programs are another load's over other maps: replaced in place.
        let adopted_a = datapath
            .adopt_endpoint(&netlink, &lxc(a), ifindex(&netlink, &lxc(a)).await)
            .await
            .expect("adopting a");
        assert_eq!(
            changes(&adopted_a),
            [Some(AttachChange::Replaced), Some(AttachChange::Replaced)],
            "{adopted_a:?}"
        );
        // b: its missing ingress filter is attached again, its egress one replaced.
        let adopted_b = datapath
            .adopt_endpoint(&netlink, &lxc(b), ifindex(&netlink, &lxc(b)).await)
            .await
            .expect("adopting b");
        assert_eq!(
            changes(&adopted_b),
            [Some(AttachChange::Attached), Some(AttachChange::Replaced)],
            "{adopted_b:?}"
        );
        for adopted in [&adopted_a, &adopted_b] {
            assert_eq!(adopted.mode(), "tc");
            assert!(
                adopted.hooks.iter().all(|h| h.mode() == AttachMode::Tc),
                "{adopted:?}"
            );
        }
        // One filter per hook (replaced, not added beside), running the new programs.
        for pod in [a, b] {
            for (hook, name) in [
                ("ingress", "kino_from_container"),
                ("egress", "kino_to_container"),
            ] {
                let filters = tc_filters(&node_ns, &lxc(pod), hook);
                assert_eq!(filters.matches(name).count(), 1, "{filters}");
            }
        }
        let listed = datapath
            .attachment(&netlink, &lxc(a), adopted_a.ifindex)
            .await
            .expect("listing a");
        assert_eq!(
            listed
                .hooks
                .iter()
                .map(|h| h.program_id)
                .collect::<Vec<_>>(),
            adopted_a
                .hooks
                .iter()
                .map(|h| h.program_id)
                .collect::<Vec<_>>()
        );
        let before = support::counters(&datapath, a.id);
        assert!(a.ping(b.ip), "a cannot ping b after the adoption");
        let after = support::counters(&datapath, a.id);
        assert!(
            after.local_redirect_packets >= before.local_redirect_packets + 2,
            "the new maps do not see a's traffic: {after:?}"
        );

        // Adopting again changes nothing.
        let again = datapath
            .adopt_endpoint(&netlink, &lxc(b), adopted_b.ifindex)
            .await
            .expect("adopting b again");
        assert_eq!(
            changes(&again),
            [Some(AttachChange::Kept), Some(AttachChange::Kept)]
        );
    });
}

#[test]
fn lxcs_of_a_tcx_agent_are_adopted_and_deleted() {
    if !kernel_tests_possible("lxcs_of_a_tcx_agent_are_adopted_and_deleted") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, 0),
        Pod::new(&world, &ns[1], 1, 0),
    ];
    let (node_name, node_ns) = (world.node.clone(), node.name.clone());
    in_node(&node, move || async move {
        let (netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        // a as an agent before tc left it: pinned TCX links, no filters.
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &node_ns,
            "tc",
            "qdisc",
            "del",
            "dev",
            &lxc(a),
            "clsact",
        ]);
        let tcx = datapath.attach_endpoint_tcx(&lxc(a)).expect("TCX attach");
        assert_eq!(tcx.mode(), "tcx");
        let links = Path::new(DEFAULT_PIN_ROOT).join(&node_name).join("links");
        assert_eq!(std::fs::read_dir(&links).expect("links").count(), 2);
        assert!(a.ping(b.ip) && b.ping(a.ip), "no traffic through TCX");

        // The agent restarts (kill -9: nothing cleaned up) with this version.
        drop(datapath);
        assert!(a.ping(b.ip), "traffic stopped without an agent");
        let mut datapath =
            Datapath::load(Path::new(DEFAULT_PIN_ROOT), &node_name).expect("reloading");
        assert_eq!(
            datapath.adoption().links_adopted.len(),
            2,
            "{:?}",
            datapath.adoption()
        );
        let adopted_a = datapath
            .adopt_endpoint(&netlink, &lxc(a), ifindex(&netlink, &lxc(a)).await)
            .await
            .expect("adopting a");
        // Load switched the links to its programs already; they stay TCX links.
        assert_eq!(adopted_a.mode(), "tcx", "{adopted_a:?}");
        assert_eq!(
            changes(&adopted_a),
            [Some(AttachChange::Kept), Some(AttachChange::Kept)]
        );
        assert_eq!(tc_filters(&node_ns, &lxc(a), "ingress"), "");
        let adopted_b = datapath
            .adopt_endpoint(&netlink, &lxc(b), ifindex(&netlink, &lxc(b)).await)
            .await
            .expect("adopting b");
        assert_eq!(adopted_b.mode(), "tc", "{adopted_b:?}");
        let modes: Vec<(String, &str)> = datapath
            .attachments(&netlink)
            .await
            .expect("attachments")
            .iter()
            .map(|l| (l.lxc_name.clone(), l.mode()))
            .collect();
        let mut expected = vec![(lxc(a), "tcx"), (lxc(b), "tc")];
        expected.sort();
        assert_eq!(modes, expected);
        let before = support::counters(&datapath, a.id);
        assert!(a.ping(b.ip) && b.ping(a.ip), "no traffic after adoption");
        assert!(
            support::counters(&datapath, a.id).from_container_packets
                > before.from_container_packets
        );

        // Deleting a removes its pins (which detaches the links) with the lxc.
        delete_endpoint(&netlink, &mut datapath, &lxc(a), Some(a.ip))
            .await
            .expect("deleting a");
        assert_eq!(std::fs::read_dir(&links).expect("links").count(), 0);
        assert!(
            netlink
                .link_by_name(&lxc(a))
                .await
                .expect("lookup")
                .is_none()
        );
        assert!(b.ping_dropped(a.ip));
    });
}

#[test]
fn endpoint_mtu_is_set_on_both_ends_and_bad_ones_leave_nothing() {
    if !kernel_tests_possible("endpoint_mtu_is_set_on_both_ends_and_bad_ones_leave_nothing") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b"), world.netns("c")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, 0),
        Pod::new(&world, &ns[1], 1, 0),
        Pod::new(&world, &ns[2], 2, 0),
    ];
    let (node_name, node_ns) = (world.node.clone(), node.name.clone());
    in_node(&node, move || async move {
        let (netlink, mut datapath) = node_with_pods(&node_name, &[]).await;
        let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
        for pod in [a, b] {
            let mut spec = pod.spec();
            spec.veth.mtu = Some(9000);
            create_endpoint(&netlink, &mut datapath, &spec)
                .await
                .unwrap_or_else(|e| panic!("creating {} with mtu 9000: {e}", pod.id));
            assert_eq!(mtu_of(&node_ns, &lxc(pod)), 9000, "lxc of {}", pod.id);
            assert_eq!(mtu_of(&pod.ns_name, "eth0"), 9000, "eth0 of {}", pod.id);
        }
        // A jumbo frame that must not be fragmented gets through (8972 + 28 = 9000).
        let b_ip = b.ip.to_string();
        run_ok(&[
            "ip", "netns", "exec", &a.ns_name, "ping", "-n", "-c", "1", "-W", "2", "-M", "do",
            "-s", "8972", &b_ip,
        ]);

        // Out of range: refused before anything is made.
        let cases: [(u32, bool, &str); 4] = [
            (67, false, "between 68 and 65535"),
            (65_536, false, "between 68 and 65535"),
            (0, false, "between 68 and 65535"),
            (1000, true, "between 1280 and 65535 for a pod with IPv6"),
        ];
        for (mtu, ipv6, expected) in cases {
            let mut spec = if ipv6 { c.dual_stack_spec() } else { c.spec() };
            spec.veth.mtu = Some(mtu);
            let error = create_endpoint(&netlink, &mut datapath, &spec)
                .await
                .expect_err("a bad MTU must be refused");
            assert!(
                matches!(&error, EndpointError::InvalidRequest(m) if m.contains(expected) && m.contains("mtu")),
                "mtu {mtu}: {error}"
            );
            assert!(
                netlink
                    .link_by_name(&lxc_name(&c.container_id, "eth0"))
                    .await
                    .expect("lookup")
                    .is_none()
            );
            assert!(datapath.maps().get(c.ip).expect("lookup").is_none());
            let links = run(&["ip", "netns", "exec", &c.ns_name, "ip", "-o", "link"]);
            assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
        }
        assert_eq!(datapath.maps().list().expect("list").len(), 2);
        // The smallest IPv4 MTU is fine.
        let mut spec = c.spec();
        spec.veth.mtu = Some(68);
        create_endpoint(&netlink, &mut datapath, &spec)
            .await
            .expect("mtu 68");
        assert_eq!(mtu_of(&c.ns_name, "eth0"), 68);
        assert_eq!(mtu_of(&node_ns, &lxc(c)), 68);
    });
}

/// A pinned map an agent of another version left with another layout (here: `kino_policy`
/// with the 12-byte key data of before its alignment pad) is not reused — the programs would
/// misread it — but unpinned and created anew; the other pins are reused. So is a map whose
/// capacity the operator changed.
#[test]
fn a_pinned_map_of_another_layout_is_replaced() {
    if !kernel_tests_possible("a_pinned_map_of_another_layout_is_replaced") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let _pins = world.pins();
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let root = Path::new(DEFAULT_PIN_ROOT);
        // A full set of pins from a first load ...
        drop(Datapath::load(root, &node_name).expect("first load"));
        let pin_dir = kino_agent::datapath::loader::node_pin_dir(root, &node_name).expect("dir");
        let policy_pin = pin_dir.join(kino_agent::datapath::policy::POLICY_MAP);
        // ... whose policy map is swapped for one of the old layout.
        std::fs::remove_file(&policy_pin).expect("unpinning kino_policy");
        run_ok(&[
            "bpftool",
            "map",
            "create",
            policy_pin.to_str().expect("utf-8 path"),
            "type",
            "lpm_trie",
            "key",
            "16",
            "value",
            "24",
            "entries",
            "16",
            "name",
            "kino_policy",
            "flags",
            "1",
        ]);

        let datapath = Datapath::load(root, &node_name).expect("loading over the old pin");
        let adoption = datapath.adoption();
        assert_eq!(adoption.maps_replaced, ["kino_policy"], "{adoption:?}");
        assert!(
            !adoption.maps_reused.contains(&"kino_policy"),
            "{adoption:?}"
        );
        assert_eq!(
            adoption.maps_reused.len(),
            kino_agent::datapath::maps::ALL_MAPS.len() - 1,
            "{adoption:?}"
        );
        let info = aya::maps::MapInfo::from_pin(&policy_pin).expect("the new pin");
        assert_eq!(
            info.key_size(),
            4 + std::mem::size_of::<kino_agent::datapath::policy::PolicyKeyRaw>() as u32
        );
        drop(datapath);

        // Another conntrack capacity (`--conntrack-max`): that map is made anew with it.
        let capacities = kino_agent::datapath::MapCapacities {
            conntrack: 4096,
            ..Default::default()
        };
        let datapath =
            Datapath::load_with(root, &node_name, capacities).expect("loading with 4096");
        assert_eq!(datapath.adoption().maps_replaced, ["kino_ct"]);
        let ct_pin = pin_dir.join(kino_agent::datapath::conntrack::CT_MAP);
        let info = aya::maps::MapInfo::from_pin(&ct_pin).expect("the new ct pin");
        assert_eq!(info.max_entries(), 4096);
        drop(datapath);
        let datapath = Datapath::load_with(root, &node_name, capacities).expect("reloading");
        assert!(datapath.adoption().maps_replaced.is_empty());
    });
}
