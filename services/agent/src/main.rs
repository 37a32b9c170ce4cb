//! kino-agent: reads its config, brings the node up (registration, pod CIDR from IPAM,
//! kino_host/kino_net, eBPF datapath, adoption of the previous run's endpoints) and serves
//! the local API (`kino.agent.v1`, unix socket) and the flow observer (`kino.flow.v1`, TCP).

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kino_agent::clients::endpoint_records::EndpointRecordClient;
use kino_agent::clients::ipam::IpamClient;
use kino_agent::clients::policy_compiler::PolicyCompilerClient;
use kino_agent::cluster::config::{
    ClusterConfig, RoutingMode, check_node_ips, detect_node_ips, devices_of, mtu_of,
    shadowed_by_pod_cidr,
};
use kino_agent::cluster::masquerade::MasqueradeSpec;
use kino_agent::cluster::nodes::parse_prefix;
use kino_agent::cluster::routes::LocalRouting;
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::{Datapath, RoutingConfig};
use kino_agent::devices::{
    DEFAULT_TUNNEL_PORT, HOST_DEVICE, Ipv4Cidr, Ipv6Cidr, NET_DEVICE, NodeDevicesConfig,
    NodeIpv6Config, VXLAN_DEVICE, enable_ip_forwarding, ensure_node_devices, ensure_node_ipv6,
    remove_vxlan, tunnel_mtu,
};
use kino_agent::endpoint::manager::{EndpointManager, ManagerConfig, NodeNetwork};
use kino_agent::endpoint::peers::Peers;
use kino_agent::flows::FlowObserver;
use kino_agent::flows::directory::AgentDirectory;
use kino_agent::grpc::agent::{AgentGrpc, AgentInfo};
use kino_agent::grpc::authorization;
use kino_agent::grpc::flow::FlowGrpc;
use kino_agent::netlink::{LinkAddress, LinkDetails, Netlink};
use kino_agent::node::{parse_socket_path, resolve_node_name};
use kino_agent::policy_sync;
use kino_agent::registration::{NodeSpec, Registration};
use kino_api::agent::NodeDevice;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::ipam::{AllocateNodeCidrsRequest, NodeAllocation};
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::service::GetServiceNetworkRequest;
use kino_api::service::load_balancing_service_client::LoadBalancingServiceClient;
use kino_api::types::IpFamily;
use kino_service_kit::principal::Role;
use kino_service_kit::records::RecordClient;
use kino_service_kit::{ClientTlsArgs, ListenAddr, Listener, PkiArgs, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;
use kino_telemetry::metrics::MetricsAddress;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The per-node agent: eBPF datapath, endpoints, flow observer.
///
/// The --tls-* flags apply to the flow observer (mTLS with <pki-dir>/agent.crt by default);
/// the local API socket is protected by its file mode (0600) instead. The same certificate
/// (Subject O = agent, CN = kino-agent:<node>) identifies the agent to IPAM, the
/// policy-compiler and the datastore-gateway.
#[derive(Parser, Debug)]
#[command(name = "kino-agent", version, about, long_about)]
struct Config {
    /// Name of this node (a lowercase DNS name); defaults to the hostname.
    #[arg(long, env = "KINO_NODE_NAME")]
    node_name: Option<String>,
    /// Unix socket of the local API (used by kino-cni and kino): /path or unix:/path.
    #[arg(long, env = "KINO_AGENT_SOCKET", default_value = kino_agent::DEFAULT_SOCKET)]
    socket: String,
    /// Address of the flow observer: host:port (or unix:/path).
    #[arg(long, env = "KINO_FLOW_LISTEN", default_value = "127.0.0.1:7404")]
    flow_listen: ListenAddr,
    /// Flows the observer keeps in memory (the ring `kino observe --last` reads).
    #[arg(long, env = "KINO_FLOW_RING_CAPACITY", default_value_t = kino_agent::flows::observer::DEFAULT_CAPACITY)]
    flow_ring_capacity: usize,
    /// The datastore-gateway: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_DATASTORE", default_value = "127.0.0.1:7401")]
    datastore: String,
    /// The IPAM service: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_IPAM", default_value = "127.0.0.1:7402")]
    ipam: String,
    /// The policy-compiler: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_POLICY", default_value = "127.0.0.1:7403")]
    policy: String,
    /// IPAM pool of this node's pods.
    #[arg(long, env = "KINO_IPAM_POOL", default_value = "default")]
    ipam_pool: String,
    /// Where endpoint checkpoints are kept (adopted after a restart).
    #[arg(
        long,
        env = "KINO_AGENT_STATE_DIR",
        default_value = "/var/lib/kino/agent"
    )]
    state_dir: PathBuf,
    /// bpffs directory under which this node's maps and links are pinned (<root>/<node>/).
    #[arg(long, env = "KINO_BPF_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    bpf_pin_root: PathBuf,
    /// TTL of the node's liveness lease, in seconds: the node shows as unreachable this long
    /// after the agent stops renewing it (its NodeHealth record goes; its Node and Endpoint
    /// records and its pods' addresses stay until `kino node delete`).
    #[arg(long, env = "KINO_NODE_LEASE_TTL", default_value_t = 30)]
    node_lease_ttl: i64,
    /// MTU of both ends of every endpoint veth, unless the CNI network config sets "mtu"
    /// (68..=65535; at least 1280 when pods get IPv6). Default: the underlay's MTU − 50 in
    /// tunnel mode (what fits into the VXLAN tunnel), the underlay's in native mode, 1500
    /// on a node without an underlay address.
    #[arg(long, env = "KINO_ENDPOINT_MTU")]
    endpoint_mtu: Option<u32>,
    /// How pod traffic reaches other nodes: `tunnel` (VXLAN through kino_vxlan, the source
    /// identity in the VNI) or `native` (routes to other nodes' pod CIDRs via their
    /// underlay addresses; the nodes share an L2 segment).
    #[arg(long, env = "KINO_ROUTING_MODE", default_value = "tunnel")]
    routing_mode: RoutingMode,
    /// The node's underlay address, once per family (comma-separated in the environment):
    /// other nodes' tunnel remote / next hop for this node's pods. Default: the first
    /// global address of each family on a link that is not the agent's own.
    #[arg(long = "node-ip", env = "KINO_NODE_IP", value_delimiter = ',')]
    node_ip: Vec<std::net::IpAddr>,
    /// UDP port of kino_vxlan (tunnel mode).
    #[arg(long, env = "KINO_TUNNEL_PORT", default_value_t = DEFAULT_TUNNEL_PORT)]
    tunnel_port: u16,
    /// Masquerade traffic from this node's pods to outside the cluster (not to a pod CIDR,
    /// a node address or a --native-routing-cidr) to the node's address: --masquerade=false
    /// turns it off.
    #[arg(long, env = "KINO_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    masquerade: bool,
    /// A destination range reachable without masquerading besides the cluster's pod CIDRs
    /// and node addresses (Cilium's --ipv4-native-routing-cidr); repeatable.
    #[arg(
        long = "native-routing-cidr",
        env = "KINO_NATIVE_ROUTING_CIDR",
        value_delimiter = ','
    )]
    native_routing_cidr: Vec<String>,
    /// Seconds between two passes of the route reconciler, which repairs routes to other
    /// nodes' pods deleted or changed behind the agent's back (it also runs whenever a node
    /// comes, changes or goes).
    #[arg(long, env = "KINO_ROUTE_RECONCILE_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    route_reconcile_interval: u64,
    /// Seconds between two passes of the conntrack GC, which removes expired entries from
    /// kino_ct (the datapath ignores them, but they take LRU slots); 0 turns it off.
    #[arg(long, env = "KINO_CONNTRACK_GC_INTERVAL", default_value_t = 30)]
    conntrack_gc_interval: u64,
    /// Connections kino_ct holds (both enforcement points of a connection take one each;
    /// preallocated, ~150 bytes per entry). When it is full the least recently used entry
    /// goes; under very high connection churn (tens of thousands of new connections per
    /// second) that can be a young one, and a reply of it is then looked up as new — raise
    /// it for such nodes. Changing it recreates the map (running connections are looked up
    /// as new once).
    #[arg(
        long,
        env = "KINO_CONNTRACK_MAX",
        default_value_t = kino_agent::datapath::conntrack::CT_MAX_ENTRIES,
        value_parser = clap::value_parser!(u32).range(1024..=16_777_216)
    )]
    conntrack_max: u32,
    /// Translate connects to services at the socket (cgroup programs at --cgroup-root):
    /// --socket-lb=false turns service load balancing off on this node.
    #[arg(long, env = "KINO_SOCKET_LB", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    socket_lb: bool,
    /// The cgroup v2 directory the socket programs are attached to (every socket below it
    /// is load-balanced); default: the cgroup2 mount.
    #[arg(long, env = "KINO_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// How a service's backend is chosen: random (weighted) or maglev (consistent hashing).
    #[arg(long, env = "KINO_LB_ALGORITHM", default_value = "random")]
    lb_algorithm: kino_agent::datapath::lb::Algorithm,
    /// Slots of each frontend's Maglev table (a prime, 251..=65521): 997 keeps 10 000
    /// services' tables at 41 MB; larger tables spread big services more evenly.
    #[arg(long, env = "KINO_MAGLEV_TABLE_SIZE", default_value_t = kino_agent::datapath::lb::maglev::DEFAULT_TABLE_SIZE)]
    maglev_table_size: u32,
    /// Where to serve Prometheus metrics (`GET /metrics`): host:port, :port, or off.
    #[arg(
        long,
        env = "KINO_AGENT_METRICS_ADDRESS",
        default_value = "127.0.0.1:9404"
    )]
    metrics_address: MetricsAddress,
    #[command(flatten)]
    pki: PkiArgs,
    #[command(flatten)]
    upstream_tls: ClientTlsArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// Fails start-up when the agent's client certificate names another node: the gateway and
