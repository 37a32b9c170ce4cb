//! Real servers on loopback and unix sockets, real clients, real mTLS and authorization:
//! no mocks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{CompactRequest, CreateRequest, StatusRequest};
use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::pki::{Issue, Pki, Subject};
use kino_service_kit::principal::Role;
use kino_service_kit::{
    ClientTlsArgs, ListenAddr, Listener, ServeSpec, ServiceError, TlsArgs, TracedChannel, connect,
    connect_lazy, serve,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DATASTORE: &str = "kino.datastore.v1.DatastoreService";
const STEP: Duration = Duration::from_secs(10);

/// What the test server lets through. No service is behind these paths: a request the
/// table admits reaches the router and comes back UNIMPLEMENTED, one it refuses comes back
/// PERMISSION_DENIED (or UNAUTHENTICATED) from the authorization layer.
static TABLE: &[MethodRule] = &[
    (
        "/kino.datastore.v1.DatastoreService/Status",
        Access::Authenticated,
    ),
    (
        "/kino.datastore.v1.DatastoreService/Create",
        Access::Roles(&[Role::Agent]),
    ),
];

struct Running {
    addr: ListenAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Running {
    async fn start(listen: ListenAddr, tls: TlsArgs) -> Running {
        let listener = Listener::bind(&listen)
            .await
            .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let addr = listener.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let spec = ServeSpec::on_listener("kino-service-kit-test", listener)
            .with_tls(tls)
            .with_authorization(TABLE)
            .with_serving(DATASTORE)
            .with_grace_period(Duration::from_secs(5))
            .with_shutdown(async move {
                let _ = stopped.await;
            });
        let task = tokio::spawn(serve(spec));
        Running { addr, stop, task }
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }

    async fn stop(self) -> Result<(), ServiceError> {
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("serve() returns after the shutdown future resolves")
            .expect("serve task does not panic")
    }
}

async fn check(channel: TracedChannel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = tokio::time::timeout(
        STEP,
        HealthClient::new(channel).check(HealthCheckRequest {
            service: service.to_owned(),
        }),
    )
    .await
    .expect("health check answers in time")?;
    Ok(response.into_inner().status())
}

async fn list_services_v1(channel: TracedChannel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("not an error");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

async fn list_services_v1alpha(channel: TracedChannel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    match responses
        .next()
        .await
        .expect("one response")
        .expect("not an error")
        .message_response
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// The kino descriptor set is registered: reflection can describe our own service.
async fn describe_symbol_v1(channel: TracedChannel, symbol: &str) -> bool {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    matches!(
        responses.next().await.expect("one response").expect("ok").message_response,
        Some(MessageResponse::FileDescriptorResponse(files)) if !files.file_descriptor_proto.is_empty()
    )
}

fn expected_services() -> Vec<String> {
    let mut names: Vec<String> = [
        DATASTORE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .map(String::from)
    .to_vec();
    names.sort();
    names
}

#[tokio::test]
async fn tcp_serves_health_and_reflection_then_stops() {
    let server = Running::start("127.0.0.1:0".parse().unwrap(), TlsArgs::insecure()).await;
    let ListenAddr::Tcp(bound) = server.addr else {
        panic!("tcp listener")
    };
    assert_ne!(bound.port(), 0, "the real port is reported");

    let channel = connect(&server.target(), &ClientTlsArgs::default())
        .await
        .expect("connect");
    assert_eq!(
        check(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(channel.clone(), DATASTORE).await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = check(channel.clone(), "kino.nope.v1.Nope")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    assert_eq!(list_services_v1(channel.clone()).await, expected_services());
    assert_eq!(
        list_services_v1alpha(channel.clone()).await,
        expected_services()
    );
    assert!(describe_symbol_v1(channel.clone(), DATASTORE).await);

    // `:PORT` and `http://` forms reach the same server.
    let short = format!(":{}", bound.port());
    let via_short = connect(&short, &ClientTlsArgs::default())
        .await
        .expect("connect :PORT");
    assert_eq!(check(via_short, "").await.unwrap(), ServingStatus::Serving);

    server.stop().await.expect("clean stop");
    let refused = connect(
        &format!("127.0.0.1:{}", bound.port()),
        &ClientTlsArgs::default(),
    )
    .await
    .expect_err("nothing listens after stop");
    assert!(
        refused.to_string().contains(&bound.port().to_string()),
        "{refused}"
    );
}

#[tokio::test]
async fn unix_socket_is_private_served_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run/kino/agent.sock"); // parent dirs do not exist yet
    let addr = ListenAddr::Unix(path.clone());
    let server = Running::start(addr.clone(), TlsArgs::default()).await;
    assert_eq!(server.addr, addr);

    let mode = std::fs::metadata(&path)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode is {mode:o}");

    let channel = connect(
        &format!("unix:{}", path.display()),
        &ClientTlsArgs::default(),
    )
    .await
    .expect("connect over the unix socket");
    assert_eq!(
        check(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(list_services_v1(channel).await, expected_services());

    server.stop().await.expect("clean stop");
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_and_plain_files_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");

    // A socket file left behind by a crashed process.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let listener = Listener::bind(&ListenAddr::Unix(stale.clone()))
        .await
        .expect("a stale socket is replaced");

    // While it is live, a second server must not steal it.
    let error = Listener::bind(&ListenAddr::Unix(stale.clone()))
        .await
        .expect_err("live socket is in use");
    assert!(matches!(error, ServiceError::SocketInUse { .. }), "{error}");
    drop(listener);
    assert!(
        !stale.exists(),
        "dropping an unserved listener removes its socket"
    );

    let regular = dir.path().join("not-a-socket");
    std::fs::write(&regular, "keep me").expect("write");
    let error = Listener::bind(&ListenAddr::Unix(regular.clone()))
        .await
        .expect_err("a regular file is not replaced");
    assert!(matches!(error, ServiceError::NotASocket { .. }), "{error}");
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "keep me");
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_reports_not_serving() {
    let server = Running::start("127.0.0.1:0".parse().unwrap(), TlsArgs::insecure()).await;
    let channel = connect(&server.target(), &ClientTlsArgs::default())
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch starts")
        .into_inner();
    let first = watch.next().await.expect("first status").expect("ok");
    assert_eq!(first.status(), ServingStatus::Serving);

    let started = Instant::now();
    let _ = server.stop.send(());
    // The watcher sees NOT_SERVING, then its stream is ended by the server.
    let mut saw_not_serving = false;
    let mut end = None;
    while let Some(item) = tokio::time::timeout(STEP, watch.next())
        .await
        .expect("stream progresses during shutdown")
    {
        match item {
            Ok(message) => saw_not_serving |= message.status() == ServingStatus::NotServing,
            Err(status) => {
                end = Some(status.code());
                break;
            }
        }
    }
    assert!(
        saw_not_serving,
        "health reported NOT_SERVING before the stream ended"
    );
    assert_eq!(
        end,
        Some(tonic::Code::Unavailable),
        "stream ended with UNAVAILABLE"
    );

    tokio::time::timeout(STEP, server.task)
        .await
        .expect("serve returns")
        .expect("no panic")
        .expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown did not wait for the grace period: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn lazy_client_connects_once_the_server_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("later.sock");
    let channel = connect_lazy(
        &format!("unix:{}", path.display()),
        &ClientTlsArgs::default(),
    )
    .expect("lazy channel needs no server");
    assert!(check(channel.clone(), "").await.is_err(), "no server yet");

    let server = Running::start(ListenAddr::Unix(path), TlsArgs::default()).await;
    assert_eq!(check(channel, "").await.unwrap(), ServingStatus::Serving);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn connect_errors_name_the_target() {
    let error = connect(
        "unix:/nonexistent/kino/agent.sock",
        &ClientTlsArgs::default(),
    )
    .await
    .expect_err("no such socket");
    assert!(
        error
            .to_string()
            .contains("unix:/nonexistent/kino/agent.sock"),
        "{error}"
    );
    let error = connect("not a target", &ClientTlsArgs::default())
        .await
        .expect_err("garbage");
    assert!(error.to_string().contains("\"not a target\""), "{error}");
}

#[tokio::test]
async fn tls_on_a_unix_socket_is_refused_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let path = dir.path().join("tls.sock");
    let spec = ServeSpec::new("kino-service-kit-test", ListenAddr::Unix(path.clone()))
        .with_tls(pki.server_args());
    let error = serve(spec).await.expect_err("refused");
    assert!(
        matches!(error, ServiceError::TlsOnUnixSocket { .. }),
        "{error}"
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn tcp_without_tls_needs_an_explicit_insecure() {
    let spec = ServeSpec::new("kino-service-kit-test", "127.0.0.1:0".parse().unwrap())
        .with_tls(TlsArgs::default())
        .with_authorization(TABLE);
    let error = serve(spec).await.expect_err("no TLS, no --insecure");
    assert!(matches!(error, ServiceError::TlsRequired { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("--insecure") && message.contains("--tls-cert"),
        "{message}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let mut both = pki.server_args();
    both.insecure = true;
    let spec =
        ServeSpec::new("kino-service-kit-test", "127.0.0.1:0".parse().unwrap()).with_tls(both);
    let error = serve(spec).await.expect_err("contradictory");
    assert!(matches!(error, ServiceError::InsecureWithTls), "{error}");
}

#[tokio::test]
async fn mtls_authorizes_by_the_certificate_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let server = Running::start("127.0.0.1:0".parse().unwrap(), pki.server_args()).await;
    let target = server.target();

    // An agent may Create: the request passes the layer and reaches the (empty) router.
    let agent = DatastoreServiceClient::new(
        connect(&target, &pki.client_args("agent"))
            .await
            .expect("mTLS connect"),
    );
    let code = agent
        .clone()
        .create(CreateRequest::default())
        .await
        .expect_err("no service behind the path")
        .code();
    assert_eq!(code, tonic::Code::Unimplemented);
    assert_eq!(
        check(
            connect(&target, &pki.client_args("agent")).await.unwrap(),
            ""
        )
        .await
        .unwrap(),
        ServingStatus::Serving,
        "health is open to any authenticated caller"
    );

    // ipam may not: PERMISSION_DENIED naming the caller, the method and who may.
    let ipam =
        DatastoreServiceClient::new(connect(&target, &pki.client_args("ipam")).await.unwrap());
    let denied = ipam
        .clone()
        .create(CreateRequest::default())
        .await
        .expect_err("ipam may not create");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    for part in [
        "\"ipam\" (role ipam)",
        "/kino.datastore.v1.DatastoreService/Create",
        "roles agent, admin",
    ] {
        assert!(denied.message().contains(part), "{part}: {denied:?}");
    }
    // A method any authenticated caller may call, and one no table lists (denied to all).
    assert_eq!(
        ipam.clone()
            .status(StatusRequest::default())
            .await
            .expect_err("no service")
            .code(),
        tonic::Code::Unimplemented
    );
    let unlisted =
        DatastoreServiceClient::new(connect(&target, &pki.client_args("admin")).await.unwrap())
            .compact(CompactRequest::default())
            .await
            .expect_err("not in the table");
    assert_eq!(unlisted.code(), tonic::Code::PermissionDenied);
    assert!(
        unlisted.message().contains("nobody may call it"),
        "{unlisted:?}"
    );

    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn mtls_without_a_client_certificate_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let server = Running::start("127.0.0.1:0".parse().unwrap(), pki.server_args()).await;
    let target = server.target();

    // The CA but no certificate: the handshake succeeds, every RPC (health too) is refused.
    let anonymous = ClientTlsArgs {
        upstream_tls_ca: Some(pki.pki.ca_path()),
        ..ClientTlsArgs::default()
    };
    let channel = connect(&target, &anonymous).await.expect("TLS connect");
    let status = check(channel.clone(), "")
        .await
        .expect_err("no certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("no client certificate"),
        "{status:?}"
    );
    let status = DatastoreServiceClient::new(channel)
        .create(CreateRequest::default())
        .await
        .expect_err("no certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // Plaintext against the TLS listener: no gRPC at all.
    let plaintext = async {
        let channel = connect(&target, &ClientTlsArgs::default()).await?;
        check(channel, "")
            .await
            .map_err(|status| ServiceError::Connect {
                target: target.clone(),
                detail: status.to_string(),
            })
    }
    .await;
    assert!(plaintext.is_err(), "a plaintext client got {plaintext:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(&dir.path().join("ours"));
    let foreign = TestPki::generate(&dir.path().join("theirs"));
    let server = Running::start("127.0.0.1:0".parse().unwrap(), pki.server_args()).await;
    // Trusts our server, presents an admin certificate of another CA.
    let impostor = ClientTlsArgs {
        upstream_tls_ca: Some(pki.pki.ca_path()),
        ..foreign.client_args("admin")
    };
    let outcome = async {
        let channel = connect(&server.target(), &impostor).await?;
        check(channel, "")
            .await
            .map_err(|status| ServiceError::Connect {
                target: server.target(),
                detail: status.to_string(),
            })
    }
    .await;
    let error = outcome.expect_err("refused at the handshake");
    assert!(
        !error.to_string().contains("PermissionDenied")
            && !error.to_string().contains("Unauthenticated"),
        "refused by TLS, not by gRPC: {error}"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn unix_socket_peers_are_admin_but_unlisted_methods_stay_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sock");
    let server = Running::start(ListenAddr::Unix(path.clone()), TlsArgs::default()).await;
    let channel = connect(
        &format!("unix:{}", path.display()),
        &ClientTlsArgs::default(),
    )
    .await
    .expect("connect");
    let mut client = DatastoreServiceClient::new(channel);
    let allowed = client
        .create(CreateRequest::default())
        .await
        .expect_err("no service");
    assert_eq!(allowed.code(), tonic::Code::Unimplemented);
    let denied = client
        .compact(CompactRequest::default())
        .await
        .expect_err("unlisted");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_server_reloads_its_certificate_and_client_ca_when_the_files_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(&dir.path().join("pki"));
    let server = Running::start("127.0.0.1:0".parse().unwrap(), pki.server_args()).await;
    let target = server.target();
    let ListenAddr::Tcp(addr) = server.addr.clone() else {
        panic!("tcp")
    };
    let served = pki.pki.cert_path("datastore-gateway");
    assert_eq!(
        served_certificate(addr, &pki.pki.ca_path()).await,
        pem_der(&served)
    );

    // A renewed server certificate: new connections get it.
    pki.pki
        .issue(&Issue::local(Subject::role(Role::DatastoreGateway), &[]))
        .expect("renew");
    let renewed = pem_der(&served);
    let renewed_pem = std::fs::read(&served).expect("renewed PEM");
    wait_until("the renewed certificate is served", || async {
        served_certificate(addr, &pki.pki.ca_path()).await == renewed
    })
    .await;

    // A garbage certificate file is not taken: the server keeps serving the last good one.
    std::fs::write(&served, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let channel = connect(&target, &pki.client_args("agent"))
        .await
        .expect("still serves");
    assert_eq!(check(channel, "").await.unwrap(), ServingStatus::Serving);
    std::fs::write(&served, renewed_pem).expect("restore");

    // A second CA: its clients are refused until the client CA file also holds it.
    let second = TestPki::generate(&dir.path().join("second"));
    let newcomer = ClientTlsArgs {
        upstream_tls_ca: Some(pki.pki.ca_path()),
        ..second.client_args("agent")
    };
    let refused = async {
        check(connect(&target, &newcomer).await?, "")
            .await
            .map_err(|s| ServiceError::Connect {
                target: target.clone(),
                detail: s.to_string(),
            })
    }
    .await;
    assert!(
        refused.is_err(),
        "a client of the second CA got {refused:?}"
    );
    let bundle = [
        std::fs::read_to_string(pki.pki.ca_path()).unwrap(),
        std::fs::read_to_string(second.pki.ca_path()).unwrap(),
    ]
    .concat();
    let client_ca = dir.path().join("client-ca.crt");
    std::fs::write(&client_ca, bundle).expect("bundle");
    std::fs::rename(&client_ca, pki.pki.ca_path()).expect("swap the client CA in");
    wait_until("a client of the second CA is accepted", || async {
        match connect(&target, &newcomer).await {
            Ok(channel) => check(channel, "").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    server.stop().await.expect("clean stop");
}

/// Polls `condition` until it holds, failing after 30 s (a bound for a broken reload, not a
/// timing being measured).
async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leaf certificate a TLS server presents on a new connection.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .expect("certificate")
        .to_vec()
}

/// A throw-away PKI made by the kit's own `pki` module: a CA, the gateway's certificate
/// (valid for 127.0.0.1) and a certificate per role.
struct TestPki {
    pki: Pki,
}

impl TestPki {
    fn generate(dir: &Path) -> TestPki {
        let (pki, _) = Pki::open_or_create(dir).expect("CA");
        pki.issue(&Issue::local(Subject::role(Role::DatastoreGateway), &[]))
            .expect("server certificate");
        pki.issue(&Issue::local(Subject::agent("node-1"), &[]))
            .expect("agent");
        for role in [Role::Ipam, Role::Admin] {
            pki.issue(&Issue::local(Subject::role(role), &[]))
                .expect("client certificate");
        }
        TestPki { pki }
    }

    fn server_args(&self) -> TlsArgs {
        TlsArgs::mtls(
            self.pki.cert_path("datastore-gateway"),
            self.pki.key_path("datastore-gateway"),
            self.pki.ca_path(),
        )
    }

    fn client_args(&self, stem: &str) -> ClientTlsArgs {
        ClientTlsArgs::mtls(
            self.pki.ca_path(),
            self.pki.cert_path(stem),
            self.pki.key_path(stem),
        )
    }
}
