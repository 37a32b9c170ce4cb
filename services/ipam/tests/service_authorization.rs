//! Who may call `kino.service.v1`, over real mTLS: kino-ipam served by the service kit with
//! its authorization table (as the binary serves it) over a gateway on an embedded store,
//! clients presenting certificates of a throw-away PKI. The operator and admin change
//! services; an agent reads them and the service network but may not change one; the
//! other roles may do neither.

use std::sync::Arc;

use kino_api::service as pb;
use kino_api::service::load_balancing_service_client::LoadBalancingServiceClient;
use kino_datastore_gateway::testing::{Backend, embedded, serve_gateway};
use kino_ipam::lb_grpc::LoadBalancingGrpc;
use kino_ipam::persistence::Datastore;
use kino_ipam::{Ipam, IpamOptions};
use kino_service_kit::pki::{Issue, Pki, Subject};
use kino_service_kit::principal::Role;
use kino_service_kit::{ClientTlsArgs, Listener, ServeSpec, TlsArgs, TracedChannel, serve};
use tonic::Code;

type Client = LoadBalancingServiceClient<TracedChannel>;

struct Secured {
    _dir: tempfile::TempDir,
    pki: Pki,
    target: String,
    _backend: Backend,
    gateway: tokio::task::JoinHandle<()>,
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = Pki::open_or_create(&dir.path().join("pki")).expect("CA");
        let issue = |subject: Subject, stem: &str| {
            pki.issue(&Issue::local(subject, &[]).with_stem(stem))
                .expect("certificate");
        };
        issue(Subject::agent("n1"), "agent-n1");
        for role in [
            Role::Ipam,
            Role::PolicyCompiler,
            Role::Operator,
            Role::FlowRelay,
            Role::Admin,
        ] {
            issue(Subject::role(role), role.as_str());
        }
        let backend = embedded().await;
        let gateway = serve_gateway(backend.store.clone()).await;
        let channel =
            kino_service_kit::connect_lazy(&gateway.address, &ClientTlsArgs::default()).unwrap();
        let ipam = Arc::new(Ipam::new(Datastore::new(channel), IpamOptions::default()));
        let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let target = listener.local_addr().to_string();
        let tls = TlsArgs::mtls(pki.cert_path("ipam"), pki.key_path("ipam"), pki.ca_path());
        tokio::spawn(serve(
            ServeSpec::on_listener("kino-ipam", listener)
                .with_tls(tls)
                .with_authorization(kino_ipam::authorization::AUTHORIZATION)
                .add_service(LoadBalancingGrpc::new(ipam).into_server()),
        ));
        Secured {
            _dir: dir,
            pki,
            target,
            _backend: backend,
            gateway: gateway.task,
        }
    }

    async fn client(&self, stem: &str) -> Client {
        let tls = ClientTlsArgs::mtls(
            self.pki.ca_path(),
            self.pki.cert_path(stem),
            self.pki.key_path(stem),
        );
        LoadBalancingServiceClient::new(
            kino_service_kit::connect(&self.target, &tls)
                .await
                .expect("mTLS connect"),
        )
    }
}

fn web(port: u32) -> pb::CreateServiceRequest {
    pb::CreateServiceRequest {
        service: Some(pb::Service {
            name: format!("web-{port}"),
            frontends: vec![pb::Frontend {
                r#type: pb::FrontendType::ClusterIp as i32,
                address: "172.20.0.10".into(),
                port,
                protocol: pb::Protocol::Tcp as i32,
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, parts: &[&str]) {
    let status = result.expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    for part in parts {
        assert!(status.message().contains(part), "{part}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_admin_change_services_and_agents_only_read_them() {
    let world = Secured::start().await;
    let mut agent = world.client("agent-n1").await;
    assert_denied(
        agent.create_service(web(80)).await,
        &["kino-agent:n1", "CreateService"],
    );
    assert_denied(
        agent
            .delete_service(pb::DeleteServiceRequest {
                namespace: String::new(),
                name: "web-80".into(),
            })
            .await,
        &["DeleteService"],
    );

    let mut admin = world.client("admin").await;
    admin.create_service(web(80)).await.expect("admin creates");
    let mut operator = world.client("operator").await;
    let created = operator
        .create_service(web(81))
        .await
        .expect("the operator creates")
        .into_inner()
        .service
        .unwrap();
    operator
        .update_service(pb::UpdateServiceRequest {
            service: Some(created),
            expected_revision: 0,
        })
        .await
        .expect("the operator updates");

    let listed = agent
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("an agent lists")
        .into_inner();
    assert_eq!(listed.services.len(), 2);
    agent
        .get_service(pb::GetServiceRequest {
            namespace: String::new(),
            name: "web-81".into(),
        })
        .await
        .expect("an agent reads one");
    let network = agent
        .get_service_network(pb::GetServiceNetworkRequest {})
        .await
        .expect("an agent reads the service network")
        .into_inner();
    assert_eq!(network.service_cidrs, ["172.20.0.0/16", "fd00:ffff::/112"]);
    assert_eq!(
        (network.node_port_min, network.node_port_max),
        (30000, 32767)
    );

    for stem in ["policy-compiler", "flow-relay", "ipam"] {
        let mut other = world.client(stem).await;
        assert_denied(
            other
                .list_services(pb::ListServicesRequest::default())
                .await,
            &["ListServices"],
        );
        assert_denied(other.create_service(web(82)).await, &["CreateService"]);
    }
    world.gateway.abort();
}
