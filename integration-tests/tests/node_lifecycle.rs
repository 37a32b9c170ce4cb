//! A node's existence is not its lease (DESIGN §3, §6), on the real kernel with the real
//! suite: running pods keep their addresses when the agent is down for twice its lease TTL
//! or its lease is revoked, and a new pod never gets a running pod's address; `kino node
//! delete` refuses a live node and, once the agent is gone, gives everything back; and a
//! stress of agent SIGKILLs racing ADDs, restarts past the lease, ADDs and DELs never leaves
//! IPAM holding anything but exactly the running pods' addresses.
//!
//! Every hop runs on mTLS with authorization, as `up.sh` runs the suite.
//! `KINO_NODE_SOAK_ROUNDS` (default 8) sets the stress's rounds; the soak script runs it
//! longer.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{GetRequest, ListRequest, ResourceKey, RevokeLeaseRequest};
use kino_api::ipam::ListAllocationsRequest;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::node::node_service_client::NodeServiceClient;
use kino_api::node::{GetNodeRequest, NodeHealthState};
use kino_integration_tests::world::{
    CniOutput, Netns, Suite, SuiteOptions, kernel_tests_possible, result_ip,
};

/// The agent's lease TTL in most of these tests (the agent's minimum), so that being down
/// past it takes seconds.
const TTL: Duration = Duration::from_secs(5);

/// A pod: its namespace, its container id, and the addresses its ADD returned.
struct Pod {
    ns: Netns,
    container: String,
    v4: String,
    v6: String,
}

fn suite_options(ttl: Duration) -> SuiteOptions {
    SuiteOptions {
        agent_args: vec!["--node-lease-ttl".into(), ttl.as_secs().to_string()],
        // Every hop on mTLS with authorization, as up.sh runs the suite: the agent writes
        // its own node's records, kino-ipam marks and deletes them.
        mtls: true,
        ..Default::default()
    }
}

fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=default")
}

fn container_of(suite: &Suite, name: &str) -> String {
    format!("{}-{name}-container", suite.prefix)
}

fn add(suite: &Suite, ns: &Netns, name: &str) -> CniOutput {
    suite.cni(
        "ADD",
        &container_of(suite, name),
        Some(&ns.path()),
        &suite.cni_config("1.1.0"),
        &pod_args(name),
    )
}

fn pod_from(suite: &Suite, ns: Netns, name: &str, out: &CniOutput) -> Pod {
    assert_eq!(out.code, 0, "ADD {name}: {out:?}");
    let result = out.json();
    Pod {
        ns,
        container: container_of(suite, name),
        v4: result_ip(&result, 0),
        v6: result_ip(&result, 1),
    }
}

fn add_pod(suite: &Suite, name: &str) -> Pod {
    let ns = Netns::new(&format!("{}-{name}", suite.prefix));
    let out = add(suite, &ns, name);
    pod_from(suite, ns, name, &out)
}

fn del(suite: &Suite, ns: &Netns, name: &str) {
    let out = suite.cni(
        "DEL",
        &container_of(suite, name),
        Some(&ns.path()),
        &suite.cni_config("1.1.0"),
        &pod_args(name),
    );
    assert_eq!(out.code, 0, "DEL {name}: {out:?}");
}

