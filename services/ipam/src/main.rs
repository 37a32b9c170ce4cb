//! kino-ipam: reads its config, makes sure the default pool exists, watches for deleted nodes,
//! collects service claims left half-way, and serves `kino.ipam.v1`, `kino.node.v1` and
//! `kino.service.v1`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kino_ipam::grpc::IpamGrpc;
use kino_ipam::lb::network::{DEFAULT_SERVICE_CIDRS, ServiceNetwork};
use kino_ipam::lb_grpc::LoadBalancingGrpc;
use kino_ipam::node_grpc::NodeGrpc;
use kino_ipam::persistence::Datastore;
use kino_ipam::pool::{DEFAULT_POOL, PoolConfig, RawFamily};
use kino_ipam::service::DefaultPoolOutcome;
use kino_ipam::{Ipam, IpamError, IpamOptions};
use kino_service_kit::principal::Role;
use kino_service_kit::{ClientTlsArgs, ListenAddr, PkiArgs, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;
use kino_telemetry::metrics::MetricsAddress;

/// IP address management: pools, per-node pod CIDRs, per-endpoint IPs.
#[derive(Parser, Debug)]
#[command(name = "kino-ipam", version, about)]
struct Config {
    /// Address to serve on: host:port or unix:/path.
    #[arg(long, env = "KINO_IPAM_LISTEN", default_value = "127.0.0.1:7402")]
    listen: ListenAddr,
    /// The datastore-gateway: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_DATASTORE", default_value = "127.0.0.1:7401")]
    datastore: String,
    /// IPv4 CIDRs of the "default" pool created at start-up if missing (comma-separated;
    /// empty for an IPv6-only default pool).
    #[arg(
        long,
        env = "KINO_IPAM_DEFAULT_POOL_IPV4",
        value_delimiter = ',',
        default_value = "10.0.0.0/8"
    )]
    default_pool_ipv4: Vec<String>,
    /// Prefix length of each node's IPv4 block in the default pool.
    #[arg(
        long,
        env = "KINO_IPAM_DEFAULT_POOL_IPV4_MASK_SIZE",
        default_value_t = 24
    )]
    default_pool_ipv4_mask_size: u32,
    /// IPv6 CIDRs of the default pool (comma-separated; empty for an IPv4-only pool).
    #[arg(
        long,
        env = "KINO_IPAM_DEFAULT_POOL_IPV6",
        value_delimiter = ',',
        default_value = "fd00::/104"
    )]
    default_pool_ipv6: Vec<String>,
    /// Prefix length of each node's IPv6 block in the default pool.
    #[arg(
        long,
        env = "KINO_IPAM_DEFAULT_POOL_IPV6_MASK_SIZE",
        default_value_t = 120
    )]
    default_pool_ipv6_mask_size: u32,
    /// Do not create the default pool (at start-up, or when a request names it).
    #[arg(long, env = "KINO_IPAM_NO_DEFAULT_POOL")]
    no_default_pool: bool,
    /// Most blocks of one family a node may hold in a pool: when its blocks are full it gets
    /// one more, up to this (1 = a node never grows).
    #[arg(long, env = "KINO_IPAM_MAX_NODE_BLOCKS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_node_blocks: u32,
    /// Seconds an owner's half-done allocation may make no progress before a retried
    /// request takes it over (its replica is presumed dead).
    #[arg(long, env = "KINO_IPAM_CLAIM_TAKEOVER_SECONDS", default_value_t = 3.0)]
    claim_takeover_seconds: f64,
    /// A service CIDR (`kino.service.v1`): ClusterIPs are allocated by the caller inside it
    /// and every agent routes it as unreachable. Repeat for the other family (at most one
    /// each); it must not overlap a pod pool.
    #[arg(
        long = "service-cidr",
        env = "KINO_IPAM_SERVICE_CIDRS",
        value_delimiter = ',',
        default_values_t = DEFAULT_SERVICE_CIDRS.map(String::from)
    )]
    service_cidrs: Vec<String>,
    /// The NodePort range, FIRST-LAST.
    #[arg(long, env = "KINO_IPAM_NODE_PORT_RANGE", default_value = "30000-32767")]
    node_port_range: String,
    /// Where to serve Prometheus metrics (`GET /metrics`): host:port, :port, or off.
    #[arg(
        long,
        env = "KINO_IPAM_METRICS_ADDRESS",
        default_value = "127.0.0.1:9402"
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

impl Config {
    /// The default pool to create, or `None` when disabled.
    fn default_pool(&self) -> anyhow::Result<Option<PoolConfig>> {
        if self.no_default_pool {
            return Ok(None);
        }
        let family = |cidrs: &[String], mask: u32| {
            let cidrs: Vec<String> = cidrs
                .iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect();
            (!cidrs.is_empty()).then_some(RawFamily {
                cidrs,
                node_mask_size: mask,
            })
        };
        let ipv4 = family(&self.default_pool_ipv4, self.default_pool_ipv4_mask_size);
        let ipv6 = family(&self.default_pool_ipv6, self.default_pool_ipv6_mask_size);
        if ipv4.is_none() && ipv6.is_none() {
            anyhow::bail!(
                "--default-pool-ipv4 and --default-pool-ipv6 are both empty: give CIDRs for at least one family, or pass --no-default-pool"
            );
        }
        let config =
            PoolConfig::validate("default pool", DEFAULT_POOL, ipv4.as_ref(), ipv6.as_ref())
                .map_err(|e| {
                    anyhow::anyhow!("{e} (flags --default-pool-ipv4/-ipv6 and their --*-mask-size)")
                })?;
        Ok(Some(config))
    }

