//! Kinocilium under test: the real suite on one node with five pods (client → server with
//! policy, a prober, and a free pair no policy selects), N allowed CIDRs imported through the
//! policy-compiler's API, the agent's view of each endpoint, and policy changes timed end to
//! end by a prober thread in the prober pod's namespace.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::agent::{GetEndpointRequest, ListBpfPolicyRequest, get_endpoint_request};
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::policy::{DeletePolicyRequest, ImportPoliciesRequest, PolicyRef};
use kino_api::types::PodRef;
use kino_integration_tests::world::{Netns, Suite};
use kino_telemetry::TracedChannel;
use serde_json::{Value, json};

use crate::measure::{Endpoints, RrServer, client_sysctls};
use crate::{POD_NAMESPACE, PORT, PROBE_PORT, peer_cidr};

/// A pod of the kino world.
struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    endpoint_id: u32,
}

/// The real suite on one node and five pods: client → server with policy, prober (the
/// third pod a policy change lets in), and free-client → free-server that no policy selects.
pub(crate) struct KinoWorld {
    pub(crate) suite: Suite,
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
pub(crate) fn base_policy() -> Value {
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

    pub(crate) async fn start(cpu: usize) -> anyhow::Result<KinoWorld> {
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
    pub(crate) fn endpoints(&self, free: bool) -> Endpoints {
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

    pub(crate) async fn import(&mut self, doc: &Value) -> anyhow::Result<i64> {
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
    pub(crate) async fn wait_realized(
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
    pub(crate) async fn set_size(
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
    pub(crate) async fn map_entries(&mut self) -> anyhow::Result<(usize, usize)> {
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
    pub(crate) fn agent_cpu_seconds(&self) -> f64 {
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
    pub(crate) async fn measured_drops(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut all = BTreeMap::new();
        for pod in ["client", "server", "free-client", "free-server"] {
            for (reason, n) in self.drops(pod).await? {
                all.insert(format!("{pod} {reason}"), n);
            }
        }
        Ok(all)
    }

    /// Checks that client → server is enforced both ways and free-client → free-server not.
    pub(crate) async fn check_enforcement(&mut self) -> anyhow::Result<()> {
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
    pub(crate) async fn update_probe(&mut self, allow: bool) -> anyhow::Result<(f64, f64)> {
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
    pub(crate) async fn update_realized(&mut self, allow: bool) -> anyhow::Result<f64> {
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
