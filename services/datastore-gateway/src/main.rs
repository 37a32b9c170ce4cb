//! kino-datastore-gateway: reads its config, opens the backend, serves `kino.datastore.v1`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kino_datastore_gateway::grpc::DatastoreGrpc;
use kino_datastore_gateway::store::Store;
use kino_datastore_gateway::store::embedded::{EmbeddedOptions, EmbeddedStore};
use kino_datastore_gateway::store::etcd::{EtcdOptions, EtcdStore};
use kino_datastore_gateway::store::instrumented::InstrumentedStore;
use kino_datastore_gateway::{Gateway, Limits};
use kino_service_kit::principal::Role;
use kino_service_kit::{ListenAddr, PkiArgs, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;
use kino_telemetry::metrics::MetricsAddress;

/// Which store backs the gateway.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// A durable file on local disk (single gateway replica).
    Embedded,
    /// etcd 3.4+ (production, HA; many gateway replicas).
    Etcd,
}

/// The datastore gateway: the only client of the backing store.
#[derive(Parser, Debug)]
#[command(name = "kino-datastore-gateway", version, about)]
struct Config {
    /// Address to serve on: host:port or unix:/path.
    #[arg(long, env = "KINO_DATASTORE_LISTEN", default_value = "127.0.0.1:7401")]
    listen: ListenAddr,
    /// Backing store.
    #[arg(
        long,
        env = "KINO_DATASTORE_BACKEND",
        value_enum,
        default_value = "embedded"
    )]
    backend: Backend,
    /// Database file of the embedded backend.
    #[arg(
        long,
        env = "KINO_DATASTORE_FILE",
        default_value = "/var/lib/kino/datastore.redb"
    )]
    data_file: PathBuf,
    /// Revisions of change history the embedded backend keeps for resuming watchers.
    #[arg(long, env = "KINO_DATASTORE_HISTORY", default_value_t = 100_000)]
    history_revisions: i64,
    /// etcd client URLs (comma-separated) of the etcd backend.
    #[arg(
        long,
        env = "KINO_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// Prefix of every key in etcd.
    #[arg(long, env = "KINO_ETCD_PREFIX", default_value = "/kino/")]
    etcd_prefix: String,
    /// Timeout of each etcd request, in seconds.
    #[arg(long, env = "KINO_ETCD_TIMEOUT", default_value_t = 10)]
    etcd_timeout_seconds: u64,
    /// Largest encoded resource spec accepted, in bytes.
    #[arg(long, env = "KINO_MAX_VALUE_BYTES", default_value_t = kino_api::limits::DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Recent events per kind kept in memory for watchers that resume.
    #[arg(long, env = "KINO_WATCH_BUFFER_EVENTS", default_value_t = 10_000)]
    watch_buffer_events: usize,
    /// Where to serve Prometheus metrics (`GET /metrics`): host:port, :port, or off.
    #[arg(
        long,
        env = "KINO_DATASTORE_METRICS_ADDRESS",
        default_value = "127.0.0.1:9401"
    )]
    metrics_address: MetricsAddress,
    #[command(flatten)]
    pki: PkiArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The datastore file and anything else written is private (0600/0700).
    kino_service_kit::make_new_files_private();
    let config = Config::parse();
    let _telemetry = kino_telemetry::init("kino-datastore-gateway", &config.log)?;
    if !config.etcd_prefix.starts_with('/') || !config.etcd_prefix.ends_with('/') {
        anyhow::bail!(
            "--etcd-prefix {:?} must start and end with '/', e.g. /kino/",
            config.etcd_prefix
        );
    }
    let store: Arc<dyn Store> = match config.backend {
        Backend::Embedded => {
            let mut options = EmbeddedOptions::new(&config.data_file);
            options.history_revisions = config.history_revisions;
            let store = EmbeddedStore::open(options).await.with_context(|| {
                format!(
                    "opening the embedded datastore {} (--data-file)",
                    config.data_file.display()
                )
            })?;
            // Explicitly, for a file an older gateway created world-readable.
            std::fs::set_permissions(&config.data_file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| {
                    format!(
                        "making the datastore {} private (mode 0600)",
                        config.data_file.display()
                    )
                })?;
            Arc::new(store)
        }
        Backend::Etcd => Arc::new(
            EtcdStore::connect(EtcdOptions {
                endpoints: config.etcd_endpoints.clone(),
                prefix: config.etcd_prefix.clone(),
                request_timeout: Duration::from_secs(config.etcd_timeout_seconds),
            })
            .await?,
        ),
    };
    let backend = match config.backend {
        Backend::Embedded => "embedded",
        Backend::Etcd => "etcd",
    };
    // Every store call becomes a span of the request that made it, and is timed.
    let store: Arc<dyn Store> = Arc::new(InstrumentedStore::new(store, backend));
    let limits = Limits {
        max_value_bytes: config.max_value_bytes,
        watch_buffer_events: config.watch_buffer_events,
    };
    let gateway = Arc::new(Gateway::new(store, limits));
    kino_datastore_gateway::metrics::install(gateway.clone());
    let _metrics =
        kino_telemetry::metrics::serve("kino-datastore-gateway", config.metrics_address).await?;
    tracing::info!(backend = ?config.backend, "datastore gateway ready");
    serve(
        ServeSpec::new("kino-datastore-gateway", config.listen)
            .with_tls(
                config
                    .tls
                    .with_pki_defaults(&config.pki, Role::DatastoreGateway.as_str()),
            )
            .with_authorization(kino_datastore_gateway::authorization::AUTHORIZATION)
            .add_service(DatastoreGrpc::new(gateway).into_server()),
    )
    .await?;
    Ok(())
}
