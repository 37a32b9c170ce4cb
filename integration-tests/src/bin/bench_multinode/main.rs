//! bench-multinode: traffic between two pods on two nodes, and how fast the cluster follows
//! a node that joins or is deleted (issue #13 item 8), all in one run.
//!
//! Per setup, with kino-rr (client pinned to CPU 0, server to CPU 1): TCP_RR (1-byte
//! request/response on one connection), TCP_CRR (connect, 1 byte each way, close) and
//! TCP_STREAM (one connection's throughput), as ratios to **node ↔ node** over the same kind
//! of underlay (the limit):
//!
//! - **node ↔ node**: the two nodes' own addresses on the underlay bridge;
//! - **kernel VXLAN (Flannel)**: Flannel's VXLAN backend built by hand from kernel objects
//!   (`reference.rs`): cni0 bridge, flannel.1, FDB and neighbour entries, routes; no eBPF;
//! - **kino tunnel** / **kino native**: a real two-node cluster (`kino_integration_tests::
//!   cluster`: gateway, ipam, policy-compiler, an agent per node namespace), a client pod on
//!   node 1 and a server pod on node 2; with policy off (no policy selects them) and with
//!   `--entries` (10 000) /32 CIDRs allowed beside the client → server rule, in the server's
//!   ingress and the client's egress maps.
//!
//! Then on a tunnel cluster: a third node joins (its agent starts) → the routes to its pods
//! are programmed on the two others; it is deleted (`kino node delete --force`) → they are
//! gone everywhere.
//!
//! cargo build --release --workspace --bins
//! target/release/bench-multinode                 # 3 runs of 3 s, 10 000 entries
//! target/release/bench-multinode --runs 1 --duration 1 --entries 100   # smoke
//!
//! Everything lives in namespaces named with a unique prefix, removed on exit. Needs root.

mod reference;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use kino_integration_tests::cluster::{Cluster, ClusterOptions, ClusterPod};
use kino_integration_tests::rr::{Endpoints, RrServer, client_sysctls, measure};
use kino_integration_tests::stats::median;
use kino_integration_tests::world::unique_prefix;
use reference::{NODE_IPS, POD_IPS, Reference};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    about = "Pod to pod across two nodes: kino tunnel and native vs node-to-node and Flannel's kernel VXLAN; node join/delete"
)]
struct Args {
    /// Runs per cell (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Policy entries (allowed /32 CIDRs) for the "with policy" rows.
    #[arg(long, default_value_t = 10_000)]
    entries: usize,
    /// Which kino routing modes to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tunnel,native")]
    routing: Vec<String>,
    /// Extra argument for every agent (repeatable), e.g. `--agent-arg=--masquerade=false`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Skip the node ↔ node and Flannel rows (their ratios then read 0).
    #[arg(long)]
    no_reference: bool,
    /// Skip the node join/delete measurement.
    #[arg(long)]
    no_churn: bool,
}

const TESTS: [(&str, &str); 3] = [
    ("rr", "TCP_RR /s"),
    ("crr", "TCP_CRR /s"),
    ("stream", "TCP_STREAM Mbit/s"),
];
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const PORT: u16 = 5201;

type Row = BTreeMap<&'static str, f64>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        kino_integration_tests::world::kernel_tests_possible(),
        "bench-multinode needs root, bpffs and the kernel features the datapath uses"
    );
    let mut rows: Vec<(String, Row)> = Vec::new();
    let prefix = unique_prefix("bmn");
    if !args.no_reference {
        let world = Reference::build(&prefix)?;
        let node = Endpoints {
            client_netns: world.nodes[0].name.clone(),
            server: SocketAddr::new(NODE_IPS[1].parse()?, PORT),
        };
        let _server = RrServer::start(&world.nodes[1].name, SERVER_CPU, &node).await?;
        rows.push(("node ↔ node (the limit)".into(), cells(&args, &node).await?));
        let pods = Endpoints {
            client_netns: world.pods[0].name.clone(),
            server: SocketAddr::new(POD_IPS[1].parse()?, PORT),
        };
        let _server = RrServer::start(&world.pods[1].name, SERVER_CPU, &pods).await?;
        rows.push((
            "kernel VXLAN (Flannel's layout)".into(),
            cells(&args, &pods).await?,
        ));
    }
    for routing in &args.routing {
        let routing: &'static str = match routing.as_str() {
            "tunnel" => "tunnel",
            "native" => "native",
            other => anyhow::bail!("--routing: {other:?} is neither tunnel nor native"),
        };
        let mut agent_args = vec!["--metrics-address".to_owned(), "off".to_owned()];
        agent_args.extend(args.agent_args.iter().cloned());
        let cluster = Cluster::start_converged(
            &format!("bmn{}", &routing[..1]),
            ClusterOptions {
                nodes: 2,
                routing,
                agent_args,
            },
        )
        .await;
        let client = cluster.add_pod(0, "client", &[("app", "client")]);
        let server = cluster.add_pod(1, "server", &[("app", "server")]);
        client_sysctls(&client.netns.name)?;
        let ep = endpoints(&client, &server)?;
        let _server = RrServer::start(&server.netns.name, SERVER_CPU, &ep).await?;
        rows.push((
            format!("kino {routing}, no policy"),
            cells(&args, &ep).await?,
        ));
        import_policy(&cluster, args.entries)?;
        rows.push((
            format!("kino {routing}, {} entries", args.entries),
            cells(&args, &ep).await?,
        ));
    }
    let churn = if args.no_churn {
        None
    } else {
        Some(node_churn().await?)
    };
    report(&args, &rows, churn);
    Ok(())
}

