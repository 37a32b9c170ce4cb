//! Kernel tests of the datapath between nodes (issue #13): two node namespaces on an underlay
//! bridge (192.0.2.0/24), each with the real eBPF programs loaded through the library as the
//! agent loads them, `kino_vxlan` with the overlay programs in tunnel mode, and the ipcache
//! entries and routes the control plane will install, put in by hand (tests/support/cluster.rs).
//! Real ICMP and TCP between pods of both nodes, both families.
//!
//! Needs root, bpffs, `ip` and `ping`. Outside CI it skips loudly without them; under
//! `CI=true` it fails instead. Namespaces, links and pins are removed by guards, also when an
//! assertion fails.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use kino_agent::datapath::ipcache::IDENTITY_REMOTE_NODE;
use kino_agent::datapath::{
    AttachChange, Datapath, Direction, DropReason, Enforcement, EntryChange, IpPrefix, PolicyKey,
    PolicyUpdate, RoutingConfig, Verdict,
};
use kino_agent::devices::{VXLAN_DEVICE, VxlanConfig, ensure_vxlan, remove_vxlan};
use kino_agent::netlink::Netlink;
use support::cluster::{Mode, Node, PodSpec, Underlay, two_nodes};
use support::{
    ANSWER_WAIT, DROP_WAIT, EchoServer, World, counters, in_netns, in_node, kernel_tests_possible,
    run, tcp_exchange, tcp_exchange_dropped,
};

/// Cluster identities of the test pods.
const X: u32 = 1000;
const Y: u32 = 1001;
const Z: u32 = 1002;
/// World: no node may send it.
const WORLD: u32 = 2;
const PORT: u16 = 7070;

/// Lets only identity `allowed` into endpoint `id` (every protocol); replies of what the
/// endpoint opened pass by conntrack.
fn allow_only(datapath: &mut Datapath, id: u32, allowed: &[u32]) {
    let update = PolicyUpdate {
        enforcement: Enforcement {
            ingress: true,
            egress: false,
        },
        revision: 1,
        entries: EntryChange::Replace(
            allowed
                .iter()
                .map(|identity| {
                    (
                        PolicyKey::any_port(Direction::Ingress, *identity, 0),
                        Verdict::Allow,
                    )
                })
                .collect(),
        ),
    };
    datapath
        .policy_mut()
        .apply(id, &update)
        .unwrap_or_else(|e| panic!("policy of endpoint {id}: {e}"));
}

/// A pod of `node` pings `to` (either family); true once answered.
fn ping(node: &Node, pod: usize, to: impl Into<IpAddr>) -> bool {
    node.pod(pod).ping(to.into())
}

/// A pod of `node` pings `to`; true if nothing came back.
fn ping_dropped(node: &Node, pod: usize, to: impl Into<IpAddr>) -> bool {
    node.pod(pod).ping_dropped(to.into())
}

/// Pings `to` from the node's own namespace (its host stack); true once answered.
fn host_ping(node: &Node, to: impl Into<IpAddr>) -> bool {
    support::ping_ip_from_ns(&node.ns.name, to.into(), None)
}

/// A counter of `kino_vxlan` in the node (`ip -s link`: rx or tx packets).
fn vxlan_packets(node: &Node, tx: bool) -> u64 {
    let path = format!(
        "/sys/class/net/{VXLAN_DEVICE}/statistics/{}_packets",
        if tx { "tx" } else { "rx" }
    );
    let out = node.ns.exec(&["cat", &path]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path} in {}: {e}", node.ns.name))
}

/// How many IPv4 and IPv6 packets the node's stack has forwarded (`/proc/net/snmp`
/// ForwDatagrams, `/proc/net/snmp6` Ip6OutForwDatagrams, read inside its namespace).
fn forwarded(node: &Node) -> (u64, u64) {
    let snmp =
        String::from_utf8_lossy(&node.ns.exec(&["cat", "/proc/net/snmp"]).stdout).into_owned();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (
        ip.next().expect("Ip: names"),
        ip.next().expect("Ip: values"),
    );
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ForwDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .expect("ForwDatagrams");
    let snmp6 =
        String::from_utf8_lossy(&node.ns.exec(&["cat", "/proc/net/snmp6"]).stdout).into_owned();
    let v6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|value| value.trim().parse().ok())
        .expect("Ip6OutForwDatagrams");
    (v4, v6)
}

