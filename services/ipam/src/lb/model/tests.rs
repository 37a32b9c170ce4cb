//! Validation of a service as requested: every refusal names its field and says the fix;
//! what passes is normalised (namespace, weights, states, affinity timeout) as stored.

use super::*;

fn cluster_ip(address: &str, port: u32, protocol: pb::Protocol) -> pb::Frontend {
    pb::Frontend {
        r#type: pb::FrontendType::ClusterIp as i32,
        address: address.into(),
        port,
        protocol: protocol as i32,
        ..Default::default()
    }
}

fn backend(address: &str, port: u32) -> pb::Backend {
    pb::Backend {
        address: address.into(),
        port,
        ..Default::default()
    }
}

fn service() -> pb::Service {
    pb::Service {
        name: "web".into(),
        frontends: vec![
            cluster_ip("172.20.0.10", 80, pb::Protocol::Tcp),
            cluster_ip("fd00:ffff::a", 80, pb::Protocol::Tcp),
        ],
        backends: vec![backend("10.0.1.5", 8080), backend("fd00::105", 8080)],
        ..Default::default()
    }
}

/// The field and reason of the refusal of `service` after `change`.
fn refused(change: impl FnOnce(&mut pb::Service)) -> InvalidField {
    let mut s = service();
    change(&mut s);
    ServiceSpec::from_request(&s, &ServiceNetwork::default()).expect_err("refused")
}

