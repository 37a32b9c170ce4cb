//! Kernel tests of IPv6 endpoints (issue #4's /128 and default route via the gateway, issue
//! #5's enforcement for IPv6): dual-stack pods on a test-made node namespace with the real
//! eBPF programs, ping and TCP/UDP over IPv6 between pods and to the node, neighbour discovery
//! answered by the datapath, the source check, and policy that treats IPv6 as it treats IPv4.
//!
//! Needs root, bpffs, `ip` and `ping`. Outside CI it skips loudly without them; under
//! `CI=true` it fails instead. Namespaces, links and pins are removed by guards, also when an
//! assertion fails.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kino_agent::datapath::ipcache::IDENTITY_HOST;
use kino_agent::datapath::maps::FAMILY_IPV6;
use kino_agent::datapath::{
    Datapath, Direction, DropReason, Enforcement, EntryChange, IpPrefix, PolicyKey, PolicyUpdate,
    Verdict,
};
use kino_agent::devices::IPV6_FORWARDING;
use kino_agent::endpoint::{delete_endpoint_with, lxc_name};
use kino_agent::netlink::Netlink;
use support::{
    GATEWAY, GATEWAY_V6, Pod, World, counters, in_netns, in_node, kernel_tests_possible,
    node_with_dual_stack_pods, ping_ip_from_ns, ping_ip_from_ns_dropped, run, run_ok,
};

/// Identities of the pods in the policy test (cluster identities start at 256).
const A: u32 = 400;
const B: u32 = 401;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// What a command run inside namespace `ns` printed (whatever its exit status).
fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&run(&full).stdout).into_owned()
}

fn lxc(pod: &Pod) -> String {
    lxc_name(&pod.container_id, "eth0")
}

async fn lxc_mac(netlink: &Netlink, pod: &Pod) -> String {
    netlink
        .link_by_name(&lxc(pod))
        .await
        .expect("lookup")
        .expect("lxc")
        .mac
        .to_string()
}

/// Frames the pod receives on its `eth0`: an AF_PACKET socket opened inside its namespace.
struct PacketCapture {
    fd: OwnedFd,
}

impl PacketCapture {
    fn open(pod: &Pod) -> Self {
        let fd = in_netns(&pod.netns, || {
            let protocol = (libc::ETH_P_IPV6 as u16).to_be();
            // SAFETY: plain socket calls on a descriptor this closure owns; the structs passed
            // are initialised and their sizes given.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol));
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let fd = OwnedFd::from_raw_fd(fd);
                let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
                assert!(ifindex > 0, "no eth0 in the pod");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = protocol;
                addr.sll_ifindex = ifindex as i32;
                let bound = libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
                let timeout = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as u32,
                );
                fd
            }
        });
        PacketCapture { fd }
    }

    /// The next frame the pod received, or `None` after 200 ms without one.
    fn next_incoming(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        loop {
            // SAFETY: buf and from are valid for the lengths given.
            let (n, from) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                );
                (n, from)
            };
            if n < 0 {
                return None;
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
    }
}

/// The ones' complement sum of `bytes` as 16-bit big-endian words, added to `sum`.
fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Checks a captured frame is the advertisement a strict receiver (RFC 4861 7.1.2) accepts
/// for the gateway: hop limit 255, from the gateway, router|solicited|override, the lxc's MAC
/// as target link-layer address and as source MAC, a valid ICMPv6 checksum.
fn check_advertisement(frame: &[u8], lxc_mac: [u8; 6], pod: &Pod) {
    assert_eq!(frame.len(), 86, "{frame:02x?}");
    assert_eq!(&frame[6..12], &lxc_mac, "source MAC");
    assert_eq!(frame[14] >> 4, 6, "IP version");
    assert_eq!(
        u16::from_be_bytes([frame[18], frame[19]]),
        32,
        "payload length"
    );
    assert_eq!(frame[21], 255, "hop limit");
    assert_eq!(&frame[22..38], &GATEWAY_V6.octets(), "IPv6 source");
    let destination = &frame[38..54];
    assert!(
        destination == pod.ip6().octets() || destination[..2] == [0xfe, 0x80],
        "destination {destination:02x?}"
    );
    assert_eq!(frame[55], 0, "ICMPv6 code");
    assert_eq!(
        &frame[58..62],
        &[0xe0, 0, 0, 0],
        "flags router|solicited|override"
    );
    assert_eq!(&frame[62..78], &GATEWAY_V6.octets(), "target");
    assert_eq!(&frame[78..80], &[2, 1], "target link-layer address option");
    assert_eq!(&frame[80..86], &lxc_mac, "target link-layer address");
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&frame[22..54]);
    pseudo.extend_from_slice(&32u32.to_be_bytes());
    pseudo.extend_from_slice(&58u32.to_be_bytes());
    let sum = ones_complement_sum(ones_complement_sum(0, &pseudo), &frame[54..86]);
    assert_eq!(sum, 0xffff, "ICMPv6 checksum of {frame:02x?}");
}