/// Drops counted under endpoint id 0 (the node's, not an endpoint's) for `reason`.
fn node_drops(node: &Node, reason: DropReason) -> u64 {
    counters(&node.datapath, 0).dropped(reason)
}

/// An echo server on both addresses of pod `k` of `node`.
fn serve(node: &Node, k: usize) -> EchoServer {
    let addresses = [IpAddr::from(node.pod(k).ip), node.pod6(k).into()];
    EchoServer::start_on(&node.pod(k).netns, &addresses, &[PORT])
}

/// Node a with pods of identities X and Y, node b with one of Z.
fn x_and_y_to_z(world: &World, underlay: &Underlay, mode: Mode) -> (Node, Node) {
    two_nodes(
        world,
        underlay,
        mode,
        [
            &[PodSpec::identity(X), PodSpec::identity(Y)],
            &[PodSpec::identity(Z)],
        ],
    )
}

#[test]
fn tunnel_mode_carries_pods_of_both_families_between_nodes() {
    if !kernel_tests_possible("tunnel_mode_carries_pods_of_both_families_between_nodes") {
        return;
    }
    let world = World::new();
    let underlay = Underlay::new(&world);
    let pods = [PodSpec::identity(X)];
    let (mut a, b) = two_nodes(&world, &underlay, Mode::Tunnel, [&pods, &pods]);
    assert_eq!(
        a.datapath.node_config().expect("node config"),
        RoutingConfig::Tunnel {
            vxlan_ifindex: a.vxlan_ifindex.expect("kino_vxlan")
        }
    );
    assert!(
        a.overlay
            .iter()
            .all(|h| h.change == Some(AttachChange::Attached)),
        "{:?}",
        a.overlay
    );
    let _servers = [serve(&a, 0), serve(&b, 0)];
    let tx_before = vxlan_packets(&a, true);

    for (from, to) in [(&a, &b), (&b, &a)] {
        let (v4, v6) = (to.pod(0).ip, to.pod6(0));
        assert!(ping(from, 0, v4), "{} -> {v4}", from.pod(0).ip);
        assert!(ping(from, 0, v6), "{} -> {v6}", from.pod6(0));
        assert!(tcp_exchange(&from.pod(0).netns, v4, PORT), "TCP -> {v4}");
        assert!(tcp_exchange(&from.pod(0).netns, v6, PORT), "TCP -> {v6}");
    }
    // The node's own traffic to a remote pod: routed to kino_vxlan, keyed by to_overlay.
    assert!(host_ping(&a, b.pod(0).ip), "node a -> {}", b.pod(0).ip);
    assert!(host_ping(&a, b.pod6(0)), "node a -> {}", b.pod6(0));
    // Nothing routes between the pod CIDRs but the tunnel: it carried all of it.
    assert!(
        vxlan_packets(&a, true) >= tx_before + 12,
        "kino_vxlan of node a sent {} packets",
        vxlan_packets(&a, true) - tx_before
    );
    assert!(counters(&b.datapath, b.pod(0).id).to_container_packets >= 6);

    // The stack routes something to the tunnel that no node hosts: dropped with its reason.
    let before = node_drops(&a, DropReason::NoTunnelEndpoint);
    a.exec_ok(&["ip", "route", "add", "198.18.0.0/24", "dev", VXLAN_DEVICE]);
    assert!(support::ping_ip_from_ns_dropped(
        &a.ns.name,
        Ipv4Addr::new(198, 18, 0, 1).into(),
        None
    ));
    assert!(node_drops(&a, DropReason::NoTunnelEndpoint) >= before + 2);

    // Attaching again (a restarted agent): the same programs are kept, the device adopted.
    let ifindex = a.vxlan_ifindex.expect("kino_vxlan");
    let node_path = a.ns.path();
    let (again, adopted) = in_netns(&node_path, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let netlink = Netlink::connect().expect("netlink");
                let adopted = ensure_vxlan(&netlink, &VxlanConfig::default())
                    .await
                    .expect("kino_vxlan again");
                (netlink, adopted)
            })
    });
    drop(again);
    assert_eq!(adopted, ifindex, "the device is adopted, not replaced");
    a.datapath
        .set_node_config(RoutingConfig::Tunnel {
            vxlan_ifindex: ifindex,
        })
        .expect("node config again");
    assert!(ping(&a, 0, b.pod(0).ip));
}

