//! Masquerading of traffic that leaves the cluster: a pod's packet to an address that is
//! neither a pod CIDR of any node, nor a node's address, nor inside a
//! `--native-routing-cidr` leaves with the node's address, and its replies are turned back
//! (the kernel's conntrack NAT).
//!
//! Why nftables and not BPF: the kernel's NAT already does what Cilium's BPF masquerading
//! re-implements (port allocation, reply translation, ICMP errors, timeouts), a set lookup
//! keeps the per-packet cost flat in the number of nodes, and only connections that leave
//! the cluster pay it: pod-to-pod traffic never reaches the nat hook (tunnel mode redirects
//! it to `kino_vxlan` in eBPF; native mode's BPF host routing redirects it past the stack,
//! and the rule matches the cluster set for what still goes through). The whole table is
//! replaced in one `nft -f` transaction, so there is no moment without the rule.
//!
//! A NAT chain turns the kernel's connection tracking on for every packet of the namespace.
//! In tunnel mode the VXLAN packets between nodes (UDP to the tunnel port, both ways) never
//! need it, and tracking them costs every packet between pods a conntrack lookup on each node
//! (measured in docs/benchmarks.md): a `raw`-priority chain exempts them (`notrack`), as Cilium's
//! `CILIUM_PRE_raw`/`CILIUM_OUTPUT_raw` do for its own traffic. Nothing else is exempted,
//! so an operator's `ct state` rules keep seeing every other connection.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use tokio::sync::watch;

use super::nodes::PeerNodes;

/// The nftables table the agent owns in its network namespace (family `inet`).
pub const TABLE: &str = "kino";

/// What masquerading needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqueradeSpec {
    /// This node's pod CIDRs (the sources masqueraded).
    pub own_pod_cidrs: Vec<String>,
    /// This node's own addresses (never masqueraded toward).
    pub own_addresses: Vec<IpAddr>,
    /// Further destinations that are not masqueraded (`--native-routing-cidr`).
    pub native_routing_cidrs: Vec<String>,
    /// Tunnel mode: the VXLAN UDP port, whose packets conntrack skips.
    pub tunnel_port: Option<u16>,
}

/// A masquerade rule set the kernel refused, or `nft` that could not run.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot program masquerading (nftables table inet {TABLE}): {reason}; is the nftables package (nft) installed? --masquerade=false turns masquerading off"
)]
pub struct MasqueradeError {
    /// What went wrong.
    pub reason: String,
}

/// The nft script replacing the agent's table: cluster destinations of both families in
/// interval sets, and a postrouting NAT chain masquerading this node's pods' traffic to
/// anything else.
pub fn script(spec: &MasqueradeSpec, peers: &PeerNodes) -> String {
    let mut v4: BTreeSet<String> = BTreeSet::new();
    let mut v6: BTreeSet<String> = BTreeSet::new();
    let mut add = |prefix: String| {
        if prefix.contains(':') {
            v6.insert(prefix);
        } else {
            v4.insert(prefix);
        }
    };
    for cidr in spec.own_pod_cidrs.iter().chain(&spec.native_routing_cidrs) {
        add(cidr.clone());
    }
    for ip in &spec.own_addresses {
        add(ip.to_string());
    }
    for peer in peers.values() {
        for (ip, len) in &peer.pod_cidrs {
            add(format!("{ip}/{len}"));
        }
        for ip in &peer.addresses {
            add(ip.to_string());
        }
    }
    let set = |name: &str, kind: &str, elements: &BTreeSet<String>| {
        let elements = if elements.is_empty() {
            String::new()
        } else {
            format!(
                " elements = {{ {} }};",
                elements.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        format!("  set {name} {{ type {kind}; flags interval; auto-merge;{elements} }}\n")
    };
    let mut rules = String::new();
    for cidr in &spec.own_pod_cidrs {
        let (family, set) = if cidr.contains(':') {
            ("ip6", "cluster6")
        } else {
            ("ip", "cluster4")
        };
        rules.push_str(&format!(
            "    {family} saddr {cidr} {family} daddr != @{set} masquerade\n"
        ));
    }
    let notrack = spec.tunnel_port.map_or_else(String::new, |port| {
        ["prerouting", "output"]
            .map(|hook| {
                format!(
                    "  chain raw_{hook} {{\n    type filter hook {hook} priority raw; policy accept;\n    udp dport {port} notrack\n  }}\n"
                )
            })
            .concat()
    });
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{}{}{notrack}  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{rules}  }}\n}}\n",
        set("cluster4", "ipv4_addr", &v4),
        set("cluster6", "ipv6_addr", &v6),
    )
}

