//! The endpoint manager's all-or-nothing ADD, broken at every step, on a real kernel: the
//! fake suite (`support/fake_peers.rs`) fails one call on demand — or the pod's namespace or
//! the checkpoint directory refuses a step — and each test checks that the failed ADD left
//! nothing behind: no lxc or pod-side interface, no endpoint, ipcache or policy map entry, no
//! address held in IPAM, no Endpoint record, no checkpoint, no pending release, no endpoint in
//! the manager's table. Each test is named after the step it breaks and also checks that the
//! ADD failed at that step (its code and message), not somewhere else.
//!
//! The leak check reads the kernel after the manager is gone, from the pinned maps (a
//! datapath loaded again, as a restarted agent would) and netlink; the last test shows it sees
//! every part of a live endpoint, so an empty report means nothing was left.
//!
//! Needs root, iproute2 and bpffs (see `support::kernel_tests_possible`).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kino_agent::datapath::Datapath;
use kino_agent::datapath::ipcache::IDENTITY_HOST;
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::endpoint::list_lxcs;
use kino_agent::endpoint::manager::{EndpointManager, ManagerConfig, NodeNetwork};
use kino_agent::grpc::status::to_status;
use kino_agent::netlink::Netlink;
use kino_api::agent::CreateEndpointRequest;
use kino_api::types::PodRef;
use support::fake_peers::{FakePeers, Fault, Step};
use support::{
    GATEWAY, GATEWAY_V6, Netns, Pins, World, in_node, kernel_tests_possible,
    node_with_dual_stack_pods, run,
};
use tonic::Code;

/// The step a test breaks.
#[derive(Clone, Copy, Debug)]
enum Break {
    /// One call to the fake suite fails.
    Peer(Step, Fault),
    /// Several calls fail at once.
    Peers(&'static [(Step, Fault)]),
    /// The pod's namespace already has a default route: the kernel part fails once the lxc
    /// and the pod side exist.
    PodDefaultRoute,
    /// The checkpoint cannot be written (its temporary file's path is taken by a directory),
    /// after the record was published.
    Checkpoint,
}

/// What an ADD left behind; all empty when its rollback was complete.
#[derive(Debug, Default, PartialEq, Eq)]
struct Leftovers {
    /// Endpoints in the manager's table.
    endpoints: usize,
    /// lxc devices in the node's namespace.
    lxcs: Vec<String>,
    /// Whether the pod's namespace has the endpoint's interface (`eth0`).
    pod_interface: bool,
    /// Addresses in the endpoint map.
    endpoint_map: Vec<String>,
    /// ipcache prefixes other than the node's own (host) addresses.
    ipcache: Vec<String>,
    /// Endpoint ids with policy-map entries or enforcement.
    policy: Vec<u32>,
    /// Addresses IPAM holds.
    addresses: Vec<String>,
    /// Endpoint records in the datastore.
    records: Vec<u32>,
    /// Checkpoint files.
    checkpoints: Vec<String>,
    /// Pending address releases, in memory or on disk.
    pending_releases: Vec<String>,
}

/// The paths of one test's world, moved into its node thread.
struct Scene {
    node_name: String,
    pod_ns: String,
    pod_path: PathBuf,
    container: String,
}

impl Scene {
    fn request(&self) -> CreateEndpointRequest {
        CreateEndpointRequest {
            container_id: self.container.clone(),
            netns_path: self.pod_path.display().to_string(),
            ifname: "eth0".into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web".into(),
            }),
            cni_network_name: "kino".into(),
            ..Default::default()
        }
    }
}

/// One test's namespaces and pins, removed when dropped (pins first, then the pod, then the
/// node: fields drop in order).
struct Stage {
    _pins: Pins,
    pod: Netns,
    node: Netns,
}

/// A world for `test` (None when kernel tests cannot run here): a node, a pod, and the scene
/// the node thread works in.
fn stage(test: &str) -> Option<(Stage, Scene)> {
    if !kernel_tests_possible(test) {
        return None;
    }
    let world = World::new();
    let stage = Stage {
        node: world.netns("node"),
        pod: world.netns("pod"),
        _pins: world.pins(),
    };
    let scene = Scene {
        node_name: world.node.clone(),
        pod_ns: stage.pod.name.clone(),
        pod_path: stage.pod.path(),
        container: format!("{}-container", world.prefix),
    };
    Some((stage, scene))
}

/// A dual-stack node's manager over the fake suite, its checkpoints under `state`.
async fn manager(node_name: &str, fake: &Arc<FakePeers>, state: &Path) -> EndpointManager {
    let (netlink, datapath) = node_with_dual_stack_pods(node_name, &[]).await;
    EndpointManager::new(
        ManagerConfig {
            node: node_name.to_owned(),
            pool: "default".into(),
            mtu: 0,
        },
        NodeNetwork {
            gateway_v4: GATEWAY,
            gateway_v6: Some(GATEWAY_V6),
            pod_cidrs: vec!["10.244.0.0/24".into(), "fd00:244::/120".into()],
        },
        fake.peers(),
        state,
        netlink,
        datapath,
    )
    .expect("manager")
}

