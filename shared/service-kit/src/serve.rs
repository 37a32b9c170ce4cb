//! Serving a service: listener, mTLS (reloaded when its files change), authorization of
//! every RPC, health, reflection, request spans, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kino_telemetry::RpcOutcomeLayer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::authz::{AuthorizeLayer, MethodRule, Rules, Transport};
use crate::drain::{Draining, EndStreamsLayer};
use crate::error::error_chain;
use crate::listen::ListenerKind;
use crate::message_cap::MessageCapLayer;
use crate::tls::{ReloadingServerTls, tls_incoming};
use crate::unix_authority::UnixAuthority;
use crate::{ListenAddr, Listener, ServiceError, TlsArgs};

/// How long shutdown waits for in-flight RPCs before `serve` returns anyway.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

pub use crate::standard_services::{
    HEALTH_SERVICE, REFLECTION_V1_SERVICE, REFLECTION_V1ALPHA_SERVICE,
};

type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type ServerFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

enum Listen {
    Addr(ListenAddr),
    Bound(Listener),
}

/// Everything [`serve`] needs: built with [`ServeSpec::new`] and the `with_*`/`add_*` methods.
///
/// ```no_run
/// # async fn run(addr: kino_service_kit::ListenAddr, tls: kino_service_kit::TlsArgs) -> Result<(), kino_service_kit::ServiceError> {
/// use kino_service_kit::{serve, ServeSpec};
/// let spec = ServeSpec::new("kino-ipam", addr).with_tls(tls); // .add_service(IpamServiceServer::new(ipam))
/// serve(spec).await
/// # }
/// ```
pub struct ServeSpec {
    service_name: &'static str,
    listen: Listen,
    tls: TlsArgs,
    authorization: Rules,
    routes: Routes,
    serving: Vec<String>,
    descriptor_sets: Vec<&'static [u8]>,
    shutdown: Option<ShutdownFuture>,
    grace_period: Duration,
    health: HealthReporter,
    drain: watch::Sender<bool>,
}

impl std::fmt::Debug for ServeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeSpec")
            .field("service_name", &self.service_name)
            .field("serving", &self.serving)
            .field("tls", &self.tls)
            .field("grace_period", &self.grace_period)
            .finish_non_exhaustive()
    }
}

impl ServeSpec {
    /// A spec for `service_name` (e.g. `kino-datastore-gateway`) listening on `addr`.
    pub fn new(service_name: &'static str, addr: ListenAddr) -> Self {
        Self::with_listen(service_name, Listen::Addr(addr))
    }

    /// A spec serving on an already bound listener (to learn a port-0 address first).
    pub fn on_listener(service_name: &'static str, listener: Listener) -> Self {
        Self::with_listen(service_name, Listen::Bound(listener))
    }

    fn with_listen(service_name: &'static str, listen: Listen) -> Self {
        let (drain, _) = watch::channel(false);
        Self {
            service_name,
            listen,
            tls: TlsArgs::default(),
            authorization: Rules::default(),
            routes: Routes::default(),
            serving: Vec::new(),
            descriptor_sets: vec![kino_api::FILE_DESCRIPTOR_SET],
            shutdown: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            health: HealthReporter::new(),
            drain,
        }
    }

    /// How a TCP listener is secured: mTLS with the flags' files (fill the defaults with
    /// [`TlsArgs::with_pki_defaults`]), or plaintext without authorization if `--insecure`.
    /// A TCP listener with neither fails to start. Unix sockets ignore the defaults.
    pub fn with_tls(mut self, tls: TlsArgs) -> Self {
        self.tls = tls;
        self
    }

    /// Adds a service's authorization table (full method → who may call it). Methods no
    /// table lists are denied to every caller; health and reflection are open to any
    /// authenticated caller. See [`crate::authz`].
    pub fn with_authorization(mut self, table: &'static [MethodRule]) -> Self {
        self.authorization.add(table);
        self
    }