#[test]
fn the_identity_rides_in_the_vni_and_the_receiver_enforces_it() {
    if !kernel_tests_possible("the_identity_rides_in_the_vni_and_the_receiver_enforces_it") {
        return;
    }
    let world = World::new();
    let underlay = Underlay::new(&world);
    let (mut a, mut b) = x_and_y_to_z(&world, &underlay, Mode::Tunnel);
    let _servers = [serve(&a, 0), serve(&b, 0)];
    // Node b's ipcache swaps the identities of a's pods: only the VNI can tell them apart.
    let (x_pod, y_pod) = (a.pod(0).clone(), a.pod(1).clone());
    let tunnel = Some(IpAddr::from(a.addresses.underlay()));
    b.ipcache(IpPrefix::host(x_pod.ip.into()), Y, tunnel);
    b.ipcache(IpPrefix::host(y_pod.ip.into()), X, tunnel);
    b.ipcache(IpPrefix::host(a.pod6(0).into()), Y, tunnel);
    b.ipcache(IpPrefix::host(a.pod6(1).into()), X, tunnel);
    let z = b.pod(0).id;
    allow_only(&mut b.datapath, z, &[X]);

    let denied_before = counters(&b.datapath, z).dropped(DropReason::PolicyDeniedIngress);
    for target in [IpAddr::from(b.pod(0).ip), b.pod6(0).into()] {
        assert!(ping(&a, 0, target), "identity X -> {target}");
        assert!(tcp_exchange(&x_pod.netns, target, PORT), "X TCP {target}");
        assert!(ping_dropped(&a, 1, target), "identity Y -> {target}");
        assert!(tcp_exchange_dropped(&y_pod.netns, target, PORT));
    }
    // Dropped on the RECEIVING node by the destination's ingress policy.
    assert!(
        counters(&b.datapath, z).dropped(DropReason::PolicyDeniedIngress) >= denied_before + 6,
        "{:?}",
        counters(&b.datapath, z)
    );
    assert_eq!(
        counters(&a.datapath, y_pod.id).dropped(DropReason::PolicyDenied),
        0,
        "the sender's egress is not enforced"
    );

    // Replies of what a pod opened to a remote pod pass its ingress as replies; new
    // connections from there do not.
    let x = x_pod.id;
    allow_only(&mut a.datapath, x, &[]);
    let target = b.pod(0).ip;
    assert!(ping(&a, 0, target), "X's echo replies come back");
    assert!(tcp_exchange(&x_pod.netns, target, PORT), "X's TCP replies");
    assert!(ping_dropped(&b, 0, x_pod.ip), "a new flow into X is denied");
    assert!(counters(&a.datapath, x).dropped(DropReason::PolicyDeniedIngress) >= 2);
}

#[test]
fn forged_overlay_packets_are_dropped_with_their_reason() {
    if !kernel_tests_possible("forged_overlay_packets_are_dropped_with_their_reason") {
        return;
    }
    let world = World::new();
    let underlay = Underlay::new(&world);
    let pods = [PodSpec::identity(X)];
    let (_a, mut b) = two_nodes(&world, &underlay, Mode::Tunnel, [&pods, &pods]);
    // A fake node: a plain kernel VXLAN device per VNI, on an underlay address of its own.
    let fake = world.netns("fake");
    let fake_ip = Ipv4Addr::new(192, 0, 2, 99);
    underlay.plug(&fake, "pfake", fake_ip, None);
    let remote = b.addresses.underlay().to_string();
    for (device, vni, inner) in [("vxx", X, "10.244.0.50"), ("vxw", WORLD, "10.244.0.51")] {
        fake.exec_ok(&[
            "ip",
            "link",
            "add",
            device,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "remote",
            &remote,
            "dstport",
            "8472",
            "nolearning",
        ]);
        fake.exec_ok(&["ip", "link", "set", device, "arp", "off", "up"]);
        fake.exec_ok(&["ip", "addr", "add", &format!("{inner}/32"), "dev", device]);
    }
    // What reaches pod b: UDP datagrams counted by a socket in it.
    let sink = in_netns(&b.pod(0).netns, || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("udp bind")
    });
    let target = b.pod(0).ip.to_string();
    let send = |device: &str| {
        fake.exec_ok(&[
            "ip",
            "route",
            "replace",
            &format!("{target}/32"),
            "dev",
            device,
        ]);
        let script = format!("for i in 1 2 3; do echo x > /dev/udp/{target}/{PORT}; done");
        fake.exec_ok(&["bash", "-c", &script]);
    };

    // Not a node: dropped for its outer source, whatever identity it claims.
    let unknown = node_drops(&b, DropReason::UnknownSender);
    send("vxx");
    assert!(eventually(
        || node_drops(&b, DropReason::UnknownSender) >= unknown + 3
    ));
    assert_eq!(
        datagrams(&sink, DROP_WAIT),
        0,
        "the fake node reached the pod"
    );

    // Made a known node: its pod identities pass ...
    b.ipcache(IpPrefix::host(fake_ip.into()), IDENTITY_REMOTE_NODE, None);
    send("vxx");
    assert_eq!(
        datagrams(&sink, ANSWER_WAIT),
        3,
        "a known node's packets are delivered"
    );
    // ... but it cannot speak for world.
    let invalid = node_drops(&b, DropReason::InvalidIdentity);
    send("vxw");
    assert!(eventually(
        || node_drops(&b, DropReason::InvalidIdentity) >= invalid + 3
    ));
    assert_eq!(datagrams(&sink, DROP_WAIT), 0, "VNI 2 reached the pod");
}