/// Names of the `.pb` files in `dir` (none if it does not exist).
fn pb_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    names
}

/// Everything the endpoint left, read once the manager is gone.
async fn leftovers(
    manager: EndpointManager,
    fake: &FakePeers,
    scene: &Scene,
    state: &Path,
) -> Leftovers {
    let endpoints = manager.count().await;
    let mut pending_releases: Vec<String> = manager
        .pending_releases()
        .await
        .into_iter()
        .map(|o| format!("{}/{}", o.container_id, o.ifname))
        .collect();
    drop(manager);
    pending_releases.extend(pb_files(&state.join("pending-releases")));

    let netlink = Netlink::connect().expect("netlink in the node");
    let lxcs = list_lxcs(&netlink)
        .await
        .expect("listing lxcs")
        .into_iter()
        .map(|l| l.name)
        .collect();
    let pod_interface = run(&[
        "ip",
        "netns",
        "exec",
        &scene.pod_ns,
        "ip",
        "link",
        "show",
        "dev",
        "eth0",
    ])
    .status
    .success();

    // The maps as pinned: what a restarted agent would find.
    let datapath = Datapath::load(Path::new(DEFAULT_PIN_ROOT), &scene.node_name)
        .expect("loading the datapath again");
    let endpoint_map = datapath
        .maps()
        .list_ips()
        .expect("endpoint map")
        .into_iter()
        .map(|(ip, _)| ip.to_string())
        .collect();
    let ipcache = datapath
        .ipcache()
        .list()
        .expect("ipcache")
        .into_iter()
        .filter(|e| e.identity != IDENTITY_HOST)
        .map(|e| e.prefix.to_string())
        .collect();
    let policy_maps = datapath.policy();
    let mut policy: BTreeSet<u32> = policy_maps
        .dump_prefixes()
        .expect("policy map")
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    // The ADD takes the lowest free id: 1 (a few more for good measure).
    for id in 1..=4 {
        let (enforcement, revision) = policy_maps.enforcement(id).expect("enforcement");
        if enforcement != Default::default() || revision != 0 {
            policy.insert(id);
        }
    }
    Leftovers {
        endpoints,
        lxcs,
        pod_interface,
        endpoint_map,
        ipcache,
        policy: policy.into_iter().collect(),
        addresses: fake.held_addresses(),
        records: fake.records(),
        checkpoints: pb_files(&state.join("endpoints")),
        pending_releases,
    }
}

/// Runs an ADD with `broken` broken, checks it fails with `code` and a message naming
/// `says`, and that it left nothing behind.
fn add_fails_and_leaves_nothing(test: &str, broken: Break, code: Code, says: &'static str) {
    let Some((stage, scene)) = stage(test) else {
        return;
    };
    if let Break::PodDefaultRoute = broken {
        stage
            .pod
            .exec_ok(&["ip", "route", "add", "default", "dev", "lo"]);
    }
    in_node(&stage.node, move || async move {
        let fake = FakePeers::new();
        let state = tempfile::tempdir().expect("state dir");
        match broken {
            Break::Peer(step, fault) => fake.fail(step, fault),
            Break::Peers(faults) => {
                for &(step, fault) in faults {
                    fake.fail(step, fault);
                }
            }
            Break::Checkpoint => std::fs::create_dir_all(state.path().join("endpoints/1.pb.tmp"))
                .expect("blocking the checkpoint"),
            Break::PodDefaultRoute => {}
        }
        let manager = manager(&scene.node_name, &fake, state.path()).await;
        let error = manager
            .create(scene.request())
            .await
            .expect_err("the ADD must fail");
        assert_eq!(to_status(&error).code(), code, "{error}");
        assert!(
            error.to_string().contains(says),
            "the ADD failed elsewhere than at {says}: {error}"
        );
        let left = leftovers(manager, &fake, &scene, state.path()).await;
        assert_eq!(
            left,
            Leftovers::default(),
            "the ADD that failed at {says} left this behind"
        );
    });
}

#[test]
fn add_rolls_back_when_ipam_refuses_the_ipv4_address() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_ipam_refuses_the_ipv4_address",
        Break::Peer(Step::AllocateIpv4, Fault::Unavailable),
        Code::Unavailable,
        "AllocateIpv4",
    );
}

#[test]
fn add_rolls_back_when_ipam_refuses_the_ipv6_address() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_ipam_refuses_the_ipv6_address",
        Break::Peer(Step::AllocateIpv6, Fault::Unavailable),
        Code::Unavailable,
        "AllocateIpv6",
    );
}

/// IPAM allocated both addresses but both answers were lost (killed between commit and
/// reply): the ADD cannot know, so it releases by owner anyway.
#[test]
fn add_rolls_back_when_both_allocation_answers_are_lost() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_both_allocation_answers_are_lost",
        Break::Peers(&[
            (Step::AllocateIpv4, Fault::LostAnswer),
            (Step::AllocateIpv6, Fault::LostAnswer),
        ]),
        Code::Unavailable,
        "answer to Allocate",
    );
}

