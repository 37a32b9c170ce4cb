//! Kernel tests of policy enforcement (issue #5): the real eBPF programs on real lxcs with
//! the ipcache, the policy maps and conntrack, and real ICMP/TCP/UDP traffic between pods of a
//! test-made node namespace (and an "outside" namespace behind it for CIDR rules).
//!
//! Needs root, bpffs, `ip` and `ping`. Outside CI it skips loudly without them; under
//! `CI=true` it fails instead. Namespaces, links and pins are removed by guards, also when an
//! assertion fails.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use kino_agent::datapath::ipcache::{IDENTITY_HOST, IDENTITY_WORLD};
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::policy::PolicyMapError;
use kino_agent::datapath::{
    Datapath, Direction, DropReason, Enforcement, EntryChange, IpPrefix, IpcacheEntry, PolicyKey,
    PolicyUpdate, Verdict,
};
use kino_agent::endpoint::{delete_endpoint, lxc_name};
use support::{
    GATEWAY, Pod, World, counters, exchange, in_node, kernel_tests_possible, node_with_pods,
    ping_from_ns, ping_from_ns_dropped, run_ok, tcp_connect,
};

/// Identities of the pods (cluster identities start at 256).
const A: u32 = 300;
const B: u32 = 301;
const C: u32 = 302;
/// A CIDR identity (bit 24 set, as the compiler allocates them).
const CIDR_ID: u32 = (1 << 24) | 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ANY: u8 = 0;

const INGRESS: Enforcement = Enforcement {
    ingress: true,
    egress: false,
};
const EGRESS: Enforcement = Enforcement {
    ingress: false,
    egress: true,
};
const NONE: Enforcement = Enforcement {
    ingress: false,
    egress: false,
};

fn allow(key: PolicyKey) -> (PolicyKey, Verdict) {
    (key, Verdict::Allow)
}

fn deny(key: PolicyKey) -> (PolicyKey, Verdict) {
    (key, Verdict::Deny)
}

fn every(direction: Direction, remote: u32, protocol: u8) -> PolicyKey {
    PolicyKey::any_port(direction, remote, protocol)
}

fn port(direction: Direction, remote: u32, protocol: u8, port: u16) -> PolicyKey {
    PolicyKey::port(direction, remote, protocol, port)
}

/// Sets an endpoint's whole policy (a `replace` update, as the sync sends on first sight).
fn set(
    datapath: &mut Datapath,
    endpoint: u32,
    enforcement: Enforcement,
    entries: &[(PolicyKey, Verdict)],
) {
    let update = PolicyUpdate {
        enforcement,
        revision: 1,
        entries: EntryChange::Replace(entries.iter().copied().collect()),
    };
    datapath
        .policy_mut()
        .apply(endpoint, &update)
        .unwrap_or_else(|e| panic!("policy of endpoint {endpoint}: {e}"));
}

/// Applies a delta to an endpoint's entries, keeping its enforcement.
fn delta(
    datapath: &mut Datapath,
    endpoint: u32,
    upserts: &[(PolicyKey, Verdict)],
    deletes: &[PolicyKey],
) {
    let (enforcement, revision) = datapath
        .policy()
        .enforcement(endpoint)
        .expect("enforcement");
    let update = PolicyUpdate {
        enforcement,
        revision: revision + 1,
        entries: EntryChange::Delta {
            upserts: upserts.to_vec(),
            deletes: deletes.to_vec(),
        },
    };
    datapath
        .policy_mut()
        .apply(endpoint, &update)
        .unwrap_or_else(|e| panic!("delta of endpoint {endpoint}: {e}"));
}

fn dropped(datapath: &Datapath, endpoint: u32, reason: DropReason) -> u64 {
    counters(datapath, endpoint).dropped(reason)
}

