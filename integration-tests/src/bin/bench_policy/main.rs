//! bench-policy: the per-packet cost of policy and the time to change it, Kinocilium beside the
//! no-filter limit, iptables and nftables, all in one run (issue #5 item 7).
//!
//! Per-packet cost: TCP_RR (1-byte request/response on one connection) and TCP_CRR (connect,
//! 1 byte each way, close) between two pod namespaces, both ends pinned to one CPU, with N
//! policy-map entries per endpoint (Kinocilium) or N rules (iptables, in a linear FORWARD
//! chain) or an N-element set (nftables), as ratios to the same two namespaces with no
//! filter at all (measured in every group of the same run):
//!
//! - **no filter**: pod ns → router ns → pod ns over veths, /32 routes (`../shared/BENCHMARKS.md`);
//! - **kino, no policy**: two pods of the real suite (gateway, ipam, policy-compiler, agent)
//!   that no policy selects — same datapath, nothing enforced;
//! - **kino**: two pods whose policy (imported through the policy-compiler's API) allows each
//!   other plus N /32 CIDRs: N + 2 entries in the server's ingress map, N + 1 in the client's
//!   egress map, both directions enforced (counted from the agent's `ListBpfPolicy`);
//! - **iptables-legacy** / **iptables-nft**: the no-filter topology with N non-matching
//!   `-s <addr>/32 -j DROP` rules in the router's FORWARD chain before the accept;
//! - **nftables set**: one rule `ip saddr @peers drop` in the router's forward hook, the set
//!   holding N non-matching addresses.
//!
//! Update time with N in place: Kinocilium — from the `ImportPolicies` call of a small policy
//! letting a third pod in (and from `DeletePolicy` of it) to a TCP connect loop from that pod
//! seeing the verdict flip (end to end), and to the agent reporting the realized revision;
//! beside `iptables -A` / `-D` of one rule and `nft add|delete element` (process time).
//!
//! Everything lives in namespaces named with a unique prefix, removed on exit, on failure and
//! on Ctrl-C. Needs root.
//!
//! If kino cannot reach some N within `--realize-timeout`, its suite is stopped, its cells stay
//! empty from there and the report says why; the other setups go on. `--hold` sets up the
//! first N and waits (printing the client commands) for looking at the world by hand.
//!
//! cargo build --release --workspace --bins
//! target/release/bench-policy                       # N = 0,1000,10000,100000, 3 runs of 4 s
//! target/release/bench-policy --sizes 0,1000 --duration 1 --runs 1 --update-samples 2   # smoke

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Parser;
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::agent::{GetEndpointRequest, ListBpfPolicyRequest, get_endpoint_request};
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::policy::{DeletePolicyRequest, ImportPoliciesRequest, PolicyRef};
use kino_api::types::PodRef;
use kino_integration_tests::bin_dir;
use kino_integration_tests::stats::median;
use kino_integration_tests::world::{Netns, Suite, unique_prefix};
use kino_telemetry::TracedChannel;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Parser, Debug)]
#[command(
    about = "TCP_RR/TCP_CRR with N policy entries (kino) vs no filter, iptables and nftables; policy update time"
)]
struct Args {
    /// Policy-map entries per endpoint / rules / set elements to measure at.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,100000")]
    sizes: Vec<usize>,
    /// Seconds per TCP_RR or TCP_CRR measurement.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Measurements per point (the table shows the median and min–max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Policy changes timed per N (each: one add and one removal).
    #[arg(long, default_value_t = 5)]
    update_samples: usize,
    /// The N allowed CIDRs are split into policy documents of at most this many.
    #[arg(long, default_value_t = 5000)]
    cidrs_per_policy: usize,
    /// Leave iptables-legacy out even if it is installed.
    #[arg(long)]
    no_legacy: bool,
    /// The CPU client and server are pinned to (`taskset -c`).
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Prefix length of the N allowed CIDRs (and of the iptables rules' sources): 32 = one
    /// host each; shorter prefixes are spaced so they never overlap.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(16..=32))]
    cidr_prefix_len: u8,
    /// Set everything up at the first N, print where things are, and wait for Ctrl-C
    /// (to look at the world by hand); measures nothing.
    #[arg(long)]
    hold: bool,
    /// How long to wait for both endpoints to realize the import of N (seconds); past it,
    /// kino is reported as failed at that N and the other setups go on.
    #[arg(long, default_value_t = 300)]
    realize_timeout: u64,
}

/// Port the kino-rr servers listen on.
const PORT: u16 = 5001;
/// Port of the server pod's second kino-rr server, the prober's target: the prober's
/// connections (some cut by the policy change it times) never touch the measured server.
const PROBE_PORT: u16 = 5002;
/// First address of the N non-matching peers (100.64.0.0/10, never a pod address here).
const PEERS_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
/// The extra peer the iptables/nftables update adds and removes.
const EXTRA_PEER: &str = "100.127.255.254";
/// Namespace of the benchmark's pods and policies.
const POD_NAMESPACE: &str = "bench";

/// Addresses in 100.64.0.0/10 available to the peers.
const PEERS_SPACE: u64 = 1 << 22;

/// The i-th non-matching peer prefix `(network, length)`: prefixes of `len` bits laid out
/// one after the other from 100.64.0.0.
fn peer(i: usize, len: u8) -> (Ipv4Addr, u8) {
    let stride = 1u32 << (32 - len);
    (Ipv4Addr::from(PEERS_BASE + i as u32 * stride), len)
}

fn peer_cidr(i: usize, len: u8) -> String {
    let (addr, len) = peer(i, len);
    format!("{addr}/{len}")
}

// ---------------------------------------------------------------------------------------
// Measurement plumbing
// ---------------------------------------------------------------------------------------

/// What is measured, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    NoFilter,
    KinoNoPolicy,
    Kino,
    IptablesLegacy,
    IptablesNft,
    NftSet,
}

impl Setup {
    fn title(self) -> &'static str {
        match self {
            Setup::NoFilter => "no filter",
            Setup::KinoNoPolicy => "kino, no policy",
            Setup::Kino => "kino (N entries)",
            Setup::IptablesLegacy => "iptables-legacy (N rules)",
            Setup::IptablesNft => "iptables-nft (N rules)",
            Setup::NftSet => "nftables (N-element set)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Test {
    Rr,
    Crr,
}

impl Test {
    fn arg(self) -> &'static str {
        match self {
            Test::Rr => "rr",
            Test::Crr => "crr",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Test::Rr => "TCP_RR (transactions/s on one connection)",
            Test::Crr => "TCP_CRR (connections/s)",
        }
    }
}