/// Sets an endpoint's whole policy (as the policy sync does on first sight).
fn set(
    datapath: &mut Datapath,
    endpoint: u32,
    enforcement: Enforcement,
    entries: &[(PolicyKey, Verdict)],
) {
    let update = PolicyUpdate {
        enforcement,
        revision: 1,
        entries: EntryChange::Replace(entries.iter().copied().collect::<BTreeMap<_, _>>()),
    };
    datapath
        .policy_mut()
        .apply(endpoint, &update)
        .unwrap_or_else(|e| panic!("policy of endpoint {endpoint}: {e}"));
}

#[test]
fn dual_stack_pods_talk_over_ipv6_through_the_programs() {
    if !kernel_tests_possible("dual_stack_pods_talk_over_ipv6_through_the_programs") {
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
    let node_name = world.node.clone();
    let node_ns = node.name.clone();
    in_node(&node, move || async move {
        let (netlink, datapath) = node_with_dual_stack_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);

        // The node: IPv6 forwarding, the gateway usable at once, the pod CIDR and per-pod
        // /128 routes.
        let forwarding = std::fs::read_to_string(IPV6_FORWARDING).expect("sysctl");
        assert_eq!(forwarding.trim(), "1");
        let host = in_ns(
            &node_ns,
            &[
                "ip",
                "-6",
                "-o",
                "addr",
                "show",
                "dev",
                "kino_host",
                "scope",
                "global",
            ],
        );
        assert!(host.contains(&format!("{GATEWAY_V6}/128")), "{host}");
        assert!(!host.contains("tentative"), "{host}");
        let routes = in_ns(&node_ns, &["ip", "-6", "route"]);
        assert!(routes.contains("fd00:244::/120 dev kino_host"), "{routes}");
        for pod in [a, b] {
            let route = format!("{} dev {}", pod.ip6(), lxc(pod));
            assert!(routes.contains(&route), "no {route} in {routes}");
        }

        // The pod: its /128 (usable at once), a link route to the gateway and the default
        // route via it; no router advertisements or SLAAC.
        let addrs = in_ns(
            &a.ns_name,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ],
        );
        assert_eq!(addrs.lines().count(), 1, "{addrs}");
        assert!(addrs.contains(&format!("{}/128", a.ip6())), "{addrs}");
        assert!(!addrs.contains("tentative"), "{addrs}");
        let routes = in_ns(&a.ns_name, &["ip", "-6", "route"]);
        assert!(
            routes.contains(&format!("{GATEWAY_V6} dev eth0")),
            "{routes}"
        );
        assert!(
            routes.contains(&format!("default via {GATEWAY_V6} dev eth0")),
            "{routes}"
        );
        for sysctl in ["accept_ra", "autoconf"] {
            let path = format!("/proc/sys/net/ipv6/conf/eth0/{sysctl}");
            assert_eq!(in_ns(&a.ns_name, &["cat", &path]).trim(), "0", "{sysctl}");
        }

        // The maps: the endpoint under its IPv6 key, its /128 in the ipcache.
        let entry = datapath
            .maps()
            .get_ip(a.ip6().into())
            .expect("lookup")
            .expect("no kino_endpoints entry for the IPv6 address");
        assert_eq!((entry.id, entry.ipv6), (a.id, Some(a.ip6())));
        assert!(
            datapath
                .ipcache()
                .get(&IpPrefix::host(a.ip6().into()))
                .expect("lookup")
                .is_some(),
            "no ipcache /128"
        );

        // Traffic: pod ↔ pod by redirect, pod → its gateway and node → pod through the stack,
        // IPv4 as before.
        assert!(a.ping(b.ip6()), "a cannot ping b over IPv6");
        assert!(b.ping(a.ip6()), "b cannot ping a over IPv6");
        assert!(a.ping(GATEWAY_V6), "a cannot ping its IPv6 gateway");
        assert!(
            ping_ip_from_ns(&node_ns, b.ip6().into(), None),
            "the node cannot ping b over IPv6"
        );
        assert!(a.ping(b.ip) && a.ping(GATEWAY), "IPv4 broke");
        {
            let _server = b.serve_dual_stack(&[8080]);
            assert!(a.tcp(b.ip6(), 8080), "TCP over IPv6");
            assert!(a.udp(b.ip6(), 8080).exchange(), "UDP over IPv6");
            assert!(a.tcp(b.ip, 8080), "TCP over IPv4");
        }

        // Neighbour discovery: the datapath answered a's solicitation for the gateway with
        // the lxc's MAC (as a router), and the node resolved b on its lxc.
        let neighbour = in_ns(
            &a.ns_name,
            &["ip", "-6", "neigh", "show", &GATEWAY_V6.to_string()],
        );
        assert!(
            neighbour.contains(&lxc_mac(&netlink, a).await) && neighbour.contains("router"),
            "{neighbour}"
        );
        let node_neighbour = in_ns(
            &node_ns,
            &["ip", "-6", "neigh", "show", &b.ip6().to_string()],
        );
        assert!(node_neighbour.contains(&lxc(b)), "{node_neighbour}");
        // The advertisement itself, as the pod receives it.
        let capture = PacketCapture::open(a);
        run_ok(&[
            "ip", "netns", "exec", &a.ns_name, "ip", "-6", "neigh", "flush", "dev", "eth0",
        ]);
        assert!(
            a.ping(GATEWAY_V6),
            "a cannot ping its gateway after a flush"
        );
        let is_advertisement =
            |f: &Vec<u8>| f.len() > 54 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 136;
        let advertisement = std::iter::from_fn(|| capture.next_incoming())
            .take(100)
            .find(is_advertisement)
            .expect("the pod received no neighbour advertisement");
        let a_lxc_mac = netlink
            .link_by_name(&lxc(a))
            .await
            .expect("lookup")
            .expect("lxc")
            .mac
            .0;
        check_advertisement(&advertisement, a_lxc_mac, a);

        // Counters: a's pings to b and replies to b went by redirect, its pings to the
        // gateway through the stack; nothing was dropped (neighbour discovery, MLD included).
        let (ca, cb) = (counters(&datapath, a.id), counters(&datapath, b.id));
        assert!(ca.local_redirect_packets >= 4, "{ca:?}");
        assert!(ca.to_stack_packets >= 2, "{ca:?}");
        assert!(cb.to_container_packets >= 4, "{cb:?}");
        for c in [&ca, &cb] {
            assert_eq!(c.drops.iter().sum::<u64>(), 0, "{c:?}");
        }
        let tracked = datapath
            .conntrack()
            .list(1000, Some(FAMILY_IPV6))
            .expect("conntrack");
        assert!(
            tracked.entries.iter().any(|e| e.protocol == ICMPV6
                && e.source == IpAddr::from(a.ip6())
                && e.destination == IpAddr::from(b.ip6())),
            "no IPv6 conntrack entry for a's ping to b: {:?}",
            tracked.entries
        );

        // A spoofed IPv6 source is dropped and counted; posing as b is caught the same way.
        let spoofed = "fd00:244::99";
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &a.ns_name,
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{spoofed}/128"),
            "dev",
            "eth0",
            "nodad",
        ]);
        let before = counters(&datapath, a.id);
        let spoofed_source: IpAddr = spoofed.parse().expect("v6");
        assert!(
            ping_ip_from_ns_dropped(&a.ns_name, b.ip6().into(), Some(spoofed_source)),
            "a spoofed IPv6 ping reached b"
        );
        let after = counters(&datapath, a.id);
        assert!(
            after.dropped(DropReason::SpoofedSource)
                >= before.dropped(DropReason::SpoofedSource) + 2,
            "{after:?}"
        );
        assert_eq!(after.local_redirect_packets, before.local_redirect_packets);
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &a.ns_name,
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/128", b.ip6()),
            "dev",
            "eth0",
            "nodad",
        ]);
        assert!(
            ping_ip_from_ns_dropped(&a.ns_name, GATEWAY_V6.into(), Some(b.ip6().into())),
            "a ping posing as b reached the gateway"
        );
        assert!(
            counters(&datapath, a.id).dropped(DropReason::SpoofedSource)
                >= after.dropped(DropReason::SpoofedSource) + 2
        );
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &a.ns_name,
            "ip",
            "-6",
            "addr",
            "del",
            &format!("{}/128", b.ip6()),
            "dev",
            "eth0",
        ]);

        // The loader goes away (nothing unpinned): IPv6 keeps flowing.
        drop(datapath);
        assert!(a.ping(b.ip6()), "IPv6 stopped when the loader went away");
        let mut datapath = Datapath::load(
            std::path::Path::new(kino_agent::datapath::loader::DEFAULT_PIN_ROOT),
            &node_name,
        )
        .expect("reloading the datapath");

        // Deleting b takes its IPv6 map entry, ipcache /128 and route with it.
        let b_addresses = [IpAddr::from(b.ip), IpAddr::from(b.ip6())];
        delete_endpoint_with(&netlink, &mut datapath, &lxc(b), &b_addresses)
            .await
            .expect("delete b");
        assert!(
            datapath
                .maps()
                .get_ip(b.ip6().into())
                .expect("lookup")
                .is_none()
        );
        assert!(
            datapath
                .ipcache()
                .get(&IpPrefix::host(b.ip6().into()))
                .expect("lookup")
                .is_none()
        );
        let routes = in_ns(&node_ns, &["ip", "-6", "route"]);
        assert!(!routes.contains(&b.ip6().to_string()), "{routes}");
        assert!(a.ping_dropped(b.ip6()), "a still reaches the deleted b");
        assert!(a.ping(GATEWAY_V6), "a lost its gateway");
    });
}