#[test]
fn identity_port_and_range_rules_decide_who_gets_through() {
    if !kernel_tests_possible("identity_port_and_range_rules_decide_who_gets_through") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b"), world.netns("c")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, A),
        Pod::new(&world, &ns[1], 1, B),
        Pod::new(&world, &ns[2], 2, C),
    ];
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
        datapath
            .ipcache_mut()
            .upsert(&IpcacheEntry::new(
                IpPrefix::host(GATEWAY.into()),
                IDENTITY_HOST,
            ))
            .expect("host entry");
        let _server = b.serve(&[80, 443, 8000, 8005, 8010, 8080]);
        use Direction::{Egress, Ingress};

        // The endpoint manager's part: every endpoint's address is in the ipcache.
        for pod in &pods {
            assert_eq!(
                datapath
                    .ipcache()
                    .identity_of(pod.ip.into())
                    .expect("lookup"),
                pod.identity
            );
        }
        assert_eq!(
            datapath
                .ipcache()
                .identity_of(Ipv4Addr::new(198, 51, 100, 1).into())
                .expect("lookup"),
            IDENTITY_WORLD
        );

        // Nothing enforced: everything passes.
        assert!(a.tcp(b.ip, 80) && c.tcp(b.ip, 80) && a.ping(b.ip));

        // Enforcement on with no entry: default deny in that direction only.
        set(&mut datapath, b.id, INGRESS, &[]);
        let before = dropped(&datapath, b.id, DropReason::PolicyDeniedIngress);
        assert!(
            a.tcp_dropped(b.ip, 80),
            "default deny let a TCP connection in"
        );
        assert!(a.ping_dropped(b.ip), "default deny let a ping in");
        assert!(
            dropped(&datapath, b.id, DropReason::PolicyDeniedIngress) >= before + 3,
            "{:?}",
            counters(&datapath, b.id)
        );
        assert_eq!(dropped(&datapath, a.id, DropReason::PolicyDenied), 0);
        assert!(
            b.ping(a.ip),
            "b's egress is not enforced, and its replies are tracked"
        );

        // By identity.
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[allow(every(Ingress, A, ANY))],
        );
        assert!(
            a.tcp(b.ip, 80) && a.tcp(b.ip, 8080) && a.ping(b.ip),
            "A is allowed"
        );
        assert!(c.tcp_dropped(b.ip, 80) && c.ping_dropped(b.ip), "C is not");

        // By port, from every peer.
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[allow(port(Ingress, 0, TCP, 80))],
        );
        assert!(a.tcp(b.ip, 80) && c.tcp(b.ip, 80), "port 80 from anyone");
        assert!(a.tcp_dropped(b.ip, 8080), "another port");
        assert!(a.ping_dropped(b.ip), "another protocol");

        // By port range.
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[allow(PolicyKey::range(Ingress, A, TCP, 8000, 8009))],
        );
        assert!(a.tcp(b.ip, 8000) && a.tcp(b.ip, 8005), "inside the range");
        assert!(
            a.tcp_dropped(b.ip, 8010) && a.tcp_dropped(b.ip, 80),
            "outside the range"
        );
        assert!(c.tcp_dropped(b.ip, 8005), "the range is for A only");

        // Deny wins over allow: a peer's deny under an allow for every peer ...
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[
                allow(every(Ingress, 0, ANY)),
                deny(port(Ingress, C, TCP, 80)),
            ],
        );
        assert!(a.tcp(b.ip, 80), "A is allowed everything");
        assert!(c.tcp_dropped(b.ip, 80), "C's port 80 is denied");
        assert!(
            c.tcp(b.ip, 8080) && c.ping(b.ip),
            "the rest of C is allowed"
        );
        // ... a deny for every peer over one peer's allow ...
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[
                allow(every(Ingress, A, ANY)),
                deny(port(Ingress, 0, TCP, 8080)),
            ],
        );
        assert!(a.tcp(b.ip, 80), "A's allow");
        assert!(
            a.tcp_dropped(b.ip, 8080),
            "the deny for everyone wins over A's allow"
        );
        // ... and the compiler's form of a port denied inside an allowed range.
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[
                allow(PolicyKey::range(Ingress, A, TCP, 1, 79)),
                deny(port(Ingress, A, TCP, 80)),
                allow(PolicyKey::range(Ingress, A, TCP, 81, 1000)),
            ],
        );
        assert!(a.tcp_dropped(b.ip, 80), "the hole");
        assert!(a.tcp(b.ip, 443), "the range around it");
        assert!(a.tcp_dropped(b.ip, 8000), "past the range");
        // Entries of a direction that is not enforced do nothing, denies included.
        set(&mut datapath, b.id, NONE, &[deny(every(Ingress, 0, ANY))]);
        assert!(a.tcp(b.ip, 80) && c.ping(b.ip), "not enforced");
        set(&mut datapath, b.id, NONE, &[]);

        // Egress: default deny once enforced; allowed by identity and port.
        set(
            &mut datapath,
            a.id,
            EGRESS,
            &[allow(port(Egress, B, TCP, 80))],
        );
        let before = dropped(&datapath, a.id, DropReason::PolicyDenied);
        assert!(a.tcp(b.ip, 80), "a may reach b:80");
        assert!(a.tcp_dropped(b.ip, 443), "but not b:443");
        assert!(a.ping_dropped(c.ip), "nor c");
        assert!(a.ping_dropped(GATEWAY), "nor the node");
        // The node by its identity (host, from the ipcache), added as a delta.
        delta(
            &mut datapath,
            a.id,
            &[allow(every(Egress, IDENTITY_HOST, ANY))],
            &[],
        );
        assert!(a.ping(GATEWAY), "host is allowed now");
        assert!(a.ping_dropped(c.ip), "c still is not");
        let denied = dropped(&datapath, a.id, DropReason::PolicyDenied);
        assert!(denied >= before + 5, "{:?}", counters(&datapath, a.id));
        assert_eq!(
            dropped(&datapath, a.id, DropReason::PolicyDeniedIngress),
            0,
            "egress denials are counted as egress"
        );

        // The map as `kino bpf policy list` shows it, with hit counters.
        let listed = datapath.policy().list(a.id).expect("list");
        assert_eq!(listed.len(), 2, "{listed:?}");
        let to_b = listed
            .iter()
            .find(|e| e.key == port(Egress, B, TCP, 80))
            .expect("the b:80 entry");
        assert_eq!(to_b.verdict, Verdict::Allow);
        // Counted when looked up: a connection's first packet (and its first after each
        // change); established packets use the verdict cached in their conntrack entry.
        assert!(to_b.packets >= 1 && to_b.bytes > 0, "{to_b:?}");
        assert_eq!(
            datapath.policy().enforcement(a.id).expect("enforcement").0,
            EGRESS
        );
    });
}