/// Datagrams `sink` receives until none came for `wait`, at most 3.
fn datagrams(sink: &UdpSocket, wait: Duration) -> usize {
    sink.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 3 && sink.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Whether `condition` holds within [`ANSWER_WAIT`] (checked every 20 ms): for counters
/// the datapath updates as packets arrive, however late a loaded machine lets them.
fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + ANSWER_WAIT;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pod MTU of 1500 over a 1500-byte underlay: the tunnel cannot carry full-size packets.
const FULL_MTU: PodSpec = PodSpec {
    identity: X,
    mtu: Some(1500),
};

#[test]
fn too_big_packets_get_frag_needed_from_the_node_and_tcp_finds_the_path_mtu() {
    if !kernel_tests_possible(
        "too_big_packets_get_frag_needed_from_the_node_and_tcp_finds_the_path_mtu",
    ) {
        return;
    }
    let world = World::new();
    let underlay = Underlay::new(&world);
    let (a, b) = two_nodes(
        &world,
        &underlay,
        Mode::Tunnel,
        [&[FULL_MTU, FULL_MTU], &[FULL_MTU]],
    );
    let target = b.pod(0).ip.to_string();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &a.pod(0).ns_name,
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "5",
        "-M",
        "do",
        "-s",
        "1472",
        &target,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // From the node (its forwarding), not the pod's own kernel ("local error"): the source
    // is the address the node picks for the pod, its gateway or its underlay address.
    let from_node = [a.addresses.gateway(), a.addresses.underlay()]
        .iter()
        .any(|node| text.contains(&format!("From {node} ")));
    assert!(
        from_node && text.contains("Frag needed") && text.contains("mtu = 1450"),
        "a 1500-byte DF ping gets 'frag needed (mtu 1450)' from the node: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A fresh pod (no path MTU learnt yet) moves 10 MB each way over TCP.
    const SIZE: usize = 10 << 20;
    let listener = in_netns(&b.pod(0).netns, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("listen")
    });
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(ANSWER_WAIT)).expect("timeout");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read 10 MB");
        stream.write_all(&received).expect("write 10 MB back");
        received.len()
    });
    let to = SocketAddr::from((b.pod(0).ip, PORT));
    let stream = in_netns(&a.pod(1).netns, move || {
        std::net::TcpStream::connect_timeout(&to, ANSWER_WAIT).expect("connect")
    });
    let mut stream = stream;
    stream.set_read_timeout(Some(ANSWER_WAIT)).expect("timeout");
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    stream.write_all(&payload).expect("write 10 MB");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut back = Vec::new();
    stream.read_to_end(&mut back).expect("read 10 MB back");
    assert_eq!(server.join().expect("server"), SIZE);
    assert!(
        back == payload,
        "10 MB came back intact ({} bytes)",
        back.len()
    );
}