fn endpoints(client: &ClusterPod, server: &ClusterPod) -> anyhow::Result<Endpoints> {
    Ok(Endpoints {
        client_netns: client.netns.name.clone(),
        server: SocketAddr::new(server.ipv4.parse()?, PORT),
    })
}

/// Every test, `runs` times each; the medians.
async fn cells(args: &Args, ep: &Endpoints) -> anyhow::Result<Row> {
    let mut row = Row::new();
    for (mode, _) in TESTS {
        let mut samples = Vec::new();
        for _ in 0..args.runs {
            let sample = measure(ep, mode, args.duration, CLIENT_CPU)
                .await
                .with_context(|| format!("{mode} from {}", ep.client_netns))?;
            samples.push(sample.rate);
        }
        row.insert(mode, median(&samples));
    }
    Ok(row)
}

/// The server admits the client and `n` /32 CIDRs; the client may reach the server and the
/// same CIDRs: n + 1 entries in each map. Imported in one document, waited for.
fn import_policy(cluster: &Cluster, n: usize) -> anyhow::Result<()> {
    let cidrs: Vec<String> = (0..n)
        .map(|i| {
            let host = 0x6440_0000u32 + i as u32; // 100.64.0.0/10, never a pod or node
            format!("{}/32", std::net::Ipv4Addr::from(host))
        })
        .collect();
    let doc = json!({
        "apiVersion": "kino.io/v1",
        "kind": "KinoNetworkPolicy",
        "metadata": {"name": "bench", "namespace": "default"},
        "specs": [
            {"endpointSelector": {"matchLabels": {"app": "server"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]},
                         {"fromCIDR": cidrs}]},
            {"endpointSelector": {"matchLabels": {"app": "client"}},
             "egress": [{"toEndpoints": [{"matchLabels": {"app": "server"}}]},
                        {"toCIDR": cidrs}]},
        ],
    });
    let path = cluster.suite.dir.path().join("bench-policy.json");
    std::fs::write(&path, doc.to_string())?;
    let out = cluster.kino(
        0,
        &[
            "policy",
            "import",
            path.to_str().unwrap_or_default(),
            "--wait",
            "--wait-timeout",
            "120s",
        ],
    );
    ensure!(
        out.status.success(),
        "importing {n} entries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn wait_routes(cluster: &Cluster, nodes: &[usize], want: usize) -> anyhow::Result<Duration> {
    cluster.wait_routes(nodes, want).map_err(anyhow::Error::msg)
}

/// Node join → its pods' routes on every other node; node delete → gone everywhere.
struct Churn {
    join: Duration,
    delete: Duration,
}

async fn node_churn() -> anyhow::Result<Churn> {
    let mut cluster = Cluster::start_converged(
        "bmnj",
        ClusterOptions {
            nodes: 2,
            routing: "tunnel",
            agent_args: vec!["--metrics-address".into(), "off".into()],
        },
    )
    .await;
    let start = Instant::now();
    let joined = cluster.add_node();
    wait_routes(&cluster, &[0, 1], 4)?;
    let join = start.elapsed();
    wait_routes(&cluster, &[joined], 4)?;
    cluster.stop_agent(joined, "TERM");
    let name = cluster.nodes[joined].name.clone();
    let start = Instant::now();
    let out = cluster.kino(0, &["node", "delete", &name, "--force"]);
    ensure!(
        out.status.success(),
        "node delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_routes(&cluster, &[0, 1], 2)?;
    Ok(Churn {
        join,
        delete: start.elapsed(),
    })
}

fn report(args: &Args, rows: &[(String, Row)], churn: Option<Churn>) {
    println!(
        "\nbench-multinode: {} run(s) of {} s per cell, medians; ratios to {} in the same run\n",
        args.runs,
        args.duration,
        if args.no_reference {
            "the first row (--no-reference)"
        } else {
            "node ↔ node"
        }
    );
    let limit = &rows[0].1;
    print!("| setup |");
    for (_, title) in TESTS {
        print!(" {title} | ×limit |");
    }
    println!();
    println!("|---|{}", "---|---|".repeat(TESTS.len()));
    for (name, row) in rows {
        print!("| {name} |");
        for (mode, _) in TESTS {
            let value = row.get(mode).copied().unwrap_or(0.0);
            let base = limit.get(mode).copied().unwrap_or(1.0);
            print!(" {} | {:.3} |", human(value), value / base);
        }
        println!();
    }
    if let Some(churn) = churn {
        println!(
            "\nnode join (agent start) → routes on both other nodes: {:.0} ms; node delete → routes gone on both: {:.0} ms",
            churn.join.as_secs_f64() * 1000.0,
            churn.delete.as_secs_f64() * 1000.0
        );
    }
}

fn human(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}