#[test]
fn cidr_rules_match_through_ipcache_identities() {
    if !kernel_tests_possible("cidr_rules_match_through_ipcache_identities") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let outside = world.netns("o");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    // An "outside" network behind the node: 192.0.2.10 and 198.51.100.10 on one link.
    let node_side = format!("{}-x", world.prefix);
    run_ok(&[
        "ip",
        "netns",
        "exec",
        &node.name,
        "ip",
        "link",
        "add",
        &node_side,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    for address in ["192.0.2.1/24", "198.51.100.1/24"] {
        node.exec_ok(&["ip", "addr", "add", address, "dev", &node_side]);
    }
    node.exec_ok(&["ip", "link", "set", &node_side, "up"]);
    for address in ["192.0.2.10/24", "198.51.100.10/24"] {
        outside.exec_ok(&["ip", "addr", "add", address, "dev", "eth0"]);
    }
    outside.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    outside.exec_ok(&["ip", "route", "add", "10.244.0.0/24", "via", "192.0.2.1"]);

    let pods = [
        Pod::new(&world, &ns[0], 0, A),
        Pod::new(&world, &ns[1], 1, B),
    ];
    let node_name = world.node.clone();
    let (node_ns, outside_ns) = (node.name.clone(), outside.name.clone());
    let outside_path = outside.path();
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        use Direction::{Egress, Ingress};
        let (cidr_host, world_host) = (
            Ipv4Addr::new(192, 0, 2, 10),
            Ipv4Addr::new(198, 51, 100, 10),
        );
        let cidr: IpPrefix = "192.0.2.0/24".parse().expect("prefix");
        for host in [
            GATEWAY,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 1),
        ] {
            datapath
                .ipcache_mut()
                .upsert(&IpcacheEntry::new(
                    IpPrefix::host(host.into()),
                    IDENTITY_HOST,
                ))
                .expect("host entry");
        }
        datapath
            .ipcache_mut()
            .upsert(&IpcacheEntry::new(cidr, CIDR_ID))
            .expect("CIDR identity");
        assert_eq!(
            datapath
                .ipcache()
                .identity_of(cidr_host.into())
                .expect("lookup"),
            CIDR_ID
        );
        assert_eq!(
            datapath
                .ipcache()
                .identity_of(Ipv4Addr::new(192, 0, 2, 1).into())
                .expect("lookup"),
            IDENTITY_HOST,
            "the longest prefix wins"
        );
        assert!(
            a.ping(cidr_host) && a.ping(world_host),
            "nothing enforced yet"
        );

        // Egress to a CIDR, through its identity.
        set(
            &mut datapath,
            a.id,
            EGRESS,
            &[allow(every(Egress, CIDR_ID, ANY))],
        );
        assert!(a.ping(cidr_host), "192.0.2.0/24 is allowed");
        assert!(a.ping_dropped(world_host), "198.51.100.10 is world");
        // The ipcache decides: without the CIDR's entry its hosts are world too — also for a
        // connection that is running ...
        let _outside_server = support::EchoServer::start(&outside_path, &[7]);
        let mut flow = a.udp(cidr_host, 7);
        assert!(
            flow.exchange() && flow.exchange(),
            "a -> 192.0.2.10:7 (CIDR identity)"
        );
        assert!(datapath.ipcache_mut().remove(&cidr).expect("remove"));
        assert!(flow.exchange_dropped(), "the running flow is now to world");
        assert!(
            a.ping_dropped(cidr_host),
            "192.0.2.10 is world without its CIDR identity"
        );
        // ... and with it back, allowed again, with no change to the policy.
        datapath
            .ipcache_mut()
            .upsert(&IpcacheEntry::new(cidr, CIDR_ID))
            .expect("CIDR identity");
        assert!(a.ping(cidr_host), "allowed again");
        assert!(flow.exchange(), "and the running flow too");
        // world by its reserved identity.
        delta(
            &mut datapath,
            a.id,
            &[allow(every(Egress, IDENTITY_WORLD, ICMP))],
            &[],
        );
        assert!(a.ping(world_host), "world ICMP is allowed now");

        // Ingress from a CIDR: only its sources get in.
        set(
            &mut datapath,
            b.id,
            INGRESS,
            &[allow(every(Ingress, CIDR_ID, ICMP))],
        );
        let before = dropped(&datapath, b.id, DropReason::PolicyDeniedIngress);
        assert!(
            ping_from_ns(&outside_ns, b.ip, Some(cidr_host)),
            "from 192.0.2.10 (CIDR identity)"
        );
        assert!(
            ping_from_ns_dropped(&outside_ns, b.ip, Some(world_host)),
            "from 198.51.100.10 (world)"
        );
        assert!(dropped(&datapath, b.id, DropReason::PolicyDeniedIngress) >= before + 2);
        // The node is host (its addresses are in the ipcache as host).
        assert!(
            ping_from_ns_dropped(&node_ns, b.ip, Some(GATEWAY)),
            "host is not allowed yet"
        );
        delta(
            &mut datapath,
            b.id,
            &[allow(every(Ingress, IDENTITY_HOST, ANY))],
            &[],
        );
        assert!(
            ping_from_ns(&node_ns, b.ip, Some(GATEWAY)),
            "host is allowed"
        );
        assert!(
            ping_from_ns(&node_ns, b.ip, Some(Ipv4Addr::new(198, 51, 100, 1))),
            "from another address of the node: host too"
        );
    });
}

