//! kino-policy-compiler: reads its config and serves `kino.policy.v1` (every RPC UNIMPLEMENTED until issue #5).

use anyhow::Context;
use clap::Parser;
use kino_policy_compiler::grpc::PolicyGrpc;
use kino_service_kit::{ClientTlsArgs, ListenAddr, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;

/// Policies and security identities, compiled into per-endpoint rule sets for the agents.
#[derive(Parser, Debug)]
#[command(name = "kino-policy-compiler", version, about)]
struct Config {
    /// Address to serve on: host:port or unix:/path.
    #[arg(long, env = "KINO_POLICY_LISTEN", default_value = "127.0.0.1:7403")]
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
    let _telemetry = kino_telemetry::init("kino-policy-compiler", &config.log)?;
    // Checked now so a typo fails at start-up; the compiler (issue #5) will use the channel.
    kino_service_kit::connect_lazy(&config.datastore, &config.upstream_tls)
        .with_context(|| format!("checking --datastore {:?}", config.datastore))?;
    tracing::info!(
        datastore = %config.datastore,
        "kino-policy-compiler ready: serving the API; every RPC is UNIMPLEMENTED until issue #5"
    );
    serve(
        ServeSpec::new("kino-policy-compiler", config.listen)
            .with_tls(config.tls)
            .add_service(PolicyGrpc::new().into_server()),
    )
    .await?;
    Ok(())
}
