//! Kernel tests of conntrack hygiene: deleting an endpoint removes the `kino_ct` entries of
//! its address (at its own points and at its peers'), and the GC removes lapsed entries —
//! a pass on demand and the periodic task on its own handle of the pinned map — while live
//! ones stay.
//!
//! Needs root, bpffs, `ip` and `ping`; skips loudly outside CI without them. Every
//! namespace and pin is removed by guards, also when an assertion fails.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use kino_agent::datapath::conntrack::{CT_MAP, CtEntryRaw, CtKeyRaw, monotonic_seconds};
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::maps::FAMILY_IPV4;
use kino_agent::datapath::{ConntrackMap, CtEntry, Datapath};
use kino_agent::endpoint::{delete_endpoint, lxc_name};
use support::{Pod, World, in_node, kernel_tests_possible, node_with_pods};

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