#[test]
fn ipv6_is_enforced_like_ipv4_and_neighbour_discovery_never_is() {
    if !kernel_tests_possible("ipv6_is_enforced_like_ipv4_and_neighbour_discovery_never_is") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, A),
        Pod::new(&world, &ns[1], 1, B),
    ];
    let node_name = world.node.clone();
    let node_ns = node.name.clone();
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_dual_stack_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        let _server = b.serve_dual_stack(&[80, 81]);
        let both = |f: &dyn Fn(IpAddr) -> bool| (f(b.ip.into()), f(b.ip6().into()));

        // Nothing enforced: everything passes, in both families.
        assert_eq!(both(&|ip| a.tcp(ip, 80)), (true, true));
        assert_eq!(both(&|ip| a.ping(ip)), (true, true));

        // b's ingress enforced: TCP 80 from A and UDP 81 from every peer. The same verdicts
        // for IPv4 and IPv6: the policy map is keyed by identity, protocol and port.
        let ingress = Enforcement {
            ingress: true,
            egress: false,
        };
        set(
            &mut datapath,
            b.id,
            ingress,
            &[
                (
                    PolicyKey::port(Direction::Ingress, A, TCP, 80),
                    Verdict::Allow,
                ),
                (
                    PolicyKey::port(Direction::Ingress, 0, UDP, 81),
                    Verdict::Allow,
                ),
            ],
        );
        assert_eq!(both(&|ip| a.tcp(ip, 80)), (true, true), "TCP 80 from A");
        assert_eq!(
            both(&|ip| a.tcp_dropped(ip, 81)),
            (true, true),
            "TCP 81 is denied"
        );
        assert_eq!(
            both(&|ip| a.udp(ip, 81).exchange()),
            (true, true),
            "UDP 81 from anyone"
        );
        assert_eq!(both(&|ip| a.ping_dropped(ip)), (true, true), "no ICMP rule");
        let denied = counters(&datapath, b.id).dropped(DropReason::PolicyDeniedIngress);
        assert!(denied >= 4, "{denied}");

        // ICMPv6 is its own protocol (58), as in the compiler: a rule for ICMP (1) lets IPv4
        // pings in and not IPv6 ones, a rule for ICMPv6 the other way round.
        set(
            &mut datapath,
            b.id,
            ingress,
            &[(
                PolicyKey::any_port(Direction::Ingress, A, ICMP),
                Verdict::Allow,
            )],
        );
        assert!(a.ping(b.ip) && a.ping_dropped(b.ip6()), "ICMP rule");
        set(
            &mut datapath,
            b.id,
            ingress,
            &[(
                PolicyKey::any_port(Direction::Ingress, A, ICMPV6),
                Verdict::Allow,
            )],
        );
        assert!(a.ping_dropped(b.ip) && a.ping(b.ip6()), "ICMPv6 rule");

        // A deny of everything from A beats the allow-all for every peer, in both families.
        set(
            &mut datapath,
            b.id,
            ingress,
            &[
                (
                    PolicyKey::any_port(Direction::Ingress, 0, 0),
                    Verdict::Allow,
                ),
                (PolicyKey::any_port(Direction::Ingress, A, 0), Verdict::Deny),
            ],
        );
        assert_eq!(
            both(&|ip| a.tcp_dropped(ip, 80)),
            (true, true),
            "A is denied"
        );
        assert!(
            ping_ip_from_ns(&node_ns, b.ip6().into(), None),
            "the node (host) is allowed"
        );

        // a's egress enforced with only TCP 80 to the host allowed: its pings to the IPv6
        // gateway are denied, yet the neighbour discovery behind them is not: a still resolves
        // the gateway (the datapath's answer) and the node still resolves a (its
        // solicitation passes a's enforced ingress and a's answer its enforced egress).
        let egress = Enforcement {
            ingress: true,
            egress: true,
        };
        set(
            &mut datapath,
            a.id,
            egress,
            &[(
                PolicyKey::port(Direction::Egress, IDENTITY_HOST, TCP, 80),
                Verdict::Allow,
            )],
        );
        run_ok(&[
            "ip", "netns", "exec", &a.ns_name, "ip", "-6", "neigh", "flush", "all",
        ]);
        run_ok(&[
            "ip", "netns", "exec", &node_ns, "ip", "-6", "neigh", "flush", "all",
        ]);
        assert!(
            a.ping_dropped(GATEWAY_V6),
            "ICMPv6 echo to the host is not allowed"
        );
        assert!(
            a.ping_dropped(GATEWAY),
            "ICMP echo to the host is not allowed"
        );
        let neighbour = in_ns(
            &a.ns_name,
            &["ip", "-6", "neigh", "show", &GATEWAY_V6.to_string()],
        );
        assert!(
            neighbour.contains("lladdr") && !neighbour.contains("FAILED"),
            "a did not resolve its gateway under a deny-all policy: {neighbour:?}"
        );
        assert!(
            ping_ip_from_ns_dropped(&node_ns, a.ip6().into(), None),
            "a's ingress lets no echo in"
        );
        let node_neighbour = in_ns(
            &node_ns,
            &["ip", "-6", "neigh", "show", &a.ip6().to_string()],
        );
        assert!(
            node_neighbour.contains("lladdr") && !node_neighbour.contains("FAILED"),
            "the node did not resolve a under a deny-all policy: {node_neighbour:?}"
        );
        let ca = counters(&datapath, a.id);
        assert!(ca.dropped(DropReason::PolicyDenied) >= 4, "{ca:?}");
        assert!(ca.dropped(DropReason::PolicyDeniedIngress) >= 2, "{ca:?}");
    });
}

