//! bench-services: a pod reaching a service VIP — kino's eBPF load balancer beside
//! kube-proxy's own layouts — and the cost of changing one service, with S = 1 / 1 000 /
//! 10 000 services × 10 backends installed, all in one run (issue #14 item 5).
//!
//! Per setup, with kino-rr (client and servers pinned to one CPU, ../shared/BENCHMARKS.md):
//! TCP_RR (1-byte request/response on one connection) and TCP_CRR (connect, 1 byte each
//! way, close), medians of `--runs`, as ratios to the limit measured in the same run:
//!
//! - **straight to a backend** (the limit): client pod → backend pod IP:port on a kernel-only
//!   node (`reference.rs`: a cni0 bridge with a client and 10 backend pods, bridge-nf-call-
//!   iptables on, as kube-proxy needs);
//! - **kube-proxy iptables** (`iptables.rs`), loaded with `iptables-restore` (nf_tables
//!   backend) and with `iptables-legacy-restore`: the measured VIP is the LAST service of
//!   KUBE-SERVICES — every new connection walks the rules of all services before it
//!   (kube-proxy's worst case; it lists services in Go map order, so on average half);
//! - **kube-proxy nftables** (`nftables.rs`): one verdict-map lookup whatever S;
//! - **IPVS**: a row saying why it is missing when the kernel has none (this one is built
//!   without CONFIG_IP_VS);
//! - **kino**: a real cluster (`kino.rs`), a client pod → its own straight-to-backend limit
//!   and → the VIP of the last of S services created through kino-ipam.
//!
//! Control plane at each S: kube-proxy's full sync (the whole table through the tool), its
//! one-service partial sync (iptables ≥ 1.27: KUBE-SERVICES whole + that service's chains) or
//! one nft transaction (the map element + its chains), add and delete; kino: CreateService /
//! DeleteService of one service → its frontend present / absent in the agent of every node.
//!
//! cargo build --release --workspace --bins
//! target/release/bench-services                        # 3 runs of 3 s, S = 1,1000,10000
//! target/release/bench-services --runs 1 --duration 0.5 --services 1,100   # smoke
//!
//! Everything lives in namespaces named with a unique prefix, removed on exit (every rule
//! with them). Needs root.

mod iptables;
mod kino;
mod lb_map;
mod nftables;
mod reference;
mod report;
mod services;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use kino_integration_tests::rr::{Endpoints, measure};
use kino_integration_tests::stats::median;
use kino_integration_tests::world::unique_prefix;
use reference::{Layout, Reference, TimedOut, backend_ips};
use report::{Change, Report, Traffic};
use services::{BACKEND_PORT, SERVICE_PORT, services};

#[derive(Parser, Debug)]
#[command(
    about = "Service VIP traffic and service changes: kino's eBPF LB vs kube-proxy's iptables and nftables layouts"
)]
pub struct Args {
    /// Runs per traffic cell (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per traffic run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Numbers of services installed (comma-separated, ascending).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// One-service changes (add + delete) timed at each S; the median is reported.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// kube-proxy layouts to measure (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iptables-nft,iptables-legacy,nftables"
    )]
    layouts: Vec<String>,
    /// Nodes of the kino cluster (the pods are on node 1; changes are waited for on all).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Seconds one `iptables-restore`/`nft` run may take before it is stopped (the rest of
    /// that layout's measurements at that S and above are then skipped).
    #[arg(long, default_value_t = 60.0)]
    max_restore_seconds: f64,
    /// Skip the kernel-only references.
    #[arg(long)]
    no_reference: bool,
    /// Skip the kino cluster.
    #[arg(long)]
    no_kino: bool,
}

