//! The requests `kino service create|update` build from their flags: NodePorts paired with
//! the ClusterIP frontends, what an update keeps, the backend edits, and the usage errors.

use super::*;

fn spec(args: &[&str]) -> SpecArgs {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        spec: SpecArgs,
    }
    use clap::Parser;
    let mut argv = vec!["kino"];
    argv.extend_from_slice(args);
    Flags::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .spec
}

fn message(error: IpamCliError) -> String {
    error.to_string()
}

#[test]
fn create_pairs_node_ports_with_the_frontends() {
    let service = spec(&[
        "--frontend",
        "172.20.0.10:80/tcp,name=http",
        "--frontend",
        "172.20.0.10:53/udp,name=dns",
        "--node-port",
        "30080",
        "--external-ip",
        "198.18.0.10:80/tcp",
        "--backend",
        "10.0.1.5:8080,name=http",
        "--backend",
        "10.0.1.5:53/udp,name=dns,weight=2",
        "--affinity",
        "ClientIP",
    ])
    .build("shop", "web", None)
    .unwrap();
    assert_eq!(
        (service.namespace.as_str(), service.name.as_str()),
        ("shop", "web")
    );
    assert_eq!(
        service.r#type(),
        pb::ServiceType::NodePort,
        "--node-port implies NodePort"
    );
    let frontends: Vec<(pb::FrontendType, &str, u32, pb::Protocol, &str)> = service
        .frontends
        .iter()
        .map(|f| {
            (
                f.r#type(),
                f.address.as_str(),
                f.port,
                f.protocol(),
                f.port_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        frontends,
        [
            (
                pb::FrontendType::ClusterIp,
                "172.20.0.10",
                80,
                pb::Protocol::Tcp,
                "http"
            ),
            (
                pb::FrontendType::ClusterIp,
                "172.20.0.10",
                53,
                pb::Protocol::Udp,
                "dns"
            ),
            (
                pb::FrontendType::NodePort,
                "",
                30080,
                pb::Protocol::Tcp,
                "http"
            ),
            (
                pb::FrontendType::ExternalIp,
                "198.18.0.10",
                80,
                pb::Protocol::Tcp,
                ""
            ),
        ]
    );
    assert_eq!(service.backends[1].weight, 2);
    let affinity = service.session_affinity.unwrap();
    assert_eq!(affinity.r#type(), pb::SessionAffinityType::ClientIp);
    assert_eq!(affinity.timeout, None, "the server's default (3h)");
}

#[test]
fn flags_that_do_not_fit_are_usage_errors() {
    let error = spec(&[
        "--frontend",
        "172.20.0.10:80",
        "--node-port",
        "30080",
        "--node-port",
        "30081",
    ])
    .build("default", "web", None)
    .unwrap_err();
    assert!(message(error).contains("one --node-port per --frontend"));
    let error = spec(&[
        "--frontend",
        "172.20.0.10:80",
        "--node-port",
        "30080",
        "--type",
        "ClusterIP",
    ])
    .build("default", "web", None)
    .unwrap_err();
    assert!(message(error).contains("--type NodePort"));
    let error = spec(&["--affinity-timeout", "1h"])
        .build("default", "web", None)
        .unwrap_err();
    assert!(message(error).contains("--affinity ClientIP"));
    let error = spec(&["--affinity", "None", "--affinity-timeout", "1h"])
        .build("default", "web", None)
        .unwrap_err();
    assert!(message(error).contains("--affinity ClientIP"));
}

fn current() -> pb::Service {
    spec(&[
        "--frontend",
        "172.20.0.10:80",
        "--node-port",
        "30080",
        "--backend",
        "10.0.1.5:8080",
        "--backend",
        "10.0.2.7:8080",
        "--affinity",
        "ClientIP",
    ])
    .build("default", "web", None)
    .map(|mut s| {
        s.revision = 9;
        s
    })
    .unwrap()
}

#[test]
fn update_replaces_what_is_given_and_keeps_the_rest() {
    let updated = spec(&["--backend", "10.0.3.9:8080"])
        .build("default", "web", Some(&current()))
        .unwrap();
    assert_eq!(updated.frontends, current().frontends, "frontends kept");
    assert_eq!(updated.r#type(), pb::ServiceType::NodePort);
    assert_eq!(updated.backends.len(), 1);
    assert_eq!(updated.backends[0].address, "10.0.3.9");
    let updated = spec(&["--frontend", "172.20.0.11:80"])
        .build("default", "web", Some(&current()))
        .unwrap();
    assert_eq!(updated.frontends[0].address, "172.20.0.11");
    assert_eq!(updated.frontends[1].port, 30080, "the NodePort kept");
    assert_eq!(updated.backends, current().backends);
    let updated = spec(&["--affinity-timeout", "30m"])
        .build("default", "web", Some(&current()))
        .unwrap();
    assert_eq!(
        updated.session_affinity.unwrap().timeout.unwrap().seconds,
        1800
    );
    let updated = spec(&[
        "--affinity",
        "None",
        "--type",
        "ClusterIP",
        "--frontend",
        "172.20.0.10:80",
    ])
    .build("default", "web", Some(&current()))
    .unwrap();
    assert_eq!(updated.session_affinity, None);
    assert_eq!(updated.r#type(), pb::ServiceType::ClusterIp);
}

#[test]
fn backends_are_added_drained_and_removed_one_by_one() {
    let mut service = current();
    let socket = |s: &str| socket_of(s).unwrap();
    change_backends(
        &mut service,
        &[parse::parse_backend("10.0.3.9:8080,weight=4").unwrap()],
        &[socket("10.0.2.7:8080")],
        &[socket("10.0.1.5:8080")],
    )
    .unwrap();
    let backends: Vec<(&str, pb::BackendState, u32)> = service
        .backends
        .iter()
        .map(|b| (b.address.as_str(), b.state(), b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("10.0.1.5", pb::BackendState::Terminating, 1),
            ("10.0.3.9", pb::BackendState::Active, 4),
        ]
    );
    let error = change_backends(&mut service, &[], &[socket("10.0.9.9:80")], &[]).unwrap_err();
    assert!(message(error).contains("has no backend 10.0.9.9:80"));
    let error = change_backends(&mut service, &[], &[], &[socket("10.0.9.9:80")]).unwrap_err();
    assert!(message(error).contains("has no backend 10.0.9.9:80"));
    let again = parse::parse_backend("10.0.3.9:8080").unwrap();
    let error = change_backends(&mut service, &[again], &[], &[]).unwrap_err();
    assert!(message(error).contains("already has backend 10.0.3.9:8080"));
}