/// Where a client runs and what it talks to.
#[derive(Clone, Debug)]
struct Endpoints {
    client_netns: String,
    server: SocketAddr,
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

/// Runs one kino-rr client in `ep.client_netns`, pinned; returns transactions/s.
/// One client run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Transactions per second.
    rate: f64,
    /// Transactions over 100 ms (a packet lost and retransmitted).
    slow: u64,
    /// The slowest transaction, ms.
    max_ms: f64,
}

async fn measure(ep: &Endpoints, test: Test, seconds: f64, cpu: usize) -> anyhow::Result<Sample> {
    let client = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ep.client_netns, "taskset", "-c"])
        .arg(cpu.to_string())
        .arg(bin_dir().join("kino-rr"))
        .args(["client", "--connect", &ep.server.to_string(), "--mode"])
        .arg(test.arg())
        .args(["--seconds", &seconds.to_string()])
        .kill_on_drop(true)
        .output();
    // kino-rr gives up on a transaction after 10 s; this is only a backstop.
    let limit = Duration::from_secs_f64(seconds + 30.0);
    let out = tokio::time::timeout(limit, client)
        .await
        .map_err(|_| anyhow!("kino-rr client {} → {} hung", ep.client_netns, ep.server))?
        .context("running kino-rr client")?;
    ensure!(
        out.status.success(),
        "kino-rr client {} → {} failed: {}",
        ep.client_netns,
        ep.server,
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("kino-rr printed {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(Sample {
        rate: result["rate"]
            .as_f64()
            .ok_or_else(|| anyhow!("no rate in {result}"))?,
        slow: result["slow"].as_u64().unwrap_or(0),
        max_ms: result["max_ms"].as_f64().unwrap_or(0.0),
    })
}

/// A kino-rr server in a namespace, killed on drop.
struct RrServer {
    _child: tokio::process::Child,
}

