//! bench-cni: CNI ADD and DEL latency (p50/p99) and pods/s over N pods, for kino-cni (talking
//! to a real kino-agent in a node namespace, with kino-ipam and the datastore-gateway) beside
//! the reference plugins `bridge` + `host-local` (Debian containernetworking-plugins, in their
//! own node namespace), measured in the same run, each plugin exec'd per call exactly as a
//! runtime does. After each run it checks and prints that nothing is left: no veth, no IP
//! allocation, no BPF map entry, no datastore key (kino); no veth, no host-local reservation
//! (reference). Needs root.
//!
//! cargo build --release --workspace --bins
//! cargo run --release -p kino-integration-tests --bin bench-cni -- --pods 200

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use kino_api::agent::ListEndpointsRequest;
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_integration_tests::bin_dir;
use kino_integration_tests::stats::percentile;
use kino_integration_tests::world::{Netns, Suite, run, unique_prefix};

#[derive(Parser, Debug)]
#[command(about = "CNI ADD/DEL latency and pods/s: kino-cni vs the reference bridge + host-local")]
struct Args {
    /// Pods per run (each: a namespace, ADD; then DEL for all, newest last).
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Where the reference plugins are.
    #[arg(long, default_value = "/usr/lib/cni")]
    reference_dir: PathBuf,
    /// Skip the second reference run (the drift check).
    #[arg(long)]
    no_drift_check: bool,
    /// Skip the run of the reference with `ipMasq: true` (the bridge's usual setting: an
    /// iptables chain and masquerade rule per pod, inside its node namespace).
    #[arg(long)]
    no_ip_masq: bool,
}

/// Latencies of one run.
struct RunResult {
    name: String,
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// Wall time of the ADD calls alone (sequential), for pods/s.
    add_total: Duration,
    /// What was checked to be left over, for the report.
    leftovers: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A CNI plugin as a runtime runs it: a fresh process per call with the CNI_* environment and
/// the network configuration on stdin; optionally inside a namespace (`setns` in the child
/// just before exec, so the reference `bridge` creates its bridge in its node namespace).
struct Plugin {
    path: PathBuf,
    cni_path: String,
    config: String,
    node_netns: Option<std::fs::File>,
}

impl Plugin {
    /// Runs one command; returns its latency (spawn to exit), failing with its output.
    fn call(
        &self,
        command: &str,
        container_id: &str,
        netns: &Path,
        pod: &str,
    ) -> anyhow::Result<Duration> {
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(node) = &self.node_netns {
            let fd = node.as_raw_fd();
            // SAFETY: only the setns syscall runs between fork and exec; `fd` stays open in
            // the parent (self owns the File) for the whole call.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(
                        BorrowedFd::borrow_raw(fd),
                        nix::sched::CloneFlags::CLONE_NEWNET,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.path.display()))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(self.config.as_bytes())?;
        let out = child.wait_with_output()?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "{} {command} for {pod} failed ({}): {}{}",
                self.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if command == "ADD" {
            let result: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("ADD result of {pod} is not JSON"))?;
            ensure!(
                result["ips"].as_array().is_some_and(|ips| !ips.is_empty()),
                "ADD of {pod} returned no address: {result}"
            );
        }
        Ok(took)
    }
}

/// ADD for `pods` fresh namespaces, then DEL for each; neither creating nor removing the
/// namespaces is timed. The namespaces are returned: the caller checks what DEL left in the
/// node before dropping them (a veth whose pod side still exists would vanish with its
/// namespace and hide a leak).
fn measure(
    name: &str,
    plugin: &Plugin,
    prefix: &str,
    pods: usize,
) -> anyhow::Result<(RunResult, Vec<Netns>)> {
    let namespaces: Vec<Netns> = (0..pods)
        .map(|i| Netns::new(&format!("{prefix}-p{i}")))
        .collect();
    let mut add = Vec::with_capacity(pods);
    for (i, ns) in namespaces.iter().enumerate() {
        add.push(plugin.call(
            "ADD",
            &container_id(prefix, i),
            &ns.path(),
            &format!("pod-{i}"),
        )?);
    }
    let add_total = add.iter().sum();
    let mut del = Vec::with_capacity(pods);
    for (i, ns) in namespaces.iter().enumerate() {
        del.push(plugin.call(
            "DEL",
            &container_id(prefix, i),
            &ns.path(),
            &format!("pod-{i}"),
        )?);
    }
    let result = RunResult {
        name: name.to_owned(),
        add,
        del,
        add_total,
        leftovers: Vec::new(),
    };
    Ok((result, namespaces))
}

