//! A cluster on this machine's kernel: the suite's services (one [`Suite`]), N node network
//! namespaces — the suite's own node is node 1, the others are `<prefix>-n<i>` — each
//! running its own kino-agent, and an underlay: a bridge in a namespace of its own
//! (`<prefix>-ul`) that every node's `eth0` is plugged into, with addresses from the
//! documentation ranges (node i: 192.0.2.(10+i)/24 and 2001:db8::(10+i)/64). An
//! "external host" namespace on the same bridge (192.0.2.200, 2001:db8::200) stands for
//! the world outside the cluster. Every namespace, process and pin is removed on drop, even
//! when the test fails.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::process::ServiceProcess;
use crate::world::{AgentSpec, CniOutput, Netns, Suite, SuiteOptions, result_ip};

/// The external host's underlay addresses.
pub const EXTERNAL_V4: &str = "192.0.2.200";
/// The external host's IPv6 underlay address.
pub const EXTERNAL_V6: &str = "2001:db8::200";

/// How [`Cluster::start`] builds the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (≥ 1).
    pub nodes: usize,
    /// `--routing-mode` of every agent.
    pub routing: &'static str,
    /// Further flags of every agent.
    pub agent_args: Vec<String>,
}

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Node name = its namespace's name.
    pub name: String,
    /// Underlay IPv4 address.
    pub ipv4: String,
    /// Underlay IPv6 address.
    pub ipv6: String,
    /// Its agent's API socket.
    pub socket: PathBuf,
    /// How its agent is started.
    spec: AgentSpec,
}

/// A pod of the cluster: its namespace and addresses.
pub struct ClusterPod {
    /// The pod's network namespace.
    pub netns: Netns,
    /// The container id given to kino-cni.
    pub container: String,
    /// The node (index) it runs on.
    pub node: usize,
    /// Its IPv4 address.
    pub ipv4: String,
    /// Its IPv6 address (empty on an IPv4-only pool).
    pub ipv6: String,
}

/// The cluster.
pub struct Cluster {
    /// The services and node 1.
    pub suite: Suite,
    /// Every node, node 1 first.
    pub nodes: Vec<ClusterNode>,
    /// The underlay bridge's namespace.
    pub underlay: Netns,
    /// The external host.
    pub external: Netns,
    agents: Vec<Option<ServiceProcess>>,
    // Dropped after the agents (fields drop in order).
    extra_netns: Vec<Netns>,
    agent_args: Vec<String>,
}

impl Cluster {
    /// Starts the services, the underlay and `options.nodes` nodes with their agents.
    pub async fn start(tag: &str, options: ClusterOptions) -> Cluster {
        assert!(options.nodes >= 1, "a cluster has at least one node");
        let mut agent_args = vec!["--routing-mode".to_owned(), options.routing.to_owned()];
        agent_args.extend(options.agent_args.iter().cloned());
        let suite = Suite::start_with(
            tag,
            SuiteOptions {
                defer_agent: true,
                agent_args: agent_args.clone(),
                ..Default::default()
            },
        )
        .await;
        let underlay = Netns::new(&format!("{}-ul", suite.prefix));
        underlay.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.exec(&["ip", "link", "set", "br0", "up"]);
        let external = Netns::new(&format!("{}-ext", suite.prefix));
        plug(&underlay, &external, "ext", EXTERNAL_V4, EXTERNAL_V6);
        let mut cluster = Cluster {
            suite,
            nodes: Vec::new(),
            underlay,
            external,
            agents: Vec::new(),
            extra_netns: Vec::new(),
            agent_args,
        };
        for _ in 0..options.nodes {
            cluster.plug_node();
        }
        for i in 0..cluster.nodes.len() {
            cluster.start_agent(i);
        }
        cluster
    }

    /// Starts the cluster and waits until every node routes every other node's pod CIDRs
    /// (both families), failing with the agents' logs.
    pub async fn start_converged(tag: &str, options: ClusterOptions) -> Cluster {
        let nodes = options.nodes;
        let cluster = Cluster::start(tag, options).await;
        let all: Vec<usize> = (0..nodes).collect();
        cluster.assert_routes(&all, 2 * (nodes - 1), "after start");
        cluster
    }