    /// Adds a generated gRPC server; its name is reported SERVING and listed by reflection.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.serving.push(S::NAME.to_owned());
        self.routes = self.routes.add_service(service);
        self
    }

    /// Replaces the routes wholesale; name their services with [`ServeSpec::with_serving`].
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// Reports `service` (fully qualified, e.g. `kino.ipam.v1.IpamService`) SERVING.
    pub fn with_serving(mut self, service: impl Into<String>) -> Self {
        let service = service.into();
        if !self.serving.contains(&service) {
            self.serving.push(service);
        }
        self
    }

    /// Registers another encoded `FileDescriptorSet` with reflection (kino's is built in).
    pub fn with_file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Also shuts down when `signal` resolves (besides SIGTERM/SIGINT); handy in tests.
    pub fn with_shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// How long to wait for in-flight RPCs at shutdown (default [`DEFAULT_GRACE_PERIOD`]).
    pub fn with_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// The health reporter, to flip a service NOT_SERVING while a dependency is down.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// A handle that resolves when shutdown starts, for handlers holding long streams.
    pub fn draining(&self) -> Draining {
        Draining::new(self.drain.subscribe())
    }
}

/// Serves until SIGTERM/SIGINT (or the spec's shutdown future), then drains gracefully.
///
/// Adds grpc.health.v1 (overall `""` and every named service SERVING; NOT_SERVING once
/// shutdown starts), gRPC reflection v1 and v1alpha, a `grpc.request` span per request that
/// continues the caller's W3C trace, per-RPC metrics and span status
/// ([`kino_telemetry::RpcOutcomeLayer`]), status messages cut to
/// [`crate::MAX_STATUS_MESSAGE_BYTES`], authorization of every request against the spec's
/// tables ([`crate::authz`]), and, on TCP, mTLS whose files are re-read when they change (or
/// plaintext by the operator's `--insecure`). At shutdown, new
/// connections are refused, idle response streams end with UNAVAILABLE, in-flight RPCs get
/// the grace period to finish, and a unix socket file is removed.
pub async fn serve(spec: ServeSpec) -> Result<(), ServiceError> {
    let ServeSpec {
        service_name,
        listen,
        tls,
        authorization,
        routes,
        serving,
        descriptor_sets,
        shutdown,
        grace_period,
        health,
        drain,
    } = spec;

    if let Listen::Addr(addr) = &listen {
        check_security(addr, &tls)?;
    }
    let listener = match listen {
        Listen::Addr(addr) => Listener::bind(&addr).await?,
        Listen::Bound(listener) => listener,
    };
    let addr = listener.local_addr();
    check_security(&addr, &tls)?;
    let transport = match (&listener.kind, tls.insecure) {
        (ListenerKind::Unix { .. }, _) => Transport::UnixSocket,
        (ListenerKind::Tcp(_), true) => Transport::Insecure,
        (ListenerKind::Tcp(_), false) => Transport::MutualTls,
    };
    let server_tls = match transport {
        Transport::MutualTls => Some(ReloadingServerTls::load(
            tls.server_files(&addr.to_string())?,
        )?),
        Transport::Insecure => {
            tracing::warn!(
                service = service_name,
                address = %addr,
                "--insecure: serving PLAINTEXT with NO AUTHORIZATION; anyone who can connect to {addr} may do anything. Remove --insecure to serve mTLS."
            );
            None
        }
        Transport::UnixSocket => None,
    };
    // Follows the certificate files until the server is done (aborted on drop).
    let _follow_files = server_tls
        .clone()
        .map(|tls| AbortOnDrop(tokio::spawn(tls.follow_files())));

    let routes = routes
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            health.clone(),
        )))
        .add_service(
            reflection(&descriptor_sets, &serving)
                .build_v1()
                .map_err(ServiceError::Reflection)?,
        )
        .add_service(
            reflection(&descriptor_sets, &serving)
                .build_v1alpha()
                .map_err(ServiceError::Reflection)?,
        );
    set_status(&health, &serving, ServingStatus::Serving).await;

    let builder = Server::builder().trace_fn(kino_telemetry::grpc_server_span);
    let draining = Draining::new(drain.subscribe());
    let known_services = serving.iter().map(String::as_str).chain([
        HEALTH_SERVICE,
        REFLECTION_V1_SERVICE,
        REFLECTION_V1ALPHA_SERVICE,
    ]);
    // The message cap outermost (closest to the wire), then the outcome, so that it also
    // sees the UNAVAILABLE with which draining ends streams and the requests authorization
    // refuses.
    let router = builder
        .layer(MessageCapLayer)
        .layer(RpcOutcomeLayer::new(known_services))
        .layer(EndStreamsLayer::new(draining.clone()))
        .layer(AuthorizeLayer::new(service_name, transport, authorization))
        .add_routes(routes);
    let stop_accepting = {
        let draining = draining.clone();
        async move { draining.wait().await }
    };

    // Held until the server is done, then dropped: that removes a unix socket file.
    let mut socket_file = None;
    let server: ServerFuture =
        match listener.kind {
            ListenerKind::Tcp(listener) => match server_tls {
                Some(server_tls) => Box::pin(router.serve_with_incoming_shutdown(
                    tls_incoming(listener, server_tls),
                    stop_accepting,
                )),
                None => Box::pin(router.serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop_accepting,
                )),
            },
            ListenerKind::Unix { listener, socket } => {
                socket_file = Some(socket);
                // Stock gRPC clients name the socket path as :authority (unix_authority.rs).
                let incoming =
                    UnixListenerStream::new(listener).map(|stream| stream.map(UnixAuthority::new));
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting))
            }
        };
    tracing::info!(
        service = service_name,
        address = %addr,
        security = ?transport,
        grpc_services = ?serving,
        "listening"
    );

    let trigger = async {
        let reason = match shutdown {
            Some(requested) => tokio::select! {
                name = crate::signal::wait_for_signal() => name,
                () = requested => "shutdown requested",
            },
            None => crate::signal::wait_for_signal().await,
        };
        tracing::info!(
            service = service_name,
            reason,
            grace_period_secs = grace_period.as_secs_f64(),
            "shutting down: health NOT_SERVING, ending streams, draining in-flight RPCs"
        );
        set_status(&health, &serving, ServingStatus::NotServing).await;
        // Nobody may be subscribed besides us; that is fine.
        let _ = drain.send(true);
    };

    let mut server = server;
    let result = tokio::select! {
        result = &mut server => result,
        () = trigger => match tokio::time::timeout(grace_period, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    service = service_name,
                    grace_period_secs = grace_period.as_secs_f64(),
                    "in-flight RPCs did not finish within the grace period; stopping anyway"
                );
                Ok(())
            }
        },
    };
    drop(server);
    drop(socket_file);
    match result {
        Ok(()) => {
            tracing::info!(service = service_name, address = %addr, "stopped");
            Ok(())
        }
        Err(e) => Err(ServiceError::Serve {
            addr,
            detail: error_chain(&e),
        }),
    }
}