#[test]
fn add_rolls_back_when_ipam_answers_an_invalid_address() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_ipam_answers_an_invalid_address",
        Break::Peer(Step::AllocateIpv4, Fault::Garbage),
        Code::Internal,
        "IPAM gave an invalid address",
    );
}

#[test]
fn add_rolls_back_when_identity_allocation_fails() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_identity_allocation_fails",
        Break::Peer(Step::AllocateIdentity, Fault::Unavailable),
        Code::Unavailable,
        "AllocateIdentity",
    );
}

#[test]
fn add_rolls_back_when_the_policy_fetch_fails() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_the_policy_fetch_fails",
        Break::Peer(Step::FetchPolicy, Fault::Unavailable),
        Code::Unavailable,
        "FetchPolicy",
    );
}

#[test]
fn add_rolls_back_when_the_pod_side_cannot_be_configured() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_the_pod_side_cannot_be_configured",
        Break::PodDefaultRoute,
        Code::FailedPrecondition,
        "already has a default route",
    );
}

#[test]
fn add_rolls_back_when_the_record_write_fails() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_the_record_write_fails",
        Break::Peer(Step::PublishRecord, Fault::Unavailable),
        Code::Unavailable,
        "PublishRecord",
    );
}

#[test]
fn add_rolls_back_when_the_checkpoint_write_fails() {
    add_fails_and_leaves_nothing(
        "add_rolls_back_when_the_checkpoint_write_fails",
        Break::Checkpoint,
        Code::FailedPrecondition,
        "endpoint checkpoint",
    );
}

/// A rollback whose address release IPAM refuses leaves a pending release (kept on disk)
/// that the background task retries until IPAM takes it; then nothing is left either.
#[test]
fn add_rollback_retries_a_refused_release_until_ipam_takes_it() {
    let test = "add_rollback_retries_a_refused_release_until_ipam_takes_it";
    let Some((stage, scene)) = stage(test) else {
        return;
    };
    in_node(&stage.node, move || async move {
        let fake = FakePeers::new();
        let state = tempfile::tempdir().expect("state dir");
        fake.fail(Step::AllocateIpv6, Fault::Unavailable);
        fake.fail(Step::ReleaseAddresses, Fault::Unavailable);
        let manager = manager(&scene.node_name, &fake, state.path()).await;
        let error = manager
            .create(scene.request())
            .await
            .expect_err("the ADD must fail");
        assert!(error.to_string().contains("AllocateIpv6"), "{error}");
        // The IPv4 address IPAM gave is still held, and its release is pending on disk.
        assert_eq!(
            fake.held_addresses().len(),
            1,
            "{:?}",
            fake.held_addresses()
        );
        assert_eq!(manager.pending_releases().await.len(), 1);
        assert_eq!(pb_files(&state.path().join("pending-releases")).len(), 1);

        fake.heal(Step::ReleaseAddresses);
        // The retry task backs off from 1 s; a generous bound, not a timing claim.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fake.held_addresses().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the pending release was never retried: IPAM still holds {:?}",
                fake.held_addresses()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !manager.pending_releases().await.is_empty() {
            assert!(Instant::now() < deadline, "the done release stays pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = leftovers(manager, &fake, &scene, state.path()).await;
        assert_eq!(left, Leftovers::default());
    });
}

/// The leak check is not blind: after a successful ADD it reports every part of the
/// endpoint (so the empty reports above mean the rollbacks removed everything).
#[test]
fn the_leak_check_sees_every_part_of_a_live_endpoint() {
    let test = "the_leak_check_sees_every_part_of_a_live_endpoint";
    let Some((stage, scene)) = stage(test) else {
        return;
    };
    in_node(&stage.node, move || async move {
        let fake = FakePeers::new();
        let state = tempfile::tempdir().expect("state dir");
        let manager = manager(&scene.node_name, &fake, state.path()).await;
        let endpoint = manager
            .create(scene.request())
            .await
            .expect("the ADD succeeds")
            .endpoint
            .expect("an endpoint");
        let left = leftovers(manager, &fake, &scene, state.path()).await;
        assert_eq!(left.endpoints, 1);
        assert_eq!(left.lxcs.len(), 1, "{left:?}");
        assert!(left.pod_interface, "{left:?}");
        assert_eq!(left.endpoint_map.len(), 2, "IPv4 and IPv6: {left:?}");
        assert_eq!(left.ipcache.len(), 2, "IPv4 and IPv6: {left:?}");
        assert_eq!(left.policy, [endpoint.id], "{left:?}");
        assert_eq!(left.addresses.len(), 2, "{left:?}");
        assert_eq!(left.records, [endpoint.id], "{left:?}");
        assert_eq!(left.checkpoints.len(), 1, "{left:?}");
        // Nothing was released, so nothing is pending: the one part a live endpoint lacks;
        // the retry test above shows the check sees a pending release.
        assert!(left.pending_releases.is_empty(), "{left:?}");
    });
}