    /// A new node joins: its namespace on the underlay, then its agent. Returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.plug_node();
        self.start_agent(i);
        i
    }

    /// Makes the next node's namespace (node 1 is the suite's) and plugs it into the
    /// underlay; its agent is not started.
    fn plug_node(&mut self) -> usize {
        let i = self.nodes.len() + 1;
        let ipv4 = format!("192.0.2.{}", 10 + i);
        let ipv6 = format!("2001:db8::{}", 10 + i);
        let suite = &self.suite;
        let spec = if i == 1 {
            plug(&self.underlay, &suite.node, "n1", &ipv4, &ipv6);
            AgentSpec {
                netns: suite.node.name.clone(),
                socket: suite.agent_socket(),
                flows: suite.addresses.flows.clone(),
                state_dir: suite.dir.path().join("agent-state"),
                log_dir: suite.dir.path().to_owned(),
                args: self.agent_args.clone(),
            }
        } else {
            let netns = Netns::new(&format!("{}-n{i}", suite.prefix));
            plug(&self.underlay, &netns, &format!("n{i}"), &ipv4, &ipv6);
            let dir = suite.dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("node directory");
            let stem = suite.pki.issue_agent(&netns.name);
            let mut args = self.agent_args.clone();
            args.extend(suite.pki.client_flags(&stem));
            let spec = AgentSpec {
                netns: netns.name.clone(),
                socket: dir.join("agent.sock"),
                flows: format!("unix:{}", dir.join("flows.sock").display()),
                state_dir: dir.join("agent-state"),
                log_dir: dir.clone(),
                args,
            };
            self.extra_netns.push(netns);
            spec
        };
        self.nodes.push(ClusterNode {
            name: spec.netns.clone(),
            ipv4,
            ipv6,
            socket: spec.socket.clone(),
            spec,
        });
        self.agents.push(None);
        i - 1
    }

    /// Node `i`'s namespace (0 = node 1).
    pub fn netns(&self, i: usize) -> &Netns {
        if i == 0 {
            &self.suite.node
        } else {
            &self.extra_netns[i - 1]
        }
    }

    /// Starts node `i`'s agent and waits for its socket.
    pub fn start_agent(&mut self, i: usize) {
        assert!(
            self.agents[i].is_none(),
            "agent of node {i} already running"
        );
        let agent = self.suite.spawn_agent(&self.nodes[i].spec).start();
        self.agents[i] = Some(agent);
    }

    /// Stops node `i`'s agent with a signal ("KILL" for a crash).
    pub fn stop_agent(&mut self, i: usize, signal: &str) {
        let mut agent = self.agents[i].take().expect("agent not running");
        agent.signal_and_wait(signal).unwrap();
    }

    /// Node `i`'s agent log so far.
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].spec.log_dir.join("nsenter.log")).unwrap_or_default()
    }

    /// Every agent's log, for failure messages.
    pub fn agent_logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- agent of {}:\n{}",
                    self.nodes[i].name,
                    self.agent_log(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs kino-cni `command` for `container` against node `i`'s agent.
    pub fn cni(
        &self,
        i: usize,
        command: &str,
        container: &str,
        netns: &Netns,
        args: &str,
    ) -> CniOutput {
        let mut config = self.suite.cni_config("1.1.0");
        config["agentSocket"] = serde_json::json!(self.nodes[i].socket);
        self.suite
            .cni(command, container, Some(&netns.path()), &config, args)
    }

    /// Creates a pod `default/<name>` on node `i` with `labels` (the CNI config's
    /// `args.labels`, as a runtime passes them).
    pub fn add_pod(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> ClusterPod {
        let netns = Netns::new(&format!("{}-{name}", self.suite.prefix));
        let container = format!("{}-{name}", self.suite.prefix);
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let mut config = self.suite.cni_config("1.1.0");
        config["agentSocket"] = serde_json::json!(self.nodes[i].socket);
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        config["args"] = serde_json::json!({ "labels": labels });
        let out = self
            .suite
            .cni("ADD", &container, Some(&netns.path()), &config, &args);
        assert_eq!(
            out.code,
            0,
            "ADD of {name} on {}: {out:?}\n{}",
            self.nodes[i].name,
            self.agent_log(i)
        );
        let result = out.json();
        let ipv4 = result_ip(&result, 0);
        let ipv6 = if result["ips"].as_array().is_some_and(|ips| ips.len() > 1) {
            result_ip(&result, 1)
        } else {
            String::new()
        };
        ClusterPod {
            netns,
            container,
            node: i,
            ipv4,
            ipv6,
        }
    }

    /// Deletes `pod` (CNI DEL, then its namespace).
    pub fn delete_pod(&self, pod: ClusterPod) {
        let out = self.cni(pod.node, "DEL", &pod.container, &pod.netns, "");
        assert_eq!(out.code, 0, "DEL of {}: {out:?}", pod.container);
        pod.netns.delete();
    }

    /// Node `i`'s flow observer (a unix socket).
    pub fn flows(&self, i: usize) -> String {
        self.nodes[i].spec.flows.clone()
    }

    /// Runs the `kino` CLI against the cluster with node `i`'s agent as the local one.
    pub fn kino(&self, i: usize, args: &[&str]) -> Output {
        self.suite.kino_at(&self.nodes[i].socket, args)
    }

    /// The agent-owned routes to other nodes' pods (`proto 202`, unicast) of node `i`, as
    /// `ip -o route` lines, both families.
    pub fn kino_routes(&self, i: usize) -> Vec<String> {
        self.agent_routes(i, "unicast")
    }

    /// The agent's unreachable routes (the service CIDRs, issue #14) of node `i`.
    pub fn unreachable_routes(&self, i: usize) -> Vec<String> {
        self.agent_routes(i, "unreachable")
    }

    fn agent_routes(&self, i: usize, kind: &str) -> Vec<String> {
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            let out = self.netns(i).exec(&[
                "ip", family, "-o", "route", "show", "proto", "202", "type", kind,
            ]);
            routes.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
            );
        }
        routes
    }
}

