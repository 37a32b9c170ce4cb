//! Kernel tests of conntrack hygiene: deleting an endpoint removes the `kino_ct` entries of
//! its address (at its own points and at its peers'), and the GC removes lapsed entries —
//! a pass on demand and the periodic task on its own handle of the pinned map — while live
//! ones stay. And no allowed reply is dropped when churn in a full table evicted the entries
//! of a live connection.
//!
//! Needs root, bpffs, `ip` and `ping`; skips loudly outside CI without them. Every
//! namespace and pin is removed by guards, also when an assertion fails.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use std::io::{Read, Write};

use aya::maps::{HashMap, Map, MapData};
use kino_agent::datapath::conntrack::{CT_MAP, CtEntryRaw, CtKeyRaw, monotonic_seconds};
use kino_agent::datapath::loader::{DEFAULT_PIN_ROOT, MapCapacities};
use kino_agent::datapath::maps::FAMILY_IPV4;
use kino_agent::datapath::{
    ConntrackMap, CtEntry, Datapath, Direction, DropReason, Enforcement, EntryChange, PolicyKey,
    PolicyUpdate, Verdict,
};
use kino_agent::devices::{NodeDevicesConfig, ensure_node_devices};
use kino_agent::endpoint::{create_endpoint, delete_endpoint, lxc_name};
use kino_agent::netlink::Netlink;
use support::{
    GATEWAY, Pod, World, counters, in_netns, in_node, kernel_tests_possible, node_with_pods,
    tcp_connect,
};

/// Every live conntrack entry.
fn entries(datapath: &Datapath) -> Vec<CtEntry> {
    datapath
        .conntrack()
        .list(100_000, None)
        .expect("listing conntrack")
        .entries
}

fn involves(entry: &CtEntry, ip: Ipv4Addr) -> bool {
    entry.source == IpAddr::from(ip) || entry.destination == IpAddr::from(ip)
}

/// The node's pinned conntrack map, opened as the test's own raw handle (to plant entries).
fn raw_ct(node: &str) -> HashMap<MapData, CtKeyRaw, CtEntryRaw> {
    let pin = Path::new(DEFAULT_PIN_ROOT).join(node).join(CT_MAP);
    let data = MapData::from_pin(&pin).expect("opening the pinned kino_ct");
    HashMap::try_from(Map::from_map_data(data).expect("map")).expect("hash map")
}

/// A UDP entry 10.99.0.1:`port` → 10.99.0.2:53 that lapses at `expires`.
fn plant(ct: &mut HashMap<MapData, CtKeyRaw, CtEntryRaw>, port: u16, expires: u32) -> CtKeyRaw {
    let mut key = CtKeyRaw {
        sport: port.to_be_bytes(),
        dport: 53u16.to_be_bytes(),
        protocol: 17,
        family: FAMILY_IPV4,
        direction: 2,
        ..Default::default()
    };
    key.saddr[..4].copy_from_slice(&[10, 99, 0, 1]);
    key.daddr[..4].copy_from_slice(&[10, 99, 0, 2]);
    let value = CtEntryRaw {
        expires,
        tx_packets: 1,
        ..Default::default()
    };
    ct.insert(key, value, 0).expect("planting an entry");
    key
}

#[test]
fn deleting_an_endpoint_removes_its_connections() {
    if !kernel_tests_possible("deleting_an_endpoint_removes_its_connections") {
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
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
        let server = c.serve(&[7070]);
        assert!(a.ping(b.ip), "a cannot ping b");
        assert!(a.ping(c.ip), "a cannot ping c");
        assert!(c.ping(b.ip), "c cannot ping b");
        assert!(a.tcp(c.ip, 7070), "a cannot reach c over TCP");
        drop(server);
        let before = entries(&datapath);
        let of_c = before.iter().filter(|e| involves(e, c.ip)).count();
        // a→c (ICMP, TCP) and c→b (ICMP), each at the egress of its source and the ingress
        // of its destination.
        assert!(of_c >= 6, "{before:#?}");
        let a_b = before
            .iter()
            .filter(|e| involves(e, a.ip) && involves(e, b.ip))
            .count();
        assert!(a_b >= 2, "{before:#?}");

        delete_endpoint(
            &netlink,
            &mut datapath,
            &lxc_name(&c.container_id, "eth0"),
            Some(c.ip),
        )
        .await
        .expect("deleting c");
        let after = entries(&datapath);
        assert!(
            after.iter().all(|e| !involves(e, c.ip)),
            "entries of the deleted endpoint's address are left: {after:#?}"
        );
        // Also none that merely lapsed and are hidden from the listing: the raw map.
        let raw = raw_ct(&node_name);
        let c_octets = c.ip.octets();
        let left = raw
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.saddr[..4] == c_octets || k.daddr[..4] == c_octets)
            .count();
        assert_eq!(left, 0);
        // Other endpoints' connections stay.
        assert_eq!(
            after
                .iter()
                .filter(|e| involves(e, a.ip) && involves(e, b.ip))
                .count(),
            a_b
        );
        assert!(a.ping(b.ip), "a lost b");
    });
}

