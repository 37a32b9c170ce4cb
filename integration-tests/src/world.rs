//! A test world on this machine's kernel: a "node" network namespace running kino-agent, the
//! cluster services (datastore-gateway, ipam, policy-compiler) on unix sockets in a temp
//! directory — or, with [`SuiteOptions::mtls`], on loopback TCP with mTLS and authorization,
//! as `up.sh` runs them — and pod namespaces created by the test. Every process uses the
//! world's own PKI ([`TestPki`]). Everything is named with a unique prefix and removed on
//! drop — processes, namespaces (with every lxc, route and device in them) and bpffs pins —
//! even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::binary;
use crate::forward::LoopbackForward;
use crate::pki::TestPki;
use crate::process::{ServiceProcess, wait_for_port};

/// A unique, short prefix for this test's kernel objects.
pub fn unique_prefix(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "kt{}{}{}",
        tag,
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether kernel tests can run (root and bpffs support); outside CI a missing capability
/// skips with a loud message, in CI it fails.
pub fn kernel_tests_possible() -> bool {
    let root = nix_is_root();
    if root {
        return true;
    }
    assert!(
        !crate::in_ci(),
        "kernel tests need root in CI (network namespaces, eBPF)"
    );
    eprintln!("SKIPPED: kernel test needs root (network namespaces, eBPF)");
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `name` with `lo` up.
    pub fn new(name: &str) -> Netns {
        run("ip", &["netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Its path, as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a command inside it; returns its output whatever the exit status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs a command inside it, failing the test if it fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        let out = self.try_exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Whether `count` pings to `ip` all get an answer.
    pub fn ping(&self, ip: &str, count: u32) -> bool {
        self.try_exec(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", ip])
            .status
            .success()
    }

    /// `GET path` over plain HTTP/1.0 to `addr` on this namespace's network (e.g. the agent's
    /// metrics); returns the whole response, head and body.
    pub fn http_get(&self, addr: &str, path: &str) -> std::io::Result<String> {
        let (netns, addr, path) = (self.path(), addr.to_owned(), path.to_owned());
        // setns changes only the calling thread: a thread of its own that then ends.
        std::thread::spawn(move || -> std::io::Result<String> {
            use std::io::{Read, Write};
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let mut stream = std::net::TcpStream::connect(&addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .join()
        .expect("http_get thread")
    }

    /// Deletes it now (as a runtime does when a pod goes away).
    pub fn delete(self) {
        drop(self)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// What kino-cni printed and how it exited.
#[derive(Debug)]
pub struct CniOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output (the result or error JSON).
    pub stdout: String,
    /// Standard error (logs).
    pub stderr: String,
}

impl CniOutput {
    /// Stdout parsed as JSON (panics with the output if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("kino-cni printed no JSON ({e}): {self:?}"))
    }
}

/// The suite on one node: services on unix sockets, the agent inside the node namespace.
pub struct Suite {
    /// Prefix of every kernel object of this world.
    pub prefix: String,
    /// Temp directory with sockets, state and logs.
    pub dir: tempfile::TempDir,
    /// The node namespace the agent runs in.
    pub node: Netns,
    /// Where the agent pins its maps (`<root>/<node>`).
    pub pin_root: PathBuf,
    /// Where each service serves `/metrics`, when [`SuiteOptions::metrics`] asked for it.
    pub metrics: Option<SuiteMetrics>,
    /// The world's certificates (`<dir>/pki`): every service's, the node's agent, admin and
    /// operator.
    pub pki: TestPki,
    /// How the services are reached.
    pub addresses: SuiteAddresses,
    options: SuiteOptions,
    etcd_prefix: Option<String>,
    _forwards: Vec<LoopbackForward>,
    gateway: ServiceProcess,
    gateway_args: Vec<String>,
    ipam: ServiceProcess,
    ipam_args: Vec<String>,
    policy: ServiceProcess,
    agent: Option<ServiceProcess>,
}

/// One agent of a world: its node namespace and its own paths.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The node namespace, also the node's name.
    pub netns: String,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its flow observer address.
    pub flows: String,
    /// Its `--state-dir`.
    pub state_dir: PathBuf,
    /// Where its log goes (`nsenter.log`).
    pub log_dir: PathBuf,
    /// Further flags.
    pub args: Vec<String>,
}

/// An agent command line, ready to start.
#[derive(Debug, Clone)]
pub struct AgentLaunch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    socket: PathBuf,
    log_dir: PathBuf,
}

impl AgentLaunch {
    /// Adds flags.
    pub fn push_args(&mut self, args: &[String]) {
        self.args.extend(args.iter().cloned());
    }

    /// Starts it and waits for its API socket.
    pub fn start(&self) -> ServiceProcess {
        let _ = std::fs::remove_file(&self.socket);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let agent = ServiceProcess::start(
            Path::new("/usr/bin/nsenter"),
            &self.args,
            &env,
            &self.log_dir,
        )
        .unwrap();
        wait_for_socket(&self.socket, &agent);
        agent
    }
}

/// How [`Suite::start_with`] starts the world.
#[derive(Debug, Clone, Default)]
pub struct SuiteOptions {
    /// Environment of every service, the agent included (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// Serve `/metrics` on every service: the cluster services on free loopback ports, the
    /// agent on [`AGENT_METRICS`] inside the node namespace.
    pub metrics: bool,
    /// Back the gateway with this etcd (client URLs) under a prefix of its own, removed when
    /// the suite is dropped; the embedded file when `None`.
    pub etcd_endpoints: Option<String>,
    /// Extra flags of the agent (e.g. `--node-lease-ttl 5`), given at every (re)start.
    pub agent_args: Vec<String>,
    /// Host loopback ports the agent reaches as `127.0.0.1:<port>` from the node namespace
    /// (e.g. an OTLP receiver of the test), relayed by [`LoopbackForward`]s set up before the
    /// agent starts.
    pub forward_to_host: Vec<u16>,
    /// Start no agent: the caller finishes the node namespace first (an underlay, say) and
    /// calls [`Suite::start_agent`].
    pub defer_agent: bool,
    /// Serve the cluster services on host loopback TCP with mTLS (the world's PKI) and
    /// authorization, the agent reaching them through relays into its namespace and serving
    /// its flow observer on the node namespace's `127.0.0.1` with mTLS: the deployed setup.
    /// Unix sockets (every peer admin) when false.
    pub mtls: bool,
}

/// Where a suite's services are, as seen from the host (the agent's API and flows are in
/// the node namespace).
#[derive(Debug, Clone)]
pub struct SuiteAddresses {
    /// datastore-gateway target: `unix:/…` or `127.0.0.1:<port>`.
    pub datastore: String,
    /// ipam target.
    pub ipam: String,
    /// policy-compiler target.
    pub policy: String,
    /// The agent's flow observer: `unix:/…`, or `127.0.0.1:<port>` inside the node
    /// namespace with mTLS.
    pub flows: String,
}

/// The agent's metrics address inside the node namespace (nothing else listens there).
pub const AGENT_METRICS: &str = "127.0.0.1:9404";

/// The `/metrics` addresses of a suite's services.
#[derive(Debug, Clone)]
pub struct SuiteMetrics {
    /// datastore-gateway, on the host's loopback.
    pub gateway: String,
    /// ipam, on the host's loopback.
    pub ipam: String,
    /// policy-compiler, on the host's loopback.
    pub policy: String,
    /// The agent, on the node namespace's loopback ([`Netns::http_get`] reaches it).
    pub agent: String,
}

impl Suite {
    /// Starts gateway, ipam and an agent on a fresh node namespace.
    pub async fn start(tag: &str) -> Suite {
        Self::start_with(tag, SuiteOptions::default()).await
    }

    /// Starts the suite as `options` say.
    pub async fn start_with(tag: &str, options: SuiteOptions) -> Suite {
        let prefix = unique_prefix(tag);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .unwrap();
        let node = Netns::new(&format!("{prefix}-node"));
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
        let d = dir.path().to_owned();
        let metrics = options.metrics.then(|| SuiteMetrics {
            gateway: format!("127.0.0.1:{}", crate::free_port()),
            ipam: format!("127.0.0.1:{}", crate::free_port()),
            policy: format!("127.0.0.1:{}", crate::free_port()),
            agent: AGENT_METRICS.to_owned(),
        });
        let metrics_args = |pick: fn(&SuiteMetrics) -> &String| -> Vec<String> {
            match &metrics {
                Some(m) => vec!["--metrics-address".into(), pick(m).clone()],
                None => Vec::new(),
            }
        };
        let env: Vec<(&str, &str)> = options
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let etcd_prefix = options
            .etcd_endpoints
            .as_ref()
            .map(|_| format!("/{prefix}/"));
        let pki = TestPki::create(&d.join("pki"), &node.name);
        let pki_env = ("KINO_PKI_DIR".to_owned(), pki.dir().display().to_string());
        // The test's own environment wins over the world's PKI.
        let env: Vec<(&str, &str)> = [(pki_env.0.as_str(), pki_env.1.as_str())]
            .into_iter()
            .chain(env)
            .collect();
        let addresses = if options.mtls {
            let port = || format!("127.0.0.1:{}", crate::free_port());
            SuiteAddresses {
                datastore: port(),
                ipam: port(),
                policy: port(),
                flows: port(),
            }
        } else {
            let socket = |name: &str| format!("unix:{}", d.join(name).display());
            SuiteAddresses {
                datastore: socket("ds.sock"),
                ipam: socket("ipam.sock"),
                policy: socket("policy.sock"),
                flows: socket("flows.sock"),
            }
        };
        let mut gateway_args: Vec<String> = vec!["--listen".into(), addresses.datastore.clone()];
        match (&options.etcd_endpoints, &etcd_prefix) {
            (Some(endpoints), Some(etcd_prefix)) => gateway_args.extend([
                "--backend".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoints.clone(),
                "--etcd-prefix".into(),
                etcd_prefix.clone(),
            ]),
            _ => gateway_args.extend([
                "--data-file".into(),
                d.join("ds.redb").display().to_string(),
            ]),
        }
        gateway_args.extend(metrics_args(|m| &m.gateway));
        let gateway =
            ServiceProcess::start(&binary("kino-datastore-gateway"), &gateway_args, &env, &d)
                .unwrap();
        wait_for_service(&addresses.datastore, &gateway).await;
        let mut ipam_args: Vec<String> = vec![
            "--listen".into(),
            addresses.ipam.clone(),
            "--datastore".into(),
            addresses.datastore.clone(),
        ];
        ipam_args.extend(metrics_args(|m| &m.ipam));
        let ipam = ServiceProcess::start(&binary("kino-ipam"), &ipam_args, &env, &d).unwrap();
        wait_for_service(&addresses.ipam, &ipam).await;
        let policy =
            start_policy_compiler(&addresses, &d, &metrics_args(|m| &m.policy), &env).await;
        // With mTLS the agent dials the services' loopback ports from its namespace.
        let mut forward_ports = options.forward_to_host.clone();
        if options.mtls {
            for target in [&addresses.datastore, &addresses.ipam, &addresses.policy] {
                forward_ports.push(port_of(target));
            }
        }
        let forwards = forward_ports
            .iter()
            .map(|port| {
                LoopbackForward::start(&node.path(), *port)
                    .unwrap_or_else(|e| panic!("forwarding port {port} into {}: {e}", node.name))
            })
            .collect();
        let mut suite = Suite {
            prefix,
            dir,
            node,
            pin_root,
            metrics,
            pki,
            addresses,
            options,
            etcd_prefix,
            _forwards: forwards,
            gateway,
            gateway_args,
            ipam,
            ipam_args,
            policy,
            agent: None,
        };
        if !suite.options.defer_agent {
            suite.start_agent();
        }
        suite
    }

    /// The agent's API socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The gateway, as a target (`unix:/…`, or `127.0.0.1:<port>` with mTLS).
    pub fn datastore_target(&self) -> String {
        self.addresses.datastore.clone()
    }

    /// The ipam service, as a target.
    pub fn ipam_target(&self) -> String {
        self.addresses.ipam.clone()
    }

    /// Client flags of the admin (what `kino` uses): the world's CA and admin certificate.
    pub fn admin_tls(&self) -> kino_service_kit::ClientTlsArgs {
        self.pki.client("admin")
    }

    /// The node's name (the node namespace's name).
    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    /// Starts the agent in the node namespace (nsenter keeps the host's mount namespace, so
    /// pins land in the real bpffs) and waits for its socket.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let spec = AgentSpec {
            netns: self.node.name.clone(),
            socket: self.agent_socket(),
            flows: self.addresses.flows.clone(),
            state_dir: self.dir.path().join("agent-state"),
            log_dir: self.dir.path().to_owned(),
            args: self.options.agent_args.clone(),
        };
        let mut agent = self.spawn_agent(&spec);
        if let Some(metrics) = &self.metrics {
            agent.push_args(&["--metrics-address".into(), metrics.agent.clone()]);
        }
        self.agent = Some(agent.start());
    }

    /// An agent of this world's services for `spec`'s node, ready to start: the flags every
    /// agent of the world takes (node name = namespace name, the services, pins under the
    /// world's pin root) and `spec`'s own.
    pub fn spawn_agent(&self, spec: &AgentSpec) -> AgentLaunch {
        let mut args: Vec<String> = vec![
            format!("--net=/run/netns/{}", spec.netns),
            binary("kino-agent").display().to_string(),
            "--node-name".into(),
            spec.netns.clone(),
            "--socket".into(),
            spec.socket.display().to_string(),
            "--flow-listen".into(),
            spec.flows.clone(),
            "--datastore".into(),
            self.datastore_target(),
            "--ipam".into(),
            self.ipam_target(),
            "--policy".into(),
            self.policy_target(),
            "--state-dir".into(),
            spec.state_dir.display().to_string(),
            "--bpf-pin-root".into(),
            self.pin_root.display().to_string(),
        ];
        args.extend(spec.args.iter().cloned());
        let mut env = vec![(
            "KINO_PKI_DIR".to_owned(),
            self.pki.dir().display().to_string(),
        )];
        env.extend(self.options.env.iter().cloned());
        AgentLaunch {
            args,
            env,
            socket: spec.socket.clone(),
            log_dir: spec.log_dir.clone(),
        }
    }

    /// Stops the agent with a signal ("KILL" for a crash, "TERM" for a clean stop).
    pub fn stop_agent(&mut self, signal: &str) {
        let mut agent = self.agent.take().expect("agent not running");
        agent.signal_and_wait(signal).unwrap();
    }

    /// The running agent's process id (to signal it while another thread uses the suite).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(ServiceProcess::pid)
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsenter.log")).unwrap_or_default()
    }

    /// The CNI network config kino-cni gets (one plugin).
    pub fn cni_config(&self, version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "kino",
            "type": "kino-cni",
            "agentSocket": self.agent_socket(),
        })
    }

    /// Runs kino-cni as a runtime does.
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&Path>,
        config: &serde_json::Value,
        cni_args: &str,
    ) -> CniOutput {
        self.cni_with_env(command, container_id, netns, config, cni_args, &[])
    }

    /// Runs kino-cni as a runtime does, with extra environment (e.g. OTLP export).
    pub fn cni_with_env(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&Path>,
        config: &serde_json::Value,
        cni_args: &str,
        env: &[(&str, &str)],
    ) -> CniOutput {
        use std::io::Write;
        let mut child = Command::new(binary("kino-cni"))
            .envs(env.iter().copied())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.display().to_string()).unwrap_or_default(),
            )
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                format!("{}:/usr/lib/cni", crate::bin_dir().display()),
            )
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kino-cni");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(config.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        CniOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the `kino` CLI against this world (as admin, with the world's PKI).
    pub fn kino(&self, args: &[&str]) -> Output {
        self.kino_at(&self.agent_socket(), args)
    }

    /// Runs the `kino` CLI against this world with `agent_socket` as the local agent.
    pub fn kino_at(&self, agent_socket: &Path, args: &[&str]) -> Output {
        Command::new(binary("kino"))
            .arg("--pki-dir")
            .arg(self.pki.dir())
            .arg("--agent-socket")
            .arg(agent_socket)
            .arg("--ipam")
            .arg(self.ipam_target())
            .arg("--datastore")
            .arg(self.datastore_target())
            .arg("--policy")
            .arg(self.policy_target())
            .args(args)
            .output()
            .expect("kino")
    }

    /// Runs the `kino` CLI against this world; panics with its output unless it succeeds.
    /// Returns its stdout.
    pub fn kino_ok(&self, args: &[&str]) -> String {
        kino_stdout(args, self.kino(args))
    }

    /// The lxc devices in the node namespace, as `ip -o link` lines.
    pub fn lxc_links(&self) -> Vec<String> {
        let out = self.node.exec(&["ip", "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(": lxc"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        // Processes first (the agent holds the pins), then kernel objects.
        self.agent.take();
        let _ = (&self.gateway, &self.ipam, &self.policy);
        let _ = std::fs::remove_dir_all(&self.pin_root);
        // The world's keys in a shared etcd (the gateway is still up but nothing writes).
        if let (Some(endpoints), Some(prefix)) = (&self.options.etcd_endpoints, &self.etcd_prefix) {
            let _ = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", endpoints, "del", "--prefix", prefix])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The stdout of `kino args` that ended as `out`; panics with its output unless it
/// succeeded.
pub fn kino_stdout(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kino {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits up to 30 s for a unix socket to appear, failing with the process's log.
pub fn wait_for_socket(path: &Path, process: &ServiceProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not create {} in 30 s; its log:\n{}",
            process.name,
            path.display(),
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Suite {
    /// Every datastore resource of `kind` in this world, as `namespace/name` (for checks that
    /// nothing is left: `Endpoint`, `IPAllocation`, …).
    pub async fn datastore_names(&self, kind: &str) -> Vec<String> {
        use kino_api::datastore::ListRequest;
        use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
        let channel = kino_service_kit::connect(&self.datastore_target(), &self.admin_tls())
            .await
            .expect("connecting to the suite's datastore-gateway");
        let mut client = DatastoreServiceClient::new(channel);
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list(ListRequest {
                    kind: kind.to_owned(),
                    limit: 5000,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("datastore List {kind}: {s}"))
                .into_inner();
            names.extend(
                page.resources
                    .iter()
                    .map(|r| format!("{}/{}", r.namespace, r.name)),
            );
            if page.next_page_token.is_empty() {
                return names;
            }
            page_token = page.next_page_token;
        }
    }
}

/// Starts kino-policy-compiler at its address against the suite's gateway.
async fn start_policy_compiler(
    addresses: &SuiteAddresses,
    d: &Path,
    extra_args: &[String],
    env: &[(&str, &str)],
) -> ServiceProcess {
    let mut args: Vec<String> = vec![
        "--listen".into(),
        addresses.policy.clone(),
        "--datastore".into(),
        addresses.datastore.clone(),
    ];
    args.extend_from_slice(extra_args);
    let policy = ServiceProcess::start(&binary("kino-policy-compiler"), &args, env, d).unwrap();
    wait_for_service(&addresses.policy, &policy).await;
    policy
}

/// Waits up to 30 s for a service at `target` (`unix:/…` or `host:port`) to accept
/// connections, failing with the process's log.
async fn wait_for_service(target: &str, process: &ServiceProcess) {
    match target.strip_prefix("unix:") {
        Some(path) => wait_for_socket(Path::new(path), process),
        None => {
            if let Err(e) = wait_for_port(target, Duration::from_secs(30)).await {
                panic!("{}: {e}; its log:\n{}", process.name, process.log_text());
            }
        }
    }
}

/// The port of a `127.0.0.1:<port>` target.
fn port_of(target: &str) -> u16 {
    target
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{target} has no port"))
}

impl Suite {
    /// The policy-compiler, as a target.
    pub fn policy_target(&self) -> String {
        self.addresses.policy.clone()
    }

    /// The policy-compiler's log so far.
    pub fn policy_log(&self) -> String {
        self.policy.log_text()
    }

    /// Stops the policy-compiler with a signal ("KILL" for a crash, "TERM" for a clean stop).
    pub fn stop_policy_compiler(&mut self, signal: &str) {
        self.policy.signal_and_wait(signal).unwrap();
    }

    /// Freezes (`"STOP"`) or thaws (`"CONT"`) the policy-compiler: its calls hang meanwhile.
    pub fn pause_policy_compiler(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.policy.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} the policy-compiler");
    }

    /// Sends kino-ipam a signal without waiting (usable while the suite is shared; reap a
    /// killed IPAM with [`Suite::stop_ipam`]).
    pub fn signal_ipam(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.ipam.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} kino-ipam");
    }

    /// Stops kino-ipam with a signal: an IPAM outage for the agent (also reaps one already
    /// killed by [`Suite::signal_ipam`]).
    pub fn stop_ipam(&mut self, signal: &str) {
        self.ipam.signal_and_wait(signal).unwrap();
    }

    /// Starts kino-ipam again as it was started (after [`Suite::stop_ipam`]).
    pub fn restart_ipam(&mut self) {
        self.ipam = self.start_again("kino-ipam", &self.ipam_args, "ipam.sock");
    }

    /// Stops kino-datastore-gateway with a signal: a datastore outage for every service.
    pub fn stop_gateway(&mut self, signal: &str) {
        self.gateway.signal_and_wait(signal).unwrap();
    }

    /// Starts the gateway again on the same data (after [`Suite::stop_gateway`]).
    pub fn restart_gateway(&mut self) {
        self.gateway = self.start_again("kino-datastore-gateway", &self.gateway_args, "ds.sock");
    }

    /// Starts `binary` with `args` and the suite's environment, and waits for its `socket`
    /// (removed first: the stopped process left it behind).
    fn start_again(&self, binary_name: &str, args: &[String], socket: &str) -> ServiceProcess {
        let d = self.dir.path().to_owned();
        let _ = std::fs::remove_file(d.join(socket));
        let env: Vec<(&str, &str)> = self
            .options
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let process = ServiceProcess::start(&binary(binary_name), args, &env, &d).unwrap();
        wait_for_socket(&d.join(socket), &process);
        process
    }
}

/// The address (without its prefix length) of the `index`th `ips` entry of a CNI result.
pub fn result_ip(result: &serde_json::Value, index: usize) -> String {
    let address = result["ips"][index]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[{index}] in {result}"));
    address.split('/').next().unwrap().to_owned()
}