/// Sends one UDP datagram from the pod's namespace to `to` over a connected socket and
/// waits up to 2 s for what comes back: `Err(ConnectionRefused)` when the ICMP(v6) port
/// unreachable reached the socket, `Err(WouldBlock/TimedOut)` when nothing did.
fn udp_to_closed_port(pod: &Pod, to: std::net::SocketAddr) -> std::io::Result<usize> {
    in_netns(&pod.netns, move || {
        let bind: std::net::SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let socket = std::net::UdpSocket::bind(bind)?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        socket.send(b"x")?;
        let mut buf = [0u8; 16];
        socket.recv(&mut buf)
    })
}

/// Sends from the pod's namespace an ICMP "port unreachable" to `to` quoting a UDP datagram
/// `to:sport -> quoted_dst:dport` that was never sent (a raw ICMP socket: the kernel adds the
/// outer IPv4 header).
fn forged_port_unreachable(pod: &Pod, to: std::net::Ipv4Addr, quoted_dst: std::net::Ipv4Addr) {
    in_netns(&pod.netns, move || {
        let mut quoted = vec![0x45, 0, 0, 29, 0, 1, 0, 0, 64, 17, 0, 0];
        quoted.extend_from_slice(&to.octets());
        quoted.extend_from_slice(&quoted_dst.octets());
        let ip_sum = !(ones_complement_sum(0, &quoted) as u16);
        quoted[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        quoted.extend_from_slice(&[0x10, 0x92, 0x1e, 0x61, 0, 9, 0, 0]); // 4242 -> 7777
        let mut message = vec![3, 3, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&quoted);
        let sum = !(ones_complement_sum(0, &message) as u16);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: plain socket calls on a descriptor owned here; the address struct is
        // initialised and its size given.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
            let sent = libc::sendto(
                fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(
                sent,
                message.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    })
}

/// ICMP and ICMPv6 errors about a tracked connection's packet are RELATED: they pass both
/// enforcement points as replies do although no rule allows ICMP (a port unreachable reaches
/// the sender's socket as ECONNREFUSED; path MTU discovery works the same way). An error
/// quoting a packet no connection sent is a new ICMP packet for the policy: dropped, and
/// when allowed, passed without being tracked as a connection.
#[test]
fn icmp_errors_about_tracked_connections_pass_as_related() {
    if !kernel_tests_possible("icmp_errors_about_tracked_connections_pass_as_related") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, A),
        Pod::new(&world, &ns[1], 1, B),
    ];
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_dual_stack_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        let both = Enforcement {
            ingress: true,
            egress: true,
        };
        // Only UDP from a to b: nothing (no ICMP) into a, nothing out of b.
        let udp = |direction, remote| (PolicyKey::any_port(direction, remote, UDP), Verdict::Allow);
        set(&mut datapath, a.id, both, &[udp(Direction::Egress, B)]);
        set(&mut datapath, b.id, both, &[udp(Direction::Ingress, A)]);
        let before = (counters(&datapath, a.id), counters(&datapath, b.id));

        for to in [IpAddr::from(b.ip), IpAddr::from(b.ip6())] {
            let outcome = udp_to_closed_port(a, std::net::SocketAddr::new(to, 9));
            assert_eq!(
                outcome.as_ref().map_err(std::io::Error::kind),
                Err(std::io::ErrorKind::ConnectionRefused),
                "the port unreachable from {to} did not reach a's socket: {outcome:?}"
            );
        }
        let after = (counters(&datapath, a.id), counters(&datapath, b.id));
        assert_eq!(
            after.0.dropped(DropReason::PolicyDeniedIngress),
            before.0.dropped(DropReason::PolicyDeniedIngress),
            "{:?}",
            after.0
        );
        assert_eq!(
            after.1.dropped(DropReason::PolicyDenied),
            before.1.dropped(DropReason::PolicyDenied),
            "{:?}",
            after.1
        );

        // An error about a datagram a never sent: not related, so b's egress (which allows
        // nothing) drops it.
        forged_port_unreachable(b, a.ip, b.ip);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while counters(&datapath, b.id).dropped(DropReason::PolicyDenied)
            == after.1.dropped(DropReason::PolicyDenied)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            counters(&datapath, b.id).dropped(DropReason::PolicyDenied),
            after.1.dropped(DropReason::PolicyDenied) + 1,
            "the forged port unreachable was not dropped at b's egress"
        );

        // With ICMP allowed from b to a, the forged error passes the policy, but an error is
        // not a connection: no conntrack entry is made for it (one would let any non-echo
        // ICMP from a back to b through as its reply).
        let icmp =
            |direction, remote| (PolicyKey::any_port(direction, remote, ICMP), Verdict::Allow);
        set(
            &mut datapath,
            a.id,
            both,
            &[udp(Direction::Egress, B), icmp(Direction::Ingress, B)],
        );
        set(
            &mut datapath,
            b.id,
            both,
            &[udp(Direction::Ingress, A), icmp(Direction::Egress, A)],
        );
        let redirected = counters(&datapath, b.id).local_redirect_packets;
        forged_port_unreachable(b, a.ip, b.ip);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while counters(&datapath, b.id).local_redirect_packets == redirected
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            counters(&datapath, b.id).local_redirect_packets,
            redirected + 1,
            "the allowed forged error was not delivered to a"
        );
        let listing = datapath.conntrack().list(10_000, None).expect("ct list");
        let tracked: Vec<_> = listing
            .entries
            .iter()
            .filter(|e| e.protocol == ICMP && e.source == IpAddr::from(b.ip))
            .collect();
        assert!(tracked.is_empty(), "ICMP error tracked: {tracked:?}");
    });
}