/// Replaces the agent's table by `script` (one transaction).
pub fn apply(script: &str) -> Result<(), MasqueradeError> {
    run_nft(&["-f", "-"], Some(script))
}

/// Removes the agent's table (masquerading turned off); none is fine.
pub fn remove() -> Result<(), MasqueradeError> {
    run_nft(
        &["-f", "-"],
        Some(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")),
    )
}

/// Keeps the table equal to what `peers` need until the task is dropped (nothing before
/// the first complete list of nodes: a partial cluster set would masquerade traffic to
/// pods of nodes not yet listed).
pub async fn run(
    spec: MasqueradeSpec,
    mut peers: watch::Receiver<Option<PeerNodes>>,
    interval: std::time::Duration,
) {
    let mut applied: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A table removed behind the agent's back (nft flush ruleset, say) is put back.
        if applied.is_some()
            && !tokio::task::spawn_blocking(table_exists)
                .await
                .unwrap_or(true)
        {
            tracing::warn!(
                table = TABLE,
                "the masquerading table was removed; programming it again"
            );
            applied = None;
        }
        let wanted = peers
            .borrow_and_update()
            .as_ref()
            .map(|nodes| script(&spec, nodes));
        if let Some(wanted) = wanted
            && applied.as_ref() != Some(&wanted)
        {
            let input = wanted.clone();
            match tokio::task::spawn_blocking(move || apply(&input)).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        table = TABLE,
                        "masquerading of traffic leaving the cluster programmed"
                    );
                    applied = Some(wanted);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "masquerading not programmed; retrying at the next change")
                }
                Err(e) => tracing::error!(error = %e, "masquerading task failed"),
            }
        }
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Whether the agent's table is in the kernel (an `nft` that cannot run says yes: nothing
/// to repair then).
fn table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| s.success())
}

fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<(), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| MasqueradeError {
            reason: format!("running nft: {e}"),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| MasqueradeError {
                reason: format!("writing to nft: {e}"),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| MasqueradeError {
        reason: format!("waiting for nft: {e}"),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(MasqueradeError {
            reason: format!(
                "nft {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::RoutingMode;
    use crate::cluster::nodes::PeerNode;

    #[test]
    fn the_cluster_is_never_masqueraded_toward() {
        let spec = MasqueradeSpec {
            own_pod_cidrs: vec!["10.0.0.0/24".into(), "fd00::/120".into()],
            own_addresses: vec!["192.0.2.11".parse().unwrap()],
            native_routing_cidrs: vec!["10.0.0.0/16".into()],
            tunnel_port: Some(8472),
        };
        let peers: PeerNodes = [PeerNode {
            name: "n2".into(),
            mode: RoutingMode::Tunnel,
            pod_cidrs: vec![("10.0.1.0".parse().unwrap(), 24)],
            underlay: vec!["192.0.2.12".parse().unwrap()],
            addresses: vec!["192.0.2.12".parse().unwrap(), "10.0.1.1".parse().unwrap()],
        }]
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
        let script = script(&spec, &peers);
        assert!(
            script.starts_with("table inet kino\ndelete table inet kino\n"),
            "{script}"
        );
        assert!(script.contains("10.0.1.0/24"), "{script}");
        assert!(script.contains("192.0.2.12"), "{script}");
        assert!(script.contains("elements = { fd00::/120 }"), "{script}");
        assert!(
            script.contains("ip saddr 10.0.0.0/24 ip daddr != @cluster4 masquerade"),
            "{script}"
        );
        assert!(
            script.contains("ip6 saddr fd00::/120 ip6 daddr != @cluster6 masquerade"),
            "{script}"
        );
        // Tunnel packets are not tracked, in either direction; native mode has no such chain.
        for hook in ["prerouting", "output"] {
            assert!(
                script.contains(&format!(
                    "chain raw_{hook} {{\n    type filter hook {hook} priority raw; policy accept;\n    udp dport 8472 notrack\n"
                )),
                "{script}"
            );
        }
        let native = MasqueradeSpec {
            tunnel_port: None,
            ..spec
        };
        assert!(!super::script(&native, &peers).contains("notrack"));
    }
}