fn container_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:08}")
}

/// Entries of a pinned BPF map (bpftool's JSON dump).
fn bpf_map_entries(pin: &Path) -> anyhow::Result<usize> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool (Debian bpftool)")?;
    ensure!(
        out.status.success(),
        "bpftool map dump {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(entries.as_array().map_or(0, Vec::len))
}

/// Links of a namespace other than `lo` and those named in `keep`.
fn links_in(ns: &Netns, keep: &[&str]) -> Vec<String> {
    let out = ns.exec(&["ip", "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n != "lo" && !keep.contains(&n.as_str()))
        .collect()
}

async fn bench_kino(pods: usize) -> anyhow::Result<RunResult> {
    let suite = Suite::start("bc").await;
    let plugin = Plugin {
        path: bin_dir().join("kino-cni"),
        cni_path: bin_dir().display().to_string(),
        config: serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kino",
            "type": "kino-cni",
            "agentSocket": suite.agent_socket(),
        })
        .to_string(),
        node_netns: None,
    };
    let prefix = format!("{}k", suite.prefix);
    let (mut result, namespaces) = measure("kino-cni → kino-agent", &plugin, &prefix, pods)?;

    // Nothing left: lxcs, the agent's endpoints, BPF map entries, datastore keys.
    let lxcs = suite.lxc_links();
    ensure!(
        lxcs.is_empty(),
        "kino left {} lxc veths: {lxcs:?}",
        lxcs.len()
    );
    let channel = kino_service_kit::connect(
        &format!("unix:{}", suite.agent_socket().display()),
        &kino_service_kit::ClientTlsArgs::default(),
    )
    .await?;
    let endpoints = AgentServiceClient::new(channel)
        .list_endpoints(ListEndpointsRequest::default())
        .await?
        .into_inner()
        .endpoints;
    ensure!(
        endpoints.is_empty(),
        "the agent still lists {} endpoints",
        endpoints.len()
    );
    let pins = suite.pin_root.join(suite.node_name());
    let mut map_entries = 0;
    for map in ["kino_endpoints", "kino_lxc", "kino_metrics"] {
        let n = bpf_map_entries(&pins.join(map))?;
        ensure!(n == 0, "BPF map {map} still has {n} entries");
        map_entries += n;
    }
    let allocations = suite.datastore_names("IPAllocation").await;
    ensure!(allocations.is_empty(), "IPAM still holds {allocations:?}");
    let records = suite.datastore_names("Endpoint").await;
    ensure!(
        records.is_empty(),
        "datastore still has endpoint records {records:?}"
    );
    result.leftovers = vec![
        format!("{} lxc veths in the node", lxcs.len()),
        format!("{} endpoints listed by the agent", endpoints.len()),
        format!("{map_entries} entries in kino_endpoints/kino_lxc/kino_metrics (bpftool)"),
        format!(
            "{} IPAllocation and {} Endpoint keys in the datastore",
            allocations.len(),
            records.len()
        ),
    ];
    drop(namespaces);
    Ok(result)
}

