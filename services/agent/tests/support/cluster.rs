//! Two (or more) test nodes on an underlay, for the kernel tests of the datapath between nodes
//! (issue #13): an underlay namespace holding a bridge (192.0.2.0/24, 2001:db8::/64), each
//! node a namespace on it with its own datapath (loaded through the library as the agent
//! does, pins in a node directory of its own), its pods, and — as the control plane will
//! install them — its ipcache entries of the other nodes and their pods, and its routes to
//! the other nodes' pod CIDRs: via `kino_vxlan` with the tunnel MTU in tunnel mode, via the
//! other node's underlay address in native mode. Everything is removed by guards on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use kino_agent::datapath::ipcache::{IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD};
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::{Datapath, Hook, HookAttachment, IpPrefix, IpcacheEntry, RoutingConfig};
use kino_agent::devices::{
    NodeDevicesConfig, NodeIpv6Config, VXLAN_DEVICE, VxlanConfig, ensure_node_devices,
    ensure_node_ipv6, ensure_vxlan,
};
use kino_agent::endpoint::{EndpointSpec, VethRequest, create_endpoint};
use kino_agent::netlink::Netlink;

use super::{Netns, Pins, Pod, World, in_netns, run_ok};

/// How the test cluster carries pod traffic between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// VXLAN through `kino_vxlan`.
    Tunnel,
    /// Routes via the other node's underlay address.
    Native,
}

/// The underlay: a namespace with a bridge every node (and any fake sender) is plugged into.
pub struct Underlay {
    /// Its namespace.
    pub ns: Netns,
}

impl Underlay {
    /// The bridge namespace of `world`.
    pub fn new(world: &World) -> Self {
        let ns = world.netns("ul");
        ns.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.exec_ok(&["ip", "link", "set", "br0", "up"]);
        Underlay { ns }
    }

    /// Plugs the namespace `into` into the bridge as its `eth0` with `ipv4`/24 (and `ipv6`/64
    /// when given); `port` names the bridge's side.
    pub fn plug(&self, into: &Netns, port: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) {
        run_ok(&[
            "ip",
            "-n",
            &self.ns.name,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &into.name,
        ]);
        self.ns
            .exec_ok(&["ip", "link", "set", port, "master", "br0", "up"]);
        into.exec_ok(&["ip", "addr", "add", &format!("{ipv4}/24"), "dev", "eth0"]);
        if let Some(ipv6) = ipv6 {
            into.exec_ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ipv6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        into.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    }
}

/// The addresses of node `i` (0, 1, …): underlay 192.0.2.(i+1) and 2001:db8::(i+1), pod
/// CIDRs 10.244.i.0/24 (gateway .1) and fd00:244:i::/120 (gateway ::1).
#[derive(Clone, Copy, Debug)]
pub struct NodeAddresses {
    /// The node's index.
    pub i: u8,
}

impl NodeAddresses {
    /// The underlay IPv4 address.
    pub fn underlay(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, self.i + 1)
    }

    /// The underlay IPv6 address.
    pub fn underlay6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(self.i) + 1)
    }

    /// The pods' IPv4 gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.i, 1)
    }

    /// The pods' IPv6 gateway.
    pub fn gateway6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x244, u16::from(self.i), 0, 0, 0, 0, 1)
    }

    /// The IPv4 pod CIDR.
    pub fn pod_cidr(&self) -> IpPrefix {
        IpPrefix::new(Ipv4Addr::new(10, 244, self.i, 0).into(), 24).expect("cidr")
    }

    /// The IPv6 pod CIDR.
    pub fn pod_cidr6(&self) -> IpPrefix {
        IpPrefix::new(
            Ipv6Addr::new(0xfd00, 0x244, u16::from(self.i), 0, 0, 0, 0, 0).into(),
            120,
        )
        .expect("cidr")
    }

    /// Pod `k`'s IPv4 address: 10.244.i.(10+k).
    pub fn pod_ip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.i, 10 + k)
    }

    /// Pod `k`'s IPv6 address: fd00:244:i::(10+k) (hex digits of the decimal).
    pub fn pod_ip6(&self, k: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x244,
            u16::from(self.i),
            0,
            0,
            0,
            0,
            10 + u16::from(k),
        )
    }
}

/// A pod of a test node: its traffic helpers ([`Pod`]) and its IPv6 address.
pub struct NodePod {
    /// Namespace, IPv4 address, endpoint id, identity (and ping/TCP helpers).
    pub pod: Pod,
    /// Its IPv6 address.
    pub ip6: Ipv6Addr,
    _ns: Netns,
}

/// What a pod of a test node is.
#[derive(Clone, Copy, Debug)]
pub struct PodSpec {
    /// Its security identity.
    pub identity: u32,
    /// Its MTU (both ends of its veth), the kernel's default when `None`.
    pub mtu: Option<u32>,
}

impl PodSpec {
    /// A pod of identity `identity` with the default MTU.
    pub fn identity(identity: u32) -> Self {
        PodSpec {
            identity,
            mtu: None,
        }
    }
}

