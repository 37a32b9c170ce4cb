//! The reference world, kernel objects only: one node as kube-proxy-based clusters build it
//! with the bridge CNI plugin — a `cni0` bridge (10.244.0.1/24) in the node namespace, a
//! client pod (10.244.0.2) and 10 backend pods (10.244.0.10–19) plugged into it, each with
//! a kino-rr server on :8080 — and `bridge-nf-call-iptables` on, which kube-proxy requires
//! so the replies a backend sends straight to a client on the same bridge are un-DNATed.
//!
//! kube-proxy's tables are loaded into the node namespace ([`Reference::install`]) with the
//! tool kube-proxy runs — `iptables-restore` (nf_tables backend), `iptables-legacy-restore`
//! or `nft -f` — and timed per invocation, process start included (kube-proxy pays it too).
//! Every namespace goes on drop, with every rule in it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kino_integration_tests::rr::{RrServer, client_sysctls, ipn, sysctl_in};
use kino_integration_tests::world::Netns;

use crate::services::{BACKEND_PORT, ServicePort};
use crate::{iptables, nftables};

/// The client pod's address.
pub const CLIENT_IP: &str = "10.244.0.2";
/// The number of backend pods.
pub const BACKENDS: usize = 10;

/// The backends' addresses.
pub fn backend_ips() -> Vec<Ipv4Addr> {
    (0..BACKENDS)
        .map(|i| Ipv4Addr::new(10, 244, 0, 10 + i as u8))
        .collect()
}

/// Which of kube-proxy's layouts, loaded by which tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `--proxy-mode=iptables` with iptables 1.8's default nf_tables backend.
    IptablesNft,
    /// `--proxy-mode=iptables` with the legacy (x_tables) backend.
    IptablesLegacy,
    /// `--proxy-mode=nftables`.
    Nftables,
}

impl Layout {
    /// Its name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Layout::IptablesNft => "kube-proxy iptables (iptables-nft)",
            Layout::IptablesLegacy => "kube-proxy iptables (iptables-legacy)",
            Layout::Nftables => "kube-proxy nftables",
        }
    }

    /// Its command-line name (`--layouts`).
    pub fn parse(name: &str) -> anyhow::Result<Layout> {
        match name {
            "iptables-nft" => Ok(Layout::IptablesNft),
            "iptables-legacy" => Ok(Layout::IptablesLegacy),
            "nftables" => Ok(Layout::Nftables),
            other => anyhow::bail!(
                "--layouts: {other:?} is none of iptables-nft, iptables-legacy, nftables"
            ),
        }
    }

    fn restore_tool(self) -> &'static str {
        match self {
            Layout::IptablesNft => "iptables-restore",
            Layout::IptablesLegacy => "iptables-legacy-restore",
            Layout::Nftables => "nft",
        }
    }
}

/// The world; namespaces (and the servers in them) go on drop.
pub struct Reference {
    /// The node, where kube-proxy's tables live.
    pub node: Netns,
    /// The client pod.
    pub client: Netns,
    /// How long one tool run may take before it is stopped.
    limit: Duration,
    _servers: Vec<RrServer>,
    _backends: Vec<Netns>,
}

impl Reference {
    /// Builds it under `prefix`, servers pinned to `server_cpu`; a tool run longer than
    /// `limit` is stopped ([`TimedOut`]).
    pub fn build(prefix: &str, server_cpu: usize, limit: Duration) -> anyhow::Result<Reference> {
        let node = Netns::new(&format!("{prefix}-node"));
        let n = node.name.as_str();
        ipn(n, &["link", "add", "cni0", "type", "bridge"])?;
        ipn(n, &["addr", "add", "10.244.0.1/24", "dev", "cni0"])?;
        ipn(n, &["link", "set", "cni0", "up"])?;
        sysctl_in(
            n,
            &[
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=1",
            ],
        )?;
        let client = Netns::new(&format!("{prefix}-cl"));
        plug(&node, &client, "vcl", CLIENT_IP)?;
        client_sysctls(&client.name)?;
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for (i, ip) in backend_ips().iter().enumerate() {
            let pod = Netns::new(&format!("{prefix}-b{i}"));
            plug(&node, &pod, &format!("vb{i}"), &ip.to_string())?;
            servers.push(RrServer::spawn(&pod.name, server_cpu, BACKEND_PORT)?);
            backends.push(pod);
        }
        Ok(Reference {
            node,
            client,
            limit,
            _servers: servers,
            _backends: backends,
        })
    }