fn bench_reference(dir: &Path, pods: usize, tag: &str, ip_masq: bool) -> anyhow::Result<RunResult> {
    let prefix = unique_prefix(tag);
    let node = Netns::new(&format!("{prefix}-node"));
    let data = tempfile::Builder::new()
        .prefix(&format!("{prefix}-host-local-"))
        .tempdir()?;
    let plugin = Plugin {
        path: dir.join("bridge"),
        cni_path: dir.display().to_string(),
        // Without ipMasq, like kino-cni: no iptables rules. With it, the usual setting.
        config: serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "refnet",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": ip_masq,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.250.0.0/16"}]],
                "dataDir": data.path(),
            },
        })
        .to_string(),
        node_netns: Some(std::fs::File::open(node.path())?),
    };
    let name = if ip_masq {
        "bridge + host-local, ipMasq"
    } else {
        "bridge + host-local (reference)"
    };
    let (mut result, namespaces) = measure(name, &plugin, &prefix, pods)?;
    let veths = links_in(&node, &["cni0"]);
    ensure!(veths.is_empty(), "the reference left veths {veths:?}");
    let reserved: Vec<String> = std::fs::read_dir(data.path().join("refnet"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        reserved.is_empty(),
        "host-local still reserves {reserved:?}"
    );
    result.leftovers = vec![
        format!("{} veths in the node", veths.len()),
        format!("{} host-local reservations", reserved.len()),
    ];
    if ip_masq {
        let nat = node.exec(&["iptables", "-t", "nat", "-S"]);
        let rules: Vec<String> = String::from_utf8_lossy(&nat.stdout)
            .lines()
            .filter(|l| l.contains("CNI-"))
            .map(str::to_owned)
            .collect();
        ensure!(rules.is_empty(), "the reference left NAT rules {rules:?}");
        result
            .leftovers
            .push("0 CNI- NAT rules in the node".to_owned());
    }
    drop(namespaces);
    run(
        "ip",
        &["netns", "exec", &node.name, "ip", "link", "del", "cni0"],
    );
    Ok(result)
}

fn row(r: &RunResult, pods: usize) -> (f64, f64, f64, f64, f64, f64, f64) {
    let first = &r.add[..r.add.len().min(20)];
    let last = &r.add[r.add.len().saturating_sub(20)..];
    (
        ms(percentile(&r.add, 0.5)),
        ms(percentile(&r.add, 0.99)),
        ms(percentile(first, 0.5)),
        ms(percentile(last, 0.5)),
        ms(percentile(&r.del, 0.5)),
        ms(percentile(&r.del, 0.99)),
        pods as f64 / r.add_total.as_secs_f64(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let status = std::fs::read_to_string("/proc/self/status")?;
    ensure!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "bench-cni needs root (network namespaces, eBPF)"
    );
    for binary in [
        "kino-cni",
        "kino-agent",
        "kino-ipam",
        "kino-datastore-gateway",
    ] {
        ensure!(
            bin_dir().join(binary).exists(),
            "{} is not built next to this benchmark; run `cargo build --release --workspace --bins`",
            bin_dir().join(binary).display()
        );
    }
    eprintln!(
        "bench-cni: {} pods per run, binaries from {}",
        args.pods,
        bin_dir().display()
    );

    let mut runs = Vec::new();
    eprintln!("reference: bridge + host-local ...");
    runs.push(bench_reference(
        &args.reference_dir,
        args.pods,
        "br",
        false,
    )?);
    if !args.no_ip_masq {
        eprintln!("reference with ipMasq ...");
        runs.push(bench_reference(&args.reference_dir, args.pods, "bm", true)?);
    }
    eprintln!("kino-cni ...");
    runs.push(bench_kino(args.pods).await?);
    if !args.no_drift_check {
        eprintln!("reference again (drift check) ...");
        let mut again = bench_reference(&args.reference_dir, args.pods, "bd", false)?;
        again.name = "bridge + host-local again (drift check)".to_owned();
        runs.push(again);
    }

    let reference = row(&runs[0], args.pods);
    println!(
        "| plugin ({} pods, sequential) | ADD p50 ms | ADD p99 ms | ADD p50 first 20 → last 20 ms | DEL p50 ms | DEL p99 ms | pods/s (ADD) | ADD p50 ×ref | DEL p50 ×ref | pods/s ×ref |",
        args.pods
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let v = row(r, args.pods);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} → {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.name,
            v.0,
            v.1,
            v.2,
            v.3,
            v.4,
            v.5,
            v.6,
            v.0 / reference.0,
            v.4 / reference.4,
            v.6 / reference.6
        );
    }
    println!();
    println!("Left after the runs (each checked, the run fails otherwise):");
    for r in &runs {
        println!("- {}: {}", r.name, r.leftovers.join(", "));
    }
    Ok(())
}