impl Cluster {
    /// Waits (up to [`CONVERGE`]) until each of `nodes` holds exactly `want` agent routes;
    /// returns how long that took, or what they hold.
    pub fn wait_routes(&self, nodes: &[usize], want: usize) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let held: Vec<Vec<String>> = nodes.iter().map(|i| self.kino_routes(*i)).collect();
            if held.iter().all(|routes| routes.len() == want) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > CONVERGE {
                return Err(format!(
                    "nodes {nodes:?} did not reach {want} agent routes in {CONVERGE:?}: {held:#?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Cluster {
    /// [`Cluster::wait_routes`], failing the test with `what` and the agents' logs.
    pub fn assert_routes(&self, nodes: &[usize], want: usize, what: &str) {
        if let Err(e) = self.wait_routes(nodes, want) {
            panic!("{what}: {e}\n{}", self.agent_logs());
        }
    }
}

/// One TCP connection from `client` to `ip:port`, where a one-shot server in `server`
/// listens: the source address the server saw (it sends it back), or `None` when no
/// connection was made (dropped, or refused for 5 s).
pub fn tcp_source_seen(client: &Netns, server: &Netns, ip: &str, port: u16) -> Option<String> {
    let family = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let program = format!(
        "import socket\ns=socket.socket(socket.{family})\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{ip}',{port}))\ns.listen(1)\ns.settimeout(10)\nc,a=s.accept()\nc.sendall(a[0].encode())\nc.close()\n"
    );
    let netns = server.name.clone();
    let listener = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c", &program])
            .output()
            .expect("python3")
    });
    let connect = format!(
        "import socket,time\nfor _ in range(50):\n  try:\n    c=socket.create_connection(('{ip}',{port}),timeout=3); break\n  except ConnectionRefusedError: time.sleep(0.1)\nprint(c.recv(100).decode())\n"
    );
    let out = client.try_exec(&["python3", "-c", &connect]);
    let _ = listener.join();
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!seen.is_empty()).then_some(seen)
}

impl ClusterPod {
    /// Whether one ping to `ip` is answered within `wait_seconds`.
    pub fn pings(&self, ip: &str, wait_seconds: u32) -> bool {
        self.netns
            .try_exec(&["ping", "-c", "1", "-W", &wait_seconds.to_string(), ip])
            .status
            .success()
    }
}

/// How long a cluster may take to converge (node records → routes everywhere); generous.
pub const CONVERGE: Duration = Duration::from_secs(60);

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (they hold pins and links); the suite stops node 1's services and
        // removes the pins; namespaces go with their fields.
        self.agents.clear();
    }
}

/// Plugs `netns` into the underlay bridge with `eth0` holding `ipv4/24` and `ipv6/64`.
fn plug(underlay: &Netns, netns: &Netns, port: &str, ipv4: &str, ipv6: &str) {
    underlay.exec(&[
        "ip",
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &netns.name,
    ]);
    underlay.exec(&["ip", "link", "set", port, "master", "br0", "up"]);
    netns.exec(&["ip", "addr", "add", &format!("{ipv4}/24"), "dev", "eth0"]);
    netns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{ipv6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    netns.exec(&["ip", "link", "set", "eth0", "up"]);
}