#[test]
fn conntrack_passes_replies_but_not_new_connections_back() {
    if !kernel_tests_possible("conntrack_passes_replies_but_not_new_connections_back") {
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
        let (_netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        let _servers = (a.serve(&[80]), b.serve(&[80]));
        use Direction::{Egress, Ingress};
        // Both directions enforced on both pods; only a -> b:80 and a's pings to b are
        // allowed (at a's egress and b's ingress). Nothing is allowed into a or out of b.
        set(
            &mut datapath,
            a.id,
            Enforcement::BOTH,
            &[
                allow(port(Egress, B, TCP, 80)),
                allow(every(Egress, B, ICMP)),
            ],
        );
        set(
            &mut datapath,
            b.id,
            Enforcement::BOTH,
            &[
                allow(port(Ingress, A, TCP, 80)),
                allow(every(Ingress, A, ICMP)),
            ],
        );

        // Replies pass b's egress and a's ingress because they belong to a's connection.
        let mut stream = tcp_connect(&a.netns, b.ip, 80).expect("a connects to b:80");
        for _ in 0..5 {
            assert!(
                exchange(&mut stream),
                "a reply of an allowed connection was dropped"
            );
        }
        assert!(a.ping(b.ip), "echo replies are tracked");
        // New connections the other way are not replies.
        let before = dropped(&datapath, b.id, DropReason::PolicyDenied);
        assert!(b.tcp_dropped(a.ip, 80), "b opened a connection to a");
        assert!(b.ping_dropped(a.ip), "b pinged a");
        assert!(dropped(&datapath, b.id, DropReason::PolicyDenied) >= before + 3);

        // Both points recorded the connection, as `kino bpf ct list` shows.
        let listing = datapath.conntrack().list(10_000, None).expect("ct list");
        let of = |direction: Direction| {
            listing
                .entries
                .iter()
                .find(|e| {
                    e.protocol == TCP
                        && e.source == std::net::IpAddr::from(a.ip)
                        && e.destination == std::net::IpAddr::from(b.ip)
                        && e.destination_port == 80
                        && e.direction == direction
                        && e.rx_packets >= 5
                })
                .unwrap_or_else(|| panic!("no {direction:?} entry of a -> b:80: {listing:?}"))
                .clone()
        };
        let (out, into) = (of(Direction::Egress), of(Direction::Ingress));
        assert_eq!((out.endpoint_id, into.endpoint_id), (a.id, b.id));
        assert_eq!((out.source_identity, into.source_identity), (A, A));
        assert!(out.tx_packets >= 6, "{out:?}");
        assert!(out.flags & kino_agent::datapath::conntrack::CT_F_SEEN_NON_SYN != 0);
        assert!(
            out.expires_in > Duration::from_secs(3600),
            "established TCP: {out:?}"
        );
        assert!(
            listing.entries.iter().any(|e| e.protocol == ICMP
                && e.source == std::net::IpAddr::from(a.ip)
                && e.direction == Direction::Ingress
                && e.rx_packets >= 2),
            "a's pings: {listing:?}"
        );
        assert!(
            !listing
                .entries
                .iter()
                .any(|e| e.source == std::net::IpAddr::from(b.ip) && e.destination_port == 80),
            "denied connections are not recorded: {listing:?}"
        );

        // Closing both ways shortens the entry's life.
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let closed = datapath
                .conntrack()
                .list(10_000, None)
                .expect("ct list")
                .entries
                .into_iter()
                .find(|e| e.source_port == out.source_port && e.direction == Direction::Egress)
                .is_some_and(|e| e.expires_in <= Duration::from_secs(10));
            if closed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the closed connection keeps its long lifetime"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // GC keeps live entries.
        let live = datapath
            .conntrack()
            .list(10_000, None)
            .expect("list")
            .entries
            .len();
        datapath.conntrack_mut().gc(|_| false).expect("gc");
        assert_eq!(
            datapath
                .conntrack()
                .list(10_000, None)
                .expect("list")
                .entries
                .len(),
            live
        );
    });
}

