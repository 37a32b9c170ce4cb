//! Every service binary, built and started as an operator would: each serves its `kino.*.v1`
//! API plus health and reflection (checked from outside with `buf curl`, which also calls
//! one unary RPC where that needs no set-up), shows up SERVING in
//! `kino status`, and exits 0 promptly on SIGTERM (the agent removing its socket file). The
//! agent runs in a network namespace of its own, so its devices and programs stay there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kino_integration_tests::process::ServiceProcess;
use kino_integration_tests::world::{Netns, kernel_tests_possible, unique_prefix};
use kino_integration_tests::{binary, in_ci, require_tool};

/// Removes the agent's bpffs pin directory when the test ends, however it ends.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a service may take to exit after SIGTERM (idle: no in-flight RPCs).
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// How one service is reached from outside.
enum Address {
    Unix(PathBuf),
}

impl Address {
    /// `buf curl` arguments that reach it, up to (and including) the base URL.
    fn buf_target(&self) -> Vec<String> {
        match self {
            Address::Unix(path) => vec![
                "--unix-socket".into(),
                path.display().to_string(),
                "http://localhost".into(),
            ],
        }
    }
}

/// One gRPC server of the suite and what it must list and answer.
struct Server {
    /// Index into the processes (the agent runs two servers).
    process: usize,
    address: Address,
    /// The kino service it serves.
    service: &'static str,
    /// Other kino services the same server serves.
    also: &'static [&'static str],
    /// A unary RPC of it called with an empty request from outside, and a field its JSON
    /// answer must have.
    call: Option<(&'static str, &'static str)>,
}

