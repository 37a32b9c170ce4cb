//! Kernel tests of the datapath (issue #4): a world of network namespaces made by the test
//! (one "node", where the agent-side code runs on a thread that entered it, and pods), the
//! node devices, the real eBPF programs attached to real lxcs, and traffic between them.
//!
//! Needs root, bpffs, `ip` and `ping`. Outside CI it skips loudly without them; under
//! `CI=true` it fails instead. Everything created (namespaces, links, routes, pins under
//! `/sys/fs/bpf/kino/<unique node>/`) is removed by guards, also when an assertion fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::{AttachChange, Datapath, DropReason, EndpointCounters};
use kino_agent::devices::{HOST_DEVICE, NET_DEVICE, NodeDevicesConfig, ensure_node_devices};
use kino_agent::endpoint::{
    EndpointError, EndpointSpec, VethRequest, create_endpoint, delete_endpoint, lxc_name,
};
use kino_agent::netlink::Netlink;

mod support;

use support::{Pins, World, counters, in_node, kernel_tests_possible, run, run_ok};

struct Pod {
    netns: PathBuf,
    ns_name: String,
    container_id: String,
    ip: Ipv4Addr,
    id: u32,
}

impl Pod {
    fn spec(&self, gateway: Ipv4Addr) -> EndpointSpec {
        EndpointSpec {
            id: self.id,
            identity: 0,
            veth: VethRequest {
                container_id: self.container_id.clone(),
                ifname: "eth0".to_owned(),
                netns: self.netns.clone(),
                ipv4: self.ip,
                ipv6: None,
                gateway_v4: gateway,
                gateway_v6: None,
                mac: None,
                mtu: None,
            },
        }
    }

    fn lxc(&self) -> String {
        lxc_name(&self.container_id, "eth0")
    }

    /// Pings `to` (from the address `from` when given); true once answered.
    fn ping(&self, to: Ipv4Addr, from: Option<Ipv4Addr>) -> bool {
        support::ping_from_ns(&self.ns_name, to, from)
    }

    /// Pings `to` (from `from` when given); true if not answered.
    fn ping_dropped(&self, to: Ipv4Addr, from: Option<Ipv4Addr>) -> bool {
        support::ping_from_ns_dropped(&self.ns_name, to, from)
    }
}

