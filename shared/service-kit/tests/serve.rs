//! Real servers on loopback and unix sockets, real clients, real TLS: no mocks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    let server = Running::start("127.0.0.1:0".parse().unwrap(), TlsArgs::default()).await;
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
    let server = Running::start("127.0.0.1:0".parse().unwrap(), TlsArgs::default()).await;
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
    let pki = Pki::generate(dir.path());
    let path = dir.path().join("tls.sock");
    let spec = ServeSpec::new("kino-service-kit-test", ListenAddr::Unix(path.clone()))
        .with_tls(pki.server_args(false));
    let error = serve(spec).await.expect_err("refused");
    assert!(
        matches!(error, ServiceError::TlsOnUnixSocket { .. }),
        "{error}"
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn mtls_rejects_clients_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let server = Running::start("127.0.0.1:0".parse().unwrap(), pki.server_args(true)).await;
    let target = server.target();

    // Client with the CA and its own certificate: accepted.
    let good = connect(&target, &pki.client_args(true))
        .await
        .expect("mTLS connect");
    assert_eq!(
        check(good.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(list_services_v1(good).await, expected_services());

    // Client with the CA but no certificate: the handshake or the first RPC fails.
    let rejected = async {
        let channel = connect(&target, &pki.client_args(false)).await?;
        check(channel, "")
            .await
            .map_err(|status| ServiceError::Connect {
                target: target.clone(),
                detail: status.to_string(),
            })
    }
    .await;
    assert!(
        rejected.is_err(),
        "a client without a certificate got {rejected:?}"
    );

    // Plaintext client against the TLS server: fails too.
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
async fn tls_without_client_ca_accepts_any_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let server = Running::start("127.0.0.1:0".parse().unwrap(), pki.server_args(false)).await;
    let channel = connect(&server.target(), &pki.client_args(false))
        .await
        .expect("TLS connect");
    assert_eq!(check(channel, "").await.unwrap(), ServingStatus::Serving);
    server.stop().await.expect("clean stop");
}

/// A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kino test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");

        let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "kino-service-kit-test",
        );
        let (client_cert, client_key) = leaf(
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "kino-client",
        );

        Pki {
            ca: write("ca.crt", ca.pem()),
            server_cert: write("server.crt", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.crt", client_cert),
            client_key: write("client.key", client_key),
        }
    }

    fn server_args(&self, mtls: bool) -> TlsArgs {
        TlsArgs {
            tls_cert: Some(self.server_cert.clone()),
            tls_key: Some(self.server_key.clone()),
            tls_client_ca: mtls.then(|| self.ca.clone()),
        }
    }

    fn client_args(&self, with_cert: bool) -> ClientTlsArgs {
        ClientTlsArgs {
            upstream_tls_ca: Some(self.ca.clone()),
            upstream_tls_cert: with_cert.then(|| self.client_cert.clone()),
            upstream_tls_key: with_cert.then(|| self.client_key.clone()),
            upstream_tls_server_name: None,
        }
    }
}
