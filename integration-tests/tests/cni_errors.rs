//! CNI error codes that tell the runtime what to do, and addresses never stranded by a failed
//! ADD, with real processes: `kino-cni` exec'd as a runtime does against the real agent (in a
//! node namespace, as root), whose peers — kino-ipam, the datastore-gateway — are killed and
//! started again.
//!
//! - DEL while IPAM or the gateway is down answers 11 (try again), and succeeds once they
//!   are back, leaving nothing behind.
//! - A `CNI_NETNS` that exists but is not a network namespace is refused by name: code 4 from
//!   kino-cni, INVALID_ARGUMENT from the agent, nothing allocated.
//! - An ADD that fails while IPAM is unreachable (so its rollback cannot release the
//!   address) gives the address back once IPAM returns — without any DEL or GC — also when
//!   the agent restarted in between.

use std::path::Path;
use std::time::{Duration, Instant};

use kino_api::agent::CreateEndpointRequest;
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::ipam::ListAllocationsRequest;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::types::PodRef;
use kino_integration_tests::world::{Netns, Suite, kernel_tests_possible};

async fn connect(target: String) -> kino_service_kit::TracedChannel {
    kino_service_kit::connect(&target, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {target}: {e}"))
}

/// The IPAM allocations of the suite's node held by `container_id` (any when empty).
async fn allocations_of(suite: &Suite, container_id: &str) -> Vec<String> {
    IpamServiceClient::new(connect(suite.ipam_target()).await)
        .list_allocations(ListAllocationsRequest {
            node: suite.node_name().to_owned(),
            ..Default::default()
        })
        .await
        .expect("listing allocations")
        .into_inner()
        .allocations
        .into_iter()
        .filter(|a| {
            container_id.is_empty()
                || a.owner
                    .as_ref()
                    .is_some_and(|o| o.container_id == container_id)
        })
        .map(|a| a.address)
        .collect()
}

/// Waits (bounded, generously: the release is retried with backoff) until IPAM holds
/// nothing for `container_id`.
async fn wait_released(suite: &Suite, container_id: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held = allocations_of(suite, container_id).await;
        if held.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {container_id} still holds {held:?}; agent log:\n{}",
            suite.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn pod_netns(suite: &Suite, name: &str) -> Netns {
    let ns = Netns::new(&format!("{}-{name}", suite.prefix));
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_during_a_peer_outage_answers_try_again() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("cdel").await;
    let config = suite.cni_config("1.1.0");
    for (peer, container) in [("ipam", "del-outage-ipam"), ("gateway", "del-outage-gw")] {
        let ns = pod_netns(&suite, &format!("p{}", &peer[..2]));
        let add = suite.cni(
            "ADD",
            container,
            Some(&ns.path()),
            &config,
            "K8S_POD_NAME=p",
        );
        assert_eq!(add.code, 0, "ADD: {add:?}");
        match peer {
            "ipam" => suite.stop_ipam("KILL"),
            _ => suite.stop_gateway("KILL"),
        }
        let del = suite.cni("DEL", container, Some(&ns.path()), &config, "");
        assert_ne!(del.code, 0, "DEL with {peer} down succeeded: {del:?}");
        let json = del.json();
        assert_eq!(json["code"], 11, "DEL with {peer} down: {json}");
        assert!(
            json["details"]
                .as_str()
                .unwrap_or_default()
                .contains("retry"),
            "{json}"
        );
        match peer {
            "ipam" => suite.restart_ipam(),
            _ => suite.restart_gateway(),
        }
        // DEL again, as the runtime does after 11: done, nothing left.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let del = suite.cni("DEL", container, Some(&ns.path()), &config, "");
            if del.code == 0 {
                break;
            }
            // The restarted peer may need a moment before it answers (still 11).
            assert_eq!(
                del.json()["code"],
                11,
                "DEL after {peer} came back: {del:?}"
            );
            assert!(Instant::now() < deadline, "DEL keeps failing: {del:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(allocations_of(&suite, container).await.is_empty());
        assert!(suite.lxc_links().is_empty(), "{:?}", suite.lxc_links());
        ns.delete();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cni_netns_that_is_not_a_network_namespace_is_refused_by_name() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = Suite::start("cnns").await;
    let config = suite.cni_config("1.1.0");
    let file = suite.dir.path().join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    let dir = suite.dir.path().join("not-a-netns-either");
    std::fs::create_dir(&dir).unwrap();
    let mount_ns = Path::new("/proc/self/ns/mnt");
    for path in [file.as_path(), dir.as_path(), mount_ns] {
        let add = suite.cni("ADD", "not-a-netns", Some(path), &config, "K8S_POD_NAME=p");
        let json = add.json();
        assert_eq!(json["code"], 4, "{}: {json}", path.display());
        let msg = json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("CNI_NETNS") && msg.contains(&path.display().to_string()),
            "{json}"
        );
    }
    // The agent says the same to any caller, before allocating anything.
    let agent_target = format!("unix:{}", suite.agent_socket().display());
    let mut agent = AgentServiceClient::new(connect(agent_target).await);
    for path in [&file, &dir] {
        let status = agent
            .create_endpoint(CreateEndpointRequest {
                container_id: "not-a-netns".into(),
                netns_path: path.display().to_string(),
                ifname: "eth0".into(),
                pod: Some(PodRef {
                    namespace: "default".into(),
                    name: "p".into(),
                }),
                ..Default::default()
            })
            .await
            .expect_err("a CreateEndpoint into a plain file");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(&path.display().to_string())
                && status.message().contains("not a network namespace"),
            "{status:?}"
        );
    }
    assert!(allocations_of(&suite, "").await.is_empty());
    assert!(suite.lxc_links().is_empty());
}

/// Runs an ADD that allocates while IPAM is up, then fails after IPAM was killed: the
/// policy-compiler is frozen meanwhile so the order is certain — the ADD waits for its
/// identity while its address is allocated. It fails in the kernel (the pod already has a
/// default route) or, when IPAM died between its commit and its answer, at the allocation
/// itself; either way the address is held and the agent must give it back. IPAM is left
/// killed (reap it with `stop_ipam`).
async fn add_failing_with_ipam_down(suite: &Suite, container: &str, ns: &Netns) {
    ns.exec(&["ip", "route", "add", "default", "dev", "lo"]);
    let config = suite.cni_config("1.1.0");
    suite.pause_policy_compiler("STOP");
    let path = ns.path();
    std::thread::scope(|scope| {
        let add =
            scope.spawn(|| suite.cni("ADD", container, Some(&path), &config, "K8S_POD_NAME=p"));
        let runtime = tokio::runtime::Handle::current();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::task::block_in_place(|| runtime.block_on(allocations_of(suite, container)))
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the ADD never allocated");
            std::thread::sleep(Duration::from_millis(50));
        }
        // IPAM goes away with the address allocated; then the ADD carries on and fails.
        suite.signal_ipam("KILL");
        suite.pause_policy_compiler("CONT");
        let add = add.join().expect("ADD thread");
        assert_ne!(add.code, 0, "the ADD was meant to fail: {add:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_add_gives_its_address_back_once_ipam_returns() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("crel").await;

    // IPAM comes back while the agent runs.
    let ns = pod_netns(&suite, "r1");
    add_failing_with_ipam_down(&suite, "failed-add-1", &ns).await;
    suite.stop_ipam("KILL");
    suite.restart_ipam();
    wait_released(&suite, "failed-add-1", "IPAM back, agent running").await;
    ns.delete();

    // The agent restarts while IPAM is down: the pending release survives it.
    let ns = pod_netns(&suite, "r2");
    add_failing_with_ipam_down(&suite, "failed-add-2", &ns).await;
    suite.stop_ipam("KILL");
    suite.stop_agent("KILL");
    suite.restart_ipam();
    assert!(!allocations_of(&suite, "failed-add-2").await.is_empty());
    suite.start_agent();
    wait_released(&suite, "failed-add-2", "agent restarted, IPAM back").await;
    ns.delete();
    assert!(suite.lxc_links().is_empty(), "{:?}", suite.lxc_links());
}
