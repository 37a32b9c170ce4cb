//! kino-flow-relay: reads its config, finds the nodes (`--peer` flags and/or the Node
//! records through the gateway) and serves `kino.flow.v1` for the whole cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kino_flow_relay::grpc::RelayGrpc;
use kino_flow_relay::peers::{DEFAULT_PEER_PORT, Peer, PeerSet};
use kino_flow_relay::upstream::TonicNodes;
use kino_flow_relay::{Relay, RelayOptions};
use kino_service_kit::principal::Role;
use kino_service_kit::records::RecordClient;
use kino_service_kit::{ClientTlsArgs, ListenAddr, PkiArgs, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;
use kino_telemetry::metrics::MetricsAddress;

/// Default gateway when neither --peer nor --datastore is given (the local suite's).
const DEFAULT_DATASTORE: &str = "127.0.0.1:7401";

/// The cluster's flow relay: every node's flows, merged by time, as kino.flow.v1.
///
/// Nodes come from --peer flags and/or the datastore's Node records (--datastore; with
/// neither flag, the local gateway 127.0.0.1:7401). The relay's certificate
/// (<pki-dir>/flow-relay.crt, role flow-relay) serves and dials the nodes.
#[derive(Parser, Debug)]
#[command(name = "kino-flow-relay", version, about)]
struct Config {
    /// Address to serve on: host:port or unix:/path.
    #[arg(long, env = "KINO_FLOW_RELAY_LISTEN", default_value = "127.0.0.1:7405")]
    listen: ListenAddr,
    /// A node to read flows from, NAME=HOST:PORT or NAME=unix:/path (repeat, or
    /// comma-separate in the env); wins over a Node record of the same name.
    #[arg(long = "peer", env = "KINO_FLOW_RELAY_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// The datastore-gateway whose Node records name the nodes (host:port,
    /// http(s)://host:port or unix:/path).
    #[arg(long, env = "KINO_DATASTORE")]
    datastore: Option<String>,
    /// Port of the nodes' flow observers (with each Node's INTERNAL_IP address).
    #[arg(long, env = "KINO_FLOW_RELAY_PEER_PORT", default_value_t = DEFAULT_PEER_PORT)]
    peer_port: u16,
    /// Follow: how long (milliseconds) a flow may wait for earlier flows of idle nodes.
    #[arg(long, env = "KINO_FLOW_RELAY_REORDER_WINDOW_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    reorder_window_ms: u64,
    /// How long (milliseconds) a node may take to accept a request, or between two
    /// messages of a finite answer, before it counts as unavailable (keep it below the
    /// clients' timeout: `kino observe` waits 2 s by default).
    #[arg(long, env = "KINO_FLOW_RELAY_PEER_TIMEOUT_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    peer_timeout_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`): host:port, :port, or off.
    #[arg(
        long,
        env = "KINO_FLOW_RELAY_METRICS_ADDRESS",
        default_value = "127.0.0.1:9405"
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kino_service_kit::make_new_files_private();
    let config = Config::parse();
    let _telemetry = kino_telemetry::init("kino-flow-relay", &config.log)?;
    let static_peers = config
        .peers
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| Peer::parse_flag(p))
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(
        config.peer_port != 0,
        "--peer-port 0: give the port the agents' flow observers listen on (default {DEFAULT_PEER_PORT})"
    );
    let datastore = match (&config.datastore, static_peers.is_empty()) {
        (Some(address), _) => Some(address.clone()),
        (None, true) => Some(DEFAULT_DATASTORE.to_owned()),
        (None, false) => None,
    };
    let identity = Role::FlowRelay.as_str();
    let upstream_tls = config
        .upstream_tls
        .clone()
        .with_pki_defaults(&config.pki, identity);
    let peers = Arc::new(PeerSet::new(static_peers));
    if let Some(address) = &datastore {
        let channel = kino_service_kit::connect_lazy(address, &upstream_tls)
            .with_context(|| format!("checking --datastore {address:?}"))?;
        tokio::spawn(kino_flow_relay::discovery::follow_nodes(
            RecordClient::new(channel),
            peers.clone(),
            config.peer_port,
        ));
    }
    let options = RelayOptions {
        reorder_window: Duration::from_millis(config.reorder_window_ms),
        peer_timeout: Duration::from_millis(config.peer_timeout_ms),
        ..RelayOptions::default()
    };
    let relay = Arc::new(Relay::new(
        peers.clone(),
        Arc::new(TonicNodes::new(upstream_tls)),
        options,
    ));
    let _metrics =
        kino_telemetry::metrics::serve("kino-flow-relay", config.metrics_address).await?;
    tracing::info!(
        datastore = datastore.as_deref().unwrap_or("none"),
        static_peers = ?peers.current(),
        "kino-flow-relay ready"
    );
    serve(
        ServeSpec::new("kino-flow-relay", config.listen)
            .with_tls(config.tls.with_pki_defaults(&config.pki, identity))
            .with_authorization(kino_flow_relay::authorization::AUTHORIZATION)
            .add_service(RelayGrpc::new(relay).into_server()),
    )
    .await?;
    Ok(())
}
