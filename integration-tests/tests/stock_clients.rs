//! Clients that are not ours, on the real suite (as root: the agent runs in a node namespace):
//!
//! - Python `grpcio` (gRPC C-core, installed into `.tools/python` by install-deps.sh) calls the
//!   agent's `grpc.health.v1` and `kino.agent.v1.AgentService/Status` over its unix socket.
//!   C-core sends the percent-encoded socket path as `:authority`, which h2 refused with
//!   PROTOCOL_ERROR before service-kit's unix listener made it `localhost`.
//! - `kino … | head`: every subcommand whose reader closes stdout early ends quietly (no panic,
//!   nothing on stderr, status 141 like a Go tool stopped by SIGPIPE).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use kino_api::agent::StatusResponse;
use kino_integration_tests::world::{Suite, kernel_tests_possible};
use kino_integration_tests::{binary, in_ci};
use prost::Message;

/// `.tools/python` of the repository, if grpcio is installed there.
fn grpcio_path() -> Option<PathBuf> {
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join(".tools/python");
    if tools.join("grpc").is_dir() && tools.join("grpc_health").is_dir() {
        return Some(tools);
    }
    assert!(
        !in_ci(),
        "grpcio is required in CI; ./deploy/local/install-deps.sh installs it into .tools/python"
    );
    eprintln!("SKIPPED: grpcio not in .tools/python (./deploy/local/install-deps.sh)");
    None
}

/// Checks health (the server, then the agent's service) and calls Status with an empty
/// request, on one channel with the default options a user would have; prints the statuses
/// and the Status response as hex.
const GRPCIO_CLIENT: &str = r#"
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel("unix:" + sys.argv[1])
health = health_pb2_grpc.HealthStub(channel)
for service in ["", "kino.agent.v1.AgentService"]:
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    print("health", service or "-", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
status = channel.unary_unary("/kino.agent.v1.AgentService/Status")(b"", timeout=10)
print("status", status.hex())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_the_agent_over_its_unix_socket() {
    if !kernel_tests_possible() {
        return;
    }
    let Some(pythonpath) = grpcio_path() else {
        return;
    };
    let suite = Suite::start("gpy").await;
    let out = Command::new("python3")
        .args(["-c", GRPCIO_CLIENT])
        .arg(suite.agent_socket())
        .env("PYTHONPATH", &pythonpath)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio failed on {}: {stdout}{stderr}",
        suite.agent_socket().display()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "health - SERVING",
            "health kino.agent.v1.AgentService SERVING"
        ],
        "{stdout}"
    );
    let hex = lines[2].strip_prefix("status ").expect("the Status line");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let status = StatusResponse::decode(bytes.as_slice()).expect("a StatusResponse");
    assert_eq!(status.node_name, suite.node_name(), "{status:?}");
}

/// Runs `kino args…` with a stdout pipe whose reader is already gone; returns (status,
/// signal-free exit code, stderr).
fn kino_into_closed_pipe(suite: &Suite, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary("kino"))
        .arg("--agent-socket")
        .arg(suite.agent_socket())
        .args(["--ipam", &suite.ipam_target()])
        .args(["--datastore", &suite.datastore_target()])
        .args(["--policy", &suite.policy_target()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kino");
    // The reader goes away before kino writes anything: `kino … | head -0`.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("kino");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_ends_quietly_when_its_reader_goes_away() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = Suite::start("pipe").await;
    let policy = suite.dir.path().join("allow.yaml");
    std::fs::write(
        &policy,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: allow, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{fromEndpoints: [{}]}]\n",
    )
    .unwrap();
    let policy = policy.display().to_string();
    // One of each command group, in each output format where it has one; each prints
    // something on success.
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["-o", "json", "status"],
        vec!["endpoint", "list"],
        vec!["-o", "json", "endpoint", "list"],
        vec!["policy", "import", &policy],
        vec!["policy", "validate", &policy],
        vec!["policy", "list"],
        vec!["-o", "yaml", "policy", "get", "default/allow"],
        vec!["identity", "list"],
        vec!["ipam", "pools"],
        vec!["-o", "json", "ipam", "allocations"],
        vec!["bpf", "endpoint", "list"],
        vec!["bpf", "ipcache", "list"],
        vec!["bpf", "ct", "list"],
    ];
    for args in &commands {
        let (code, stderr) = kino_into_closed_pipe(&suite, args);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "kino {args:?} into a closed pipe: {stderr}"
        );
        assert_eq!(code, Some(141), "kino {args:?}: {stderr}");
    }
}
