//! kino-agent: reads its config and serves the local API (`kino.agent.v1`, unix socket) and the
//! flow observer (`kino.flow.v1`, TCP) side by side. Every RPC is UNIMPLEMENTED until issues
//! #4 (endpoints, datapath), #5 (identities) and #6 (flows).

use anyhow::Context;
use clap::Parser;
use kino_agent::grpc::agent::AgentGrpc;
use kino_agent::grpc::flow::FlowGrpc;
use kino_agent::node::{parse_socket_path, resolve_node_name};
use kino_service_kit::{ClientTlsArgs, ListenAddr, Listener, ServeSpec, TlsArgs, serve};
use kino_telemetry::LogArgs;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The per-node agent: eBPF datapath, endpoints, flow observer.
///
/// The --tls-* flags apply to the flow observer; the local API socket is protected by its
/// file mode (0600) instead.
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
    /// The datastore-gateway: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_DATASTORE", default_value = "127.0.0.1:7401")]
    datastore: String,
    /// The IPAM service: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_IPAM", default_value = "127.0.0.1:7402")]
    ipam: String,
    /// The policy-compiler: host:port, http(s)://host:port or unix:/path.
    #[arg(long, env = "KINO_POLICY", default_value = "127.0.0.1:7403")]
    policy: String,
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
    let _telemetry = kino_telemetry::init("kino-agent", &config.log)?;
    let node_name = resolve_node_name(config.node_name.as_deref())?;
    let socket = parse_socket_path(&config.socket)?;
    // Checked now so a typo fails at start-up; the datapath (issue #4) will use the channels.
    for (flag, target) in [
        ("--datastore", &config.datastore),
        ("--ipam", &config.ipam),
        ("--policy", &config.policy),
    ] {
        kino_service_kit::connect_lazy(target, &config.upstream_tls)
            .with_context(|| format!("checking {flag} {target:?}"))?;
    }

    // One signal handler for both servers, installed before either starts, so a SIGTERM
    // at any moment stops both.
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

    // Bind both before serving either: a taken address fails start-up with nothing served.
    let api_listener = Listener::bind(&ListenAddr::Unix(socket)).await?;
    let flow_listener = Listener::bind(&config.flow_listen).await?;
    tracing::info!(
        node = %node_name,
        datastore = %config.datastore,
        ipam = %config.ipam,
        policy = %config.policy,
        "kino-agent ready: serving the local API and the flow observer; every RPC is UNIMPLEMENTED until issues #4, #5 and #6"
    );
    let api = ServeSpec::on_listener("kino-agent", api_listener)
        .with_shutdown(stopped())
        .add_service(AgentGrpc::new().into_server());
    let flows = ServeSpec::on_listener("kino-agent-flows", flow_listener)
        .with_tls(config.tls)
        .with_shutdown(stopped())
        .add_service(FlowGrpc::new().into_server());
    // If one server fails, the other is dropped (which also removes the socket file).
    tokio::try_join!(serve(api), serve(flows))?;
    Ok(())
}