/// A node of the test cluster: its namespace on the underlay, its loaded datapath (the map
/// handles stay usable from any thread), its pods, its pins (removed on drop).
pub struct Node {
    /// Its addresses.
    pub addresses: NodeAddresses,
    /// Its pods, in the order asked.
    pub pods: Vec<NodePod>,
    /// Its datapath.
    pub datapath: Datapath,
    /// `kino_vxlan`'s ifindex in tunnel mode.
    pub vxlan_ifindex: Option<u32>,
    /// What attaching the device programs did: the overlay's on `kino_vxlan` (tunnel mode),
    /// `from_netdev` on the underlay's `eth0` (native mode).
    pub overlay: Vec<HookAttachment>,
    /// Its namespace.
    pub ns: Netns,
    _pins: Pins,
}

impl Node {
    /// Node `i` of `world` on `underlay` in `mode`, with a pod per spec. Its routing is
    /// configured, its own addresses are in its ipcache as the agent puts them; the other
    /// nodes are made known by [`connect`].
    pub fn new(world: &World, underlay: &Underlay, i: u8, mode: Mode, specs: &[PodSpec]) -> Self {
        let addresses = NodeAddresses { i };
        let pins = Pins {
            node: format!("{}-n{i}", world.node),
        };
        let ns = world.netns(&format!("n{i}"));
        underlay.plug(
            &ns,
            &format!("p{i}"),
            addresses.underlay(),
            Some(addresses.underlay6()),
        );
        let pods: Vec<NodePod> = specs
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                let k = k as u8;
                let pod_ns = world.netns(&format!("n{i}p{k}"));
                NodePod {
                    pod: Pod {
                        netns: pod_ns.path(),
                        ns_name: pod_ns.name.clone(),
                        container_id: format!("{}-n{i}-container-{k}", world.prefix),
                        ip: addresses.pod_ip(k),
                        id: 100 + u32::from(k),
                        identity: spec.identity,
                    },
                    ip6: addresses.pod_ip6(k),
                    _ns: pod_ns,
                }
            })
            .collect();
        let endpoints: Vec<EndpointSpec> = pods
            .iter()
            .zip(specs)
            .map(|(p, spec)| endpoint_spec(&addresses, p, spec.mtu))
            .collect();
        let node_name = pins.node.clone();
        let (datapath, vxlan_ifindex, overlay) = in_netns(&ns.path(), move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(set_up_node(node_name, addresses, mode, endpoints))
        });
        Node {
            addresses,
            pods,
            datapath,
            vxlan_ifindex,
            overlay,
            ns,
            _pins: pins,
        }
    }

    /// Pod `k`.
    pub fn pod(&self, k: usize) -> &Pod {
        &self.pods[k].pod
    }

    /// Pod `k`'s IPv6 address.
    pub fn pod6(&self, k: usize) -> Ipv6Addr {
        self.pods[k].ip6
    }

    /// Adds (or replaces) an ipcache entry.
    pub fn ipcache(&mut self, prefix: IpPrefix, identity: u32, tunnel: Option<IpAddr>) {
        let entry = IpcacheEntry {
            prefix,
            identity,
            tunnel_endpoint: tunnel,
        };
        self.datapath
            .ipcache_mut()
            .upsert(&entry)
            .unwrap_or_else(|e| panic!("ipcache entry {prefix}: {e}"));
    }

    /// Runs a command in the node's namespace that must succeed.
    pub fn exec_ok(&self, args: &[&str]) {
        self.ns.exec_ok(args);
    }
}

/// Makes `node` know `other` as the control plane will: the other node's underlay addresses
/// as remote-node, its pods' addresses with their identities and its pod CIDRs as world, each
/// with the other node (its underlay IPv4 address) as tunnel endpoint; and routes to its pod
/// CIDRs — via `kino_vxlan` with the tunnel MTU and the gateway as source in tunnel mode, via
/// its underlay addresses in native mode.
pub fn connect(node: &mut Node, other: &Node, mode: Mode) {
    let peer = other.addresses;
    let tunnel = Some(IpAddr::from(peer.underlay()));
    node.ipcache(
        IpPrefix::host(peer.underlay().into()),
        IDENTITY_REMOTE_NODE,
        None,
    );
    node.ipcache(
        IpPrefix::host(peer.underlay6().into()),
        IDENTITY_REMOTE_NODE,
        None,
    );
    for p in &other.pods {
        node.ipcache(IpPrefix::host(p.pod.ip.into()), p.pod.identity, tunnel);
        node.ipcache(IpPrefix::host(p.ip6.into()), p.pod.identity, tunnel);
    }
    node.ipcache(peer.pod_cidr(), IDENTITY_WORLD, tunnel);
    node.ipcache(peer.pod_cidr6(), IDENTITY_WORLD, tunnel);
    let own = node.addresses;
    let (cidr, cidr6) = (peer.pod_cidr().to_string(), peer.pod_cidr6().to_string());
    match mode {
        Mode::Tunnel => {
            let mtu = VxlanConfig::default().mtu.to_string();
            let (src, src6) = (own.gateway().to_string(), own.gateway6().to_string());
            node.exec_ok(&[
                "ip",
                "route",
                "add",
                &cidr,
                "dev",
                VXLAN_DEVICE,
                "src",
                &src,
                "mtu",
                &mtu,
            ]);
            node.exec_ok(&[
                "ip",
                "-6",
                "route",
                "add",
                &cidr6,
                "dev",
                VXLAN_DEVICE,
                "src",
                &src6,
                "mtu",
                &mtu,
            ]);
        }
        Mode::Native => {
            let (via, via6) = (peer.underlay().to_string(), peer.underlay6().to_string());
            node.exec_ok(&["ip", "route", "add", &cidr, "via", &via]);
            node.exec_ok(&["ip", "-6", "route", "add", &cidr6, "via", &via6]);
        }
    }
}