fn start(name: &str, args: Vec<String>, dir: &Path) -> ServiceProcess {
    ServiceProcess::start(&binary(name), &args, &[], dir)
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

async fn wait_for_socket(path: &Path, process: &ServiceProcess) {
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::UnixStream::connect(path).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{} not accepting on {} after {START_TIMEOUT:?}\n--- log ---\n{}",
            process.name,
            path.display(),
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `buf` from the repository's `.tools` (what run.sh installs), else from PATH; `None` (skip)
/// outside CI when neither exists.
fn buf() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/node_modules/.bin/buf");
    if local.exists() {
        return Some(local);
    }
    if require_tool("buf") {
        return None;
    }
    Some(PathBuf::from("buf"))
}

fn run(program: &Path, args: &[String]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_serves_health_reflection_and_stops_cleanly() {
    if !kernel_tests_possible() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("kino-binaries-")
        .tempdir()
        .expect("tempdir");
    let dir = dir.path();
    // Every server on a unix socket: the agent runs in its own network namespace (its
    // devices and eBPF programs must not touch this machine's), and sockets reach across.
    let sock = |name: &str| dir.join(format!("{name}.sock"));
    let target = |name: &str| format!("unix:{}", sock(name).display());
    let socket = sock("agent");
    let node = Netns::new(&format!("{}-node", unique_prefix("bin")));
    let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/{}", node.name)));

    let mut processes = [
        start(
            "kino-datastore-gateway",
            vec![
                "--listen".into(),
                target("ds"),
                "--data-file".into(),
                dir.join("datastore.redb").display().to_string(),
            ],
            dir,
        ),
        start(
            "kino-ipam",
            vec![
                "--listen".into(),
                target("ipam"),
                "--datastore".into(),
                target("ds"),
            ],
            dir,
        ),
        start(
            "kino-policy-compiler",
            vec![
                "--listen".into(),
                target("policy"),
                "--datastore".into(),
                target("ds"),
            ],
            dir,
        ),
        ServiceProcess::start(
            Path::new("/usr/bin/nsenter"),
            &[
                format!("--net={}", node.path().display()),
                binary("kino-agent").display().to_string(),
                "--node-name".into(),
                node.name.clone(),
                "--socket".into(),
                socket.display().to_string(),
                "--flow-listen".into(),
                target("flows"),
                "--datastore".into(),
                target("ds"),
                "--ipam".into(),
                target("ipam"),
                "--policy".into(),
                target("policy"),
                "--state-dir".into(),
                dir.join("agent-state").display().to_string(),
                "--bpf-pin-root".into(),
                pins.0.display().to_string(),
            ],
            &[],
            dir,
        )
        .expect("starting kino-agent"),
        // The cluster's flows: here one node, the agent's observer on its socket.
        start(
            "kino-flow-relay",
            vec![
                "--listen".into(),
                target("relay"),
                "--peer".into(),
                format!("{}={}", node.name, target("flows")),
                "--metrics-address".into(),
                "off".into(),
            ],
            dir,
        ),
    ];
    let servers = [
        Server {
            process: 0,
            address: Address::Unix(sock("ds")),
            service: "kino.datastore.v1.DatastoreService",
            also: &[],
            call: None,
        },
        Server {
            process: 1,
            address: Address::Unix(sock("ipam")),
            service: "kino.ipam.v1.IpamService",
            also: &[
                "kino.node.v1.NodeService",
                "kino.service.v1.LoadBalancingService",
            ],
            // Implemented (issue #3): tests/ipam_replicas.rs drives it.
            call: None,
        },
        Server {
            process: 2,
            address: Address::Unix(sock("policy")),
            service: "kino.policy.v1.PolicyService",
            also: &[],
            // Implemented (issue #5): services/policy-compiler/tests drive it.
            call: None,
        },
        Server {
            process: 3,
            address: Address::Unix(socket.clone()),
            service: "kino.agent.v1.AgentService",
            also: &[],
            // Implemented (issue #4): tests/cni_e2e.rs drives it.
            call: None,
        },
        Server {
            process: 3,
            address: Address::Unix(sock("flows")),
            service: "kino.flow.v1.FlowService",
            also: &[],
            call: Some(("ServerStatus", "maxFlows")),
        },
        Server {
            process: 4,
            address: Address::Unix(sock("relay")),
            service: "kino.flow.v1.FlowService",
            also: &[],
            // The sum over its nodes: the agent's ring capacity.
            call: Some(("ServerStatus", "maxFlows")),
        },
    ];
    for server in &servers {
        let process = &processes[server.process];
        match &server.address {
            Address::Unix(path) => wait_for_socket(path, process).await,
        }
    }

    // (a) From outside, with a real third-party gRPC client and reflection only.
    match buf() {
        None => eprintln!("SKIPPED the buf curl checks: buf not installed"),
        Some(buf) => {
            for server in &servers {
                let process = &processes[server.process];
                let mut args: Vec<String> = [
                    "curl",
                    "--protocol",
                    "grpc",
                    "--http2-prior-knowledge",
                    "--list-services",
                ]
                .map(String::from)
                .to_vec();
                args.extend(server.address.buf_target());
                let output = run(&buf, &args);
                let listed = String::from_utf8_lossy(&output.stdout);
                let listed: Vec<&str> = listed.lines().map(str::trim).collect();
                let every = [server.service, HEALTH, REFLECTION];
                for expected in every.iter().chain(server.also) {
                    assert!(
                        output.status.success() && listed.contains(expected),
                        "{} does not list {expected}: {}\n--- log ---\n{}",
                        process.name,
                        text(&output),
                        process.log_text()
                    );
                }
                // Only what this server serves: e.g. the agent socket does not list flows.
                let kino_services: Vec<&&str> =
                    listed.iter().filter(|s| s.starts_with("kino.")).collect();
                let served: Vec<&&str> = std::iter::once(&server.service)
                    .chain(server.also)
                    .collect();
                assert_eq!(kino_services, served, "{}", text(&output));

                if let Some((rpc, field)) = server.call {
                    let mut args: Vec<String> =
                        ["curl", "--protocol", "grpc", "--http2-prior-knowledge"]
                            .map(String::from)
                            .to_vec();
                    let mut target = server.address.buf_target();
                    let base = target.pop().expect("a base URL");
                    args.extend(target);
                    args.push(format!("{base}/{}/{rpc}", server.service));
                    let output = run(&buf, &args);
                    let all = text(&output);
                    assert!(
                        output.status.success() && all.contains(&format!("\"{field}\"")),
                        "{}/{rpc} must answer with {field}: {all}",
                        server.service
                    );
                }
            }
        }
    }

    // (b) The operator's view: everything SERVING, exit status 0.
    let kino = binary("kino");
    let status_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "status".into(),
            "--datastore".into(),
            target("ds"),
            "--ipam".into(),
            target("ipam"),
            "--policy".into(),
            target("policy"),
            "--agent".into(),
            socket.display().to_string(),
            "--flows".into(),
            target("flows"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let output = run(&kino, &status_args(&[]));
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "kino status: {}", text(&output));
    for component in [
        "datastore-gateway",
        "ipam",
        "policy-compiler",
        "agent",
        "flow-observer",
    ] {
        let line = table
            .lines()
            .find(|line| line.starts_with(&format!("{component} ")))
            .unwrap_or_else(|| panic!("no {component} row: {table}"));
        // COMPONENT ADDRESS HEALTH DETAIL
        assert_eq!(
            line.split_whitespace().nth(2),
            Some("SERVING"),
            "{line}\n{table}"
        );
    }
    assert!(
        table.contains("embedded at ") && table.contains("datastore.redb"),
        "the datastore row shows its backend and file: {table}"
    );
    let output = run(&kino, &status_args(&["-o", "json"]));
    assert!(
        output.status.success(),
        "kino status -o json: {}",
        text(&output)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output)));
    assert_eq!(report["healthy"], true, "{report}");
    let components = report["components"].as_array().expect("components");
    assert_eq!(components.len(), 5, "{report}");
    for component in components {
        assert_eq!(component["health"], "SERVING", "{component}");
    }
    assert_eq!(
        components[0]["datastore"]["backend"], "embedded",
        "{report}"
    );

    // (c) SIGTERM: each exits 0 promptly; the agent takes its socket file with it.
    for process in processes.iter_mut() {
        let started = Instant::now();
        let name = process.name.clone();
        let status = process
            .signal_and_wait("TERM")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            status.success(),
            "{name} exited with {status} after SIGTERM\n--- log ---\n{}",
            process.log_text()
        );
        assert!(
            started.elapsed() < STOP_WITHIN,
            "{name} took {:?} to stop",
            started.elapsed()
        );
    }
    assert!(
        !socket.exists(),
        "the agent left its socket {} behind",
        socket.display()
    );

    // And a script waiting for the suite sees it down.
    let output = run(&kino, &status_args(&["--timeout", "1s"]));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("UNREACHABLE"),
        "{}",
        text(&output)
    );
    if in_ci() {
        eprintln!("binaries test ran in CI with every check enabled");
    }
}