#[test]
fn a_valid_service_is_normalised() {
    let spec = ServiceSpec::from_request(&service(), &ServiceNetwork::default()).unwrap();
    assert_eq!(spec.name.to_string(), "default/web");
    assert_eq!(spec.kind, ServiceType::ClusterIp);
    assert_eq!(spec.affinity, Affinity::None);
    assert_eq!(spec.frontends[1].key.to_string(), "[fd00:ffff::a]:80/TCP");
    assert_eq!(spec.frontends[0].key.record_name(), "tcp-172.20.0.10-80");
    assert_eq!(spec.frontends[1].key.record_name(), "tcp-fd00:ffff::a-80");
    assert_eq!(spec.backends[0].weight, 1, "weight 0 means 1");
    let record = spec.to_record(
        &[7, 8],
        &["n1".into(), "n2".into()],
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH,
    );
    assert_eq!(record.namespace, "default");
    assert_eq!(record.r#type(), pb::ServiceType::ClusterIp);
    assert_eq!(record.frontends[1].id, 8);
    assert_eq!(record.backends[0].weight, 1);
    assert_eq!(record.backends[0].state(), pb::BackendState::Active);
    assert_eq!(record.backends[1].node_name, "n2");
    assert_eq!(
        record.session_affinity.unwrap().r#type(),
        pb::SessionAffinityType::None
    );
    for frontend in &record.frontends {
        assert_eq!(
            FrontendKey::of_record(frontend).map(|k| k.record_name()),
            Some(spec.frontends[frontend.id as usize - 7].key.record_name()),
            "the stored frontend reads back as the same key"
        );
    }
}

#[test]
fn node_ports_and_affinity() {
    let mut s = service();
    s.r#type = pb::ServiceType::NodePort as i32;
    s.frontends.push(pb::Frontend {
        r#type: pb::FrontendType::NodePort as i32,
        port: 30080,
        protocol: pb::Protocol::Tcp as i32,
        ..Default::default()
    });
    s.session_affinity = Some(pb::SessionAffinity {
        r#type: pb::SessionAffinityType::ClientIp as i32,
        timeout: None,
    });
    let spec = ServiceSpec::from_request(&s, &ServiceNetwork::default()).unwrap();
    assert_eq!(spec.frontends[2].key.record_name(), "tcp--30080");
    assert_eq!(spec.frontends[2].key.to_string(), "*:30080/TCP");
    assert_eq!(
        spec.affinity,
        Affinity::ClientIp(Duration::from_secs(10800))
    );
}

#[test]
fn every_refusal_names_its_field() {
    type Change = Box<dyn FnOnce(&mut pb::Service)>;
    let cases: Vec<(&str, &str, Change)> = vec![
        ("service.name", "required", Box::new(|s| s.name.clear())),
        (
            "service.name",
            "lower-case",
            Box::new(|s| s.name = "Web".into()),
        ),
        (
            "service.name",
            "longer than 253",
            Box::new(|s| s.name = "a".repeat(254)),
        ),
        (
            "service.namespace",
            "contains '.'",
            Box::new(|s| s.namespace = "a.b".into()),
        ),
        (
            "service.type",
            "not a ServiceType",
            Box::new(|s| s.r#type = 9),
        ),
        (
            "service.frontends",
            "at least one",
            Box::new(|s| s.frontends.clear()),
        ),
        (
            "service.frontends",
            "at most 64",
            Box::new(|s| {
                s.frontends = (1..=65)
                    .map(|p| cluster_ip("172.20.0.10", p, pb::Protocol::Tcp))
                    .collect()
            }),
        ),
        (
            "service.backends",
            "at most 1000",
            Box::new(|s| s.backends = (1..=1001).map(|p| backend("10.0.1.5", p)).collect()),
        ),
        (
            "service.frontends[1].type",
            "set the frontend's type",
            Box::new(|s| s.frontends[1].r#type = 0),
        ),
        (
            "service.frontends[0].protocol",
            "PROTOCOL_TCP",
            Box::new(|s| s.frontends[0].protocol = 0),
        ),
        (
            "service.frontends[0].protocol",
            "not a Protocol",
            Box::new(|s| s.frontends[0].protocol = 7),
        ),
        (
            "service.frontends[0].port",
            "outside 1..65535",
            Box::new(|s| s.frontends[0].port = 0),
        ),
        (
            "service.frontends[0].port",
            "outside 1..65535",
            Box::new(|s| s.frontends[0].port = 65536),
        ),
        (
            "service.frontends[1].address",
            "required",
            Box::new(|s| s.frontends[1].address.clear()),
        ),
        (
            "service.frontends[1].address",
            "not an IP address",
            Box::new(|s| s.frontends[1].address = "web".into()),
        ),
        (
            "service.frontends[0].address",
            "outside the service CIDRs (172.20.0.0/16, fd00:ffff::/112)",
            Box::new(|s| s.frontends[0].address = "10.96.0.10".into()),
        ),
        (
            "service.frontends[0].address",
            "network address",
            Box::new(|s| s.frontends[0].address = "172.20.0.0".into()),
        ),
        (
            "service.frontends[1]",
            "also service.frontends[0]",
            Box::new(|s| s.frontends[1] = s.frontends[0].clone()),
        ),
        (
            "service.frontends[0].address",
            "inside service CIDR 172.20.0.0/16",
            Box::new(|s| s.frontends[0].r#type = pb::FrontendType::ExternalIp as i32),
        ),
        (
            "service.frontends[0].address",
            "loopback",
            Box::new(|s| {
                s.frontends[0].r#type = pb::FrontendType::ExternalIp as i32;
                s.frontends[0].address = "127.0.0.1".into();
            }),
        ),
        (
            "service.frontends[0].type",
            "SERVICE_TYPE_NODE_PORT",
            Box::new(|s| {
                s.frontends[0].r#type = pb::FrontendType::NodePort as i32;
                s.frontends[0].address.clear();
            }),
        ),
        (
            "service.frontends[0].address",
            "leave the address empty",
            Box::new(|s| {
                s.r#type = pb::ServiceType::NodePort as i32;
                s.frontends[0].r#type = pb::FrontendType::NodePort as i32;
                s.frontends[0].port = 30080;
            }),
        ),
        (
            "service.frontends[0].port",
            "outside the NodePort range 30000-32767",
            Box::new(|s| {
                s.r#type = pb::ServiceType::NodePort as i32;
                s.frontends[0].r#type = pb::FrontendType::NodePort as i32;
                s.frontends[0].address.clear();
            }),
        ),
        (
            "service.frontends[0].port_name",
            "lower-case",
            Box::new(|s| s.frontends[0].port_name = "HTTP".into()),
        ),
        (
            "service.backends[1].address",
            "not an IP address",
            Box::new(|s| s.backends[1].address = "fd00::x".into()),
        ),
        (
            "service.backends[0].port",
            "outside 1..65535",
            Box::new(|s| s.backends[0].port = 70000),
        ),
        (
            "service.backends[0].protocol",
            "not a Protocol",
            Box::new(|s| s.backends[0].protocol = 3),
        ),
        (
            "service.backends[0].protocol",
            "no frontend of port name \"\" is UDP",
            Box::new(|s| s.backends[0].protocol = pb::Protocol::Udp as i32),
        ),
        (
            "service.backends[0].port_name",
            "no frontend has port name \"dns\"",
            Box::new(|s| s.backends[0].port_name = "dns".into()),
        ),
        (
            "service.backends[0].weight",
            "above 65535",
            Box::new(|s| s.backends[0].weight = 65536),
        ),
        (
            "service.backends[0].state",
            "not a BackendState",
            Box::new(|s| s.backends[0].state = 5),
        ),
        (
            "service.backends[1]",
            "10.0.1.5:8080 is also service.backends[0]",
            Box::new(|s| s.backends[1] = s.backends[0].clone()),
        ),
        (
            "service.session_affinity.timeout",
            "from 1 s to 86400 s",
            Box::new(|s| {
                s.session_affinity = Some(pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::ClientIp as i32,
                    timeout: Some(prost_types::Duration {
                        seconds: 86401,
                        nanos: 0,
                    }),
                })
            }),
        ),
        (
            "service.session_affinity.timeout",
            "whole number of seconds",
            Box::new(|s| {
                s.session_affinity = Some(pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::ClientIp as i32,
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 500,
                    }),
                })
            }),
        ),
        (
            "service.session_affinity.timeout",
            "only for SESSION_AFFINITY_TYPE_CLIENT_IP",
            Box::new(|s| {
                s.session_affinity = Some(pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::None as i32,
                    timeout: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                })
            }),
        ),
        (
            "service.session_affinity.type",
            "not a SessionAffinityType",
            Box::new(|s| {
                s.session_affinity = Some(pb::SessionAffinity {
                    r#type: 4,
                    timeout: None,
                })
            }),
        ),
    ];
    for (field, reason, change) in cases {
        let error = refused(change);
        assert_eq!(error.field, field, "{error}");
        assert!(error.reason.contains(reason), "{field}: {error}");
    }
}

#[test]
fn the_edges_pass() {
    let network = ServiceNetwork::default();
    let mut s = service();
    s.frontends[0].port = 65535;
    s.backends[0].port = 1;
    s.backends[0].weight = 65535;
    s.session_affinity = Some(pb::SessionAffinity {
        r#type: pb::SessionAffinityType::ClientIp as i32,
        timeout: Some(prost_types::Duration {
            seconds: 86400,
            nanos: 0,
        }),
    });
    s.name = "a".repeat(253);
    s.namespace = "n".repeat(63);
    s.frontends
        .extend((1..=62).map(|p| cluster_ip("172.20.0.11", p, pb::Protocol::Udp)));
    s.backends.extend((1..=998).map(|p| backend("10.0.1.6", p)));
    let spec = ServiceSpec::from_request(&s, &network).expect("at the limits");
    assert_eq!(spec.frontends.len(), 64);
    assert_eq!(spec.backends.len(), 1000);
    assert_eq!(
        spec.affinity,
        Affinity::ClientIp(Duration::from_secs(86400))
    );
}