/// A unix socket takes no TLS flags (its mode protects it); TCP needs mTLS or `--insecure`,
/// not both.
fn check_security(addr: &ListenAddr, tls: &TlsArgs) -> Result<(), ServiceError> {
    match addr {
        ListenAddr::Unix(path) if tls.has_explicit_files() => {
            Err(ServiceError::TlsOnUnixSocket { path: path.clone() })
        }
        ListenAddr::Unix(_) => Ok(()),
        ListenAddr::Tcp(_) if tls.insecure && tls.has_explicit_files() => {
            Err(ServiceError::InsecureWithTls)
        }
        ListenAddr::Tcp(_) if tls.insecure => Ok(()),
        ListenAddr::Tcp(_) => tls.server_files(&addr.to_string()).map(|_| ()),
    }
}

/// Aborts a background task when the server it serves is done.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reflection<'a>(
    descriptor_sets: &[&'a [u8]],
    serving: &[String],
) -> tonic_reflection::server::Builder<'a> {
    let mut builder = tonic_reflection::server::Builder::configure()
        // Registered by hand below so that v1 and v1alpha list the same services.
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for set in descriptor_sets {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    // List what this process serves, not every service in kino's descriptor set.
    for name in serving.iter().map(String::as_str).chain([
        HEALTH_SERVICE,
        REFLECTION_V1_SERVICE,
        REFLECTION_V1ALPHA_SERVICE,
    ]) {
        builder = builder.with_service_name(name);
    }
    builder
}

async fn set_status(health: &HealthReporter, serving: &[String], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in serving {
        health.set_service_status(name, status).await;
    }
}