async fn wait_until_gone(netlink: &Netlink, lxc: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while netlink
        .link_by_name(lxc)
        .await
        .expect("link lookup")
        .is_some()
    {
        assert!(Instant::now() < deadline, "{lxc} still exists after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn pods_reach_each_other_and_the_node_through_the_programs() {
    if !kernel_tests_possible("pods_reach_each_other_and_the_node_through_the_programs") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let pod_netns = [world.netns("a"), world.netns("b"), world.netns("c")];
    let _pins = Pins {
        node: world.node.clone(),
    };
    let gateway = Ipv4Addr::new(10, 244, 0, 1);
    let pods: Vec<Pod> = pod_netns
        .iter()
        .enumerate()
        .map(|(i, ns)| Pod {
            netns: ns.path(),
            ns_name: ns.name.clone(),
            container_id: format!("{}-container-{i}", world.prefix),
            ip: Ipv4Addr::new(10, 244, 0, 10 + i as u8),
            id: 100 + i as u32,
        })
        .collect();
    let node_name = world.node.clone();
    let node_ns = node.name.clone();
    let pod_b_ns = pod_netns[1].name.clone();

    in_node(&node, move || async move {
        let netlink = Netlink::connect().expect("netlink in the node");
        let config = NodeDevicesConfig {
            gateway,
            pod_cidr: Some("10.244.0.0/24".parse().expect("cidr")),
        };
        let devices = ensure_node_devices(&netlink, &config)
            .await
            .expect("node devices");
        assert!(devices.created);
        let again = ensure_node_devices(&netlink, &config)
            .await
            .expect("adopting devices");
        assert!(!again.created, "a second start adopts kino_host/kino_net");
        assert_eq!(again.host.index, devices.host.index);
        for name in [HOST_DEVICE, NET_DEVICE] {
            assert!(
                netlink
                    .link_by_name(name)
                    .await
                    .expect("lookup")
                    .expect(name)
                    .up
            );
        }
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .expect("sysctl")
                .trim(),
            "1"
        );

        let pin_root = Path::new(DEFAULT_PIN_ROOT);
        let mut datapath = Datapath::load(pin_root, &node_name).expect("loading the datapath");
        assert!(
            datapath.adoption().maps_reused.is_empty(),
            "{:?}",
            datapath.adoption()
        );
        assert_eq!(datapath.pin_dir(), pin_root.join(&node_name));

        for pod in &pods {
            let endpoint = create_endpoint(&netlink, &mut datapath, &pod.spec(gateway))
                .await
                .unwrap_or_else(|e| panic!("creating endpoint {}: {e}", pod.id));
            assert_eq!(endpoint.veth.lxc_name, pod.lxc());
            let lxc = netlink
                .link_by_name(&pod.lxc())
                .await
                .expect("lookup")
                .expect("lxc");
            assert_eq!(lxc.index, endpoint.veth.lxc_ifindex);
            assert!(lxc.up);
        }
        assert_eq!(datapath.maps().list().expect("list").len(), 3);
        let attachments = datapath.attachments(&netlink).await.expect("attachments");
        assert_eq!(attachments.len(), 3, "{attachments:?}");
        for attachment in &attachments {
            assert_eq!(attachment.mode(), "tc", "{attachment:?}");
            assert!(attachment.complete(), "{attachment:?}");
        }
        // Classic tc filters, named so a restarted agent finds them; nothing pinned.
        let filters = run(&[
            "ip",
            "netns",
            "exec",
            &node_ns,
            "tc",
            "filter",
            "show",
            "dev",
            &pods[0].lxc(),
            "ingress",
        ]);
        let filters = String::from_utf8_lossy(&filters.stdout);
        assert!(
            filters.contains("kino_from_container") && filters.contains("direct-action"),
            "{filters}"
        );
        assert_eq!(
            std::fs::read_dir(pin_root.join(&node_name).join("links"))
                .expect("links dir")
                .count(),
            0
        );
        let (a, b, c) = (&pods[0], &pods[1], &pods[2]);

        // Pod to pod (local delivery by redirect) and pod to node (through the stack).
        assert!(a.ping(b.ip, None), "a cannot ping b");
        assert!(b.ping(a.ip, None), "b cannot ping a");
        assert!(c.ping(a.ip, None), "c cannot ping a");
        assert!(a.ping(gateway, None), "a cannot ping the node's gateway IP");
        assert!(
            run(&[
                "ip",
                "netns",
                "exec",
                &node_ns,
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                &c.ip.to_string()
            ])
            .status
            .success(),
            "the node cannot ping c"
        );

        let (ca, cb, cc) = (
            counters(&datapath, a.id),
            counters(&datapath, b.id),
            counters(&datapath, c.id),
        );
        // a sent ≥2 requests to b, ≥2 replies to b, ≥2 replies to c, ≥2 requests to the node.
        assert!(ca.from_container_packets >= 8, "{ca:?}");
        assert!(ca.from_container_bytes >= 8 * 98, "{ca:?}");
        assert!(ca.local_redirect_packets >= 6, "{ca:?}");
        assert!(ca.to_stack_packets >= 2, "{ca:?}");
        // Delivered to a: replies from b, requests from b and c (redirect), node replies (lxc egress).
        assert!(ca.to_container_packets >= 8, "{ca:?}");
        assert!(
            cb.to_container_packets >= 4 && cb.local_redirect_packets >= 4,
            "{cb:?}"
        );
        // c got the node's request through the stack and its lxc's egress.
        assert!(cc.to_container_packets >= 3, "{cc:?}");
        for counters in [&ca, &cb, &cc] {
            assert_eq!(counters.drops.iter().sum::<u64>(), 0, "{counters:?}");
        }

        // A spoofed source is dropped and counted; the target never answers.
        let spoofed = Ipv4Addr::new(10, 244, 0, 99);
        let a_ns = a.ns_name.clone();
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &a_ns,
            "ip",
            "addr",
            "add",
            &format!("{spoofed}/32"),
            "dev",
            "eth0",
        ]);
        let before = counters(&datapath, a.id);
        assert!(
            a.ping_dropped(b.ip, Some(spoofed)),
            "a spoofed ping reached b"
        );
        let after_a = counters(&datapath, a.id);
        assert!(
            after_a.dropped(DropReason::SpoofedSource) >= 2,
            "{after_a:?}"
        );
        // Dropped before delivery: nothing more was redirected (b's counters may still move
        // with the node's ARP probes, so they prove nothing here).
        assert_eq!(
            after_a.local_redirect_packets, before.local_redirect_packets,
            "{after_a:?}"
        );
        // Spoofing another pod's address is caught the same way.
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &a_ns,
            "ip",
            "addr",
            "add",
            &format!("{}/32", c.ip),
            "dev",
            "eth0",
        ]);
        assert!(
            a.ping_dropped(b.ip, Some(c.ip)),
            "a ping posing as c reached b"
        );
        assert!(counters(&datapath, a.id).dropped(DropReason::SpoofedSource) >= 4);
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &a_ns,
            "ip",
            "addr",
            "del",
            &format!("{}/32", c.ip),
            "dev",
            "eth0",
        ]);

        // Restart: the agent's datapath goes away (as with kill -9, nothing is unpinned) ...
        drop(datapath);
        assert!(
            a.ping(b.ip, None),
            "traffic stopped when the loader went away"
        );
        // ... and a new loader adopts the pinned maps and links.
        let mut datapath = Datapath::load(pin_root, &node_name).expect("reloading the datapath");
        let adoption = datapath.adoption().clone();
        assert_eq!(
            adoption.maps_reused.len(),
            kino_agent::datapath::maps::ALL_MAPS.len(),
            "{adoption:?}"
        );
        // tc filters need no pins: there are no links to adopt at load ...
        assert!(adoption.links_adopted.is_empty(), "{adoption:?}");
        assert!(adoption.stale_links_removed.is_empty(), "{adoption:?}");
        // ... the restore adopts each known lxc's filters: the same program over the same
        // maps, so they are kept as they are.
        for pod in &pods {
            let lxc = netlink
                .link_by_name(&pod.lxc())
                .await
                .expect("lookup")
                .expect("lxc");
            let adopted = datapath
                .adopt_endpoint(&netlink, &pod.lxc(), lxc.index)
                .await
                .expect("adopting the filters");
            assert_eq!(adopted.mode(), "tc", "{adopted:?}");
            assert!(
                adopted
                    .hooks
                    .iter()
                    .all(|h| h.change == Some(AttachChange::Kept)),
                "{adopted:?}"
            );
        }
        let listed: Vec<u32> = datapath
            .maps()
            .list()
            .expect("list")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(listed, vec![a.id, b.id, c.id]);
        let before = counters(&datapath, a.id);
        assert!(before.from_container_packets >= after_a.from_container_packets);
        assert!(a.ping(b.ip, None), "traffic does not flow after adoption");
        let after = counters(&datapath, a.id);
        assert!(
            after.local_redirect_packets >= before.local_redirect_packets + 2,
            "{after:?}"
        );

        // Deleting an endpoint removes its lxc, map entries and links; again is fine.
        delete_endpoint(&netlink, &mut datapath, &c.lxc(), Some(c.ip))
            .await
            .expect("delete c");
        assert!(
            netlink
                .link_by_name(&c.lxc())
                .await
                .expect("lookup")
                .is_none()
        );
        assert!(datapath.maps().get(c.ip).expect("lookup").is_none());
        assert!(
            datapath
                .attachments(&netlink)
                .await
                .expect("attachments")
                .iter()
                .all(|l| l.lxc_name != c.lxc())
        );
        assert_eq!(counters(&datapath, c.id), EndpointCounters::default());
        delete_endpoint(&netlink, &mut datapath, &c.lxc(), Some(c.ip))
            .await
            .expect("delete c again");
        assert!(a.ping_dropped(c.ip, None), "a still reaches the deleted c");

        // Deleting works when the pod's namespace is already gone.
        run_ok(&["ip", "netns", "del", &pod_b_ns]);
        delete_endpoint(&netlink, &mut datapath, &b.lxc(), Some(b.ip))
            .await
            .expect("delete b");
        wait_until_gone(&netlink, &b.lxc()).await;
        assert!(datapath.maps().get(b.ip).expect("lookup").is_none());
        let left: Vec<String> = datapath
            .attachments(&netlink)
            .await
            .expect("attachments")
            .into_iter()
            .map(|l| l.lxc_name)
            .collect();
        assert_eq!(left, vec![a.lxc()]);
        assert!(a.ping(gateway, None), "a lost the node");
    });
}