#[test]
fn the_gc_removes_lapsed_entries_and_keeps_live_ones() {
    if !kernel_tests_possible("the_gc_removes_lapsed_entries_and_keeps_live_ones") {
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
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_pods(&node_name, &pods).await;
        let (a, b) = (&pods[0], &pods[1]);
        assert!(a.ping(b.ip), "a cannot ping b");
        let mut raw = raw_ct(&node_name);
        let real: Vec<CtKeyRaw> = raw.keys().filter_map(Result::ok).collect();
        assert!(real.len() >= 2, "ping made no entries");

        // Lapsed (the datapath ignores them) and live entries, on the datapath's clock.
        let now = monotonic_seconds();
        let lapsed = plant(&mut raw, 1000, now - 5);
        let live = plant(&mut raw, 1001, now + 600);
        // A real one made to lapse: its expiry moved into the past.
        let mut aged = raw.get(&real[0], 0).expect("real entry");
        aged.expires = now - 1;
        raw.insert(real[0], aged, 0).expect("ageing");

        let removed = datapath.conntrack_mut().gc(|_| false).expect("gc");
        assert_eq!(removed, 2);
        let keys: Vec<CtKeyRaw> = raw.keys().filter_map(Result::ok).collect();
        assert!(
            !keys.contains(&lapsed) && !keys.contains(&real[0]),
            "{keys:?}"
        );
        assert!(keys.contains(&live));
        assert!(real[1..].iter().all(|k| keys.contains(k)));

        // The periodic task on its own handle of the pinned map.
        let task = tokio::spawn(
            ConntrackMap::open_pinned(datapath.pin_dir())
                .expect("opening the pin")
                .gc_every(Duration::from_millis(200)),
        );
        let lapsed = plant(&mut raw, 1002, monotonic_seconds() - 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while raw.get(&lapsed, 0).is_ok() {
            assert!(Instant::now() < deadline, "the GC task left a lapsed entry");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            raw.get(&live, 0).is_ok(),
            "the GC task removed a live entry"
        );
        task.abort();
        assert!(a.ping(b.ip), "traffic broke");
    });
}

#[test]
fn a_full_conntrack_table_is_purged_of_one_address() {
    if !kernel_tests_possible("a_full_conntrack_table_is_purged_of_one_address") {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let _pins = world.pins();
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (_netlink, mut datapath) = node_with_pods(&node_name, &[]).await;
        let mut raw = raw_ct(&node_name);
        let started = Instant::now();
        let none = datapath
            .conntrack_mut()
            .remove_addresses(&[IpAddr::from([10, 77, 0, 7])])
            .expect("purge");
        eprintln!("purged {none} of an empty table in {:?}", started.elapsed());
        let far = monotonic_seconds() + 600;
        // 100 000 connections of 10.99.0.1, 100 of them with 10.77.0.7 at the other end.
        let gone = IpAddr::from([10, 77, 0, 7]);
        for i in 0..100_000u32 {
            let mut key = plant(&mut raw, (i % 60_000) as u16, far);
            raw.remove(&key).expect("re-keying");
            key.dport = ((i / 60_000) as u16).to_be_bytes();
            if i % 1000 == 0 {
                key.daddr[..4].copy_from_slice(&[10, 77, 0, 7]);
            }
            let value = CtEntryRaw {
                expires: far,
                ..Default::default()
            };
            raw.insert(key, value, 0).expect("planting");
        }
        let started = Instant::now();
        let removed = datapath
            .conntrack_mut()
            .remove_addresses(&[gone])
            .expect("purge");
        // Not a benchmark (nothing asserts a time): what a DEL pays on a busy node.
        eprintln!(
            "purged {removed} of 100000 entries in {:?}",
            started.elapsed()
        );
        assert_eq!(removed, 100);
        assert_eq!(raw.keys().count(), 99_900);
    });
}

/// Identities of the churn test's pods.
const CLIENT: u32 = 300;
const SERVER: u32 = 301;

