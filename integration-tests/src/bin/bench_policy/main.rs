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
//!
//! Here: the flags, the peers' addresses and the checks before starting. `measure` (setups,
//! tests, kino-rr clients and servers), `baselines` (the routed pair with no filter,
//! iptables or nftables), `kino` (the suite and its pods), `run` (the loop over N) and
//! `report` (the tables).

mod baselines;
mod kino;
mod measure;
mod report;
mod run;

use std::net::Ipv4Addr;

use anyhow::ensure;
use clap::Parser;
use kino_integration_tests::bin_dir;

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

fn tool_exists(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
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
        result = run::run(args) => result.map(|()| std::process::ExitCode::SUCCESS),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("bench-policy: interrupted; removing what it created");
            Ok(std::process::ExitCode::from(130))
        }
    }
}
