//! bench-flows: how many flow events per second the agent delivers to a following `GetFlows`
//! client under a packet flood between two pods, and how many it loses (issue #6 item 5).
//!
//! The real suite (gateway, ipam, policy-compiler, agent) on one node, two pods through
//! kino-cni (`client` → `web`), a follower (`GetFlows` with `follow`, no filter) counting
//! flows and lost-event reports, and a UDP flood from the client for `--seconds`:
//!
//! - **drops**: web's policy admits nobody, so every packet is dropped at web's ingress and
//!   reported (1 event per packet);
//! - **new connections**: web admits the client on UDP 1024-65535 and every packet goes to
//!   another (source port, destination port): a new connection at both enforcement points
//!   (2 policy-verdict events per packet);
//! - **established**: the same policy, one 5-tuple: one connection, whatever the packet count
//!   (events are not per packet: 2 in all).
//!
//! Per scenario: packets sent, events the datapath emitted (its counter, ServerStatus
//! `datapath_events`), events lost in the BPF ring buffer, flows delivered to the follower,
//! follower losses (it read too slowly), all per second over the flood. Nothing is asserted.
//! Everything lives in namespaces named with a unique prefix, removed on exit or failure.
//! Needs root.
//!
//! cargo build --release -p kino-datastore-gateway -p kino-ipam -p kino-policy-compiler \
//!   -p kino-agent -p kino-cni-shim -p kino-integration-tests --bin bench-flows
//! target/release/bench-flows                    # 3 scenarios, 5 s floods
//! target/release/bench-flows --seconds 1 --scenarios drops   # smoke

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::agent::{GetEndpointRequest, get_endpoint_request};
use kino_api::flow::flow_service_client::FlowServiceClient;
use kino_api::flow::get_flows_response::Event;
use kino_api::flow::{GetFlowsRequest, LostEventSource, ServerStatusRequest, ServerStatusResponse};
use kino_api::policy::ImportPoliciesRequest;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::types::PodRef;
use kino_integration_tests::world::{Netns, Suite};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "flow events/s delivered to a following GetFlows client under a UDP flood")]
struct Args {
    /// Seconds of flood per scenario.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Source sockets of the new-connections flood (each cycles through destination ports).
    #[arg(long, default_value_t = 32)]
    sockets: usize,
    /// Scenarios to run: drops, new, established.
    #[arg(long, value_delimiter = ',', default_value = "drops,new,established")]
    scenarios: Vec<String>,
}

const NAMESPACE: &str = "bench";
/// First destination port web admits in the new-connections scenarios.
const FIRST_PORT: u16 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Drops,
    NewConnections,
    Established,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Drops => "drops (deny, 1 event/packet)",
            Scenario::NewConnections => "new connections (2 events/packet)",
            Scenario::Established => "established (1 connection)",
        }
    }
}

/// What a scenario measured.
struct Outcome {
    scenario: Scenario,
    seconds: f64,
    sent: u64,
    emitted: u64,
    ring_lost: u64,
    delivered: u64,
    follower_lost: u64,
    seen: u64,
}

/// Sends UDP from inside `netns` until `stop`: to `web:port` (one 5-tuple) or, with
/// `new_connections`, from `sockets` sockets cycling destination ports. Returns packets sent.
fn flood(
    netns: std::path::PathBuf,
    (web, port): (Ipv4Addr, u16),
    new_connections: bool,
    sockets: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let ns = File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the client's netns")?;
    let payload = [0u8; 32];
    let mut sent = 0u64;
    if !new_connections {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.connect((web, port))?;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                if socket.send(&payload).is_ok() {
                    sent += 1;
                }
            }
        }
        return Ok(sent);
    }
    let sockets: Vec<UdpSocket> = (0..sockets.max(1))
        .map(|_| UdpSocket::bind(("0.0.0.0", 0)))
        .collect::<Result<_, _>>()?;
    let mut port = FIRST_PORT;
    while !stop.load(Ordering::Relaxed) {
        for socket in &sockets {
            if socket.send_to(&payload, (web, port)).is_ok() {
                sent += 1;
            }
        }
        port = if port == u16::MAX {
            FIRST_PORT
        } else {
            port + 1
        };
    }
    Ok(sent)
}