    fn options(&self) -> anyhow::Result<IpamOptions> {
        anyhow::ensure!(
            self.claim_takeover_seconds.is_finite()
                && (0.05..=3600.0).contains(&self.claim_takeover_seconds),
            "--claim-takeover-seconds {} must be from 0.05 to 3600",
            self.claim_takeover_seconds
        );
        let service_network = ServiceNetwork::parse(&self.service_cidrs, &self.node_port_range)?;
        let default_pool = self.default_pool()?;
        if let Some(pool) = &default_pool {
            service_network.check_pool(pool).map_err(|e| {
                anyhow::anyhow!("{e} (flags --service-cidr and --default-pool-ipv4/-ipv6)")
            })?;
        }
        Ok(IpamOptions {
            takeover_after: Duration::from_secs_f64(self.claim_takeover_seconds),
            max_node_blocks: self.max_node_blocks as usize,
            default_pool,
            service_network,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kino_service_kit::make_new_files_private();
    let config = Config::parse();
    let _telemetry = kino_telemetry::init("kino-ipam", &config.log)?;
    let default_pool = config.default_pool()?;
    let options = config.options()?;
    // Its own certificate both serves and calls the gateway (Subject O = ipam).
    let upstream_tls = config
        .upstream_tls
        .clone()
        .with_pki_defaults(&config.pki, Role::Ipam.as_str());
    let channel = kino_service_kit::connect_lazy(&config.datastore, &upstream_tls)
        .with_context(|| format!("checking --datastore {:?}", config.datastore))?;
    let ipam = Arc::new(Ipam::new(Datastore::new(channel), options));

    if let Some(pool) = default_pool {
        tokio::spawn(ensure_default_pool(ipam.clone(), pool));
    }
    tokio::spawn(detach_leases(ipam.clone()));
    tokio::spawn(kino_ipam::node_watch::finish_interrupted_deletions(
        ipam.clone(),
    ));
    tokio::spawn(collect_service_claims(ipam.clone()));
    kino_ipam::metrics::install(ipam.clone());
    let _metrics = kino_telemetry::metrics::serve("kino-ipam", config.metrics_address).await?;
    tracing::info!(datastore = %config.datastore, "kino-ipam ready");
    let server = serve(
        ServeSpec::new("kino-ipam", config.listen)
            .with_tls(
                config
                    .tls
                    .with_pki_defaults(&config.pki, Role::Ipam.as_str()),
            )
            .with_authorization(kino_ipam::authorization::AUTHORIZATION)
            .add_service(IpamGrpc::new(ipam.clone()).into_server())
            .add_service(NodeGrpc::new(ipam.clone()).into_server())
            .add_service(LoadBalancingGrpc::new(ipam.clone()).into_server()),
    );
    tokio::select! {
        served = server => served?,
        overlap = refuse_overlapping_pools(ipam) => return Err(overlap),
    }
    Ok(())
}

/// Stops kino-ipam when a stored pool overlaps the service CIDRs (a pool created before
/// --service-cidr was changed): a ClusterIP must never be a pod's address. Waits for the
/// datastore; once the pools are checked it never returns (CreatePool refuses new overlaps).
async fn refuse_overlapping_pools(ipam: Arc<Ipam>) -> anyhow::Error {
    let checked = once_reachable("check the pools against the service CIDRs", || {
        ipam.pool_overlapping_services()
    });
    match checked.await {
        None => std::future::pending().await,
        Some(overlap) => {
            tracing::error!(error = %overlap, "refusing to start");
            anyhow::anyhow!("{overlap} (flag --service-cidr)")
        }
    }
}

/// Removes the service claims a kino-ipam that stopped between its writes left, once they
/// are older than the claim takeover time (a request still running keeps its claims).
async fn collect_service_claims(ipam: Arc<Ipam>) {
    let removed = once_reachable("collect service claims", || ipam.collect_service_claims()).await;
    if removed > 0 {
        tracing::info!(removed, "removed service claims no service lists");
    }
}

/// `attempt`'s answer, retried (from 200 ms to every 10 s) while it fails, e.g. while the
/// datastore is not reachable yet.
async fn once_reachable<T, F: Future<Output = Result<T, IpamError>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(answer) => return answer,
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?delay, "cannot {what} yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Moves the records an older kino-ipam attached to node leases off them, retrying while the
/// datastore is not reachable (a lease that ends must never free a running pod's address).
async fn detach_leases(ipam: Arc<Ipam>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match ipam.detach_leases().await {
            Ok(0) => return,
            Ok(moved) => {
                tracing::info!(
                    moved,
                    "moved node records off the leases an older kino-ipam put them on"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?delay, "cannot check for lease-bound records yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Creates the default pool if missing, retrying while the datastore is not reachable.
async fn ensure_default_pool(ipam: Arc<Ipam>, pool: PoolConfig) {
    let mut delay = Duration::from_millis(200);
    loop {
        match ipam.ensure_pool(pool.clone()).await {
            Ok(DefaultPoolOutcome::Created) => {
                tracing::info!(pool = DEFAULT_POOL, cidrs = %kino_ipam::service::describe_pool(&pool), "created the default pool");
                return;
            }
            Ok(DefaultPoolOutcome::Exists) => return,
            Ok(DefaultPoolOutcome::ExistsDifferently(existing)) => {
                tracing::warn!(pool = DEFAULT_POOL, existing = %existing,
                    configured = %kino_ipam::service::describe_pool(&pool),
                    "the default pool exists with other CIDRs than configured; keeping it as it is (delete it to change it)");
                return;
            }
            Err(IpamError::Invalid(e)) => {
                tracing::error!(error = %e, "cannot create the default pool (fix the --default-pool-* flags or pass --no-default-pool)");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot create the default pool yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
