//! bench-ipam: endpoint address allocations per second and their p50/p99 latency at several
//! concurrencies, for kino-ipam (real processes: kino-ipam → kino-datastore-gateway → embedded
//! file or etcd) beside the reference `host-local` IPAM plugin exec'd as a container runtime
//! does (env + JSON on stdin, one process per ADD, its own data dir) — all in the same run,
//! printed as a markdown table with ratios to host-local.
//!
//! cargo build --release -p kino-ipam -p kino-datastore-gateway -p kino-integration-tests --bin bench-ipam
//! target/release/bench-ipam

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use kino_api::ipam as pb;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::types::IpFamily;
use kino_integration_tests::etcd::Etcd;
use kino_integration_tests::process::{ServiceProcess, wait_for_port};
use kino_integration_tests::stats::percentile;
use kino_integration_tests::{bin_dir, free_port};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "IPAM benchmark: allocations/s and latency, kino-ipam vs host-local")]
struct Args {
    /// Allocations per concurrency level for kino-ipam.
    #[arg(long, default_value_t = 3000)]
    count: usize,
    /// Allocations per concurrency level for host-local (one process each: slow).
    #[arg(long, default_value_t = 400)]
    host_local_count: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// The host-local plugin.
    #[arg(long, default_value = "/usr/lib/cni/host-local")]
    host_local: PathBuf,
    /// Use this etcd instead of starting a private one.
    #[arg(long)]
    etcd_endpoint: Option<String>,
}

/// One measured level.
#[derive(Clone, Copy, Debug)]
struct Point {
    concurrency: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

struct Row {
    name: String,
    points: Vec<Point>,
}

/// Runs `count` operations with `concurrency` workers; `op(i)` does operation i.
async fn measure<F, Fut>(count: usize, concurrency: usize, op: F) -> anyhow::Result<Point>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed();
    Ok(Point {
        concurrency,
        per_second: count as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    })
}

/// host-local exec'd per ADD, as a runtime would, with a private data dir per level.
async fn host_local(args: &Args, concurrency: usize, run: &str) -> anyhow::Result<Point> {
    let dir = tempfile::Builder::new()
        .prefix("bench-host-local-")
        .tempdir()?;
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("bench-{run}-{concurrency}"),
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.200.0.0/16"}]],
            "dataDir": dir.path(),
        },
    })
    .to_string();
    let plugin = args.host_local.clone();
    let plugin_dir = plugin
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/cni"));
    let point = measure(args.host_local_count, concurrency, move |i| {
        let (config, plugin, plugin_dir) = (config.clone(), plugin.clone(), plugin_dir.clone());
        async move {
            let mut child = tokio::process::Command::new(&plugin)
                .env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("bench-{i}"))
                .env("CNI_NETNS", format!("/var/run/netns/bench-{i}"))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", &plugin_dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", plugin.display()))?;
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(config.as_bytes()).await?;
            drop(stdin);
            let output = child.wait_with_output().await?;
            anyhow::ensure!(
                output.status.success(),
                "host-local ADD failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(())
        }
    })
    .await?;
    Ok(point)
}

/// A gateway and a kino-ipam, real release processes, on loopback.
struct Suite {
    ipam: IpamServiceClient<Channel>,
    _processes: Vec<ServiceProcess>,
    _dir: tempfile::TempDir,
}