struct World {
    suite: Suite,
    client: Netns,
    web: Ipv4Addr,
    policy: PolicyServiceClient<kino_telemetry::TracedChannel>,
    agent: AgentServiceClient<kino_telemetry::TracedChannel>,
    flows: FlowServiceClient<kino_telemetry::TracedChannel>,
    _web_ns: Netns,
}

impl World {
    async fn start() -> anyhow::Result<World> {
        let suite = Suite::start("bf").await;
        let tls = kino_service_kit::ClientTlsArgs::default();
        let agent = AgentServiceClient::new(
            kino_service_kit::connect(&format!("unix:{}", suite.agent_socket().display()), &tls)
                .await?,
        );
        let policy = PolicyServiceClient::new(
            kino_service_kit::connect(&suite.policy_target(), &tls).await?,
        );
        let flows_target = format!("unix:{}", suite.dir.path().join("flows.sock").display());
        let flows = FlowServiceClient::new(kino_service_kit::connect(&flows_target, &tls).await?);
        let mut namespaces = Vec::new();
        let mut ips = Vec::new();
        for name in ["web", "client"] {
            let ns = Netns::new(&format!("{}-{name}", suite.prefix));
            let mut config = suite.cni_config("1.1.0");
            config["args"] = json!({"labels": {"app": name}});
            let out = suite.cni(
                "ADD",
                &format!("{}-{name}", suite.prefix),
                Some(&ns.path()),
                &config,
                &format!("IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE={NAMESPACE}"),
            );
            if out.code != 0 {
                bail!("CNI ADD {name}: {out:?}");
            }
            let address = out.json()["ips"][0]["address"]
                .as_str()
                .context("no address in the CNI result")?
                .to_owned();
            ips.push(address.split('/').next().unwrap_or_default().parse()?);
            namespaces.push(ns);
        }
        let client = namespaces.pop().expect("client");
        let web_ns = namespaces.pop().expect("web");
        Ok(World {
            suite,
            client,
            web: ips[0],
            policy,
            agent,
            flows,
            _web_ns: web_ns,
        })
    }

