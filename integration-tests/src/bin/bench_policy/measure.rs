//! The measurement plumbing: what is measured (setups × tests), one kino-rr client run
//! pinned to a CPU in a namespace, kino-rr servers, and running tools inside a namespace
//! (timed, for the iptables/nftables loads; `ip -n`, `sysctl`).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, ensure};
use kino_integration_tests::world::Netns;
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

pub(crate) use kino_integration_tests::rr::{
    Endpoints, RrServer, Sample, client_sysctls, ipn, sysctl_in,
};

/// Runs one kino-rr client of `test` in `ep.client_netns`, pinned; returns its rate.
pub(crate) async fn measure(
    ep: &Endpoints,
    test: Test,
    seconds: f64,
    cpu: usize,
) -> anyhow::Result<Sample> {
    kino_integration_tests::rr::measure(ep, test.arg(), seconds, cpu).await
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