#[test]
fn native_mode_routes_pods_of_both_families_between_nodes() {
    if !kernel_tests_possible("native_mode_routes_pods_of_both_families_between_nodes") {
        return;
    }
    let world = World::new();
    let underlay = Underlay::new(&world);
    let (mut a, mut b) = x_and_y_to_z(&world, &underlay, Mode::Native);
    assert_eq!(
        a.datapath.node_config().expect("node config"),
        RoutingConfig::Native
    );
    let _servers = [serve(&a, 0), serve(&b, 0)];
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (v4, v6) = (to.pod(0).ip, to.pod6(0));
        assert!(ping(from, 0, v4), "{} -> {v4}", from.pod(0).ip);
        assert!(ping(from, 0, v6), "{} -> {v6}", from.pod6(0));
        assert!(tcp_exchange(&from.pod(0).netns, v4, PORT), "TCP -> {v4}");
        assert!(tcp_exchange(&from.pod(0).netns, v6, PORT), "TCP -> {v6}");
    }
    // BPF host routing: the packets leave by from_container's redirect to the underlay
    // device and enter by from_netdev's redirect into the pod, so neither node's stack
    // forwards any of them.
    let before = [forwarded(&a), forwarded(&b)];
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (v4, v6) = (to.pod(0).ip, to.pod6(0));
        assert!(ping(from, 0, v4) && ping(from, 0, v6), "-> {v4}, {v6}");
        assert!(tcp_exchange(&from.pod(0).netns, v4, PORT), "TCP -> {v4}");
        assert!(tcp_exchange(&from.pod(0).netns, v6, PORT), "TCP -> {v6}");
    }
    assert_eq!(
        [forwarded(&a), forwarded(&b)],
        before,
        "(IPv4, IPv6) packets forwarded by each node's stack"
    );
    // The receiver takes the source's identity from its ipcache.
    let z = b.pod(0).id;
    allow_only(&mut b.datapath, z, &[X]);
    let denied = counters(&b.datapath, z).dropped(DropReason::PolicyDeniedIngress);
    for target in [IpAddr::from(b.pod(0).ip), b.pod6(0).into()] {
        assert!(ping(&a, 0, target), "identity X -> {target}");
        assert!(ping_dropped(&a, 1, target), "identity Y -> {target}");
    }
    assert!(counters(&b.datapath, z).dropped(DropReason::PolicyDeniedIngress) >= denied + 4);
    let _ = &mut a;
}

#[test]
fn the_overlay_device_is_adopted_replaced_or_refused_with_a_reason() {
    if !kernel_tests_possible("the_overlay_device_is_adopted_replaced_or_refused_with_a_reason") {
        return;
    }
    let world = World::new();
    let node = world.netns("vx");
    let name = node.name.clone();
    in_node(&node, move || async move {
        let netlink = Netlink::connect().expect("netlink");
        let config = VxlanConfig::default();
        let first = ensure_vxlan(&netlink, &config).await.expect("created");
        let details = netlink
            .vxlan_by_name(VXLAN_DEVICE)
            .await
            .expect("read")
            .flatten()
            .expect("a VXLAN link");
        assert!(details.external && !details.learning && details.noarp && details.up);
        assert_eq!((details.port, details.mtu), (8472, 1450));
        assert_eq!(ensure_vxlan(&netlink, &config).await.expect("again"), first);

        let other = VxlanConfig {
            mtu: 1400,
            ..config
        };
        let replaced = ensure_vxlan(&netlink, &other).await.expect("replaced");
        assert_ne!(replaced, first, "another MTU: a new device");
        let details = netlink.vxlan_by_name(VXLAN_DEVICE).await.expect("read");
        assert_eq!(details.flatten().map(|d| d.mtu), Some(1400));

        assert!(remove_vxlan(&netlink).await.expect("removed"));
        assert!(!remove_vxlan(&netlink).await.expect("nothing left"));

        // Another collect-metadata device holds the port: a precise error, nothing made.
        let out = run(&[
            "ip", "-n", &name, "link", "add", "other", "type", "vxlan", "external", "dstport",
            "8472",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = ensure_vxlan(&netlink, &config)
            .await
            .expect_err("the port is taken");
        let text = err.to_string();
        assert!(
            text.contains("kino_vxlan") && text.contains("8472") && text.contains("delete it"),
            "{text}"
        );
        assert!(
            netlink
                .link_by_name(VXLAN_DEVICE)
                .await
                .expect("read")
                .is_none()
        );
        let bad = ensure_vxlan(&netlink, &VxlanConfig { port: 0, ..config }).await;
        assert!(bad.expect_err("port 0").to_string().contains("port"));
    });
}