    /// Imports web's ingress policy and waits until the agent realized it.
    async fn set_policy(&mut self, admit_client: bool) -> anyhow::Result<()> {
        let rule = if admit_client {
            json!({"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                   "toPorts": [{"ports": [{"port": FIRST_PORT.to_string(), "endPort": 65535, "protocol": "UDP"}]}]})
        } else {
            json!({"fromEndpoints": [{"matchLabels": {"app": "nobody"}}]})
        };
        let doc = json!({
            "apiVersion": "kino.io/v1",
            "kind": "KinoNetworkPolicy",
            "metadata": {"name": "bench-web", "namespace": NAMESPACE},
            "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [rule]},
        });
        let revision = self
            .policy
            .import_policies(ImportPoliciesRequest {
                documents: doc.to_string(),
                default_namespace: String::new(),
            })
            .await
            .context("ImportPolicies")?
            .into_inner()
            .revision;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let endpoint = self
                .agent
                .get_endpoint(GetEndpointRequest {
                    lookup: Some(get_endpoint_request::Lookup::Pod(PodRef {
                        namespace: NAMESPACE.into(),
                        name: "web".into(),
                    })),
                })
                .await
                .context("GetEndpoint web")?
                .into_inner();
            let realized = endpoint
                .endpoint
                .and_then(|e| e.policy)
                .map(|p| p.realized_revision)
                .unwrap_or(0);
            if realized >= revision {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not realize policy revision {revision} in 30 s; its log:\n{}",
                    self.suite.agent_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn status(&mut self) -> anyhow::Result<ServerStatusResponse> {
        Ok(self
            .flows
            .server_status(ServerStatusRequest {})
            .await
            .context("ServerStatus")?
            .into_inner())
    }

    async fn run(&mut self, scenario: Scenario, args: &Args) -> anyhow::Result<Outcome> {
        self.set_policy(scenario != Scenario::Drops).await?;
        // Flows of earlier scenarios (and the policy change) settle first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = self.status().await?;
        let ring_lost = |s: &ServerStatusResponse| {
            s.lost_by_source
                .iter()
                .filter(|c| c.source == LostEventSource::BpfRingBuffer as i32)
                .map(|c| c.count)
                .sum::<u64>()
        };

        // The follower.
        let delivered = Arc::new(AtomicU64::new(0));
        let follower_lost = Arc::new(AtomicU64::new(0));
        let stop_follower = Arc::new(tokio::sync::Notify::new());
        let mut stream = self
            .flows
            .get_flows(GetFlowsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .context("GetFlows")?
            .into_inner();
        let follower = {
            let (delivered, lost, stop) = (
                delivered.clone(),
                follower_lost.clone(),
                stop_follower.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(response)) => match response.event {
                                Some(Event::Flow(_)) => {
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(Event::LostEvents(l))
                                    if l.source == LostEventSource::FlowRing as i32 =>
                                {
                                    lost.fetch_add(l.num_events_lost, Ordering::Relaxed);
                                }
                                _ => {}
                            },
                            _ => return,
                        },
                        _ = stop.notified() => return,
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;

        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (netns, stop) = (self.client.path(), stop.clone());
            // Port 9 is outside what the admitting policy allows (drops); FIRST_PORT inside.
            let port = if scenario == Scenario::Drops {
                9
            } else {
                FIRST_PORT
            };
            let web = (self.web, port);
            let new_connections = scenario == Scenario::NewConnections;
            let sockets = args.sockets;
            std::thread::spawn(move || flood(netns, web, new_connections, sockets, stop))
        };
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let sent = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
        let seconds = started.elapsed().as_secs_f64();
        // Let the reader drain the ring and the follower catch up.
        let mut last = u64::MAX;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = delivered.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        stop_follower.notify_one();
        let _ = follower.await;
        let after = self.status().await?;
        Ok(Outcome {
            scenario,
            seconds,
            sent,
            emitted: after.datapath_events - before.datapath_events,
            ring_lost: ring_lost(&after) - ring_lost(&before),
            delivered: delivered.load(Ordering::Relaxed),
            follower_lost: follower_lost.load(Ordering::Relaxed),
            seen: after.seen_flows - before.seen_flows,
        })
    }
}

fn per_second(count: u64, seconds: f64) -> String {
    let rate = count as f64 / seconds;
    if rate >= 10_000.0 {
        format!("{:.0}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

fn print_table(outcomes: &[Outcome], status: &ServerStatusResponse) {
    println!();
    println!(
        "| scenario | packets/s | events emitted/s | flows delivered/s | delivered | lost in BPF ring | lost by follower | observed (ring) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let generated = o.emitted + o.ring_lost;
        println!(
            "| {} | {} | {} | {} | {} of {} ({:.1} %) | {} | {} | {} |",
            o.scenario.name(),
            per_second(o.sent, o.seconds),
            per_second(o.emitted, o.seconds),
            per_second(o.delivered, o.seconds),
            o.delivered,
            generated,
            if generated == 0 {
                100.0
            } else {
                o.delivered as f64 * 100.0 / generated as f64
            },
            o.ring_lost,
            o.follower_lost,
            o.seen,
        );
    }
    println!();
    println!(
        "ring: {} of {} flows held; {} seen, {} lost, {} evicted since the agent started",
        status.num_flows,
        status.max_flows,
        status.seen_flows,
        status.lost_events,
        status.evicted_flows
    );
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut world = World::start().await?;
    eprintln!(
        "suite up (node {}); {} s floods",
        world.suite.node_name(),
        args.seconds
    );
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        scenarios.push(match name.as_str() {
            "drops" => Scenario::Drops,
            "new" => Scenario::NewConnections,
            "established" => Scenario::Established,
            other => bail!("--scenarios: {other:?} is not drops, new or established"),
        });
    }
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        eprintln!("{} …", scenario.name());
        outcomes.push(world.run(scenario, &args).await?);
    }
    let status = world.status().await?;
    print_table(&outcomes, &status);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    {
        bail!("bench-flows needs root (network namespaces, eBPF)");
    }
    // Ctrl-C unwinds through the world's guards (namespaces, pins, processes).
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}