#[test]
fn replies_of_allowed_connections_pass_when_churn_evicted_their_entries() {
    if !kernel_tests_possible(
        "replies_of_allowed_connections_pass_when_churn_evicted_their_entries",
    ) {
        return;
    }
    let world = World::new();
    let node = world.netns("node");
    let ns = [world.netns("a"), world.netns("b")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, CLIENT),
        Pod::new(&world, &ns[1], 1, SERVER),
    ];
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        // Everything on CPU 0, as bench-policy runs its client and server: the kernel's LRU
        // keeps each CPU's new entries on that CPU's own list until that CPU needs room, so
        // churn elsewhere would never reach this connection's entries. (The threads the test
        // spawns inherit it.)
        let mut cpu0 = nix::sched::CpuSet::new();
        cpu0.set(0).expect("CPU 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0)
            .expect("pinning the test to CPU 0");
        // A small table, as `kino-agent --conntrack-max 128` makes it: churn fills it.
        let netlink = Netlink::connect().expect("netlink in the node");
        ensure_node_devices(
            &netlink,
            &NodeDevicesConfig {
                gateway: GATEWAY,
                pod_cidr: Some("10.244.0.0/24".parse().expect("cidr")),
            },
        )
        .await
        .expect("node devices");
        let capacities = MapCapacities {
            conntrack: 128,
            ..MapCapacities::default()
        };
        let mut datapath = Datapath::load_with(Path::new(DEFAULT_PIN_ROOT), &node_name, capacities)
            .expect("loading the datapath");
        for pod in &pods {
            create_endpoint(&netlink, &mut datapath, &pod.spec())
                .await
                .unwrap_or_else(|e| panic!("creating endpoint {}: {e}", pod.id));
        }
        let (a, b) = (&pods[0], &pods[1]);
        // Both directions enforced on both; a may open TCP to b:9000 and send UDP to b.
        // Nothing may go into a or out of b except the replies of those.
        let policy = |endpoint: u32, entries: &[PolicyKey]| {
            let update = PolicyUpdate {
                enforcement: Enforcement::BOTH,
                revision: 1,
                entries: EntryChange::Replace(
                    entries.iter().map(|k| (*k, Verdict::Allow)).collect(),
                ),
            };
            (endpoint, update)
        };
        for (endpoint, update) in [
            policy(
                a.id,
                &[
                    PolicyKey::port(Direction::Egress, SERVER, 6, 9000),
                    PolicyKey::any_port(Direction::Egress, SERVER, 17),
                ],
            ),
            policy(
                b.id,
                &[
                    PolicyKey::port(Direction::Ingress, CLIENT, 6, 9000),
                    PolicyKey::any_port(Direction::Ingress, CLIENT, 17),
                ],
            ),
        ] {
            datapath
                .policy_mut()
                .apply(endpoint, &update)
                .unwrap_or_else(|e| panic!("policy of endpoint {endpoint}: {e}"));
        }

        // A long-lived connection a -> b:9000 (a watch stream, say): b will speak next.
        let b_ip = b.ip;
        let listener = in_netns(&b.netns, move || {
            std::net::TcpListener::bind((b_ip, 9000)).expect("listening in b")
        });
        let mut client = tcp_connect(&a.netns, b.ip, 9000).expect("a connects to b:9000");
        let (mut server, _) = listener.accept().expect("b accepts");
        // Long enough for the kernel's retransmissions: a dropped segment is not late.
        let patience = Some(Duration::from_secs(3));
        client.set_read_timeout(patience).expect("timeout");
        server.set_read_timeout(patience).expect("timeout");
        let mut byte = [0u8; 1];
        client.write_all(b"q").expect("request");
        server.read_exact(&mut byte).expect("b gets the request");
        server.write_all(b"r").expect("answer");
        client.read_exact(&mut byte).expect("a gets the answer");
        let port = client.local_addr().expect("local address").port();
        let of_connection = |datapath: &Datapath| {
            entries(datapath)
                .into_iter()
                .filter(|e| e.source_port == port && e.destination_port == 9000)
                .count()
        };
        assert_eq!(of_connection(&datapath), 2, "both points track it");

        // Churn: 2000 UDP flows a -> b, each two new entries in a 128-entry table. Each
        // sends twice: its second datagram finds its entries (the kernel's LRU spares an
        // entry looked up since it was made, so unreferenced churn alone would only ever
        // evict itself).
        in_netns(&a.netns, move || {
            for i in 0..2000u16 {
                let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).expect("udp bind");
                for _ in 0..2 {
                    socket
                        .send_to(&[0], (b_ip, 20_000 + i % 100))
                        .expect("udp send");
                }
            }
        });
        assert_eq!(
            of_connection(&datapath),
            0,
            "the churn did not evict the idle connection's entries; the test proves nothing"
        );

        // b speaks first: its segment finds no entry at b's egress nor at a's ingress, and
        // neither direction allows b -> a as a new connection. It is the reply of a
        // connection a's egress and b's ingress allow, so it passes.
        let denied = |datapath: &Datapath| {
            counters(datapath, b.id).dropped(DropReason::PolicyDenied)
                + counters(datapath, a.id).dropped(DropReason::PolicyDeniedIngress)
        };
        let before = denied(&datapath);
        server.write_all(b"s").expect("b pushes");
        assert!(
            client.read_exact(&mut byte).is_ok() && byte == *b"s",
            "a reply of an allowed connection was dropped after its conntrack entries were evicted"
        );
        client.write_all(b"t").expect("a answers");
        server.read_exact(&mut byte).expect("b gets it");
        assert_eq!(denied(&datapath), before, "allowed replies were dropped");

        // New connections the other way are still not replies of anything.
        let _a_server = a.serve(&[9000]);
        assert!(b.tcp_dropped(a.ip, 9000), "b opened a connection to a");
        assert!(
            denied(&datapath) > before,
            "b's SYN was not dropped by policy"
        );
    });
}
