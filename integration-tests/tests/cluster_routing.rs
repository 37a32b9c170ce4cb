//! A cluster of real agents in node namespaces on an underlay bridge (see
//! `kino_integration_tests::cluster`): routes between nodes, reachability between every pair
//! of pods across nodes in both families, what happens when an agent dies, a route is
//! deleted by hand or a node is deleted, and masquerading toward a host outside the cluster.

use std::time::{Duration, Instant};

use kino_integration_tests::cluster::{
    CONVERGE, Cluster, ClusterOptions, ClusterPod, EXTERNAL_V4, tcp_source_seen,
};
use kino_integration_tests::world::kernel_tests_possible;

/// Every pod pings every other pod, in both families; returns the failures.
fn unreachable_pairs(pods: &[ClusterPod]) -> Vec<String> {
    let mut failed = Vec::new();
    for from in pods {
        for to in pods {
            if std::ptr::eq(from, to) {
                continue;
            }
            for ip in [&to.ipv4, &to.ipv6] {
                if ip.is_empty() {
                    continue;
                }
                if !from.pings(ip, 5) {
                    failed.push(format!(
                        "{} (node {}) → {ip} (node {})",
                        from.container,
                        from.node + 1,
                        to.node + 1
                    ));
                }
            }
        }
    }
    failed
}

fn two_pods_per_node(cluster: &Cluster) -> Vec<ClusterPod> {
    (0..cluster.nodes.len())
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| cluster.add_pod(i, &format!("p{}{}", i + 1, j + 1), &[]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_routing_connects_every_pod_pair_and_repairs_routes() {
    if !kernel_tests_possible() {
        return;
    }
    let mut cluster = Cluster::start_converged(
        "cnat",
        ClusterOptions {
            nodes: 3,
            routing: "native",
            agent_args: Vec::new(),
        },
    )
    .await;
    let routes = cluster.kino_routes(0);
    assert!(
        routes
            .iter()
            .any(|r| r.contains(&format!("via {}", cluster.nodes[1].ipv4))),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.contains(&format!("via {}", cluster.nodes[2].ipv6))),
        "{routes:?}"
    );
    let pods = two_pods_per_node(&cluster);
    let failed = unreachable_pairs(&pods);
    assert!(
        failed.is_empty(),
        "unreachable: {failed:#?}\n{}",
        cluster.agent_logs()
    );

    // A route deleted behind the agent's back comes back.
    let victim = cluster.kino_routes(1)[0].clone();
    let destination = victim
        .split_whitespace()
        .next()
        .expect("a destination")
        .to_owned();
    let family = if destination.contains(':') {
        "-6"
    } else {
        "-4"
    };
    cluster
        .netns(1)
        .exec(&["ip", family, "route", "del", &destination, "proto", "202"]);
    assert_eq!(cluster.kino_routes(1).len(), 3);
    cluster.assert_routes(&[1], 4, "after a route was deleted by hand");
    // A route changed behind its back (another next hop) is put right.
    cluster.netns(1).exec(&[
        "ip",
        family,
        "route",
        "replace",
        &destination,
        "via",
        if family == "-6" {
            "2001:db8::99"
        } else {
            "192.0.2.99"
        },
        "proto",
        "202",
    ]);
    let deadline = Instant::now() + CONVERGE;
    while !cluster.kino_routes(1).contains(&victim) {
        assert!(
            Instant::now() < deadline,
            "the changed route was not repaired: {:?}",
            cluster.kino_routes(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Leaving the cluster: the external host (which has no route to any pod CIDR) sees
    // the node's address, and its answer comes back to the pod.
    assert_eq!(
        source_seen_by_external_host(&cluster, &pods[0]),
        cluster.nodes[0].ipv4,
        "{}",
        cluster.agent_log(0)
    );
    // The masquerading table removed by hand comes back.
    cluster
        .netns(0)
        .exec(&["nft", "delete", "table", "inet", "kino"]);
    let deadline = Instant::now() + CONVERGE;
    while !cluster
        .netns(0)
        .try_exec(&["nft", "list", "table", "inet", "kino"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the masquerading table was not repaired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        source_seen_by_external_host(&cluster, &pods[1]),
        cluster.nodes[0].ipv4
    );

    // A fourth node joins: every node routes its pods, and its pod reaches the others.
    let joined = cluster.add_node();
    cluster.assert_routes(&[0, 1, 2, 3], 6, "after a node joined");
    let newcomer = cluster.add_pod(joined, "p41", &[]);
    for pod in &pods {
        for ip in [&pod.ipv4, &pod.ipv6] {
            assert!(
                newcomer.pings(ip, 5),
                "the joined node's pod cannot reach {ip}"
            );
        }
    }
}

/// Opens a TCP connection from `pod` to the external host and returns the source address
/// the external host saw.
fn source_seen_by_external_host(cluster: &Cluster, pod: &ClusterPod) -> String {
    tcp_source_seen(&pod.netns, &cluster.external, EXTERNAL_V4, 7777)
        .expect("a pod cannot open a TCP connection to the external host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_keeps_its_pods_reachable_and_only_a_node_deletion_removes_routes() {
    if !kernel_tests_possible() {
        return;
    }
    let mut cluster = Cluster::start_converged(
        "cdel",
        ClusterOptions {
            nodes: 3,
            routing: "native",
            agent_args: vec!["--node-lease-ttl".into(), "5".into()],
        },
    )
    .await;
    let pods = two_pods_per_node(&cluster);

    // Node 3's agent dies and stays dead past its lease: nothing is removed anywhere.
    cluster.stop_agent(2, "KILL");
    std::thread::sleep(Duration::from_secs(12));
    for i in 0..2 {
        assert_eq!(cluster.kino_routes(i).len(), 4, "{}", cluster.agent_logs());
    }
    let failed = unreachable_pairs(&pods);
    assert!(
        failed.is_empty(),
        "unreachable with node 3's agent down: {failed:#?}"
    );
    // It comes back: nothing is lost either.
    cluster.start_agent(2);
    cluster.assert_routes(&[2], 4, "after node 3's agent restarted");
    let failed = unreachable_pairs(&pods);
    assert!(
        failed.is_empty(),
        "unreachable after node 3's agent restarted: {failed:#?}"
    );

    // Node 3 is deleted: its routes go from every other node.
    cluster.stop_agent(2, "TERM");
    let out = cluster.kino(0, &["node", "delete", &cluster.nodes[2].name, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.assert_routes(&[0, 1], 2, "after node 3 was deleted");
    for i in 0..2 {
        let routes = cluster.kino_routes(i);
        assert!(
            routes.iter().all(|r| !r.contains(&cluster.nodes[2].ipv4) && !r.contains(&cluster.nodes[2].ipv6)),
            "{routes:?}"
        );
    }
}