impl RrServer {
    async fn start(netns: &str, cpu: usize, ep: &Endpoints) -> anyhow::Result<RrServer> {
        let server = RrServer::spawn(netns, cpu, ep.server.port())?;
        // Ready once a short TCP_RR goes through (also proves the path works).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match measure(ep, Test::Rr, 0.05, cpu).await {
                Ok(sample) if sample.rate > 0.0 => return Ok(server),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(_) => bail!("no transaction from {} to {}", ep.client_netns, ep.server),
                Err(e) => return Err(e.context(format!("{netns} cannot reach the server"))),
            }
        }
    }

    /// Starts a server on `port` in `netns` without waiting for it.
    fn spawn(netns: &str, cpu: usize, port: u16) -> anyhow::Result<RrServer> {
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", netns, "taskset", "-c"])
            .arg(cpu.to_string())
            .arg(bin_dir().join("kino-rr"))
            .args(["server", "--listen", &format!("0.0.0.0:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting kino-rr server")?;
        Ok(RrServer { _child: child })
    }
}

/// Runs a program inside a namespace (setns just before exec, so the process starts as it
/// would on a node), feeding `stdin`; returns its wall time (spawn to exit), failing with its
/// output.
async fn timed_in(netns: &Netns, program: &str, args: &[&str], stdin: &str) -> anyhow::Result<f64> {
    let ns = std::fs::File::open(netns.path())?;
    let fd = ns.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: only the setns syscall runs between fork and exec; `ns` stays open until the
    // child has exited. A failed setns fails the spawn, so the program never runs in the
    // host's namespace.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let out = child.wait_with_output().await?;
    let took = start.elapsed().as_secs_f64();
    drop(ns);
    ensure!(
        out.status.success(),
        "{program} {args:?} in {} failed: {}{}",
        netns.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn ipn(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn sysctl_in(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
    for s in settings {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", s])
            .output()?;
        ensure!(
            out.status.success(),
            "sysctl {s} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Client-side settings for TCP_CRR: a wide ephemeral range and TIME_WAIT reuse, so
/// tens of thousands of connections in a few seconds find a local port.
fn client_sysctls(ns: &str) -> anyhow::Result<()> {
    sysctl_in(
        ns,
        &[
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
}

// ---------------------------------------------------------------------------------------
// The no-filter topology and its filtered variants
// ---------------------------------------------------------------------------------------

/// Which filter a router namespace gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    None,
    IptablesLegacy,
    IptablesNft,
    NftSet,
}

/// Two pod namespaces and a router namespace between them: `a` 10.99.0.1/32 ↔ router ↔ `b`
/// 10.99.0.2/32, veths, /32 routes, the router's 10.99.0.254 as both pods' gateway.
struct RoutedPair {
    filter: Filter,
    a: Netns,
    router: Netns,
    b: Netns,
    server: Option<RrServer>,
}

const A_IP: &str = "10.99.0.1";
const B_IP: &str = "10.99.0.2";
const GATEWAY: &str = "10.99.0.254";

impl RoutedPair {
    fn new(prefix: &str, tag: &str, filter: Filter) -> anyhow::Result<RoutedPair> {
        let pair = RoutedPair {
            filter,
            a: Netns::new(&format!("{prefix}-{tag}a")),
            router: Netns::new(&format!("{prefix}-{tag}r")),
            b: Netns::new(&format!("{prefix}-{tag}b")),
            server: None,
        };
        let r = pair.router.name.as_str();
        for (pod, ip, dev) in [(&pair.a, A_IP, "ra"), (&pair.b, B_IP, "rb")] {
            let p = pod.name.as_str();
            ipn(
                p,
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", dev, "netns", r,
                ],
            )?;
            ipn(p, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            ipn(p, &["link", "set", "eth0", "up"])?;
            ipn(
                p,
                &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
            )?;
            ipn(
                p,
                &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
            )?;
            ipn(r, &["addr", "add", &format!("{GATEWAY}/32"), "dev", dev])?;
            ipn(r, &["link", "set", dev, "up"])?;
            ipn(r, &["route", "add", &format!("{ip}/32"), "dev", dev])?;
        }
        sysctl_in(r, &["net.ipv4.ip_forward=1"])?;
        client_sysctls(&pair.a.name)?;
        Ok(pair)
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            client_netns: self.a.name.clone(),
            server: SocketAddr::new(B_IP.parse().unwrap(), PORT),
        }
    }

    async fn start_server(&mut self, cpu: usize) -> anyhow::Result<()> {
        self.server = Some(RrServer::start(&self.b.name, cpu, &self.endpoints()).await?);
        Ok(())
    }

    /// Installs N rules / set elements in the router, replacing what was there; returns the
    /// time the load took.
    async fn install(&self, n: usize, prefix_len: u8) -> anyhow::Result<f64> {
        match self.filter {
            Filter::None => Ok(0.0),
            Filter::IptablesLegacy | Filter::IptablesNft => {
                let mut text = String::with_capacity(40 * n + 200);
                text.push_str(
                    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
                );
                for i in 0..n {
                    let _ = writeln!(text, "-A FORWARD -s {} -j DROP", peer_cidr(i, prefix_len));
                }
                text.push_str("-A FORWARD -j ACCEPT\nCOMMIT\n");
                let program = if self.filter == Filter::IptablesLegacy {
                    "iptables-legacy-restore"
                } else {
                    "iptables-nft-restore"
                };
                timed_in(&self.router, program, &[], &text).await
            }
            Filter::NftSet => {
                let mut text = String::with_capacity(18 * n + 300);
                // Declare-then-delete makes the load replace an earlier table atomically.
                text.push_str("table ip kbench\ndelete table ip kbench\ntable ip kbench {\n  set peers {\n    type ipv4_addr\n");
                if n > 0 {
                    text.push_str("    elements = { ");
                    for i in 0..n {
                        if i > 0 {
                            text.push_str(", ");
                        }
                        let _ = write!(text, "{}", peer(i, 32).0);
                    }
                    text.push_str(" }\n");
                }
                text.push_str("  }\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    ip saddr @peers drop\n  }\n}\n");
                timed_in(&self.router, "nft", &["-f", "-"], &text).await
            }
        }
    }

    /// Adds then removes one rule / element at the current N; returns (add, remove) seconds.
    async fn update_once(&self) -> anyhow::Result<(f64, f64)> {
        let peer = format!("{EXTRA_PEER}/32");
        match self.filter {
            Filter::None => Ok((0.0, 0.0)),
            Filter::IptablesLegacy | Filter::IptablesNft => {
                let program = if self.filter == Filter::IptablesLegacy {
                    "iptables-legacy"
                } else {
                    "iptables-nft"
                };
                let add = timed_in(
                    &self.router,
                    program,
                    &["-A", "FORWARD", "-s", &peer, "-j", "DROP"],
                    "",
                )
                .await?;
                let del = timed_in(
                    &self.router,
                    program,
                    &["-D", "FORWARD", "-s", &peer, "-j", "DROP"],
                    "",
                )
                .await?;
                Ok((add, del))
            }
            Filter::NftSet => {
                let element = format!("{{ {EXTRA_PEER} }}");
                let add = timed_in(
                    &self.router,
                    "nft",
                    &["add", "element", "ip", "kbench", "peers", &element],
                    "",
                )
                .await?;
                let del = timed_in(
                    &self.router,
                    "nft",
                    &["delete", "element", "ip", "kbench", "peers", &element],
                    "",
                )
                .await?;
                Ok((add, del))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kinocilium
// ---------------------------------------------------------------------------------------

/// A pod of the kino world.
struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    endpoint_id: u32,
}

/// The real suite on one node and five pods: client → server with policy, prober (the
/// third pod a policy change lets in), and free-client → free-server that no policy selects.
struct KinoWorld {
    suite: Suite,
    pods: BTreeMap<&'static str, Pod>,
    policy: PolicyServiceClient<TracedChannel>,
    agent: AgentServiceClient<TracedChannel>,
    servers: Vec<RrServer>,
    /// CIDRs currently imported per chunk policy.
    chunks: Vec<usize>,
}

fn selects(app: &str) -> Value {
    json!({"matchLabels": {"app": app}})
}

fn policy_doc(name: &str, specs: Vec<Value>) -> Value {
    json!({
        "apiVersion": "kino.io/v1",
        "kind": "KinoNetworkPolicy",
        "metadata": {"name": name, "namespace": POD_NAMESPACE},
        "specs": specs,
    })
}

/// client → server, both directions enforced (server ingress, client egress).
fn base_policy() -> Value {
    policy_doc(
        "bench-base",
        vec![
            json!({"endpointSelector": selects("server"),
                   "ingress": [{"fromEndpoints": [selects("client")]}]}),
            json!({"endpointSelector": selects("client"),
                   "egress": [{"toEndpoints": [selects("server")]}]}),
        ],
    )
}

fn chunk_name(k: usize) -> String {
    format!("bench-cidrs-{k}")
}

/// Peers `first..first + len` as /32s, allowed into the server and out of the client.
fn chunk_policy(k: usize, first: usize, len: usize, prefix_len: u8) -> Value {
    let cidrs: Vec<String> = (first..first + len)
        .map(|i| peer_cidr(i, prefix_len))
        .collect();
    policy_doc(
        &chunk_name(k),
        vec![
            json!({"endpointSelector": selects("server"), "ingress": [{"fromCIDR": cidrs}]}),
            json!({"endpointSelector": selects("client"), "egress": [{"toCIDR": cidrs}]}),
        ],
    )
}

/// The change whose enforcement is timed: the prober pod may reach the server.
fn probe_policy() -> Value {
    policy_doc(
        "bench-probe",
        vec![json!({"endpointSelector": selects("server"),
                    "ingress": [{"fromEndpoints": [selects("prober")]}]})],
    )
}

impl KinoWorld {
    const PODS: [&'static str; 5] = ["client", "server", "prober", "free-client", "free-server"];

    async fn start(cpu: usize) -> anyhow::Result<KinoWorld> {
        let suite = Suite::start("bp").await;
        let tls = kino_service_kit::ClientTlsArgs::default();
        let agent_target = format!("unix:{}", suite.agent_socket().display());
        let mut agent =
            AgentServiceClient::new(kino_service_kit::connect(&agent_target, &tls).await?)
                .max_decoding_message_size(512 * 1024 * 1024);
        let policy = PolicyServiceClient::new(
            kino_service_kit::connect(&suite.policy_target(), &tls).await?,
        )
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
        let mut pods = BTreeMap::new();
        for name in Self::PODS {
            let ns = Netns::new(&format!("{}-{name}", suite.prefix));
            let mut config = suite.cni_config("1.1.0");
            config["args"] = json!({"labels": {"app": name}});
            let out = suite.cni(
                "ADD",
                &format!("{}-{name}", suite.prefix),
                Some(&ns.path()),
                &config,
                &format!("IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE={POD_NAMESPACE}"),
            );
            ensure!(out.code == 0, "kino-cni ADD {name}: {out:?}");
            let address = out.json()["ips"][0]["address"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no address in the ADD result of {name}: {out:?}"))?;
            let ip: Ipv4Addr = address.split('/').next().unwrap_or_default().parse()?;
            let endpoint = agent
                .get_endpoint(GetEndpointRequest {
                    lookup: Some(get_endpoint_request::Lookup::Pod(PodRef {
                        namespace: POD_NAMESPACE.to_owned(),
                        name: name.to_owned(),
                    })),
                })
                .await?
                .into_inner()
                .endpoint
                .ok_or_else(|| anyhow!("the agent does not know pod {name}"))?;
            pods.insert(
                name,
                Pod {
                    ns,
                    ip,
                    endpoint_id: endpoint.id,
                },
            );
        }
        for client in ["client", "free-client", "prober"] {
            client_sysctls(&pods[client].ns.name)?;
        }
        let mut world = KinoWorld {
            suite,
            pods,
            policy,
            agent,
            servers: Vec::new(),
            chunks: Vec::new(),
        };
        for (server, ep) in [
            ("server", world.endpoints(false)),
            ("free-server", world.endpoints(true)),
        ] {
            let name = world.pods[server].ns.name.clone();
            world.servers.push(RrServer::start(&name, cpu, &ep).await?);
        }
        // The prober's target; it answers once the probe policy lets the prober in.
        let name = world.pods["server"].ns.name.clone();
        world.servers.push(RrServer::spawn(&name, cpu, PROBE_PORT)?);
        Ok(world)
    }

    /// client → server (policy), or free-client → free-server (no policy).
    fn endpoints(&self, free: bool) -> Endpoints {
        let (client, server) = if free {
            ("free-client", "free-server")
        } else {
            ("client", "server")
        };
        Endpoints {
            client_netns: self.pods[client].ns.name.clone(),
            server: SocketAddr::new(self.pods[server].ip.into(), PORT),
        }
    }

    async fn import(&mut self, doc: &Value) -> anyhow::Result<i64> {
        let response = self
            .policy
            .import_policies(ImportPoliciesRequest {
                documents: doc.to_string(),
                default_namespace: String::new(),
            })
            .await
            .with_context(|| format!("ImportPolicies {}", doc["metadata"]["name"]))?;
        Ok(response.into_inner().revision)
    }

    async fn delete(&mut self, name: &str) -> anyhow::Result<i64> {
        let response = self
            .policy
            .delete_policy(DeletePolicyRequest {
                policy: Some(PolicyRef {
                    namespace: POD_NAMESPACE.to_owned(),
                    name: name.to_owned(),
                }),
            })
            .await
            .with_context(|| format!("DeletePolicy {name}"))?;
        Ok(response.into_inner().revision)
    }

    /// The agent's view of a pod's endpoint: (realized revision, ingress enforced, egress
    /// enforced, ingress entries, egress entries).
    async fn policy_status(&mut self, pod: &str) -> anyhow::Result<(i64, bool, bool, u32, u32)> {
        let id = self.pods[pod].endpoint_id;
        let endpoint = self
            .agent
            .get_endpoint(GetEndpointRequest {
                lookup: Some(get_endpoint_request::Lookup::Id(id)),
            })
            .await?
            .into_inner()
            .endpoint
            .ok_or_else(|| anyhow!("endpoint {id} ({pod}) is gone"))?;
        let policy = endpoint.policy.unwrap_or_default();
        let enforcement = policy.enforcement.unwrap_or_default();
        Ok((
            policy.realized_revision,
            enforcement.ingress,
            enforcement.egress,
            policy.ingress_entries,
            policy.egress_entries,
        ))
    }

    /// Waits until every pod of `pods` realizes `revision`; polls every `every`.
    async fn wait_realized(
        &mut self,
        pods: &[&str],
        revision: i64,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        for pod in pods {
            loop {
                // A busy agent may fail a call (keep-alive timeout): retry until the deadline.
                let status = self.policy_status(pod).await;
                let progress = match &status {
                    Ok(s) if s.0 >= revision => break,
                    Ok(s) => format!("at {}; {} ingress / {} egress entries", s.0, s.3, s.4),
                    Err(e) => format!("the agent did not answer: {e:#}"),
                };
                if Instant::now() > deadline {
                    bail!(
                        "{pod} did not realize policy revision {revision} in {timeout:?} ({progress})\nagent log tail:\n{}\npolicy-compiler log tail:\n{}",
                        tail(&self.suite.agent_log(), 40),
                        tail(&self.suite.policy_log(), 40)
                    );
                }
                if last_report.elapsed() > Duration::from_secs(10) {
                    eprintln!("  … waiting for {pod} to realize revision {revision} ({progress})");
                    last_report = Instant::now();
                }
                tokio::time::sleep(every).await;
            }
        }
        Ok(Instant::now())
    }

    /// Imports (or deletes) CIDR policies so that N peers are allowed; returns the seconds
    /// from the first call to both endpoints realizing the last revision.
    async fn set_size(
        &mut self,
        n: usize,
        per: usize,
        prefix_len: u8,
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let start = Instant::now();
        let want = n.div_ceil(per.max(1));
        let mut revision = 0;
        for k in 0..want {
            let len = per.min(n - k * per);
            if self.chunks.get(k) == Some(&len) {
                continue;
            }
            revision = self
                .import(&chunk_policy(k, k * per, len, prefix_len))
                .await?;
            if k < self.chunks.len() {
                self.chunks[k] = len;
            } else {
                self.chunks.push(len);
            }
        }
        while self.chunks.len() > want {
            let k = self.chunks.len() - 1;
            revision = self.delete(&chunk_name(k)).await?;
            self.chunks.pop();
        }
        if revision > 0 {
            self.wait_realized(
                &["server", "client"],
                revision,
                Duration::from_millis(50),
                timeout,
            )
            .await?;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// Entries in the server's and the client's policy map, from the agent's map dump.
    async fn map_entries(&mut self) -> anyhow::Result<(usize, usize)> {
        let mut counts = [0; 2];
        for (i, pod) in ["server", "client"].iter().enumerate() {
            let dump = self
                .agent
                .list_bpf_policy(ListBpfPolicyRequest {
                    endpoint_id: self.pods[pod].endpoint_id,
                })
                .await
                .with_context(|| format!("ListBpfPolicy of {pod}"))?
                .into_inner();
            counts[i] = dump.entries.len();
        }
        Ok((counts[0], counts[1]))
    }

    /// CPU time (user + system, seconds) the node's kino-agent has used so far; 0 when it
    /// cannot be read.
    fn agent_cpu_seconds(&self) -> f64 {
        let node = format!("--node-name\0{}\0", self.suite.node_name());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if !cmdline.contains("kino-agent\0") || !cmdline.contains(&node) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            if let (Some(u), Some(s)) = (ticks(11), ticks(12)) {
                return (u + s) / hz;
            }
        }
        0.0
    }

    /// Packets the datapath dropped for a pod's endpoint so far, by reason (the agent's
    /// counters), summed over both directions.
    async fn drops(&mut self, pod: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let id = self.pods[pod].endpoint_id;
        let endpoint = self
            .agent
            .get_endpoint(GetEndpointRequest {
                lookup: Some(get_endpoint_request::Lookup::Id(id)),
            })
            .await?
            .into_inner()
            .endpoint
            .ok_or_else(|| anyhow!("endpoint {id} ({pod}) is gone"))?;
        let mut out = BTreeMap::new();
        for d in endpoint.counters.unwrap_or_default().drops {
            let reason = kino_api::types::DropReason::try_from(d.reason)
                .map(|r| r.as_str_name().to_owned())
                .unwrap_or_else(|_| d.reason.to_string());
            *out.entry(reason).or_default() += d.packets;
        }
        Ok(out)
    }

    /// Drops of the measured pods, for a before/after comparison.
    async fn measured_drops(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut all = BTreeMap::new();
        for pod in ["client", "server", "free-client", "free-server"] {
            for (reason, n) in self.drops(pod).await? {
                all.insert(format!("{pod} {reason}"), n);
            }
        }
        Ok(all)
    }

    /// Checks that client → server is enforced both ways and free-client → free-server not.
    async fn check_enforcement(&mut self) -> anyhow::Result<()> {
        let server = self.policy_status("server").await?;
        let client = self.policy_status("client").await?;
        ensure!(server.1, "the server's ingress is not enforced: {server:?}");
        ensure!(client.2, "the client's egress is not enforced: {client:?}");
        for pod in ["free-client", "free-server"] {
            let s = self.policy_status(pod).await?;
            ensure!(!s.1 && !s.2, "{pod} has policy enforced: {s:?}");
        }
        Ok(())
    }

    /// One policy change timed end to end: from the API call to a connect loop in the
    /// prober pod seeing the verdict flip. `allow`: import the probe policy (denied →
    /// allowed); else delete it (allowed → denied). Returns (end to end, API call) seconds.
    async fn update_probe(&mut self, allow: bool) -> anyhow::Result<(f64, f64)> {
        let target = SocketAddr::new(self.pods["server"].ip.into(), PROBE_PORT);
        let netns = self.pods["prober"].ns.path();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = probe_thread(&netns, target, allow, ready_tx, go_rx);
            let _ = done_tx.send(result);
        });
        ready_rx
            .await
            .map_err(|_| anyhow!("the prober thread ended early"))??;
        let t0 = Instant::now();
        let _ = go_tx.send(());
        if allow {
            self.import(&probe_policy()).await?;
        } else {
            self.delete("bench-probe").await?;
        }
        let api = t0.elapsed().as_secs_f64();
        let flipped = done_rx
            .await
            .map_err(|_| anyhow!("the prober thread ended early"))??;
        Ok((flipped.saturating_duration_since(t0).as_secs_f64(), api))
    }

    /// One policy change timed from the API call to the agent reporting the server's
    /// realized revision at or above the call's (polled every millisecond).
    async fn update_realized(&mut self, allow: bool) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let revision = if allow {
            self.import(&probe_policy()).await?
        } else {
            self.delete("bench-probe").await?
        };
        let at = self
            .wait_realized(
                &["server"],
                revision,
                Duration::from_millis(1),
                Duration::from_secs(120),
            )
            .await?;
        Ok(at.saturating_duration_since(t0).as_secs_f64())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The prober: enters the prober pod's namespace, checks the verdict before the change,
/// says ready, waits for go, then connects in a loop until the verdict flips; returns when
/// it flipped (allow: the first connect that succeeded; deny: the start of the first of
/// three connects in a row that failed).
fn probe_thread(
    netns: &Path,
    target: SocketAddr,
    allow: bool,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    go: std::sync::mpsc::Receiver<()>,
) -> anyhow::Result<Instant> {
    let enter = || -> anyhow::Result<()> {
        let ns = std::fs::File::open(netns)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the prober's namespace")?;
        let open = TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok();
        ensure!(
            open != allow,
            "before the change the prober's connect to {target} {}",
            if open {
                "already works"
            } else {
                "already fails"
            }
        );
        Ok(())
    };
    let entered = enter();
    let failed = entered.is_err();
    let _ = ready.send(entered);
    if failed {
        bail!("prober not ready");
    }
    go.recv().context("no go for the prober")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if allow {
            // A dropped SYN times out after 1 ms and the next attempt sends a fresh one.
            if TcpStream::connect_timeout(&target, Duration::from_millis(1)).is_ok() {
                return Ok(Instant::now());
            }
        } else {
            let at = Instant::now();
            let timeout = Duration::from_millis(50);
            if TcpStream::connect_timeout(&target, timeout).is_ok() {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            if (0..2).all(|_| TcpStream::connect_timeout(&target, timeout).is_err()) {
                return Ok(at);
            }
        }
    }
    bail!("the prober's verdict toward {target} did not flip within 120 s")
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

fn tool_exists(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn fmt_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ms(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".to_owned();
    }
    let (lo, hi) = min_max(values);
    format!(
        "{:.1} ({:.1}–{:.1})",
        median(values) * 1000.0,
        lo * 1000.0,
        hi * 1000.0
    )
}

#[derive(Default)]
struct Results {
    /// Transactions over 100 ms (lost packets), summed over runs.
    slow: BTreeMap<(usize, Setup, Test), u64>,
    /// The N at which kino failed (its suite stopped then), and why.
    kino_failure: Option<(usize, String)>,
    /// kino-agent's CPU time over a kino measurement ÷ its wall time, per run.
    agent_cpu: BTreeMap<(usize, Setup, Test), Vec<f64>>,
    /// Rates per (N, setup, test), one per run.
    rates: BTreeMap<(usize, Setup, Test), Vec<f64>>,
    /// Seconds per (N, what), one per sample.
    updates: BTreeMap<(usize, String), Vec<f64>>,
    /// Seconds to install N, per (N, setup).
    installs: BTreeMap<(usize, Setup), f64>,
    /// Datapath drops of the measured kino pods during the traffic, per N.
    drops: BTreeMap<usize, Vec<String>>,
    /// Allowed packets the kino datapath dropped as POLICY_DENIED during the traffic, per N
    /// (every measured connection is allowed, so each is an allowed reply lost).
    allowed_drops: BTreeMap<usize, u64>,
    /// Connections and transactions measured on the kino pods, per N (rate × duration).
    kino_transactions: BTreeMap<usize, f64>,
    /// Policy-map entries (server ingress map, client egress map) per N.
    entries: BTreeMap<usize, (usize, usize)>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    ensure!(!sizes.is_empty(), "--sizes is empty");
    ensure!(args.runs > 0, "--runs must be at least 1");
    let largest = *sizes.last().unwrap() as u64 + 1;
    ensure!(
        largest << (32 - args.cidr_prefix_len) <= PEERS_SPACE,
        "{largest} prefixes of /{} do not fit in 100.64.0.0/10; use a longer --cidr-prefix-len",
        args.cidr_prefix_len
    );
    let legacy = !args.no_legacy && tool_exists("iptables-legacy");
    let prefix = unique_prefix("bp");

    eprintln!("setting up: routed namespaces (no filter, iptables, nftables) …");
    let mut pairs: Vec<(Setup, RoutedPair)> = Vec::new();
    pairs.push((
        Setup::NoFilter,
        RoutedPair::new(&prefix, "n", Filter::None)?,
    ));
    if legacy {
        pairs.push((
            Setup::IptablesLegacy,
            RoutedPair::new(&prefix, "l", Filter::IptablesLegacy)?,
        ));
    }
    pairs.push((
        Setup::IptablesNft,
        RoutedPair::new(&prefix, "i", Filter::IptablesNft)?,
    ));
    pairs.push((
        Setup::NftSet,
        RoutedPair::new(&prefix, "s", Filter::NftSet)?,
    ));
    for (_, pair) in &mut pairs {
        pair.start_server(args.cpu).await?;
    }
    eprintln!("setting up: the kino suite and five pods …");
    let mut world = KinoWorld::start(args.cpu).await?;
    let revision = world.import(&base_policy()).await?;
    world
        .wait_realized(
            &["server", "client"],
            revision,
            Duration::from_millis(20),
            Duration::from_secs(60),
        )
        .await?;
    world.check_enforcement().await?;
    // Dropped (suite stopped) if it cannot reach some N, so the other setups go on being
    // measured on a quiet machine.
    let mut kino = Some(world);

    let mut setups: Vec<Setup> = vec![Setup::NoFilter, Setup::KinoNoPolicy, Setup::Kino];
    setups.extend(
        pairs
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s != Setup::NoFilter),
    );
    setups.sort();

    let mut results = Results::default();
    for &n in &sizes {
        eprintln!("== N = {n}: installing …");
        if let Some(world) = kino.as_mut()
            && let Err(e) = install_kino(world, n, &args, &mut results).await
        {
            fail_kino(&mut kino, &mut results, n, e);
        }
        for (setup, pair) in &pairs {
            let took = pair.install(n, args.cidr_prefix_len).await?;
            if *setup != Setup::NoFilter {
                eprintln!("   {}: loaded in {took:.2} s", setup.title());
            }
            results.installs.insert((n, *setup), took);
        }

        if args.hold {
            hold(&pairs, kino.as_ref());
            std::future::pending::<()>().await;
        }
        let drops_before = match kino.as_mut() {
            Some(world) => world.measured_drops().await.ok(),
            None => None,
        };
        for run in 0..args.runs {
            // Each run starts with the next setup: no setup is always measured first (the
            // first measurement of a run came out a few percent faster, whatever it was).
            let order: Vec<Setup> = setups
                .iter()
                .cycle()
                .skip(run % setups.len().max(1))
                .take(setups.len())
                .copied()
                .collect();
            for &setup in &order {
                let kino_setup = matches!(setup, Setup::Kino | Setup::KinoNoPolicy);
                let ep = match (setup, kino.as_ref()) {
                    (Setup::Kino, Some(world)) => world.endpoints(false),
                    (Setup::KinoNoPolicy, Some(world)) => world.endpoints(true),
                    (Setup::Kino | Setup::KinoNoPolicy, None) => continue,
                    (other, _) => pairs
                        .iter()
                        .find(|(s, _)| *s == other)
                        .map(|(_, p)| p.endpoints())
                        .expect("a pair per setup"),
                };
                for test in [Test::Rr, Test::Crr] {
                    let agent_before = kino.as_ref().map_or(0.0, |w| w.agent_cpu_seconds());
                    let started = Instant::now();
                    let sample = match measure(&ep, test, args.duration, args.cpu).await {
                        Ok(sample) => sample,
                        Err(e) if kino_setup => {
                            fail_kino(&mut kino, &mut results, n, e);
                            break;
                        }
                        Err(e) => return Err(e),
                    };
                    let mut agent = String::new();
                    if let (true, Some(world)) = (kino_setup, kino.as_ref()) {
                        let share = (world.agent_cpu_seconds() - agent_before)
                            / started.elapsed().as_secs_f64();
                        results
                            .agent_cpu
                            .entry((n, setup, test))
                            .or_default()
                            .push(share);
                        agent = format!("  (kino-agent {:.0} % of a CPU)", share * 100.0);
                    }
                    let slow = if sample.slow > 0 {
                        format!(
                            "  [{} transactions over 100 ms, slowest {:.0} ms]",
                            sample.slow, sample.max_ms
                        )
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "   run {}/{} {:<28} {:<4} {:>10.0}/s{agent}{slow}",
                        run + 1,
                        args.runs,
                        setup.title(),
                        test.arg(),
                        sample.rate
                    );
                    results
                        .rates
                        .entry((n, setup, test))
                        .or_default()
                        .push(sample.rate);
                    if kino_setup {
                        *results.kino_transactions.entry(n).or_default() +=
                            sample.rate * args.duration;
                    }
                    *results.slow.entry((n, setup, test)).or_default() += sample.slow;
                }
            }
        }

        if let (Some(world), Some(before)) = (kino.as_mut(), drops_before)
            && let Ok(after) = world.measured_drops().await
        {
            let dropped: Vec<String> = after
                .iter()
                .filter_map(|(k, a)| {
                    let d = a - before.get(k).copied().unwrap_or(0);
                    (d > 0).then(|| format!("{k}: {d}"))
                })
                .collect();
            eprintln!(
                "   kino datapath drops during the traffic: {}",
                if dropped.is_empty() {
                    "none".to_owned()
                } else {
                    dropped.join(", ")
                }
            );
            // The policy allows every measured connection (client → server, and nothing
            // is enforced on the free pair): any POLICY_DENIED drop is an allowed packet —
            // in practice a reply whose conntrack entry was gone — lost.
            let allowed: u64 = after
                .iter()
                .filter(|(k, _)| k.ends_with("POLICY_DENIED"))
                .map(|(k, a)| a - before.get(k).copied().unwrap_or(0))
                .sum();
            eprintln!(
                "   kino allowed replies dropped (POLICY_DENIED on allowed traffic): {allowed} of ~{:.0} connections and transactions",
                results.kino_transactions.get(&n).copied().unwrap_or(0.0)
            );
            results.allowed_drops.insert(n, allowed);
            results.drops.insert(n, dropped);
        }

        eprintln!(
            "   policy update timing ({} samples) …",
            args.update_samples
        );
        if let Some(world) = kino.as_mut()
            && let Err(e) = kino_updates(world, n, &args, &mut results).await
        {
            fail_kino(&mut kino, &mut results, n, e);
        }
        for (setup, pair) in &pairs {
            let key: (&'static str, &'static str) = match setup {
                Setup::IptablesLegacy => ("legacy add", "legacy del"),
                Setup::IptablesNft => ("iptnft add", "iptnft del"),
                Setup::NftSet => ("nft add", "nft del"),
                _ => continue,
            };
            for _ in 0..args.update_samples {
                let (add, del) = pair.update_once().await?;
                push(&mut results, n, key.0, add);
                push(&mut results, n, key.1, del);
            }
        }
    }

    print_report(&args, &sizes, &setups, &results);
    drop(kino);
    drop(pairs);
    Ok(())
}

/// Prints the client namespace and server address of every setup (for `--hold`).
fn hold(pairs: &[(Setup, RoutedPair)], kino: Option<&KinoWorld>) {
    let rr = bin_dir().join("kino-rr");
    let mut lines = Vec::new();
    for (setup, pair) in pairs {
        lines.push((setup.title(), pair.endpoints()));
    }
    if let Some(world) = kino {
        lines.push((Setup::KinoNoPolicy.title(), world.endpoints(true)));
        lines.push((Setup::Kino.title(), world.endpoints(false)));
        eprintln!(
            "kino suite: {} (logs), agent socket {}, node namespace {}",
            world.suite.dir.path().display(),
            world.suite.agent_socket().display(),
            world.suite.node_name()
        );
    }
    for (title, ep) in lines {
        eprintln!(
            "{title}: ip netns exec {} taskset -c 0 {} client --connect {} --mode crr --seconds 5",
            ep.client_netns,
            rr.display(),
            ep.server
        );
    }
    eprintln!("holding; Ctrl-C removes everything");
}

/// Brings the kino world to N entries and records the install time and the map sizes.
async fn install_kino(
    world: &mut KinoWorld,
    n: usize,
    args: &Args,
    results: &mut Results,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.realize_timeout);
    let took = world
        .set_size(n, args.cidrs_per_policy, args.cidr_prefix_len, timeout)
        .await?;
    results.installs.insert((n, Setup::Kino), took);
    world.check_enforcement().await?;
    let entries = world.map_entries().await?;
    eprintln!(
        "   kino: {took:.2} s from the first import to both endpoints realizing it; policy map: server {} entries, client {}",
        entries.0, entries.1
    );
    results.entries.insert(n, entries);
    Ok(())
}

/// Times policy changes at N: end to end (prober) and to the agent's realized revision.
async fn kino_updates(
    world: &mut KinoWorld,
    n: usize,
    args: &Args,
    results: &mut Results,
) -> anyhow::Result<()> {
    for _ in 0..args.update_samples {
        let (e2e, api) = world.update_probe(true).await?;
        push(results, n, "kino add e2e", e2e);
        push(results, n, "kino add api", api);
        let (e2e, api) = world.update_probe(false).await?;
        push(results, n, "kino del e2e", e2e);
        push(results, n, "kino del api", api);
    }
    for _ in 0..args.update_samples {
        let t = world.update_realized(true).await?;
        push(results, n, "kino add realized", t);
        let t = world.update_realized(false).await?;
        push(results, n, "kino del realized", t);
    }
    eprintln!(
        "   kino: import → allowed {} ms, delete → denied {} ms, import → realized {} ms",
        fmt_ms(&results.updates[&(n, "kino add e2e".to_owned())]),
        fmt_ms(&results.updates[&(n, "kino del e2e".to_owned())]),
        fmt_ms(&results.updates[&(n, "kino add realized".to_owned())]),
    );
    Ok(())
}

/// Records that kino failed at N (printing the whole error, logs included) and stops its
/// suite, so the remaining setups are measured without it.
fn fail_kino(kino: &mut Option<KinoWorld>, results: &mut Results, n: usize, e: anyhow::Error) {
    eprintln!("   kino FAILED at N = {n}: {e:#}");
    let first = e.to_string();
    let short = first.lines().next().unwrap_or_default().to_owned();
    results.kino_failure.get_or_insert((n, short));
    *kino = None;
}

fn push(results: &mut Results, n: usize, what: &str, value: f64) {
    results
        .updates
        .entry((n, what.to_owned()))
        .or_default()
        .push(value);
}

fn print_report(args: &Args, sizes: &[usize], setups: &[Setup], r: &Results) {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!(
        "Command: `{command}` — {} run(s) of {} s per point, client and server pinned to CPU {}; cells: median ratio to \"no filter\" of the same N (min–max over runs).",
        args.runs, args.duration, args.cpu
    );
    if let Some((n, why)) = &r.kino_failure {
        println!();
        println!(
            "**kino failed at N = {n}; its suite was stopped and its cells are empty from there:** {why}"
        );
    }
    for test in [Test::Rr, Test::Crr] {
        println!();
        println!("{}", test.title());
        println!();
        let mut header = String::from("| N |");
        let mut rule = String::from("|---|");
        for s in setups {
            if *s == Setup::NoFilter {
                header.push_str(" no filter (/s) |");
            } else {
                let _ = write!(header, " {} |", s.title());
            }
            rule.push_str("---|");
        }
        println!("{header}");
        println!("{rule}");
        for &n in sizes {
            let base = r
                .rates
                .get(&(n, Setup::NoFilter, test))
                .map(|v| median(v))
                .unwrap_or(f64::NAN);
            let mut line = format!("| {n} |");
            for s in setups {
                let Some(v) = r.rates.get(&(n, *s, test)) else {
                    line.push_str(" – |");
                    continue;
                };
                let (lo, hi) = min_max(v);
                if *s == Setup::NoFilter {
                    let _ = write!(
                        line,
                        " {} ({}–{}) |",
                        fmt_rate(median(v)),
                        fmt_rate(lo),
                        fmt_rate(hi)
                    );
                } else {
                    let _ = write!(
                        line,
                        " {:.3} ({:.3}–{:.3}) |",
                        median(v) / base,
                        lo / base,
                        hi / base
                    );
                }
            }
            println!("{line}");
        }
        if sizes.len() > 1 {
            let first = median(&r.rates[&(sizes[0], Setup::NoFilter, test)]);
            let last = median(&r.rates[&(*sizes.last().unwrap(), Setup::NoFilter, test)]);
            println!();
            println!(
                "Drift check: no filter at the end / at the start of the run = {:.2}",
                last / first
            );
        }
    }

    println!();
    println!("Absolute medians (/s), TCP_RR · TCP_CRR:");
    println!();
    let mut header = String::from("| N |");
    let mut rule = String::from("|---|");
    for s in setups {
        let _ = write!(header, " {} |", s.title());
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for &n in sizes {
        let mut line = format!("| {n} |");
        for s in setups {
            let cell = |t: Test| {
                r.rates
                    .get(&(n, *s, t))
                    .map(|v| fmt_rate(median(v)))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = write!(line, " {} · {} |", cell(Test::Rr), cell(Test::Crr));
        }
        println!("{line}");
    }

    if !r.agent_cpu.is_empty() {
        println!();
        println!("kino-agent CPU during the kino measurements (% of one CPU, median):");
        println!();
        println!(
            "| N | no policy, TCP_RR | no policy, TCP_CRR | N entries, TCP_RR | N entries, TCP_CRR |"
        );
        println!("|---|---|---|---|---|");
        for &n in sizes {
            let cell = |s: Setup, t: Test| {
                r.agent_cpu
                    .get(&(n, s, t))
                    .map(|v| format!("{:.0}", median(v) * 100.0))
                    .unwrap_or_else(|| "–".into())
            };
            println!(
                "| {n} | {} | {} | {} | {} |",
                cell(Setup::KinoNoPolicy, Test::Rr),
                cell(Setup::KinoNoPolicy, Test::Crr),
                cell(Setup::Kino, Test::Rr),
                cell(Setup::Kino, Test::Crr)
            );
        }
    }
    let slow: Vec<String> = r
        .slow
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|((n, s, t), count)| {
            format!(
                "{} {} at N = {n}: {count}",
                s.title(),
                t.arg().to_uppercase()
            )
        })
        .collect();
    if !slow.is_empty() {
        println!();
        println!(
            "Transactions over 100 ms (a lost packet retransmitted): {}",
            slow.join("; ")
        );
    }
    if !r.allowed_drops.is_empty() {
        let per_n: Vec<String> = r
            .allowed_drops
            .iter()
            .map(|(n, d)| {
                format!(
                    "N = {n}: {d} of ~{:.0}",
                    r.kino_transactions.get(n).copied().unwrap_or(0.0)
                )
            })
            .collect();
        println!();
        println!(
            "kino allowed replies dropped (POLICY_DENIED during allowed traffic; must be 0): {}",
            per_n.join("; ")
        );
    }
    let drops: Vec<String> = r
        .drops
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(n, d)| format!("N = {n}: {}", d.join(", ")))
        .collect();
    if !drops.is_empty() {
        println!();
        println!(
            "kino datapath drops during the traffic: {}",
            drops.join("; ")
        );
    }

    println!();
    println!(
        "Policy change with N in place, ms, median (min–max) of {} samples:",
        args.update_samples
    );
    println!();
    let has = |what: &str| r.updates.keys().any(|(_, w)| *w == what);
    let mut header = String::from(
        "| N | kino map entries (server in / client out) | kino Import → connect allowed | kino Delete → connect denied | kino Import → agent realized | kino Delete → agent realized | kino API call itself (Import / Delete) |",
    );
    let mut rule = String::from("|---|---|---|---|---|---|---|");
    let others = [
        ("legacy", "iptables-legacy -A / -D"),
        ("iptnft", "iptables-nft -A / -D"),
        ("nft", "nft add / delete element"),
    ];
    for (key, title) in others {
        if has(&format!("{key} add")) {
            let _ = write!(header, " {title} |");
            rule.push_str("---|");
        }
    }
    println!("{header}");
    println!("{rule}");
    for &n in sizes {
        let get = |what: &str| {
            r.updates
                .get(&(n, what.to_owned()))
                .map(|v| fmt_ms(v))
                .unwrap_or_else(|| "–".into())
        };
        let entries = r
            .entries
            .get(&n)
            .map_or_else(|| "–".to_owned(), |(s, c)| format!("{s} / {c}"));
        let mut line = format!(
            "| {n} | {entries} | {} | {} | {} | {} | {} / {} |",
            get("kino add e2e"),
            get("kino del e2e"),
            get("kino add realized"),
            get("kino del realized"),
            get("kino add api"),
            get("kino del api"),
        );
        for (key, _) in others {
            if has(&format!("{key} add")) {
                let _ = write!(
                    line,
                    " {} / {} |",
                    get(&format!("{key} add")),
                    get(&format!("{key} del"))
                );
            }
        }
        println!("{line}");
    }

    println!();
    println!(
        "Installing N (seconds; kino: first ImportPolicies → both endpoints realize the last revision; the others: one restore/load):"
    );
    println!();
    let loaders: Vec<Setup> = setups
        .iter()
        .copied()
        .filter(|s| !matches!(s, Setup::NoFilter | Setup::KinoNoPolicy))
        .collect();
    let mut header = String::from("| N |");
    let mut rule = String::from("|---|");
    for s in &loaders {
        let _ = write!(header, " {} |", s.title());
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for &n in sizes {
        let mut line = format!("| {n} |");
        for s in &loaders {
            match r.installs.get(&(n, *s)) {
                Some(t) => {
                    let _ = write!(line, " {t:.2} |");
                }
                None => line.push_str(" – |"),
            }
        }
        println!("{line}");
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    ensure!(
        is_root(),
        "bench-policy needs root (network namespaces, eBPF, iptables)"
    );
    for binary in [
        "kino-rr",
        "kino-cni",
        "kino-agent",
        "kino-ipam",
        "kino-datastore-gateway",
        "kino-policy-compiler",
    ] {
        ensure!(
            bin_dir().join(binary).exists(),
            "{} is not built next to this benchmark; run `cargo build --release --workspace --bins`",
            bin_dir().join(binary).display()
        );
    }
    for tool in [
        "ip",
        "taskset",
        "iptables-nft",
        "iptables-nft-restore",
        "nft",
        "sysctl",
    ] {
        ensure!(
            tool_exists(tool),
            "{tool} is missing; ./deploy/local/install-deps.sh installs it"
        );
    }
    eprintln!(
        "bench-policy: N = {:?}, {} run(s) of {} s per point, {} update samples, binaries from {}",
        args.sizes,
        args.runs,
        args.duration,
        args.update_samples,
        bin_dir().display()
    );
    // Dropping `run` on Ctrl-C drops the worlds it owns: processes killed, namespaces (with
    // every rule, veth and route in them) and bpffs pins removed.
    tokio::select! {
        result = run(args) => result.map(|()| std::process::ExitCode::SUCCESS),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("bench-policy: interrupted; removing what it created");
            Ok(std::process::ExitCode::from(130))
        }
    }
}