#[test]
fn a_failed_endpoint_leaves_nothing_behind() {
    if !kernel_tests_possible("a_failed_endpoint_leaves_nothing_behind") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let pod = world.netns("p");
    let _pins = Pins {
        node: world.node.clone(),
    };
    // The pod already has a default route: the set-up fails at its last step in the pod.
    pod.exec_ok(&[
        "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    pod.exec_ok(&["ip", "link", "set", "other0", "up"]);
    pod.exec_ok(&["ip", "route", "add", "default", "dev", "other0"]);
    // And one that already has the interface name asked for.
    let taken = world.netns("t");
    taken.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);

    let gateway = Ipv4Addr::new(10, 244, 0, 1);
    let node_name = world.node.clone();
    let (pod_path, pod_name, taken_path) = (pod.path(), pod.name.clone(), taken.path());
    let prefix = world.prefix.clone();
    in_node(&node, move || async move {
        let netlink = Netlink::connect().expect("netlink in the node");
        ensure_node_devices(
            &netlink,
            &NodeDevicesConfig {
                gateway,
                pod_cidr: None,
            },
        )
        .await
        .expect("node devices");
        let mut datapath =
            Datapath::load(Path::new(DEFAULT_PIN_ROOT), &node_name).expect("loading the datapath");
        let spec = |netns: PathBuf, n: u8| EndpointSpec {
            id: 200 + u32::from(n),
            identity: 0,
            veth: VethRequest {
                container_id: format!("{prefix}-failing-{n}"),
                ifname: "eth0".to_owned(),
                netns,
                ipv4: Ipv4Addr::new(10, 244, 0, 50 + n),
                ipv6: None,
                gateway_v4: gateway,
                gateway_v6: None,
                mac: None,
                mtu: None,
            },
        };

        let cases = [
            (spec(pod_path.clone(), 1), "PodHasDefaultRoute"),
            (spec(taken_path.clone(), 2), "PodInterfaceExists"),
            (
                spec(PathBuf::from("/run/netns/kino-test-no-such-netns"), 3),
                "Netns",
            ),
        ];
        for (spec, expected) in cases {
            let error = create_endpoint(&netlink, &mut datapath, &spec)
                .await
                .expect_err("creating the endpoint must fail");
            let matched = match &error {
                EndpointError::PodHasDefaultRoute { .. } => "PodHasDefaultRoute",
                EndpointError::PodInterfaceExists { .. } => "PodInterfaceExists",
                EndpointError::Netns(_) => "Netns",
                _ => "other",
            };
            assert_eq!(matched, expected, "{error}");
            let lxc = lxc_name(&spec.veth.container_id, "eth0");
            assert!(
                netlink.link_by_name(&lxc).await.expect("lookup").is_none(),
                "{lxc} leaked"
            );
            assert!(
                datapath
                    .maps()
                    .get(spec.veth.ipv4)
                    .expect("lookup")
                    .is_none()
            );
        }
        assert!(datapath.maps().list().expect("list").is_empty());
        assert!(
            datapath
                .attachments(&netlink)
                .await
                .expect("attachments")
                .is_empty()
        );
        // Nothing left in the pod either: no eth0, its own default route intact.
        let links = run(&["ip", "netns", "exec", &pod_name, "ip", "-o", "link"]);
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains("eth0"), "{links}");
        let routes = run(&["ip", "netns", "exec", &pod_name, "ip", "route"]);
        assert!(String::from_utf8_lossy(&routes.stdout).contains("default dev other0"));
    });
}
