//! Tunnel mode (the default) on a cluster of real agents (see
//! `kino_integration_tests::cluster`): every pod pair across three nodes in both families over
//! `kino_vxlan`, identity-aware policy across nodes (the source identity rides in the VNI and
//! the receiving node enforces it), and an agent killed and restarted under cross-node
//! traffic without a lost packet.

use std::time::Duration;

use kino_integration_tests::cluster::{
    Cluster, ClusterOptions, ClusterPod, EXTERNAL_V4, tcp_source_seen,
};
use kino_integration_tests::world::kernel_tests_possible;

fn pings(from: &ClusterPod, ip: &str) -> bool {
    from.pings(ip, 5)
}

/// An expected drop: no answer within 1 s (an answer, when there is one, takes
/// milliseconds here).
fn ping_dropped(from: &ClusterPod, ip: &str) -> bool {
    !from.pings(ip, 1)
}

/// A TCP connection from `from` to `ip` where `to` listens: whether it was made.
fn tcp_answers(from: &ClusterPod, to: &ClusterPod, ip: &str) -> bool {
    tcp_source_seen(&from.netns, &to.netns, ip, 7070).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_mode_connects_every_pod_pair_and_enforces_identity_across_nodes() {
    if !kernel_tests_possible() {
        return;
    }
    let cluster = Cluster::start_converged(
        "ctun",
        ClusterOptions {
            nodes: 3,
            routing: "tunnel",
            agent_args: Vec::new(),
        },
    )
    .await;
    let routes = cluster.kino_routes(0);
    assert!(
        routes
            .iter()
            .all(|r| r.contains("dev kino_vxlan") && r.contains("mtu 1450")),
        "{routes:#?}"
    );
    let client = cluster.add_pod(0, "client", &[("app", "client")]);
    let other1 = cluster.add_pod(0, "other1", &[("app", "other")]);
    let other2 = cluster.add_pod(1, "other2", &[("app", "other")]);
    let web2 = cluster.add_pod(1, "web2", &[("app", "web")]);
    let web3 = cluster.add_pod(2, "web3", &[("app", "web")]);
    let other3 = cluster.add_pod(2, "other3", &[("app", "other")]);
    let pods = [&client, &other1, &other2, &web2, &web3, &other3];
    let mut failed = Vec::new();
    for from in pods {
        for to in pods {
            if std::ptr::eq(from, to) {
                continue;
            }
            for ip in [&to.ipv4, &to.ipv6] {
                if !ip.is_empty() && !pings(from, ip) {
                    failed.push(format!("{} → {} ({ip})", from.container, to.container));
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "unreachable over the tunnel: {failed:#?}\n{}",
        cluster.agent_logs()
    );
    assert!(
        tcp_answers(&client, &web3, &web3.ipv4),
        "TCP client → web3 (IPv4)"
    );
    assert!(
        tcp_answers(&other2, &web3, &web3.ipv6),
        "TCP other2 → web3 (IPv6)"
    );

    // web admits only app=client: enforced on the node of each web pod, from the identity
    // the sender's node put in the VNI.
    let policy = cluster.suite.dir.path().join("web.yaml");
    std::fs::write(
        &policy,
        "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {name: web-from-client, namespace: default}\nspec:\n  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n",
    )
    .unwrap();
    let out = cluster.kino(
        0,
        &[
            "policy",
            "import",
            policy.to_str().unwrap(),
            "--wait",
            "--wait-timeout",
            "30s",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for web in [&web2, &web3] {
        for ip in [&web.ipv4, &web.ipv6] {
            assert!(
                pings(&client, ip),
                "client (node 1) → {} ({ip}) must pass",
                web.container
            );
            for other in [&other1, &other2, &other3] {
                assert!(
                    ping_dropped(other, ip),
                    "{} → {} ({ip}) must be dropped",
                    other.container,
                    web.container
                );
            }
        }
    }
    assert!(
        tcp_answers(&client, &web3, &web3.ipv6),
        "TCP client → web3 under the policy"
    );
    assert!(
        !tcp_answers(&other1, &web3, &web3.ipv4),
        "TCP other1 → web3 must be dropped"
    );
    // The drop is seen on web3's node (3), for other1's identity (from node 1), as a policy
    // drop at web3's ingress.
    let dropped = drops_seen(&cluster, 2, &other1.ipv4);
    assert!(
        !dropped.is_empty(),
        "node 3 shows no drop of other1's packets: {:#?}",
        dropped_flows(&cluster, 2)
    );
    // The remote side is named: pod and node.
    assert!(
        dropped.iter().all(|l| l.contains("\"podName\":\"other1\"")
            && l.contains(&format!("\"nodeName\":\"{}\"", cluster.nodes[0].name))),
        "drops must name other1 and its node {}: {dropped:#?}",
        cluster.nodes[0].name
    );
    assert!(
        dropped.iter().all(|l| l.contains("POLICY_DENIED")),
        "{dropped:#?}"
    );
    // Nothing reached web3's node as a policy drop on node 1: the sender's egress passed.
    assert!(
        !dropped_flows(&cluster, 0)
            .iter()
            .any(|l| l.contains(&format!("\"destination\":\"{}\"", web3.ipv4))),
        "node 1 dropped the packets itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_loses_no_cross_node_packet() {
    if !kernel_tests_possible() {
        return;
    }
    let mut cluster = Cluster::start_converged(
        "crst",
        ClusterOptions {
            nodes: 2,
            routing: "tunnel",
            agent_args: Vec::new(),
        },
    )
    .await;
    let a = cluster.add_pod(0, "a", &[("app", "a")]);
    let b = cluster.add_pod(1, "b", &[("app", "b")]);
    assert!(pings(&a, &b.ipv4));
    // 150 pings over 15 s while node 2's agent is killed and started again.
    let netns = a.netns.name.clone();
    let target = b.ipv4.clone();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &netns, "ping", "-c", "150", "-i", "0.1", "-W", "2", &target,
            ])
            .output()
            .expect("ping")
    });
    std::thread::sleep(Duration::from_secs(2));
    cluster.stop_agent(1, "KILL");
    std::thread::sleep(Duration::from_secs(3));
    cluster.start_agent(1);
    let out = pinger.join().expect("pinger");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("150 packets transmitted, 150 received"),
        "packets were lost across the agent restart: {text}\n{}",
        cluster.agent_log(1)
    );
    // The restarted agent labels the remote pod as before.
    cluster.assert_routes(&[1], 2, "after the restart");
    assert!(tcp_answers(&a, &b, &b.ipv6), "TCP a → b after the restart");

    // kino_vxlan deleted behind the agent's back (its routes go with it): the reconciler
    // puts the device, its programs and the routes back.
    cluster.netns(1).exec(&["ip", "link", "del", "kino_vxlan"]);
    let deadline = std::time::Instant::now() + kino_integration_tests::cluster::CONVERGE;
    while !(cluster.kino_routes(1).len() == 2 && a.pings(&b.ipv4, 1) && b.pings(&a.ipv6, 1)) {
        assert!(
            std::time::Instant::now() < deadline,
            "kino_vxlan was not repaired: {:?}\n{}",
            cluster.kino_routes(1),
            cluster.agent_log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        tcp_answers(&b, &a, &a.ipv4),
        "TCP b → a after the device was repaired"
    );
}

/// The dropped flows node `i` observed (its last 1000), as JSON lines.
fn dropped_flows(cluster: &Cluster, i: usize) -> Vec<String> {
    let out = cluster.kino(
        i,
        &[
            "observe",
            "--server",
            &cluster.flows(i),
            "--last",
            "1000",
            "-o",
            "json",
            "--verdict",
            "DROPPED",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The dropped flows node `i` observed from `source`.
fn drops_seen(cluster: &Cluster, i: usize, source: &str) -> Vec<String> {
    dropped_flows(cluster, i)
        .into_iter()
        .filter(|l| l.contains(&format!("\"source\":\"{source}\"")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_and_cidr_rules_hold_across_nodes() {
    if !kernel_tests_possible() {
        return;
    }
    let cluster = Cluster::start_converged(
        "cent",
        ClusterOptions {
            nodes: 3,
            routing: "tunnel",
            agent_args: Vec::new(),
        },
    )
    .await;
    let a = cluster.add_pod(0, "a", &[("app", "a")]);
    let b = cluster.add_pod(1, "b", &[("app", "b")]);
    let c = cluster.add_pod(2, "c", &[("app", "c")]);
    // Before any policy: node 2 itself reaches a (its traffic arrives as remote-node), b too.
    let node2 = cluster.netns(1);
    let from_node2 = |ip: &str, wait: &str| {
        node2
            .try_exec(&["ping", "-c", "1", "-W", wait, ip])
            .status
            .success()
    };
    assert!(from_node2(&a.ipv4, "5"), "node 2 → a before any policy");
    assert!(pings(&b, &a.ipv4));

    // a admits the other nodes (entity remote-node) and nothing else.
    cluster.import_policy(
        "a-from-nodes",
        "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {name: a-from-nodes, namespace: default}\nspec:\n  endpointSelector:\n    matchLabels: {app: a}\n  ingress:\n  - fromEntities: [remote-node]\n",
    );
    assert!(
        from_node2(&a.ipv4, "5"),
        "node 2 (remote-node) → a must pass"
    );
    assert!(
        from_node2(&a.ipv6, "5"),
        "node 2 (remote-node) → a over IPv6 must pass"
    );
    assert!(
        ping_dropped(&b, &a.ipv4),
        "b (a pod of node 2) → a must be dropped"
    );
    let drops = drops_seen(&cluster, 0, &b.ipv4);
    assert!(
        !drops.is_empty() && drops.iter().all(|l| l.contains("POLICY_DENIED")),
        "node 1 must report b's packets as policy drops: {drops:#?}"
    );

    // b may only talk to the external host (a CIDR), not to c on node 3: dropped on node 2.
    cluster.import_policy(
        "b-to-external",
        &format!(
            "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {{name: b-to-external, namespace: default}}\nspec:\n  endpointSelector:\n    matchLabels: {{app: b}}\n  egress:\n  - toCIDR: [{EXTERNAL_V4}/32]\n"
        ),
    );
    assert!(
        pings(&b, EXTERNAL_V4),
        "b → the external host ({EXTERNAL_V4}) must pass"
    );
    assert!(
        ping_dropped(&b, &c.ipv4),
        "b → c must be dropped by b's egress"
    );
    let drops = drops_seen(&cluster, 1, &b.ipv4);
    assert!(
        drops
            .iter()
            .any(|l| l.contains(&format!("\"destination\":\"{}\"", c.ipv4))
                && l.contains("POLICY_DENIED")),
        "node 2 must report b → c as a policy drop: {drops:#?}"
    );
    assert!(
        drops_seen(&cluster, 2, &b.ipv4).is_empty(),
        "nothing of b's may reach node 3"
    );
    // b's policy is egress only: c reaches b, and b's replies pass as replies.
    assert!(pings(&c, &b.ipv4), "c → b (b's policy is egress only)");
}
