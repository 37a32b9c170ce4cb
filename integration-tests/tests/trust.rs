//! Only authorized callers change state (issue 11 item 2), on the real suite as `up.sh` runs
//! it: the cluster services on loopback TCP with mTLS and authorization, the agent in its
//! node namespace reaching them with its `kino-agent:<node>` certificate, its flow observer
//! on TCP with mTLS.
//!
//! - An unprivileged local user (`nobody`, through `setpriv`) calls every state-changing
//!   RPC of every service and reads flows — in plaintext and over TLS without a certificate —
//!   and is refused every time; it cannot read the keys, the datastore file or the agent's
//!   checkpoints either, and `kino` tells it why.
//! - Every role calls the same RPCs with its certificate: what gets through is exactly what
//!   the authorization tables (docs/security.md) give it, including an agent being refused
//!   another node's records.
//! - Pods are created, reach each other and are deleted over that path.
//!
//! The probe (`kino-trust-probe`) sends requests that fail after authorization (oversized
//! specs, unknown pools, dry runs), so probing changes no state.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kino_integration_tests::binary;
use kino_integration_tests::world::{Netns, Suite, SuiteOptions, kernel_tests_possible, result_ip};

/// Outcome classes of one probed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The service handled it (any code but the two below): authorized.
    Through,
    /// PERMISSION_DENIED.
    Denied,
    /// UNAUTHENTICATED.
    Unauthenticated,
    /// No gRPC spoken at all (TLS refused, socket not accessible, plaintext against TLS).
    NotConnected,
}

struct Probed {
    verdict: Verdict,
    outcome: String,
    message: String,
}

fn parse_probe(output: &Output) -> BTreeMap<String, Probed> {
    assert!(
        output.status.success(),
        "kino-trust-probe failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut calls = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let outcome = value["outcome"].as_str().unwrap_or_default().to_owned();
        let verdict = match outcome.as_str() {
            "PermissionDenied" => Verdict::Denied,
            "Unauthenticated" => Verdict::Unauthenticated,
            "NotConnected" => Verdict::NotConnected,
            _ => Verdict::Through,
        };
        calls.insert(
            value["method"].as_str().unwrap_or_default().to_owned(),
            Probed {
                verdict,
                outcome,
                message: value["message"].as_str().unwrap_or_default().to_owned(),
            },
        );
    }
    // 7 gateway + 7 ipam + 4 policy + 2 flows (+ 4 agent API when asked).
    assert!(calls.len() >= 20, "too few calls probed: {}", calls.len());
    calls
}

/// The probe's arguments for this suite (targets as seen from the node namespace, where the
/// services' ports are relayed and the flow observer listens).
fn probe_args(suite: &Suite, scheme: &str, node: &str) -> Vec<String> {
    let a = &suite.addresses;
    vec![
        "--datastore".into(),
        format!("{scheme}{}", a.datastore),
        "--ipam".into(),
        format!("{scheme}{}", a.ipam),
        "--policy".into(),
        format!("{scheme}{}", a.policy),
        "--flows".into(),
        format!("{scheme}{}", a.flows),
        "--node".into(),
        node.to_owned(),
    ]
}

/// Runs a program inside the node namespace, as root or (with `as_nobody`) as `nobody`.
fn in_node(suite: &Suite, as_nobody: bool, program: &Path, args: &[String]) -> Output {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &suite.node.name]);
    if as_nobody {
        command.args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]);
    }
    command
        .arg(program)
        .args(args)
        // Not the machine's PKI, and nothing inherited that would hand out credentials.
        .env("KINO_PKI_DIR", suite.pki.dir())
        .env_remove("KINO_UPSTREAM_TLS_CA")
        .env_remove("KINO_UPSTREAM_TLS_CERT")
        .env_remove("KINO_UPSTREAM_TLS_KEY")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