#[test]
fn policy_changes_apply_to_running_traffic_and_survive_a_reload() {
    if !kernel_tests_possible("policy_changes_apply_to_running_traffic_and_survive_a_reload") {
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
        let (netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        let _server = b.serve(&[5353]);
        use Direction::Ingress;
        let dns = port(Ingress, A, UDP, 5353);
        // n exchanges expected to be answered / dropped: how many were.
        let exchanges =
            |flow: &mut support::UdpFlow, n: usize| (0..n).filter(|_| flow.exchange()).count();
        let drops = |flow: &mut support::UdpFlow, n: usize| {
            (0..n).filter(|_| flow.exchange_dropped()).count()
        };

        // One UDP flow (one 5-tuple, tracked) runs through every change below.
        let mut flow = a.udp(b.ip, 5353);
        assert_eq!(exchanges(&mut flow, 3), 3, "no policy");
        set(&mut datapath, b.id, INGRESS, &[allow(dns)]);
        assert_eq!(exchanges(&mut flow, 3), 3, "allowed");
        // A deny added while the flow runs stops it at once ...
        let before = dropped(&datapath, b.id, DropReason::PolicyDeniedIngress);
        delta(&mut datapath, b.id, &[deny(dns)], &[]);
        assert_eq!(drops(&mut flow, 3), 3, "denied");
        assert!(dropped(&datapath, b.id, DropReason::PolicyDeniedIngress) >= before + 3);
        // ... and removed, lets it through again.
        delta(&mut datapath, b.id, &[allow(dns)], &[]);
        assert_eq!(exchanges(&mut flow, 3), 3, "allowed again");
        delta(&mut datapath, b.id, &[], &[dns]);
        assert_eq!(
            drops(&mut flow, 2),
            2,
            "the allow was removed: default deny"
        );
        let range = PolicyKey::range(Ingress, A, UDP, 5300, 5399);
        delta(&mut datapath, b.id, &[allow(range)], &[]);
        assert_eq!(exchanges(&mut flow, 3), 3, "allowed by a range");

        // An invalid delta writes nothing.
        let overlapping = PolicyKey::range(Ingress, A, UDP, 5350, 5450);
        let error = datapath
            .policy_mut()
            .apply_entries(
                b.id,
                &EntryChange::Delta {
                    upserts: vec![allow(overlapping)],
                    deletes: vec![],
                },
            )
            .expect_err("overlapping ranges");
        assert!(matches!(error, PolicyMapError::Overlap { .. }), "{error}");
        assert_eq!(datapath.policy().entries(b.id).len(), 1);

        // Enforcement alone, under the running flow: off lets it through, on stops it again
        // (its verdict cached in conntrack is dropped with each change).
        let generation = datapath.policy().generation(b.id).expect("generation");
        delta(&mut datapath, b.id, &[], &[range]);
        assert_eq!(drops(&mut flow, 2), 2, "no entry: default deny");
        datapath
            .policy_mut()
            .set_enforcement(b.id, NONE, 5)
            .expect("enforcement off");
        assert_eq!(exchanges(&mut flow, 2), 2, "not enforced");
        datapath
            .policy_mut()
            .set_enforcement(b.id, INGRESS, 6)
            .expect("enforcement on");
        assert_eq!(drops(&mut flow, 2), 2, "enforced again");
        assert!(datapath.policy().generation(b.id).expect("generation") > generation);
        delta(&mut datapath, b.id, &[allow(range)], &[]);
        assert_eq!(exchanges(&mut flow, 2), 2, "allowed by the range again");
        // The peer changing identity under the running flow: b allows A only.
        let entry = datapath
            .maps()
            .get(a.ip)
            .expect("lookup")
            .expect("a's entry");
        let as_c = kino_agent::datapath::EndpointEntry {
            identity: C,
            ..entry.clone()
        };
        datapath.maps_mut().upsert(&as_c).expect("a becomes C");
        assert_eq!(drops(&mut flow, 2), 2, "a as C is denied");
        datapath.maps_mut().upsert(&entry).expect("a is A again");
        assert_eq!(exchanges(&mut flow, 2), 2, "a as A is allowed");

        // A large replace: 20 000 more entries; then back. Only the difference is written.
        let mut big: BTreeMap<PolicyKey, Verdict> = (0..20_000u32)
            .map(|i| allow(port(Ingress, 1_000 + i, TCP, 80)))
            .collect();
        big.insert(range, Verdict::Allow);
        let started = Instant::now();
        let stats = datapath
            .policy_mut()
            .apply_entries(b.id, &EntryChange::Replace(big.clone()))
            .expect("replace");
        let took = started.elapsed();
        eprintln!("replace adding 20000 entries: {took:?} ({stats:?})");
        assert_eq!(
            (stats.upserted, stats.deleted, stats.unchanged),
            (20_000, 0, 1)
        );
        assert_eq!(
            exchanges(&mut flow, 3),
            3,
            "still allowed with 20 001 entries"
        );
        let prefixes = |datapath: &Datapath| {
            datapath
                .policy()
                .dump_prefixes()
                .expect("dump")
                .iter()
                .filter(|(endpoint, ..)| *endpoint == b.id)
                .count()
        };
        let range_prefixes = kino_agent::datapath::policy::port_prefixes(5300, 5399).len();
        assert_eq!(prefixes(&datapath), 20_000 + range_prefixes);
        let started = Instant::now();
        let stats = datapath
            .policy_mut()
            .apply_entries(b.id, &EntryChange::Replace([allow(range)].into()))
            .expect("replace");
        eprintln!(
            "replace removing 20000 entries: {:?} ({stats:?})",
            started.elapsed()
        );
        assert_eq!((stats.upserted, stats.deleted), (0, 20_000));
        assert_eq!(prefixes(&datapath), range_prefixes);

        // A reload (agent restart) reads the policy back from the pinned maps; traffic and
        // enforcement never stop.
        let expected = datapath.policy().entries(b.id);
        drop(datapath);
        assert_eq!(exchanges(&mut flow, 2), 2, "while no agent runs");
        let mut datapath =
            Datapath::load(Path::new(DEFAULT_PIN_ROOT), &node_name).expect("reloading");
        assert_eq!(datapath.policy().entries(b.id), expected);
        assert_eq!(
            datapath.policy().enforcement(b.id).expect("state").0,
            INGRESS
        );
        assert_eq!(exchanges(&mut flow, 2), 2, "after the reload");
        delta(&mut datapath, b.id, &[deny(range)], &[]);
        assert_eq!(drops(&mut flow, 2), 2, "a deny by the new loader");

        // Deleting the endpoint takes its policy and ipcache entry with it.
        delete_endpoint(
            &netlink,
            &mut datapath,
            &lxc_name(&b.container_id, "eth0"),
            Some(b.ip),
        )
        .await
        .expect("delete b");
        assert!(datapath.policy().entries(b.id).is_empty());
        assert_eq!(prefixes(&datapath), 0);
        assert_eq!(datapath.policy().enforcement(b.id).expect("state").0, NONE);
        assert_eq!(
            datapath
                .ipcache()
                .get(&IpPrefix::host(b.ip.into()))
                .expect("get"),
            None
        );
    });
}