/// Client and servers on one CPU (BENCHMARKS.md: split pinning swung 3× here).
const CPU: usize = 0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        kino_integration_tests::world::kernel_tests_possible(),
        "bench-services needs root, bpffs and the kernel features the datapath uses"
    );
    ensure!(
        args.services.windows(2).all(|w| w[0] < w[1]) && args.services.first() != Some(&0),
        "--services: counts must be ascending and above 0, got {:?}",
        args.services
    );
    let layouts = args
        .layouts
        .iter()
        .map(|l| Layout::parse(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut report = Report::new(&args);
    if !args.no_reference {
        references(&args, &layouts, &mut report).await?;
    }
    if !args.no_kino {
        kino_rows(&args, &mut report).await?;
    }
    report.print(&args);
    Ok(())
}

/// The limit, every layout at every S, the limit again.
async fn references(args: &Args, layouts: &[Layout], report: &mut Report) -> anyhow::Result<()> {
    let prefix = unique_prefix("bsv");
    let limit = Duration::from_secs_f64(args.max_restore_seconds);
    let limit_world = Reference::build(&format!("{prefix}l"), CPU, limit)?;
    let straight = Endpoints {
        client_netns: limit_world.client.name.clone(),
        server: SocketAddr::new(backend_ips()[0].into(), BACKEND_PORT),
    };
    reachable(&straight, "backend 0 from the client pod").await?;
    report.limit = Some(cells(args, &straight).await?);
    for (k, layout) in layouts.iter().enumerate() {
        // A fresh node per layout: nothing of another layout stays hooked.
        let world = Reference::build(&format!("{prefix}{k}"), CPU, limit)?;
        for &count in &args.services {
            eprintln!("{}: installing {count} services", layout.label());
            let with_extra = services(count + 1, &backend_ips());
            let installed = &with_extra[..count];
            let mut change = Change::default();
            if let Err(over) = capped(world.install(*layout, installed))? {
                change.gave_up = Some(format!("loading the table {over}"));
                report.references.push((*layout, count, None, change));
                break; // a larger S would take longer still
            }
            let vip = Endpoints {
                client_netns: world.client.name.clone(),
                server: SocketAddr::new(installed[count - 1].vip.into(), SERVICE_PORT),
            };
            reachable(&vip, &format!("the last VIP with {}", layout.label())).await?;
            let traffic = cells(args, &vip).await?;
            let mut full = Vec::new();
            for _ in 0..args.runs {
                match capped(world.full_sync(*layout, installed))? {
                    Ok(took) => full.push(took),
                    Err(over) => {
                        change.gave_up = Some(format!("a full sync {over}"));
                        break;
                    }
                }
            }
            change.full = Some(full);
            for _ in 0..args.changes {
                match capped(world.one_service_change(*layout, &with_extra))? {
                    Ok((a, d)) => {
                        change.add.push(a);
                        change.delete.push(d);
                    }
                    Err(over) => {
                        change.gave_up = Some(format!("a one-service sync {over}"));
                        break;
                    }
                }
            }
            report
                .references
                .push((*layout, count, Some(traffic), change));
        }
    }
    report.limit_again = Some(cells(args, &straight).await?);
    Ok(())
}

/// kino's limit and, at every S, its VIP traffic and one service's change on every node.
async fn kino_rows(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let world = kino::KinoWorld::start(args.nodes, CPU).await?;
    let straight = world.straight();
    reachable(&straight, "backend 0 from the kino client pod").await?;
    report.kino_limit = Some(cells(args, &straight).await?);
    let mut created = 0;
    for &count in &args.services {
        eprintln!("kino: creating services {created}..{count}");
        let took = world.create_services(created, count).await?;
        eprintln!(
            "kino: {} services created in {:.1} s",
            count - created,
            took.as_secs_f64()
        );
        created = count;
        world
            .wait_programmed(count - 1, true, Instant::now())
            .await
            .context("the last service never reached every node")?;
        let vip = world.via_vip(count - 1);
        reachable(&vip, "the last kino VIP").await?;
        let traffic = cells(args, &vip).await?;
        // One more service, then gone again: kino-ipam's answer, then every node's map.
        let (mut realized, mut api) = (Change::default(), Change::default());
        for _ in 0..args.changes {
            let start = Instant::now();
            api.add.push(world.create_one(count).await?);
            realized
                .add
                .push(world.wait_programmed(count, true, start).await?);
            let start = Instant::now();
            api.delete.push(world.delete_one(count).await?);
            realized
                .delete
                .push(world.wait_programmed(count, false, start).await?);
        }
        report.kino.push(report::KinoRow {
            services: count,
            traffic,
            realized,
            api,
        });
    }
    Ok(())
}

/// A tool run's result, or (as `Err`) why it was stopped; other failures stay errors.
fn capped<T>(result: anyhow::Result<T>) -> anyhow::Result<Result<T, String>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) if e.downcast_ref::<TimedOut>().is_some() => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

/// TCP_RR and TCP_CRR, `runs` times each; the medians.
async fn cells(args: &Args, ep: &Endpoints) -> anyhow::Result<Traffic> {
    let mut rates = [Vec::new(), Vec::new()];
    for (i, mode) in ["rr", "crr"].iter().enumerate() {
        for _ in 0..args.runs {
            let sample = measure(ep, mode, args.duration, CPU)
                .await
                .with_context(|| format!("{mode} from {} to {}", ep.client_netns, ep.server))?;
            rates[i].push(sample.rate);
        }
    }
    Ok(Traffic {
        rr: median(&rates[0]),
        crr: median(&rates[1]),
        rr_range: range(&rates[0]),
        crr_range: range(&rates[1]),
    })
}

fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    })
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Checks that `ep` answers (a short TCP_RR), with the path's name in the error.
pub async fn reachable(ep: &Endpoints, what: &str) -> anyhow::Result<()> {
    let sample = measure(ep, "rr", 0.05, 0)
        .await
        .with_context(|| format!("{what} ({}) does not answer", ep.server))?;
    anyhow::ensure!(
        sample.rate > 0.0,
        "{what} ({}) made no transaction",
        ep.server
    );
    Ok(())
}