    /// Removes `layout`'s tables: the nf_tables ruleset (iptables-nft's tables are
    /// nf_tables tables), or the legacy tables' rules and chains. A world holds one layout
    /// only: legacy tables, once created, stay hooked (empty) until the namespace goes.
    pub fn clear(&self, layout: Layout) -> anyhow::Result<()> {
        match layout {
            Layout::IptablesLegacy => self.run(
                &["iptables-legacy-restore"],
                "*nat\nCOMMIT\n*filter\nCOMMIT\n",
            )?,
            _ => self.run(&["nft", "flush", "ruleset"], "")?,
        };
        Ok(())
    }

    /// Clears the node, then loads `layout` with `services` (kube-proxy's first sync).
    pub fn install(&self, layout: Layout, services: &[ServicePort]) -> anyhow::Result<()> {
        self.clear(layout)?;
        if layout != Layout::Nftables {
            self.restore(layout, &iptables::jumps())?;
        }
        self.full_sync(layout, services)?;
        Ok(())
    }

    /// One full sync of `services` (the whole table, as kube-proxy writes it every sync
    /// before 1.27 and every hour after): how long the tool took.
    pub fn full_sync(&self, layout: Layout, services: &[ServicePort]) -> anyhow::Result<Duration> {
        match layout {
            Layout::Nftables => self.restore(layout, &nftables::full(services)),
            _ => self.restore(layout, &iptables::full(services)),
        }
    }

    /// One service added to `services` (`with_added`'s last) and removed again, each as
    /// kube-proxy's smallest sync for it: a partial `iptables-restore` or one nft
    /// transaction. Returns (add, delete).
    pub fn one_service_change(
        &self,
        layout: Layout,
        with_added: &[ServicePort],
    ) -> anyhow::Result<(Duration, Duration)> {
        let (added, before) = with_added.split_last().context("no service to add")?;
        Ok(match layout {
            Layout::Nftables => (
                self.restore(layout, &nftables::add_one(added))?,
                self.restore(layout, &nftables::delete_one(added))?,
            ),
            _ => (
                self.restore(layout, &iptables::partial_add(with_added))?,
                self.restore(layout, &iptables::partial_delete(before, added))?,
            ),
        })
    }

    /// Feeds `input` to the layout's tool in the node namespace; its wall time.
    fn restore(&self, layout: Layout, input: &str) -> anyhow::Result<Duration> {
        let tool = layout.restore_tool();
        let args: &[&str] = match layout {
            Layout::Nftables => &[tool, "-f", "-"],
            // kube-proxy's RestoreAll(NoFlushTables, RestoreCounters), waiting for the lock.
            _ => &[tool, "-w", "5", "--noflush", "--counters"],
        };
        self.run(args, input)
    }

    fn run(&self, args: &[&str], input: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node.name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", args[0]))?;
        // Written from a thread: the tool may answer (fail) before reading everything.
        let mut stdin = child.stdin.take().context("stdin")?;
        let text = input.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let mut stderr = child.stderr.take().context("stderr")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > self.limit {
                // Ours to stop: the child we spawned (ip netns exec execs the tool in place).
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                return Err(TimedOut(self.limit).into());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let took = start.elapsed();
        let _ = writer.join();
        let errors = reader.join().unwrap_or_default();
        ensure!(
            status.success(),
            "{args:?} in {} failed: {errors}",
            self.node.name
        );
        Ok(took)
    }
}

/// A tool ran past the world's limit and was stopped.
#[derive(Debug)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "did not finish in {} s", self.0.as_secs())
    }
}

impl std::error::Error for TimedOut {}

/// A veth from `node`'s cni0 to `pod`'s eth0 holding `ip/24`, default route via the bridge.
fn plug(node: &Netns, pod: &Netns, port: &str, ip: &str) -> anyhow::Result<()> {
    ipn(
        &node.name,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ],
    )?;
    ipn(&node.name, &["link", "set", port, "master", "cni0", "up"])?;
    ipn(
        &pod.name,
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    )?;
    ipn(&pod.name, &["link", "set", "eth0", "up"])?;
    ipn(&pod.name, &["route", "add", "default", "via", "10.244.0.1"])?;
    Ok(())
}