/// Two nodes in `mode`, each with a pod per spec, knowing each other.
pub fn two_nodes(
    world: &World,
    underlay: &Underlay,
    mode: Mode,
    pods: [&[PodSpec]; 2],
) -> (Node, Node) {
    let mut a = Node::new(world, underlay, 0, mode, pods[0]);
    let mut b = Node::new(world, underlay, 1, mode, pods[1]);
    connect(&mut a, &b, mode);
    connect(&mut b, &a, mode);
    (a, b)
}

/// In the node's namespace: its devices (both families), its datapath, its routing (in
/// tunnel mode `kino_vxlan` with the overlay programs), its own addresses in the ipcache as
/// the agent puts them (gateways and underlay addresses as host), its pods. Strict reverse
/// path filtering, as on a careful host: the routes must be right for traffic to pass.
async fn set_up_node(
    node_name: String,
    addresses: NodeAddresses,
    mode: Mode,
    endpoints: Vec<EndpointSpec>,
) -> (Datapath, Option<u32>, Vec<HookAttachment>) {
    for conf in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "1")
            .expect("rp_filter");
    }
    let netlink = Netlink::connect().expect("netlink in the node");
    ensure_node_devices(
        &netlink,
        &NodeDevicesConfig {
            gateway: addresses.gateway(),
            pod_cidr: Some(cidr4(addresses.pod_cidr())),
        },
    )
    .await
    .expect("node devices");
    ensure_node_ipv6(
        &netlink,
        &NodeIpv6Config {
            gateway: addresses.gateway6(),
            pod_cidr: Some(
                addresses
                    .pod_cidr6()
                    .to_string()
                    .parse()
                    .expect("IPv6 cidr"),
            ),
        },
    )
    .await
    .expect("node IPv6");
    let mut datapath =
        Datapath::load(Path::new(DEFAULT_PIN_ROOT), &node_name).expect("loading the datapath");
    let (vxlan_ifindex, overlay) = match mode {
        Mode::Tunnel => {
            let ifindex = ensure_vxlan(&netlink, &VxlanConfig::default())
                .await
                .expect("kino_vxlan");
            let overlay = datapath
                .attach_device(&netlink, VXLAN_DEVICE, ifindex, &Hook::OVERLAY)
                .await
                .expect("overlay programs");
            datapath
                .set_node_config(RoutingConfig::Tunnel {
                    vxlan_ifindex: ifindex,
                })
                .expect("node config");
            (Some(ifindex), overlay)
        }
        Mode::Native => {
            let eth0 = netlink
                .link_by_name("eth0")
                .await
                .expect("listing links")
                .expect("the underlay's eth0");
            let netdev = datapath
                .attach_device(&netlink, "eth0", eth0.index, &Hook::NETDEV)
                .await
                .expect("from_netdev on eth0");
            datapath
                .set_node_config(RoutingConfig::Native)
                .expect("node config");
            (None, netdev)
        }
    };
    for own in [
        IpAddr::from(addresses.gateway()),
        addresses.gateway6().into(),
        addresses.underlay().into(),
        addresses.underlay6().into(),
    ] {
        datapath
            .ipcache_mut()
            .upsert(&IpcacheEntry::new(IpPrefix::host(own), IDENTITY_HOST))
            .expect("host entry");
    }
    for spec in &endpoints {
        create_endpoint(&netlink, &mut datapath, spec)
            .await
            .unwrap_or_else(|e| panic!("creating endpoint {}: {e}", spec.id));
    }
    (datapath, vxlan_ifindex, overlay)
}

fn cidr4(prefix: IpPrefix) -> kino_agent::devices::Ipv4Cidr {
    prefix.to_string().parse().expect("IPv4 cidr")
}

/// The endpoint of pod `p` of the node at `addresses`, dual-stack.
fn endpoint_spec(addresses: &NodeAddresses, p: &NodePod, mtu: Option<u32>) -> EndpointSpec {
    EndpointSpec {
        id: p.pod.id,
        identity: p.pod.identity,
        veth: VethRequest {
            container_id: p.pod.container_id.clone(),
            ifname: "eth0".to_owned(),
            netns: p.pod.netns.clone(),
            ipv4: p.pod.ip,
            ipv6: Some(p.ip6),
            gateway_v4: addresses.gateway(),
            gateway_v6: Some(addresses.gateway6()),
            mac: None,
            mtu,
        },
    }
}
