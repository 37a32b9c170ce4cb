//! The references of the run, built from kernel objects only: two "nodes" (namespaces) on an
//! underlay bridge, and on each a "pod" behind Flannel's layout — a `cni0` bridge holding the
//! node's pod gateway, the pod's veth in it — with Flannel's VXLAN backend between the nodes:
//! `flannel.1` (VNI 1, UDP 8472, no learning, MTU 1450), a route to the other node's pod CIDR
//! via its VTEP address `onlink`, a permanent neighbour entry for that address and an FDB
//! entry sending its MAC to the other node's underlay address. No eBPF anywhere.
//!
//! node ↔ node (the limit) is measured on the same underlay, between the nodes themselves.

use kino_integration_tests::rr::{client_sysctls, ipn, sysctl_in};
use kino_integration_tests::world::Netns;

/// The nodes' underlay addresses.
pub const NODE_IPS: [&str; 2] = ["192.0.2.21", "192.0.2.22"];
/// The pods' addresses (node i's pod CIDR is 10.244.(i+1).0/24).
pub const POD_IPS: [&str; 2] = ["10.244.1.2", "10.244.2.2"];

/// The reference world; every namespace goes on drop.
pub struct Reference {
    /// The two nodes.
    pub nodes: [Netns; 2],
    /// A pod on each.
    pub pods: [Netns; 2],
    _underlay: Netns,
}

impl Reference {
    /// Builds it under `prefix`.
    pub fn build(prefix: &str) -> anyhow::Result<Reference> {
        let underlay = Netns::new(&format!("{prefix}-rul"));
        ipn(&underlay.name, &["link", "add", "br0", "type", "bridge"])?;
        ipn(&underlay.name, &["link", "set", "br0", "up"])?;
        let nodes = [
            Netns::new(&format!("{prefix}-rn1")),
            Netns::new(&format!("{prefix}-rn2")),
        ];
        let pods = [
            Netns::new(&format!("{prefix}-rp1")),
            Netns::new(&format!("{prefix}-rp2")),
        ];
        for (i, node) in nodes.iter().enumerate() {
            let n = &node.name;
            let port = format!("rn{}", i + 1);
            ipn(
                &underlay.name,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", n,
                ],
            )?;
            ipn(
                &underlay.name,
                &["link", "set", &port, "master", "br0", "up"],
            )?;
            ipn(
                n,
                &["addr", "add", &format!("{}/24", NODE_IPS[i]), "dev", "eth0"],
            )?;
            ipn(n, &["link", "set", "eth0", "up"])?;
            sysctl_in(n, &["net.ipv4.ip_forward=1"])?;
            // Flannel's cni0 and the pod in it.
            let cidr = i + 1;
            ipn(n, &["link", "add", "cni0", "type", "bridge"])?;
            ipn(
                n,
                &["addr", "add", &format!("10.244.{cidr}.1/24"), "dev", "cni0"],
            )?;
            ipn(n, &["link", "set", "cni0", "mtu", "1450", "up"])?;
            let p = &pods[i].name;
            ipn(
                n,
                &[
                    "link", "add", "veth0", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
                    "netns", p,
                ],
            )?;
            ipn(n, &["link", "set", "veth0", "master", "cni0", "up"])?;
            ipn(
                p,
                &["addr", "add", &format!("{}/24", POD_IPS[i]), "dev", "eth0"],
            )?;
            ipn(p, &["link", "set", "eth0", "up"])?;
            ipn(
                p,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.244.{cidr}.1"),
                ],
            )?;
            client_sysctls(p)?;
            // flannel.1, with the VTEP address 10.244.<cidr>.0/32 as Flannel gives it.
            ipn(
                n,
                &[
                    "link",
                    "add",
                    "flannel.1",
                    "type",
                    "vxlan",
                    "id",
                    "1",
                    "local",
                    NODE_IPS[i],
                    "dev",
                    "eth0",
                    "dstport",
                    "8472",
                    "nolearning",
                ],
            )?;
            ipn(n, &["link", "set", "flannel.1", "mtu", "1450", "up"])?;
            ipn(
                n,
                &[
                    "addr",
                    "add",
                    &format!("10.244.{cidr}.0/32"),
                    "dev",
                    "flannel.1",
                ],
            )?;
        }
        for (i, node) in nodes.iter().enumerate() {
            let j = 1 - i;
            let peer_mac = mac_of(&nodes[j], "flannel.1")?;
            let vtep = format!("10.244.{}.0", j + 1);
            let n = &node.name;
            ipn(
                n,
                &[
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", j + 1),
                    "via",
                    &vtep,
                    "dev",
                    "flannel.1",
                    "onlink",
                ],
            )?;
            ipn(
                n,
                &[
                    "neigh",
                    "add",
                    &vtep,
                    "lladdr",
                    &peer_mac,
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ],
            )?;
            let out = std::process::Command::new("bridge")
                .args([
                    "-n",
                    n,
                    "fdb",
                    "append",
                    &peer_mac,
                    "dev",
                    "flannel.1",
                    "dst",
                    NODE_IPS[j],
                ])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "bridge fdb in {n}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        client_sysctls(&nodes[0].name)?;
        Ok(Reference {
            nodes,
            pods,
            _underlay: underlay,
        })
    }
}

fn mac_of(netns: &Netns, device: &str) -> anyhow::Result<String> {
    let out = netns.try_exec(&["cat", &format!("/sys/class/net/{device}/address")]);
    anyhow::ensure!(out.status.success(), "no {device} in {}", netns.name);
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
