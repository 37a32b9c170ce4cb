//! kino-policy-compiler: reads its config, follows the datastore (policies, identities,
//! endpoints, nodes), garbage-collects unused identities and serves `kino.policy.v1`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kino_policy_compiler::compile::{CompilerConfig, EnforcementMode};
use kino_policy_compiler::grpc::PolicyGrpc;
use kino_policy_compiler::service::{PolicyService, ServiceOptions};
use kino_policy_compiler::store::Store;
use kino_service_kit::principal::Role;
use kino_service_kit::{ClientTlsArgs, ListenAddr, PkiArgs, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;
use kino_telemetry::metrics::MetricsAddress;

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
    /// When policy is enforced: default (a direction once a rule selects the endpoint for
    /// it), always, or never.
    #[arg(long, env = "KINO_POLICY_ENFORCEMENT", default_value = "default")]
    enforcement_mode: EnforcementMode,
    /// Always allow the local host into endpoints whose ingress is enforced (Cilium's
    /// allow-localhost); deny rules still apply.
    #[arg(long, env = "KINO_POLICY_ALLOW_LOCALHOST", default_value_t = true, action = clap::ArgAction::Set)]
    allow_localhost: bool,
    /// Seconds an identity no endpoint uses (and no caller holds) lives before deletion.
    #[arg(long, env = "KINO_IDENTITY_GC_GRACE_SECONDS", default_value_t = 900)]
    identity_gc_grace_seconds: u64,
    /// Seconds between identity garbage-collection passes.
    #[arg(long, env = "KINO_IDENTITY_GC_INTERVAL_SECONDS", default_value_t = 60)]
    identity_gc_interval_seconds: u64,
    /// Steps of change history kept so agents can resume their policy streams.
    #[arg(long, env = "KINO_POLICY_HISTORY", default_value_t = 10_000)]
    history: usize,
    /// Where to serve Prometheus metrics (`GET /metrics`): host:port, :port, or off.
    #[arg(
        long,
        env = "KINO_POLICY_METRICS_ADDRESS",
        default_value = "127.0.0.1:9403"
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
    fn options(&self) -> anyhow::Result<ServiceOptions> {
        anyhow::ensure!(
            (1..=7 * 86400).contains(&self.identity_gc_grace_seconds),
            "--identity-gc-grace-seconds {} must be from 1 to 604800",
            self.identity_gc_grace_seconds
        );
        anyhow::ensure!(
            (1..=86400).contains(&self.identity_gc_interval_seconds),
            "--identity-gc-interval-seconds {} must be from 1 to 86400",
            self.identity_gc_interval_seconds
        );
        anyhow::ensure!(self.history >= 1, "--history must be at least 1");
        Ok(ServiceOptions {
            compiler: CompilerConfig {
                mode: self.enforcement_mode,
                allow_localhost: self.allow_localhost,
            },
            identity_grace: Duration::from_secs(self.identity_gc_grace_seconds),
            gc_interval: Duration::from_secs(self.identity_gc_interval_seconds),
            history_limit: self.history,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kino_service_kit::make_new_files_private();
    let config = Config::parse();
    let _telemetry = kino_telemetry::init("kino-policy-compiler", &config.log)?;
    let options = config.options()?;
    // Its own certificate both serves and calls the gateway (Subject O = policy-compiler).
    let identity = Role::PolicyCompiler.as_str();
    let upstream_tls = config
        .upstream_tls
        .clone()
        .with_pki_defaults(&config.pki, identity);
    let channel = kino_service_kit::connect_lazy(&config.datastore, &upstream_tls)
        .with_context(|| format!("checking --datastore {:?}", config.datastore))?;
    let service = Arc::new(PolicyService::new(Store::new(channel), options));
    tokio::spawn(kino_policy_compiler::sync::follow_datastore(
        service.clone(),
    ));
    tokio::spawn(kino_policy_compiler::sync::collect_identities(
        service.clone(),
    ));
    kino_policy_compiler::service::gauges::install(service.clone());
    let _metrics =
        kino_telemetry::metrics::serve("kino-policy-compiler", config.metrics_address).await?;
    tracing::info!(
        datastore = %config.datastore,
        mode = ?config.enforcement_mode,
        allow_localhost = config.allow_localhost,
        "kino-policy-compiler ready"
    );
    serve(
        ServeSpec::new("kino-policy-compiler", config.listen)
            .with_tls(config.tls.with_pki_defaults(&config.pki, identity))
            .with_authorization(kino_policy_compiler::authorization::AUTHORIZATION)
            .add_service(PolicyGrpc::new(service).into_server()),
    )
    .await?;
    Ok(())
}
