//! kino-ipam: reads its config and serves `kino.ipam.v1` (every RPC UNIMPLEMENTED until issue #3).

use anyhow::Context;
use clap::Parser;
use kino_ipam::grpc::IpamGrpc;
use kino_service_kit::{ClientTlsArgs, ListenAddr, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;

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
    #[command(flatten)]
    upstream_tls: ClientTlsArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kino_telemetry::init("kino-ipam", &config.log)?;
    // Checked now so a typo fails at start-up; the allocator (issue #3) will use the channel.
    kino_service_kit::connect_lazy(&config.datastore, &config.upstream_tls)
        .with_context(|| format!("checking --datastore {:?}", config.datastore))?;
    tracing::info!(
        datastore = %config.datastore,
        "kino-ipam ready: serving the API; every RPC is UNIMPLEMENTED until issue #3"
    );
    serve(
        ServeSpec::new("kino-ipam", config.listen)
            .with_tls(config.tls)
            .add_service(IpamGrpc::new().into_server()),
    )
    .await?;
    Ok(())
}