/// Sends `payload` from the pod to `to` as one packet of IP protocol `protocol` (a raw socket
/// connected to `to`: the kernel adds the IP header) and waits for the socket's answer, up to
/// 10 s (an answer is expected, and a loaded machine may be slow to give it; it ends the wait
/// at once). A connected raw socket reports an ICMP(v6) error about its packet as UDP does:
/// protocol unreachable as `ENOPROTOOPT`, ICMPv6 parameter problem as `EPROTO`.
fn raw_exchange(pod: &Pod, to: IpAddr, protocol: u8, payload: &[u8]) -> std::io::Result<usize> {
    let payload = payload.to_vec();
    in_netns(&pod.netns, move || {
        let family = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket calls on a descriptor owned here; every struct passed is
        // initialised and its size given.
        unsafe {
            let fd = libc::socket(family, libc::SOCK_RAW, i32::from(protocol));
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let connected = match to {
                IpAddr::V4(ip) => {
                    let mut addr: libc::sockaddr_in = std::mem::zeroed();
                    addr.sin_family = libc::AF_INET as libc::sa_family_t;
                    addr.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
                    libc::connect(
                        fd.as_raw_fd(),
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
                IpAddr::V6(ip) => {
                    let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
                    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    addr.sin6_addr.s6_addr = ip.octets();
                    libc::connect(
                        fd.as_raw_fd(),
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            };
            if connected < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The error is expected: wait as long as any expected answer.
            let timeout = libc::timeval {
                tv_sec: support::ANSWER_WAIT.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) < 0
                || libc::send(fd.as_raw_fd(), payload.as_ptr().cast(), payload.len(), 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut buf = [0u8; 64];
            let received = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
            if received < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(received as usize)
        }
    })
}

/// An ICMP(v6) error about a tracked connection of a protocol without ports (GRE, ESP, ...)
/// is RELATED whatever the quoted payload's first byte: the datapath reads an ICMP echo
/// identifier only from a quoted ICMP(v6) packet, as it does for the connection's own packets.
/// Here a sends protocol 253 (RFC 3692's experimental) to b, which has no handler for it and
/// answers with protocol unreachable (ICMPv6: parameter problem, unknown next header); no rule
/// allows ICMP, yet the error must reach a's socket, for payloads starting with each family's
/// echo request and reply types (the quoted bytes 4-5 are not an identifier).
#[test]
fn icmp_errors_about_portless_protocols_pass_as_related() {
    if !kernel_tests_possible("icmp_errors_about_portless_protocols_pass_as_related") {
        return;
    }
    const EXPERIMENTAL: u8 = 253;
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, A),
        Pod::new(&world, &ns[1], 1, B),
    ];
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_dual_stack_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        let both = Enforcement {
            ingress: true,
            egress: true,
        };
        let allow = |direction, remote| {
            (
                PolicyKey::any_port(direction, remote, EXPERIMENTAL),
                Verdict::Allow,
            )
        };
        set(&mut datapath, a.id, both, &[allow(Direction::Egress, B)]);
        set(&mut datapath, b.id, both, &[allow(Direction::Ingress, A)]);
        let before = (counters(&datapath, a.id), counters(&datapath, b.id));

        let cases = [
            (IpAddr::from(b.ip), 0u8, libc::ENOPROTOOPT),
            (IpAddr::from(b.ip), 8, libc::ENOPROTOOPT),
            (IpAddr::from(b.ip6()), 128, libc::EPROTO),
            (IpAddr::from(b.ip6()), 129, libc::EPROTO),
        ];
        for (to, first, expected) in cases {
            let payload = [first, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
            let outcome = raw_exchange(a, to, EXPERIMENTAL, &payload);
            assert_eq!(
                outcome.as_ref().map_err(std::io::Error::raw_os_error),
                Err(Some(expected)),
                "the error about protocol {EXPERIMENTAL} from {to} (payload starting with \
                 {first}) did not reach a's socket: {outcome:?}"
            );
        }
        let after = (counters(&datapath, a.id), counters(&datapath, b.id));
        assert_eq!(
            after.0.dropped(DropReason::PolicyDeniedIngress),
            before.0.dropped(DropReason::PolicyDeniedIngress),
            "{:?}",
            after.0
        );
        assert_eq!(
            after.1.dropped(DropReason::PolicyDenied),
            before.1.dropped(DropReason::PolicyDenied),
            "{:?}",
            after.1
        );
    });
}
