//! `kino status` probes against real servers on loopback: a SERVING service, the wrong
//! service on a port, nothing listening, and a peer that never answers.

use std::sync::Arc;
use std::time::Duration;

use kino_cli::status::{Component, Health, probe};
use kino_ipam::grpc::IpamGrpc;
use kino_ipam::persistence::Datastore;
use kino_ipam::{Ipam, IpamOptions};
use kino_service_kit::{ClientTlsArgs, Listener, ServeSpec, TlsArgs, serve};
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(2);

fn component(address: String, service: &'static str) -> Component {
    Component {
        name: "ipam",
        address,
        service,
    }
}

/// An IPAM service whose datastore is never reached: health checks do not need it.
fn ipam_service() -> IpamGrpc {
    let channel = kino_service_kit::connect_lazy("127.0.0.1:9", &ClientTlsArgs::default())
        .expect("a valid target");
    IpamGrpc::new(Arc::new(Ipam::new(
        Datastore::new(channel),
        IpamOptions::default(),
    )))
}

#[tokio::test]
async fn probes_tell_serving_from_wrong_service_from_down_from_silent() {
    let listener = Listener::bind(&"127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let address = listener.local_addr().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        ServeSpec::on_listener("kino-ipam-test", listener)
            .with_tls(TlsArgs::insecure())
            .with_authorization(kino_ipam::authorization::AUTHORIZATION)
            .add_service(ipam_service().into_server())
            .with_shutdown(async move {
                let _ = stopped.await;
            }),
    ));
    let tls = ClientTlsArgs::default();

    let serving = probe(
        &component(address.clone(), "kino.ipam.v1.IpamService"),
        &tls,
        TIMEOUT,
    )
    .await;
    assert_eq!(serving.health, Health::Serving, "{serving:?}");
    assert_eq!(serving.detail, "");

    let wrong = probe(
        &component(address.clone(), "kino.policy.v1.PolicyService"),
        &tls,
        TIMEOUT,
    )
    .await;
    assert_eq!(wrong.health, Health::ServiceUnknown, "{wrong:?}");
    assert!(wrong.detail.contains("another program"), "{wrong:?}");

    let _ = stop.send(());
    server.await.expect("no panic").expect("clean stop");

    let down = probe(
        &component(address, "kino.ipam.v1.IpamService"),
        &tls,
        TIMEOUT,
    )
    .await;
    assert_eq!(down.health, Health::Unreachable, "{down:?}");
    assert!(down.detail.contains("refused"), "{down:?}");

    // Accepts TCP but never speaks HTTP/2.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_address = silent.local_addr().expect("addr").to_string();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let quiet = probe(
        &component(silent_address, "kino.ipam.v1.IpamService"),
        &tls,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(quiet.health, Health::Timeout, "{quiet:?}");

    let bad = probe(
        &component("nowhere".into(), "kino.ipam.v1.IpamService"),
        &tls,
        TIMEOUT,
    )
    .await;
    assert_eq!(bad.health, Health::Error, "{bad:?}");
    assert!(bad.detail.contains("\"nowhere\""), "{bad:?}");
}