/// A snapshot of the policy stream (after a compiler restart: new epoch) does not take the
/// streamed ipcache away while it arrives — a CIDR peer stays what it was until the snapshot
/// says otherwise — and at its synced message the prefixes it did not name are gone.
#[test]
fn a_policy_snapshot_keeps_streamed_prefixes_until_it_is_synced() {
    if !kernel_tests_possible("a_policy_snapshot_keeps_streamed_prefixes_until_it_is_synced") {
        return;
    }
    use kino_agent::endpoint::manager::{EndpointManager, ManagerConfig, NodeNetwork};
    use kino_api::policy::{IpCacheEntry, WatchEndpointPolicyResponse};
    let world = World::new();
    let node = world.netns("node");
    let _pins = world.pins();
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (netlink, datapath) = node_with_pods(&node_name, &[]).await;
        let state = tempfile::tempdir().expect("state dir");
        // Nothing here calls another service: the fake suite answers if anything did.
        let peers = support::fake_peers::FakePeers::new().peers();
        let manager = EndpointManager::new(
            ManagerConfig {
                node: node_name.clone(),
                pool: "default".into(),
                mtu: 0,
            },
            NodeNetwork {
                gateway_v4: GATEWAY,
                gateway_v6: None,
                pod_cidrs: vec!["10.244.0.0/24".into()],
            },
            peers,
            state.path(),
            netlink,
            datapath,
        )
        .expect("manager");
        let cidr = |prefix: &str, identity: u32| IpCacheEntry {
            prefix: prefix.into(),
            identity,
            ..Default::default()
        };
        let identity_of = |prefix: &str| {
            let manager = &manager;
            let prefix: kino_agent::datapath::IpPrefix = prefix.parse().expect("prefix");
            async move {
                manager
                    .bpf_ipcache()
                    .await
                    .expect("ipcache")
                    .into_iter()
                    .find(|e| e.prefix == prefix)
                    .map(|e| e.identity)
            }
        };
        // First stream: two CIDRs.
        manager
            .apply_policy_message(&WatchEndpointPolicyResponse {
                reset: true,
                synced: true,
                revision: 5,
                ipcache_upserts: vec![
                    cidr("100.64.0.0/24", CIDR_ID),
                    cidr("100.64.1.0/24", CIDR_ID + 1),
                ],
                ..Default::default()
            })
            .await
            .expect("first snapshot");
        assert_eq!(identity_of("100.64.0.0/24").await, Some(CIDR_ID));
        assert_eq!(identity_of("100.64.1.0/24").await, Some(CIDR_ID + 1));

        // A new stream's snapshot, in two messages: the first names only the second CIDR
        // (renumbered); the first CIDR keeps its entry meanwhile.
        manager
            .apply_policy_message(&WatchEndpointPolicyResponse {
                reset: true,
                revision: 9,
                ipcache_upserts: vec![cidr("100.64.1.0/24", CIDR_ID + 7)],
                ..Default::default()
            })
            .await
            .expect("snapshot, part 1");
        assert_eq!(identity_of("100.64.0.0/24").await, Some(CIDR_ID));
        assert_eq!(identity_of("100.64.1.0/24").await, Some(CIDR_ID + 7));
        // Its end: what it did not name is gone.
        manager
            .apply_policy_message(&WatchEndpointPolicyResponse {
                synced: true,
                revision: 9,
                ..Default::default()
            })
            .await
            .expect("snapshot, synced");
        assert_eq!(identity_of("100.64.0.0/24").await, None);
        assert_eq!(identity_of("100.64.1.0/24").await, Some(CIDR_ID + 7));
        assert_eq!(manager.realized_revision().await, 9);
    });
}
