//! The baselines: two pod namespaces routed through a router namespace with no filter, or
//! with N rules in iptables-legacy / iptables-nft (a linear FORWARD chain) or an N-element
//! nftables set — loading N and timing a one-rule change in each.

use std::fmt::Write as _;
use std::net::SocketAddr;

use kino_integration_tests::world::Netns;

use crate::measure::{Endpoints, RrServer, client_sysctls, ipn, sysctl_in, timed_in};
use crate::{EXTRA_PEER, PORT, peer, peer_cidr};

/// Which filter a router namespace gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    None,
    IptablesLegacy,
    IptablesNft,
    NftSet,
}

/// Two pod namespaces and a router namespace between them: `a` 10.99.0.1/32 ↔ router ↔ `b`
/// 10.99.0.2/32, veths, /32 routes, the router's 10.99.0.254 as both pods' gateway.
pub(crate) struct RoutedPair {
    filter: Filter,
    a: Netns,
    router: Netns,
    b: Netns,
    server: Option<RrServer>,
}

const A_IP: &str = "10.99.0.1";
const B_IP: &str = "10.99.0.2";
const GATEWAY: &str = "10.99.0.254";

impl RoutedPair {
    pub(crate) fn new(prefix: &str, tag: &str, filter: Filter) -> anyhow::Result<RoutedPair> {
        let pair = RoutedPair {
            filter,
            a: Netns::new(&format!("{prefix}-{tag}a")),
            router: Netns::new(&format!("{prefix}-{tag}r")),
            b: Netns::new(&format!("{prefix}-{tag}b")),
            server: None,
        };
        let r = pair.router.name.as_str();
        for (pod, ip, dev) in [(&pair.a, A_IP, "ra"), (&pair.b, B_IP, "rb")] {
            let p = pod.name.as_str();
            ipn(
                p,
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", dev, "netns", r,
                ],
            )?;
            ipn(p, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            ipn(p, &["link", "set", "eth0", "up"])?;
            ipn(
                p,
                &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
            )?;
            ipn(
                p,
                &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
            )?;
            ipn(r, &["addr", "add", &format!("{GATEWAY}/32"), "dev", dev])?;
            ipn(r, &["link", "set", dev, "up"])?;
            ipn(r, &["route", "add", &format!("{ip}/32"), "dev", dev])?;
        }
        sysctl_in(r, &["net.ipv4.ip_forward=1"])?;
        client_sysctls(&pair.a.name)?;
        Ok(pair)
    }

    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints {
            client_netns: self.a.name.clone(),
            server: SocketAddr::new(B_IP.parse().unwrap(), PORT),
        }
    }

    pub(crate) async fn start_server(&mut self, cpu: usize) -> anyhow::Result<()> {
        self.server = Some(RrServer::start(&self.b.name, cpu, &self.endpoints()).await?);
        Ok(())
    }

    /// Installs N rules / set elements in the router, replacing what was there; returns the
    /// time the load took.
    pub(crate) async fn install(&self, n: usize, prefix_len: u8) -> anyhow::Result<f64> {
        match self.filter {
            Filter::None => Ok(0.0),
            Filter::IptablesLegacy | Filter::IptablesNft => {
                let mut text = String::with_capacity(40 * n + 200);
                text.push_str(
                    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
                );
                for i in 0..n {
                    let _ = writeln!(text, "-A FORWARD -s {} -j DROP", peer_cidr(i, prefix_len));
                }
                text.push_str("-A FORWARD -j ACCEPT\nCOMMIT\n");
                let program = if self.filter == Filter::IptablesLegacy {
                    "iptables-legacy-restore"
                } else {
                    "iptables-nft-restore"
                };
                timed_in(&self.router, program, &[], &text).await
            }
            Filter::NftSet => {
                let mut text = String::with_capacity(18 * n + 300);
                // Declare-then-delete makes the load replace an earlier table atomically.
                text.push_str("table ip kbench\ndelete table ip kbench\ntable ip kbench {\n  set peers {\n    type ipv4_addr\n");
                if n > 0 {
                    text.push_str("    elements = { ");
                    for i in 0..n {
                        if i > 0 {
                            text.push_str(", ");
                        }
                        let _ = write!(text, "{}", peer(i, 32).0);
                    }
                    text.push_str(" }\n");
                }
                text.push_str("  }\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    ip saddr @peers drop\n  }\n}\n");
                timed_in(&self.router, "nft", &["-f", "-"], &text).await
            }
        }
    }

    /// Adds then removes one rule / element at the current N; returns (add, remove) seconds.
    pub(crate) async fn update_once(&self) -> anyhow::Result<(f64, f64)> {
        let peer = format!("{EXTRA_PEER}/32");
        match self.filter {
            Filter::None => Ok((0.0, 0.0)),
            Filter::IptablesLegacy | Filter::IptablesNft => {
                let program = if self.filter == Filter::IptablesLegacy {
                    "iptables-legacy"
                } else {
                    "iptables-nft"
                };
                let add = timed_in(
                    &self.router,
                    program,
                    &["-A", "FORWARD", "-s", &peer, "-j", "DROP"],
                    "",
                )
                .await?;
                let del = timed_in(
                    &self.router,
                    program,
                    &["-D", "FORWARD", "-s", &peer, "-j", "DROP"],
                    "",
                )
                .await?;
                Ok((add, del))
            }
            Filter::NftSet => {
                let element = format!("{{ {EXTRA_PEER} }}");
                let add = timed_in(
                    &self.router,
                    "nft",
                    &["add", "element", "ip", "kbench", "peers", &element],
                    "",
                )
                .await?;
                let del = timed_in(
                    &self.router,
                    "nft",
                    &["delete", "element", "ip", "kbench", "peers", &element],
                    "",
                )
                .await?;
                Ok((add, del))
            }
        }
    }
}
