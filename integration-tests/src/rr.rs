//! kino-rr (`src/bin/kino_rr.rs`) driven from the benchmarks: one client run pinned to a CPU
//! in a namespace (TCP_RR, TCP_CRR or TCP_STREAM), servers killed on drop, and the `ip -n` /
//! `sysctl` helpers their worlds are built with.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::Value;

use crate::bin_dir;

/// Where a client runs and what it talks to.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub client_netns: String,
    pub server: SocketAddr,
}

/// One client run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Transactions per second.
    pub rate: f64,
    /// Transactions over 100 ms (a packet lost and retransmitted).
    pub slow: u64,
    /// The slowest transaction, ms.
    pub max_ms: f64,
}

/// Runs one kino-rr client of `mode` (`rr`, `crr`, `stream`) in `ep.client_netns`, pinned;
/// returns its rate (transactions/s; Mbit/s for `stream`).
pub async fn measure(
    ep: &Endpoints,
    mode: &str,
    seconds: f64,
    cpu: usize,
) -> anyhow::Result<Sample> {
    let client = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ep.client_netns, "taskset", "-c"])
        .arg(cpu.to_string())
        .arg(bin_dir().join("kino-rr"))
        .args(["client", "--connect", &ep.server.to_string(), "--mode"])
        .arg(mode)
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
pub struct RrServer {
    _child: tokio::process::Child,
}

impl RrServer {
    pub async fn start(netns: &str, cpu: usize, ep: &Endpoints) -> anyhow::Result<RrServer> {
        let server = RrServer::spawn(netns, cpu, ep.server.port())?;
        // Ready once a short TCP_RR goes through (also proves the path works).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match measure(ep, "rr", 0.05, cpu).await {
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
    pub fn spawn(netns: &str, cpu: usize, port: u16) -> anyhow::Result<RrServer> {
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

/// Runs `ip -n <ns> <args>`, failing with its error.
pub fn ipn(ns: &str, args: &[&str]) -> anyhow::Result<()> {
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

/// Sets sysctls inside a namespace.
pub fn sysctl_in(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
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
pub fn client_sysctls(ns: &str) -> anyhow::Result<()> {
    sysctl_in(
        ns,
        &[
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
}
