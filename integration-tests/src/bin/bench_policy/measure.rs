//! The measurement plumbing: what is measured (setups × tests), one kino-rr client run
//! pinned to a CPU in a namespace, kino-rr servers, and running tools inside a namespace
//! (timed, for the iptables/nftables loads; `ip -n`, `sysctl`).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use kino_integration_tests::bin_dir;
use kino_integration_tests::world::Netns;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// What is measured, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Setup {
    NoFilter,
    KinoNoPolicy,
    Kino,
    IptablesLegacy,
    IptablesNft,
    NftSet,
}

impl Setup {
    pub(crate) fn title(self) -> &'static str {
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
pub(crate) enum Test {
    Rr,
    Crr,
}

impl Test {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Test::Rr => "rr",
            Test::Crr => "crr",
        }
    }
    pub(crate) fn title(self) -> &'static str {
        match self {
            Test::Rr => "TCP_RR (transactions/s on one connection)",
            Test::Crr => "TCP_CRR (connections/s)",
        }
    }
}

/// Where a client runs and what it talks to.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    pub(crate) client_netns: String,
    pub(crate) server: SocketAddr,
}

/// One client run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Transactions per second.
    pub(crate) rate: f64,
    /// Transactions over 100 ms (a packet lost and retransmitted).
    pub(crate) slow: u64,
    /// The slowest transaction, ms.
    pub(crate) max_ms: f64,
}

/// Runs one kino-rr client in `ep.client_netns`, pinned; returns its transactions/s.
pub(crate) async fn measure(
    ep: &Endpoints,
    test: Test,
    seconds: f64,
    cpu: usize,
) -> anyhow::Result<Sample> {
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
pub(crate) struct RrServer {
    _child: tokio::process::Child,
}

impl RrServer {
    pub(crate) async fn start(netns: &str, cpu: usize, ep: &Endpoints) -> anyhow::Result<RrServer> {
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
    pub(crate) fn spawn(netns: &str, cpu: usize, port: u16) -> anyhow::Result<RrServer> {
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
pub(crate) async fn timed_in(
    netns: &Netns,
    program: &str,
    args: &[&str],
    stdin: &str,
) -> anyhow::Result<f64> {
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

pub(crate) fn ipn(ns: &str, args: &[&str]) -> anyhow::Result<()> {
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

pub(crate) fn sysctl_in(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
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
pub(crate) fn client_sysctls(ns: &str) -> anyhow::Result<()> {
    sysctl_in(
        ns,
        &[
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
}