/// IPAM would refuse every write for this node, far from the cause.
fn check_certificate_names_node(tls: &ClientTlsArgs, node: &str) -> anyhow::Result<()> {
    let Some(principal) = tls.client_principal()? else {
        return Ok(());
    };
    let cert = tls
        .upstream_tls_cert
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match (principal.role, principal.node()) {
        (Some(Role::Agent), Some(named)) if named == node => Ok(()),
        (Some(Role::Agent), Some(named)) => anyhow::bail!(
            "the agent certificate {cert} is for node {named:?}, but this agent is node {node:?}: issue one with `kino pki issue agent --node {node}` or give --node-name {named}"
        ),
        _ => anyhow::bail!(
            "{cert} is not an agent certificate (Subject O=agent, CN=kino-agent:{node}; it has CN {:?}, O {:?}): issue one with `kino pki issue agent --node {node}`",
            principal.name,
            principal.organizations
        ),
    }
}

/// Retries `attempt` every second (logging why) until it succeeds: peers started at the
/// same time as the agent may not answer yet.
async fn retry<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                tries += 1;
                if tries == 1 || tries.is_multiple_of(10) {
                    tracing::warn!(error = %e, tries, "{what} failed; retrying every second");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The node's IPv4 block from its IPAM allocation.
fn ipv4_block(allocation: &NodeAllocation) -> anyhow::Result<(Ipv4Cidr, std::net::Ipv4Addr)> {
    let block = allocation
        .cidrs
        .iter()
        .find(|c| c.family == IpFamily::Ipv4 as i32)
        .with_context(|| {
            format!(
                "IPAM gave node {} no IPv4 block in pool {}; the pool needs IPv4",
                allocation.node, allocation.pool
            )
        })?;
    let cidr: Ipv4Cidr = block
        .cidr
        .parse()
        .map_err(|e: String| anyhow::anyhow!("IPAM block {}: {e}", block.cidr))?;
    let gateway = block
        .gateway
        .parse()
        .with_context(|| format!("IPAM gateway {:?}", block.gateway))?;
    Ok((cidr, gateway))
}

/// The node's IPv6 block from its IPAM allocation, when the pool is dual-stack.
fn ipv6_block(allocation: &NodeAllocation) -> anyhow::Result<Option<NodeIpv6Config>> {
    let Some(block) = allocation
        .cidrs
        .iter()
        .find(|c| c.family == IpFamily::Ipv6 as i32)
    else {
        return Ok(None);
    };
    let cidr: Ipv6Cidr = block
        .cidr
        .parse()
        .map_err(|e: String| anyhow::anyhow!("IPAM block {}: {e}", block.cidr))?;
    let gateway = block
        .gateway
        .parse()
        .with_context(|| format!("IPAM IPv6 gateway {:?}", block.gateway))?;
    Ok(Some(NodeIpv6Config {
        gateway,
        pod_cidr: Some(cidr),
    }))
}

/// The node's cluster settings: the flags, and the underlay found on its links when
/// `--node-ip` is not given.
fn cluster_config(
    config: &Config,
    links: &[LinkDetails],
    addresses: &[LinkAddress],
) -> anyhow::Result<ClusterConfig> {
    let node_ips = if config.node_ip.is_empty() {
        detect_node_ips(links, addresses)
    } else {
        config.node_ip.clone()
    };
    if node_ips.is_empty() {
        tracing::warn!(
            "no underlay address (--node-ip, or a global address on a link of the node): other nodes cannot reach this node's pods"
        );
    }
    let underlay_mtu = node_ips
        .first()
        .and_then(|ip| mtu_of(links, addresses, *ip));
    // The tunnel's outer header is of the underlay's first family (IPv4 when it has one).
    let ipv6_underlay = node_ips.first().is_some_and(std::net::IpAddr::is_ipv6);
    let route_mtu = match (config.routing_mode, underlay_mtu) {
        (_, None) => kino_agent::endpoint::manager::DEFAULT_MTU,
        (RoutingMode::Tunnel, Some(mtu)) => tunnel_mtu(mtu, ipv6_underlay),
        (RoutingMode::Native, Some(mtu)) => mtu,
    };
    let underlay_devices = devices_of(links, addresses, &node_ips);
    let cluster = ClusterConfig {
        underlay_devices,
        mode: config.routing_mode,
        node_ips,
        tunnel_port: config.tunnel_port,
        route_mtu,
        masquerade: config.masquerade,
        native_routing_cidrs: config.native_routing_cidr.clone(),
    };
    tracing::info!(
        mode = %cluster.mode,
        node_ips = ?cluster.node_ips,
        route_mtu = cluster.route_mtu,
        masquerade = cluster.masquerade,
        "cluster settings"
    );
    Ok(cluster)
}

/// What keeps the node's routing devices in place for the route reconciler: kino_vxlan and
/// its programs (tunnel mode), from_netdev on the underlay devices (native mode).
fn device_keeper(
    manager: &Arc<EndpointManager>,
    cluster: &ClusterConfig,
) -> kino_agent::cluster::routes::DeviceKeeper {
    let manager = manager.clone();
    let vxlan = cluster.vxlan();
    let mode = cluster.mode;
    let underlay: Arc<[String]> = cluster.underlay_devices.clone().into();
    Arc::new(move || {
        let (manager, underlay) = (manager.clone(), underlay.clone());
        Box::pin(async move {
            match mode {
                RoutingMode::Tunnel => manager.ensure_tunnel(&vxlan).await.map(Some),
                RoutingMode::Native => manager.ensure_native(&underlay).await.map(|()| None),
            }
            .map_err(|e| e.to_string())
        })
    })
}

/// The socket load balancer loaded beside the datapath in `pin_dir` and attached
/// (`--socket-lb`), or `None` when turned off (its links of an earlier run are removed).
fn start_socket_lb(
    config: &Config,
    pin_dir: &std::path::Path,
) -> anyhow::Result<
    Option<(
        kino_agent::datapath::lb::SockLb,
        kino_agent::datapath::lb::LbState,
        kino_agent::datapath::lb::NetnsMap,
    )>,
> {
    if !config.socket_lb {
        kino_agent::datapath::lb::sock::detach(pin_dir)?;
        return Ok(None);
    }
    let cgroup = match &config.cgroup_root {
        Some(root) => root.clone(),
        None => kino_agent::datapath::lb::sock::cgroup2_mount()?,
    };
    let lb_config = kino_agent::datapath::lb::LbConfig {
        algorithm: config.lb_algorithm,
        maglev_table_size: config.maglev_table_size,
    };
    kino_agent::services::load_socket_lb(pin_dir, &cgroup, lb_config)
        .map(Some)
        .map_err(|e| {
            anyhow::anyhow!(
                "socket load balancing (--cgroup-root {}): {e}",
                cgroup.display()
            )
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Checkpoints and anything else written are private.
    kino_service_kit::make_new_files_private();
    let config = Config::parse();
    let _telemetry = kino_telemetry::init("kino-agent", &config.log)?;
    let node = resolve_node_name(config.node_name.as_deref())?;
    let identity = Role::Agent.as_str();
    let upstream_tls = config
        .upstream_tls
        .clone()
        .with_pki_defaults(&config.pki, identity);
    check_certificate_names_node(&upstream_tls, &node)?;
    let socket = parse_socket_path(&config.socket)?;
    anyhow::ensure!(
        (5..=3600).contains(&config.node_lease_ttl),
        "--node-lease-ttl {} must be between 5 and 3600 seconds",
        config.node_lease_ttl
    );
    // Checkpoints name every pod: readable by root only, also when an older agent wrote them.
    std::fs::create_dir_all(&config.state_dir)
        .and_then(|()| {
            std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        })
        .with_context(|| {
            format!(
                "making the state directory {} private (--state-dir)",
                config.state_dir.display()
            )
        })?;
    if let Some(mtu) = config.endpoint_mtu {
        kino_agent::endpoint::veth::validate_mtu(mtu, false)
            .map_err(|e| anyhow::anyhow!("--endpoint-mtu (KINO_ENDPOINT_MTU): {e}"))?;
    }
    check_node_ips(&config.node_ip).map_err(anyhow::Error::msg)?;
    kino_agent::datapath::lb::maglev::validate_table_size(config.maglev_table_size)?;
    for cidr in &config.native_routing_cidr {
        let parsed = if cidr.contains(':') {
            cidr.parse::<Ipv6Cidr>().map(|_| ())
        } else {
            cidr.parse::<Ipv4Cidr>().map(|_| ())
        };
        parsed.map_err(|e| {
            anyhow::anyhow!(
                "--native-routing-cidr {cidr:?} is invalid: {e}; give a prefix such as 10.0.0.0/16"
            )
        })?;
    }
    let connect = |flag: &str, target: &str| {
        kino_service_kit::connect_lazy(target, &upstream_tls)
            .with_context(|| format!("checking {flag} {target:?}"))
    };
    let datastore_channel = connect("--datastore", &config.datastore)?;
    let datastore = DatastoreServiceClient::new(datastore_channel.clone());
    let ipam_channel = connect("--ipam", &config.ipam)?;
    let mut ipam = IpamServiceClient::new(ipam_channel.clone());
    // A snapshot of the policy stream carries every entry of the node's identities: far
    // more than tonic's default 4 MiB per message at 100 000 entries.
    let policy = PolicyServiceClient::new(connect("--policy", &config.policy)?)
        .max_decoding_message_size(1 << 30);

    // One signal handler for start-up and both servers, so a SIGTERM at any moment stops.
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        let _ = stop.send(true);
    });
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };

    let start_time = prost_types::Timestamp::from(std::time::SystemTime::now());
    let flow_observer = Arc::new(FlowObserver::new(
        &node,
        config.flow_ring_capacity,
        kino_agent::flows::observer::DEFAULT_FOLLOWER_BUFFER,
    ));
    let bring_up = async {
        // The node's pod CIDR: idempotent, so a restarted agent gets the same block.
        let allocation = retry("getting this node's pod CIDR from IPAM", || {
            let mut ipam = ipam.clone();
            let request = AllocateNodeCidrsRequest {
                node: node.clone(),
                pool: config.ipam_pool.clone(),
                ..Default::default()
            };
            async move { ipam.allocate_node_cidrs(request).await }
        })
        .await
        .into_inner()
        .allocation
        .context("IPAM returned no node allocation")?;
        let (pod_cidr, gateway) = ipv4_block(&allocation)?;
        let mut pod_cidrs: Vec<String> = allocation.cidrs.iter().map(|c| c.cidr.clone()).collect();
        tracing::info!(%node, %pod_cidr, %gateway, "pod CIDR allocated");

        let netlink = Netlink::connect().context("opening a netlink socket")?;
        let (links, own) = (netlink.links().await?, netlink.link_addresses().await?);
        let cluster = cluster_config(&config, &links, &own)?;
        // A pod CIDR over the node's own network would take its neighbours (its gateway,
        // say) away from it: refused for IPv4, IPv6 left out.
        if let Some(own) =
            shadowed_by_pod_cidr(pod_cidr.network.into(), pod_cidr.prefix_len, &links, &own)
        {
            anyhow::bail!(
                "IPAM gave node {node} the IPv4 pod CIDR {pod_cidr} (pool {}), which overlaps this node's own network ({own}): routing it to pods would cut the node off from it; give the pool IPv4 CIDRs this node does not use, or start the agent with --ipam-pool naming a pool that does not overlap",
                allocation.pool
            );
        }
        let mut ipv6 = ipv6_block(&allocation)?;
        if let Some(cidr) = ipv6.as_ref().and_then(|v6| v6.pod_cidr)
            && let Some(own) =
                shadowed_by_pod_cidr(cidr.network.into(), cidr.prefix_len, &links, &own)
        {
            tracing::warn!(
                pod_cidr = %cidr,
                pool = %allocation.pool,
                own,
                "the IPv6 pod CIDR overlaps this node's own network: pods get IPv4 only; give the pool IPv6 CIDRs this node does not use"
            );
            pod_cidrs.retain(|c| c.parse::<Ipv6Cidr>().ok() != Some(cidr));
            ipv6 = None;
        }
        let gateways: Vec<std::net::IpAddr> = std::iter::once(gateway.into())
            .chain(ipv6.as_ref().map(|v6| v6.gateway.into()))
            .collect();
        let published = NodeSpec {
            pod_cidrs: pod_cidrs.clone(),
            addresses: cluster.node_addresses(&gateways),
            routing: cluster.node_routing(),
        };
        let registration = retry("registering the node in the datastore", || {
            Registration::register(
                datastore.clone(),
                &node,
                config.node_lease_ttl,
                published.clone(),
            )
        })
        .await;
        enable_ip_forwarding()?;
        let devices = ensure_node_devices(
            &netlink,
            &NodeDevicesConfig {
                gateway,
                pod_cidr: Some(pod_cidr),
            },
        )
        .await?;
        // Dual-stack pool: IPv6 on kino_host too. A node that cannot (no IPv6 in its
        // kernel) still serves IPv4: its pods get IPv4 only.
        let gateway_v6 = match ipv6 {
            None => None,
            Some(ipv6) => match ensure_node_ipv6(&netlink, &ipv6).await {
                Ok(()) => {
                    tracing::info!(pod_cidr = ?ipv6.pod_cidr.map(|c| c.to_string()), gateway = %ipv6.gateway, "IPv6 pod CIDR set up");
                    Some(ipv6.gateway)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up IPv6 on {HOST_DEVICE}; pods get IPv4 only");
                    None
                }
            },
        };
        let capacities = kino_agent::datapath::MapCapacities {
            conntrack: config.conntrack_max,
            ..Default::default()
        };
        let mut datapath = Datapath::load_with(&config.bpf_pin_root, &node, capacities)
            .with_context(|| {
                format!(
                    "loading the eBPF datapath (pins under {})",
                    config.bpf_pin_root.display()
                )
            })?;
        // Native mode: no tunnel (a node switched from tunnel mode loses its device). Tunnel
        // mode's device and programs come with the endpoint manager, which owns the datapath
        // (`EndpointManager::ensure_tunnel`, below).
        if cluster.mode == RoutingMode::Native {
            if remove_vxlan(&netlink).await? {
                tracing::info!(
                    device = VXLAN_DEVICE,
                    "removed: native routing needs no tunnel"
                );
            }
            datapath
                .set_node_config(RoutingConfig::Native)
                .context("writing the datapath's routing mode")?;
        }
        let socket_lb = start_socket_lb(&config, datapath.pin_dir())?;
        let adoption = datapath.adoption().clone();
        if config.conntrack_gc_interval > 0 {
            // Its own handle on the pinned map: a pass never holds up endpoint changes.
            let conntrack = kino_agent::datapath::ConntrackMap::open_pinned(datapath.pin_dir())
                .context("opening the conntrack map for its GC")?;
            tokio::spawn(conntrack.gc_every(Duration::from_secs(config.conntrack_gc_interval)));
        }
        let pin_dir = datapath.pin_dir().to_owned();
        let datapath_detail = format!(
            "programs loaded, maps pinned at {} ({} maps reused, {} links adopted)",
            datapath.pin_dir().display(),
            adoption.maps_reused.len(),
            adoption.links_adopted.len()
        );
        let compiler = Arc::new(PolicyCompilerClient::new(policy.clone(), &config.policy));
        let peers = Peers {
            addresses: Arc::new(IpamClient::new(ipam.clone(), &config.ipam)),
            identities: compiler.clone(),
            policies: compiler,
            records: Arc::new(EndpointRecordClient::new(
                RecordClient::new(datastore_channel.clone()),
                &node,
                &config.datastore,
            )),
        };
        let manager = Arc::new(EndpointManager::new(
            ManagerConfig {
                node: node.clone(),
                pool: config.ipam_pool.clone(),
                mtu: config.endpoint_mtu.unwrap_or(cluster.route_mtu),
            },
            NodeNetwork {
                gateway_v4: gateway,
                gateway_v6,
                pod_cidrs: pod_cidrs.clone(),
            },
            peers,
            &config.state_dir.join(&node),
            netlink,
            datapath,
        )?);
        match cluster.mode {
            RoutingMode::Tunnel => {
                manager
                    .ensure_tunnel(&cluster.vxlan())
                    .await
                    .with_context(|| {
                        format!("setting up {VXLAN_DEVICE} and its overlay programs")
                    })?;
            }
            // Without host routing the stack forwards: a warning, and the reconciler retries.
            RoutingMode::Native => {
                if let Err(error) = manager.ensure_native(&cluster.underlay_devices).await {
                    tracing::warn!(%error, "host routing on the underlay is not set up yet");
                }
            }
        }
        let lb_state = socket_lb.map(|(sock, state, netns)| {
            manager.scope_sockets(netns);
            (sock, state)
        });
        let (adopted, removed) = manager.restore().await?;
        tracing::info!(adopted, removed, "endpoints of the previous run restored");
        // The other nodes: routes to their pods, masquerading of what leaves the cluster.
        let own_pod_cidrs: Vec<(std::net::IpAddr, u8)> =
            pod_cidrs.iter().filter_map(|c| parse_prefix(c)).collect();
        let cluster_nodes = kino_agent::cluster::start(
            RecordClient::new(datastore_channel.clone()),
            &node,
            LocalRouting {
                mode: cluster.mode,
                route_mtu: cluster.route_mtu,
                gateway_v4: Some(gateway),
                gateway_v6,
                own_pod_cidrs,
            },
            cluster.masquerade.then(|| MasqueradeSpec {
                own_pod_cidrs: pod_cidrs.clone(),
                own_addresses: cluster
                    .node_ips
                    .iter()
                    .copied()
                    .chain(gateways.iter().copied())
                    .collect(),
                native_routing_cidrs: cluster.native_routing_cidrs.clone(),
                tunnel_port: (cluster.mode == RoutingMode::Tunnel).then_some(cluster.tunnel_port),
            }),
            Duration::from_secs(config.route_reconcile_interval),
            Some(device_keeper(&manager, &cluster)),
        )
        .context("starting the route reconciler")?;
        // Services: the cluster's Service records into the load balancer's maps.
        let _sock_lb = match lb_state {
            Some((sock, state)) => {
                let ipam_channel = ipam_channel.clone();
                let network = async move {
                    retry("getting the service network from IPAM", || {
                        let mut client = LoadBalancingServiceClient::new(ipam_channel.clone());
                        async move {
                            kino_agent::services::network::from_answer(
                                client
                                    .get_service_network(GetServiceNetworkRequest {})
                                    .await
                                    .map(tonic::Response::into_inner),
                            )
                        }
                    })
                    .await
                };
                kino_agent::services::start(
                    RecordClient::new(datastore_channel.clone()),
                    Arc::new(tokio::sync::Mutex::new(state)),
                    network,
                    Duration::from_secs(config.route_reconcile_interval),
                )
                .context("starting the service follower")?;
                Some(sock)
            }
            None => None,
        };
        // Flows: the datapath's event ring, read and enriched for kino.flow.v1.
        let directory = Arc::new(AgentDirectory::new(
            manager.clone(),
            &pin_dir,
            policy.clone(),
            Some(cluster_nodes),
        ));
        kino_agent::flows::start(flow_observer.clone(), &pin_dir, directory)
            .context("starting the flow observer")?;
        // The compiler's policy for this node's endpoints, applied as it streams.
        tokio::spawn(policy_sync::run(
            manager.clone(),
            policy_sync::Peer {
                client: policy.clone(),
                target: config.policy.clone(),
            },
            policy_sync::Peer {
                client: datastore.clone(),
                target: config.datastore.clone(),
            },
        ));

        let reassert = manager.clone();
        tokio::spawn(registration.keep_alive(move || {
            let manager = reassert.clone();
            async move {
                match manager.reassert_all().await {
                    Ok(0) => {}
                    Ok(isolated) => tracing::error!(
                        isolated,
                        "endpoints isolated after the node registered again: their addresses belong to others now"
                    ),
                    Err(e) => tracing::warn!(error = %e, "re-publishing endpoints after registering again"),
                }
            }
        }));
        let device = |d: &kino_agent::netlink::LinkDetails, addresses: Vec<String>| NodeDevice {
            name: d.name.clone(),
            ifindex: d.index,
            mac: d.mac.to_string(),
            addresses,
        };
        let info = AgentInfo {
            devices: vec![
                device(
                    &devices.host,
                    std::iter::once(format!("{gateway}/32"))
                        .chain(gateway_v6.map(|g| format!("{g}/128")))
                        .collect(),
                ),
                device(&devices.net, Vec::new()),
            ],
            peers: HashMap::from([
                ("ipam".to_owned(), config.ipam.clone()),
                ("policy-compiler".to_owned(), config.policy.clone()),
                ("datastore-gateway".to_owned(), config.datastore.clone()),
            ]),
            datapath_detail,
            start_time: Some(start_time),
        };
        tracing::info!(
            %node,
            host = HOST_DEVICE,
            net = NET_DEVICE,
            "node devices and datapath ready"
        );
        kino_agent::metrics::install(manager.clone(), flow_observer.counters());
        anyhow::Ok(AgentGrpc::new(manager, info))
    };
    let api = tokio::select! {
        api = bring_up => api?,
        _ = stopped() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    // Nothing to flush: ipam's lazy channel stays usable for later calls.
    let _ = &mut ipam;

    // Bind both before serving either: a taken address fails start-up with nothing served.
    let api_listener = Listener::bind(&ListenAddr::Unix(socket)).await?;
    let flow_listener = Listener::bind(&config.flow_listen).await?;
    let _metrics = kino_telemetry::metrics::serve("kino-agent", config.metrics_address).await?;
    tracing::info!(%node, "kino-agent ready: serving the local API and the flow observer");
    let api = ServeSpec::on_listener("kino-agent", api_listener)
        .with_shutdown(stopped())
        .with_authorization(authorization::AGENT_API)
        .add_service(api.into_server());
    let flows = ServeSpec::on_listener("kino-agent-flows", flow_listener)
        .with_tls(config.tls.with_pki_defaults(&config.pki, identity))
        .with_authorization(authorization::FLOWS)
        .with_shutdown(stopped())
        .add_service(FlowGrpc::new(flow_observer.clone()).into_server());
    // If one server fails, the other is dropped (which also removes the socket file).
    tokio::try_join!(serve(api), serve(flows))?;
    Ok(())
}