impl Suite {
    async fn start(backend: &[String]) -> anyhow::Result<Suite> {
        let dir = tempfile::Builder::new().prefix("bench-ipam-").tempdir()?;
        let (gateway_port, ipam_port) = (free_port(), free_port());
        // Plaintext (--insecure), as the numbers in docs/benchmarks.md were measured; the
        // suite's mTLS adds a handshake per connection, not per call.
        let mut gateway_args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{gateway_port}"),
            "--insecure".to_owned(),
        ];
        gateway_args.extend(backend.iter().cloned());
        if backend.is_empty() {
            gateway_args.extend([
                "--data-file".to_owned(),
                dir.path().join("datastore.redb").display().to_string(),
            ]);
        }
        let quiet = [("KINO_LOG", "warn")];
        let gateway = ServiceProcess::start(
            &bin_dir().join("kino-datastore-gateway"),
            &gateway_args,
            &quiet,
            dir.path(),
        )?;
        wait_for_port(
            &format!("127.0.0.1:{gateway_port}"),
            Duration::from_secs(20),
        )
        .await?;
        let ipam = ServiceProcess::start(
            &bin_dir().join("kino-ipam"),
            &[
                "--listen".into(),
                format!("127.0.0.1:{ipam_port}"),
                "--datastore".into(),
                format!("http://127.0.0.1:{gateway_port}"),
                "--no-default-pool".into(),
                "--insecure".into(),
            ],
            &quiet,
            dir.path(),
        )?;
        wait_for_port(&format!("127.0.0.1:{ipam_port}"), Duration::from_secs(20)).await?;
        let mut client =
            IpamServiceClient::connect(format!("http://127.0.0.1:{ipam_port}")).await?;
        // /16 per node: room for every allocation of a level in one block.
        client
            .create_pool(pb::CreatePoolRequest {
                pool: Some(pb::IpPool {
                    name: "bench".into(),
                    ipv4: Some(pb::PoolFamily {
                        cidrs: vec!["10.0.0.0/8".into()],
                        node_mask_size: 16,
                    }),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(Suite {
            ipam: client,
            _processes: vec![gateway, ipam],
            _dir: dir,
        })
    }

    /// Allocations of new owners on a fresh node (its block is given before timing).
    async fn allocations(&self, count: usize, concurrency: usize) -> anyhow::Result<Point> {
        let node = format!("bench-node-c{concurrency}");
        let mut client = self.ipam.clone();
        client
            .allocate_node_cidrs(pb::AllocateNodeCidrsRequest {
                node: node.clone(),
                pool: "bench".into(),
                ..Default::default()
            })
            .await?;
        let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        // Warm-up: connections, the replica's view of the block.
        for i in 0..20 {
            allocate(&mut client, &node, &format!("warm-{run}-{i}")).await?;
        }
        let ipam = self.ipam.clone();
        measure(count, concurrency, move |i| {
            let (mut ipam, node) = (ipam.clone(), node.clone());
            async move { allocate(&mut ipam, &node, &format!("bench-{run}-{i}")).await }
        })
        .await
    }
}

async fn allocate(
    client: &mut IpamServiceClient<Channel>,
    node: &str,
    container: &str,
) -> anyhow::Result<()> {
    client
        .allocate(pb::AllocateRequest {
            node: node.into(),
            pool: "bench".into(),
            family: IpFamily::Ipv4 as i32,
            owner: Some(pb::Owner {
                container_id: container.into(),
                ifname: "eth0".into(),
                ..Default::default()
            }),
            requested_address: String::new(),
        })
        .await
        .with_context(|| format!("Allocate {container}"))?;
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn table(rows: &[Row], baseline: &Row, levels: &[usize]) -> String {
    let mut out = String::from("| IPAM |");
    for c in levels {
        out.push_str(&format!(" alloc/s c={c} | ×host-local | p50/p99 ms |"));
    }
    out.push('\n');
    out.push_str("|---|");
    for _ in levels {
        out.push_str("---|---|---|");
    }
    out.push('\n');
    for row in rows {
        out.push_str(&format!("| {} |", row.name));
        for c in levels {
            match row.points.iter().find(|p| p.concurrency == *c) {
                Some(p) => {
                    let base = baseline
                        .points
                        .iter()
                        .find(|b| b.concurrency == *c)
                        .map(|b| p.per_second / b.per_second)
                        .unwrap_or(f64::NAN);
                    out.push_str(&format!(
                        " {:.0} | {:.2} | {}/{} |",
                        p.per_second,
                        base,
                        ms(p.p50),
                        ms(p.p99)
                    ));
                }
                None => out.push_str(" – | – | – |"),
            }
        }
        out.push('\n');
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.host_local.exists(),
        "{} not found: apt-get install containernetworking-plugins",
        args.host_local.display()
    );
    for binary in ["kino-ipam", "kino-datastore-gateway"] {
        anyhow::ensure!(
            bin_dir().join(binary).exists(),
            "{binary} is not built next to this benchmark: cargo build --release -p kino-ipam -p kino-datastore-gateway"
        );
    }
    let mut rows = Vec::new();

    eprintln!("host-local ...");
    let mut baseline = Row {
        name: "host-local (exec'd per ADD)".into(),
        points: Vec::new(),
    };
    for &c in &args.concurrency {
        let p = host_local(&args, c, "first").await?;
        eprintln!("  c={c}: {:.0}/s", p.per_second);
        baseline.points.push(p);
    }

    let private_etcd;
    let etcd_endpoint = match &args.etcd_endpoint {
        Some(e) => e.clone(),
        None => {
            private_etcd = Etcd::start().await?;
            private_etcd.endpoint.clone()
        }
    };
    let prefix = format!(
        "/bench-ipam-{}/",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    );
    let backends: [(&str, Vec<String>); 2] = [
        ("kino-ipam → gateway → embedded", Vec::new()),
        (
            "kino-ipam → gateway → etcd",
            vec![
                "--backend".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd_endpoint.clone(),
                "--etcd-prefix".into(),
                prefix.clone(),
            ],
        ),
    ];
    for (name, backend) in backends {
        eprintln!("{name} ...");
        let suite = Suite::start(&backend).await?;
        let mut row = Row {
            name: name.into(),
            points: Vec::new(),
        };
        for &c in &args.concurrency {
            let p = suite.allocations(args.count, c).await?;
            eprintln!("  c={c}: {:.0}/s", p.per_second);
            row.points.push(p);
        }
        rows.push(row);
    }

    eprintln!("host-local again (drift check) ...");
    let mut drift = Row {
        name: "host-local again, end of run".into(),
        points: Vec::new(),
    };
    for &c in &args.concurrency {
        drift.points.push(host_local(&args, c, "again").await?);
    }

    let mut all = vec![Row {
        name: baseline.name.clone(),
        points: baseline.points.clone(),
    }];
    all.extend(rows);
    all.push(drift);
    println!(
        "kino-ipam: {} allocations per level; host-local: {} ADDs per level\n",
        args.count, args.host_local_count
    );
    print!("{}", table(&all, &baseline, &args.concurrency));
    Ok(())
}