/// A directory `nobody` can read, with copies of what it may have: the probe and the CA
/// certificate (a CA certificate is public; its key is not).
struct Public(PathBuf);

impl Public {
    fn new(suite: &Suite) -> Public {
        let dir = std::env::temp_dir().join(format!("{}-public", suite.prefix));
        std::fs::create_dir_all(&dir).expect("public dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (from, name) in [
            (binary("kino-trust-probe"), "kino-trust-probe"),
            (binary("kino"), "kino"),
            (suite.pki.ca(), "ca.crt"),
        ] {
            let to = dir.join(name);
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {from:?}: {e}"));
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Public(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Public {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn mtls_suite(tag: &str) -> Suite {
    Suite::start_with(
        tag,
        SuiteOptions {
            mtls: true,
            ..SuiteOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_local_user_can_change_nothing_and_read_no_flow() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = mtls_suite("trn").await;
    let public = Public::new(&suite);
    let probe = public.path("kino-trust-probe");
    let node = suite.node_name().to_owned();
    let agent = format!("unix:{}", suite.agent_socket().display());

    // Plaintext, as any local program would try first: no gRPC at all (TLS only), and the
    // agent's socket does not let nobody connect.
    let mut args = probe_args(&suite, "http://", &node);
    args.extend(["--agent".into(), agent.clone()]);
    let plaintext = parse_probe(&in_node(&suite, true, &probe, &args));
    for (method, call) in &plaintext {
        assert_eq!(
            call.verdict,
            Verdict::NotConnected,
            "nobody in plaintext got through to {method}: {} {}",
            call.outcome,
            call.message
        );
    }

    // TLS with the (public) CA certificate but no client certificate: every call reaches the
    // servers and every one is UNAUTHENTICATED.
    let mut args = probe_args(&suite, "", &node);
    args.extend([
        "--agent".into(),
        agent,
        "--upstream-tls-ca".into(),
        public.path("ca.crt").display().to_string(),
    ]);
    let anonymous = parse_probe(&in_node(&suite, true, &probe, &args));
    assert_eq!(anonymous.len(), plaintext.len(), "the same calls both ways");
    for (method, call) in &anonymous {
        let expected = if method.starts_with("/kino.agent.v1.") {
            Verdict::NotConnected
        } else {
            Verdict::Unauthenticated
        };
        assert_eq!(
            call.verdict, expected,
            "nobody over TLS without a certificate: {method}: {} {}",
            call.outcome, call.message
        );
    }
    let refused = &anonymous["/kino.ipam.v1.IpamService/Allocate"];
    assert!(
        refused.message.contains("no client certificate"),
        "UNAUTHENTICATED says what is missing: {}",
        refused.message
    );

    // The credentials and the state are root's.
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(suite.pki.dir()), 0o700);
    assert_eq!(mode(&suite.pki.dir().join("admin.key")), 0o600);
    assert_eq!(mode(&suite.dir.path().join("ds.redb")), 0o600);
    assert_eq!(mode(&suite.dir.path().join("agent-state")), 0o700);

    // `kino` as nobody explains why it cannot act, and acts on nothing.
    let kino = public.path("kino");
    let kino_args = |command: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--pki-dir",
            &suite.pki.dir().display().to_string(),
            "--datastore",
            &suite.addresses.datastore,
            "--ipam",
            &suite.addresses.ipam,
            "--policy",
            &suite.addresses.policy,
            "--flows",
            &suite.addresses.flows,
            "--agent",
            &suite.agent_socket().display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(command.iter().map(|s| (*s).to_owned()));
        args
    };
    for command in [
        &["status"][..],
        &["ipam", "pools"],
        &["policy", "delete", "shop/web"],
        &["observe", "--last", "1"],
    ] {
        let out = in_node(&suite, true, &kino, &kino_args(command));
        let stderr = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "kino {command:?} as nobody: {stderr}"
        );
        assert!(
            stderr.contains("they are root's"),
            "kino {command:?} as nobody says why: {stderr}"
        );
    }
    // And root's `kino`, with no credentials flag, reaches everything (flows included).
    let out = in_node(&suite, false, &binary("kino"), &kino_args(&["status"]));
    assert!(
        out.status.success(),
        "kino status as root: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing the probes sent was stored.
    let records = suite.datastore_names("Endpoint").await;
    assert!(
        records.iter().all(|r| !r.contains("trust-probe")),
        "{records:?}"
    );
}

/// Who gets through where: the authorization tables restated per identity. Every other
/// probed method must be PERMISSION_DENIED for that identity.
fn allowed(identity: &str) -> &'static [&'static str] {
    match identity {
        // Its own node's records, its lease, its node's CIDRs and addresses, identities.
        "agent" => &[
            "/kino.datastore.v1.DatastoreService/Create",
            "/kino.datastore.v1.DatastoreService/Update",
            "/kino.datastore.v1.DatastoreService/Delete",
            "/kino.datastore.v1.DatastoreService/GrantLease",
            "/kino.datastore.v1.DatastoreService/KeepAliveLease",
            "/kino.datastore.v1.DatastoreService/RevokeLease",
            "/kino.ipam.v1.IpamService/AllocateNodeCidrs",
            "/kino.ipam.v1.IpamService/Allocate",
            "/kino.ipam.v1.IpamService/Release",
            "/kino.ipam.v1.IpamService/Gc",
            "/kino.policy.v1.PolicyService/AllocateIdentity",
            "/kino.policy.v1.PolicyService/ReleaseIdentity",
        ],
        // An agent of another node, asking for this node: none of this node's records,
        // CIDRs or addresses (Release names no node: see docs/security.md).
        "agent-elsewhere" => &[
            "/kino.datastore.v1.DatastoreService/GrantLease",
            "/kino.datastore.v1.DatastoreService/KeepAliveLease",
            "/kino.datastore.v1.DatastoreService/RevokeLease",
            "/kino.ipam.v1.IpamService/Release",
            "/kino.policy.v1.PolicyService/AllocateIdentity",
            "/kino.policy.v1.PolicyService/ReleaseIdentity",
        ],
        // IPAM deletes a node's Endpoint records (explicit node deletion), writes none.
        "ipam" => &["/kino.datastore.v1.DatastoreService/Delete"],
        "policy-compiler" => &[],
        "datastore-gateway" => &[],
        // The cluster's flow relay reads every agent's flows, and changes nothing.
        "flow-relay" => &[
            "/kino.flow.v1.FlowService/GetFlows",
            "/kino.flow.v1.FlowService/ServerStatus",
        ],
        "operator" => &[
            "/kino.datastore.v1.DatastoreService/GrantLease",
            "/kino.datastore.v1.DatastoreService/KeepAliveLease",
            "/kino.datastore.v1.DatastoreService/RevokeLease",
            "/kino.ipam.v1.IpamService/CreatePool",
            "/kino.ipam.v1.IpamService/DeletePool",
            "/kino.ipam.v1.IpamService/ReleaseNodeCidrs",
            "/kino.node.v1.NodeService/DeleteNode",
            "/kino.policy.v1.PolicyService/ImportPolicies",
            "/kino.policy.v1.PolicyService/DeletePolicy",
            "/kino.flow.v1.FlowService/GetFlows",
            "/kino.flow.v1.FlowService/ServerStatus",
        ],
        other => panic!("no expectations for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_gets_through_exactly_where_the_tables_say() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = mtls_suite("trr").await;
    let node = suite.node_name().to_owned();
    let elsewhere = suite.pki.issue_agent("other-node");
    let probe = binary("kino-trust-probe");
    let run = |stem: &str| {
        let mut args = probe_args(&suite, "", &node);
        args.extend(suite.pki.client_flags(stem));
        parse_probe(&in_node(&suite, false, &probe, &args))
    };

    let admin = run("admin");
    for (method, call) in &admin {
        assert_eq!(
            call.verdict,
            Verdict::Through,
            "admin may do anything: {method}: {} {}",
            call.outcome,
            call.message
        );
    }
    for (identity, stem) in [
        ("agent", "agent"),
        ("agent-elsewhere", elsewhere.as_str()),
        ("ipam", "ipam"),
        ("policy-compiler", "policy-compiler"),
        ("datastore-gateway", "datastore-gateway"),
        ("flow-relay", "flow-relay"),
        ("operator", "operator"),
    ] {
        let calls = run(stem);
        assert_eq!(calls.len(), admin.len());
        for (method, call) in &calls {
            let expected = if allowed(identity).contains(&method.as_str()) {
                Verdict::Through
            } else {
                Verdict::Denied
            };
            assert_eq!(
                call.verdict, expected,
                "{identity} calling {method}: {} {}",
                call.outcome, call.message
            );
        }
    }

    // The refusals explain themselves: who, what, and who may.
    let calls = run(&elsewhere);
    let create = &calls["/kino.datastore.v1.DatastoreService/Create"];
    for part in [
        "\"kino-agent:other-node\"",
        &format!("Endpoint {node}/trust-probe"),
        "own node's (\"other-node\")",
    ] {
        assert!(create.message.contains(part), "{part}: {}", create.message);
    }
    let allocate = &calls["/kino.ipam.v1.IpamService/Allocate"];
    assert!(
        allocate
            .message
            .contains("may act only for its own node \"other-node\"")
            && allocate.message.contains(&node),
        "{}",
        allocate.message
    );
    let flows = &run("agent")["/kino.flow.v1.FlowService/GetFlows"];
    assert!(
        flows.message.contains("/kino.flow.v1.FlowService/GetFlows")
            && flows.message.contains("roles operator, flow-relay, admin"),
        "{}",
        flows.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_and_go_with_every_hop_on_mtls() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = mtls_suite("trp").await;
    let config = suite.cni_config("1.0.0");
    let pods: Vec<(Netns, String, String)> = ["a", "b"]
        .iter()
        .map(|name| {
            let ns = Netns::new(&format!("{}-{name}", suite.prefix));
            let container = format!("{}-{name}-container", suite.prefix);
            let out = suite.cni(
                "ADD",
                &container,
                Some(&ns.path()),
                &config,
                &format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}"),
            );
            assert_eq!(
                out.code,
                0,
                "ADD {name}: {out:?}\n--- agent log ---\n{}",
                suite.agent_log()
            );
            let ip = result_ip(&out.json(), 0);
            (ns, container, ip)
        })
        .collect();
    assert!(pods[0].0.ping(&pods[1].2, 2), "a cannot reach b");
    assert!(pods[1].0.ping(&pods[0].2, 2), "b cannot reach a");

    // The agent wrote its Node and Endpoints and IPAM its allocations, each with its own
    // certificate, through the authorization rules.
    let endpoints = suite.datastore_names("Endpoint").await;
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(
        endpoints
            .iter()
            .all(|e| e.starts_with(&format!("{}/", suite.node_name()))),
        "{endpoints:?}"
    );
    assert!(
        suite
            .datastore_names("Node")
            .await
            .contains(&format!("/{}", suite.node_name()))
    );
    let list = suite.kino_ok(&["endpoint", "list"]);
    assert!(
        list.contains(&pods[0].2) && list.contains(&pods[1].2),
        "{list}"
    );

    for (ns, container, _) in pods {
        let out = suite.cni(
            "DEL",
            &container,
            Some(&ns.path()),
            &config,
            "K8S_POD_NAMESPACE=shop",
        );
        assert_eq!(out.code, 0, "DEL: {out:?}");
        ns.delete();
    }
    assert!(suite.datastore_names("Endpoint").await.is_empty());
    assert!(suite.lxc_links().is_empty());
}