/// What IPAM holds on the suite's node: (address, owner container).
async fn allocations(suite: &Suite) -> BTreeSet<(String, String)> {
    let channel = kino_service_kit::connect(&suite.ipam_target(), &suite.admin_tls())
        .await
        .unwrap();
    IpamServiceClient::new(channel)
        .list_allocations(ListAllocationsRequest {
            node: suite.node_name().to_owned(),
            page_size: 5000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().allocations)
        .or_else(|s| {
            if s.code() == tonic::Code::NotFound {
                Ok(Vec::new())
            } else {
                Err(s)
            }
        })
        .unwrap()
        .into_iter()
        .map(|a| (a.address, a.owner.unwrap_or_default().container_id))
        .collect()
}

fn held_by(pods: &[&Pod]) -> BTreeSet<(String, String)> {
    pods.iter()
        .flat_map(|p| {
            [
                (p.v4.clone(), p.container.clone()),
                (p.v6.clone(), p.container.clone()),
            ]
        })
        .collect()
}

/// No two running pods share an address, and IPAM holds exactly their addresses.
async fn assert_owned_exactly(suite: &Suite, pods: &[&Pod], context: &str) {
    let addresses: Vec<&String> = pods.iter().flat_map(|p| [&p.v4, &p.v6]).collect();
    let unique: BTreeSet<&String> = addresses.iter().copied().collect();
    assert_eq!(
        unique.len(),
        addresses.len(),
        "{context}: two running pods were given one address: {addresses:?}"
    );
    assert_eq!(
        allocations(suite).await,
        held_by(pods),
        "{context}: IPAM must hold exactly the running pods' addresses\nagent log:\n{}",
        suite.agent_log()
    );
}

async fn datastore(suite: &Suite) -> DatastoreServiceClient<kino_service_kit::TracedChannel> {
    DatastoreServiceClient::new(
        kino_service_kit::connect(&suite.datastore_target(), &suite.admin_tls())
            .await
            .unwrap(),
    )
}

async fn endpoint_records(suite: &Suite) -> usize {
    datastore(suite)
        .await
        .list(ListRequest {
            kind: "Endpoint".into(),
            namespace: suite.node_name().to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .resources
        .len()
}

/// The lease of the node's NodeHealth record; None when there is none.
async fn health_lease(suite: &Suite) -> Option<i64> {
    match datastore(suite)
        .await
        .get(GetRequest {
            key: Some(ResourceKey {
                kind: "NodeHealth".into(),
                namespace: String::new(),
                name: suite.node_name().to_owned(),
            }),
        })
        .await
    {
        Ok(r) => r.into_inner().resource.map(|r| r.lease_id),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("reading the NodeHealth: {s:?}"),
    }
}

async fn health(suite: &Suite) -> NodeHealthState {
    let channel = kino_service_kit::connect(&suite.ipam_target(), &suite.admin_tls())
        .await
        .unwrap();
    NodeServiceClient::new(channel)
        .get_node(GetNodeRequest {
            name: suite.node_name().to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap()
        .health()
}

/// Waits (up to a minute; the lease TTL is 5 s) for the node to show `want`.
async fn wait_health(suite: &Suite, want: NodeHealthState) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = health(suite).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} is still {now:?}, not {want:?}; agent log:\n{}",
            suite.node_name(),
            suite.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every pod reaches every other over both families.
fn assert_all_reach(pods: &[&Pod], context: &str) {
    for from in pods {
        for to in pods {
            if from.container != to.container {
                assert!(
                    from.ns.ping(&to.v4, 2) && from.ns.ping(&to.v6, 2),
                    "{context}: {} cannot reach {} ({} / {})",
                    from.container,
                    to.container,
                    to.v4,
                    to.v6
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_keep_their_addresses_when_the_agent_is_down_past_its_lease() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start_with("nla", suite_options(TTL)).await;
    let a = add_pod(&suite, "a");
    let b = add_pod(&suite, "b");
    wait_health(&suite, NodeHealthState::Live).await;

    suite.stop_agent("KILL");
    let down = Instant::now();
    wait_health(&suite, NodeHealthState::Unreachable).await;
    while down.elapsed() < 2 * TTL {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_owned_exactly(&suite, &[&a, &b], "agent down for 2× its lease TTL").await;
    assert_eq!(
        endpoint_records(&suite).await,
        2,
        "the endpoints' records stay"
    );

    suite.start_agent();
    let c = add_pod(&suite, "c");
    assert_owned_exactly(&suite, &[&a, &b, &c], "a new pod after the restart").await;
    assert_all_reach(&[&a, &b, &c], "after the restart");
    wait_health(&suite, NodeHealthState::Live).await;
    assert_eq!(endpoint_records(&suite).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_frees_nothing_and_the_agent_registers_again() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = Suite::start_with("nlr", suite_options(TTL)).await;
    let a = add_pod(&suite, "a");
    let b = add_pod(&suite, "b");
    wait_health(&suite, NodeHealthState::Live).await;
    let lease = health_lease(&suite).await.unwrap_or_else(|| {
        panic!(
            "a live node has a NodeHealth; agent log:\n{}",
            suite.agent_log()
        )
    });
    match datastore(&suite)
        .await
        .revoke_lease(RevokeLeaseRequest { lease_id: lease })
        .await
    {
        // NOT_FOUND: it lapsed just before (a datastore stalled longer than the 5 s TTL
        // under load), which must free nothing either.
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => panic!("revoking the node's lease: {s:?}"),
    }
    assert_owned_exactly(&suite, &[&a, &b], "lease revoked").await;
    assert_eq!(endpoint_records(&suite).await, 2);

    // The heartbeat notices and registers the node again, on a new lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match health_lease(&suite).await {
            Some(new) if new != lease => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the agent did not register again; its log:\n{}",
                    suite.agent_log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let c = add_pod(&suite, "c");
    assert_owned_exactly(&suite, &[&a, &b, &c], "a new pod after the revocation").await;
    assert_all_reach(&[&a, &b, &c], "after the revocation");
    assert_eq!(endpoint_records(&suite).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kino_node_delete_refuses_a_live_node_then_gives_everything_back() {
    if !kernel_tests_possible() {
        return;
    }
    // A longer lease: the node must stay live (its lease renewed) while the deletion is
    // refused, even when a loaded machine stalls the datastore's writes for seconds.
    let mut suite = Suite::start_with("nld", suite_options(3 * TTL)).await;
    let a = add_pod(&suite, "a");
    let node = suite.node_name().to_owned();
    wait_health(&suite, NodeHealthState::Live).await;

    let list = suite.kino_ok(&["node", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&node))
        .unwrap_or_else(|| panic!("{node} not in `kino node list`:\n{list}"));
    assert_eq!(row.split_whitespace().nth(1), Some("live"), "{list}");

    let refused = suite.kino(&["node", "delete", &node]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is live") && stderr.contains("force"),
        "{stderr}"
    );
    assert_owned_exactly(&suite, &[&a], "a refused deletion changes nothing").await;

    suite.stop_agent("TERM");
    wait_health(&suite, NodeHealthState::Unreachable).await;
    let json: serde_json::Value =
        serde_json::from_str(&suite.kino_ok(&["node", "get", &node, "-o", "json"])).unwrap();
    assert_eq!(json["node"]["health"], "NODE_HEALTH_STATE_UNREACHABLE");
    assert_eq!(json["node"]["endpoints"], 1);

    let deleted = suite.kino_ok(&["node", "delete", &node]);
    assert!(
        deleted.contains("deleted") && deleted.contains("2 address(es)"),
        "{deleted}"
    );
    assert!(
        allocations(&suite).await.is_empty(),
        "its addresses are back"
    );
    assert_eq!(endpoint_records(&suite).await, 0);
    assert!(health_lease(&suite).await.is_none());
    let list = suite.kino_ok(&["node", "list"]);
    assert!(
        !list.lines().any(|l| l.starts_with(&node)),
        "deleted node still listed:\n{list}"
    );
    let gone = suite.kino(&["node", "get", &node]);
    assert_eq!(gone.status.code(), Some(1));

    // Its agent comes back after all: it registers the node again and, its pod's address
    // being free, claims it back for the pod it still runs.
    suite.start_agent();
    wait_health(&suite, NodeHealthState::Live).await;
    assert_owned_exactly(&suite, &[&a], "the agent came back").await;
    let b = add_pod(&suite, "b");
    assert_owned_exactly(&suite, &[&a, &b], "a new pod on the node again").await;
    assert_all_reach(&[&a, &b], "after the node came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarts_interleaved_with_add_and_del_never_duplicate() {
    if !kernel_tests_possible() {
        return;
    }
    let rounds: usize = std::env::var("KINO_NODE_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut suite = Suite::start_with("nls", suite_options(TTL)).await;
    let mut running: Vec<Pod> = Vec::new();
    for round in 0..rounds {
        // An ADD racing a SIGKILL of the agent, at a different moment each round.
        let name = format!("k{round}");
        let ns = Netns::new(&format!("{}-{name}", suite.prefix));
        let pid = suite.agent_pid().expect("agent running");
        let delay = Duration::from_millis((round as u64 * 13) % 60);
        let raced = std::thread::scope(|scope| {
            let adding = scope.spawn(|| add(&suite, &ns, &name));
            std::thread::sleep(delay);
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            adding.join().expect("ADD thread")
        });
        suite.stop_agent("KILL");
        if round % 3 == 2 {
            // Down past its lease this time.
            wait_health(&suite, NodeHealthState::Unreachable).await;
        }
        suite.start_agent();
        if raced.code == 0 {
            running.push(pod_from(&suite, ns, &name, &raced));
        } else {
            // As a runtime does after a failed ADD.
            del(&suite, &ns, &name);
            drop(ns);
        }
        // A plain ADD, and the DEL of the oldest pod once there are a few.
        running.push(add_pod(&suite, &format!("s{round}")));
        if running.len() > 4 {
            let oldest = running.remove(0);
            let name = oldest
                .container
                .trim_start_matches(&format!("{}-", suite.prefix))
                .trim_end_matches("-container")
                .to_owned();
            del(&suite, &oldest.ns, &name);
        }
        let pods: Vec<&Pod> = running.iter().collect();
        assert_owned_exactly(&suite, &pods, &format!("round {round}")).await;
    }
    let pods: Vec<&Pod> = running.iter().collect();
    assert_all_reach(&pods, "after the stress");
    assert_eq!(endpoint_records(&suite).await, running.len());
}
