//! Unit tests of the endpoint manager's pure parts: labels and CNI results.

use std::net::IpAddr;

use kino_api::agent::{Endpoint, EndpointAddressing, EndpointNetworking};
use kino_api::types::{Label, Labels, PodRef};

use super::{addresses_of, cni_response, endpoint_labels};

#[test]
fn labels_add_pod_and_namespace_and_sort() {
    let given = Labels {
        labels: vec![
            Label {
                key: "app".into(),
                value: "web".into(),
                source: String::new(),
            },
            Label {
                key: "tier".into(),
                value: "front".into(),
                source: "k8s".into(),
            },
        ],
    };
    let pod = PodRef {
        namespace: String::new(),
        name: "web-1".into(),
    };
    let labels = endpoint_labels(Some(&given), Some(&pod));
    let text: Vec<String> = labels
        .labels
        .iter()
        .map(|l| format!("{}:{}={}", l.source, l.key, l.value))
        .collect();
    assert_eq!(
        text,
        [
            "container:app=web",
            "container:namespace=default",
            "container:pod=web-1",
            "k8s:tier=front"
        ]
    );
}

#[test]
fn cni_results_carry_ipv6_after_ipv4_when_the_endpoint_has_it() {
    let mut endpoint = Endpoint {
        networking: Some(EndpointNetworking {
            addressing: Some(EndpointAddressing {
                ipv4: "10.0.1.23".into(),
                ipv4_gateway: "10.0.1.1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v4_only = cni_response(&endpoint);
    assert_eq!(v4_only.ips.len(), 1);
    assert_eq!(v4_only.routes.len(), 1);
    assert_eq!(addresses_of(&endpoint), [IpAddr::from([10, 0, 1, 23])]);

    let addressing = endpoint
        .networking
        .as_mut()
        .and_then(|n| n.addressing.as_mut())
        .expect("addressing");
    addressing.ipv6 = "fd00::117".into();
    addressing.ipv6_gateway = "fd00::101".into();
    let dual = cni_response(&endpoint);
    let ips: Vec<(&str, &str, u32)> = dual
        .ips
        .iter()
        .map(|ip| (ip.address.as_str(), ip.gateway.as_str(), ip.interface))
        .collect();
    assert_eq!(
        ips,
        [
            ("10.0.1.23/32", "10.0.1.1", 1),
            ("fd00::117/128", "fd00::101", 1)
        ]
    );
    let routes: Vec<(&str, &str)> = dual
        .routes
        .iter()
        .map(|r| (r.destination.as_str(), r.gateway.as_str()))
        .collect();
    assert_eq!(routes, [("0.0.0.0/0", "10.0.1.1"), ("::/0", "fd00::101")]);
    assert_eq!(
        addresses_of(&endpoint),
        [
            IpAddr::from([10, 0, 1, 23]),
            "fd00::117".parse::<IpAddr>().expect("v6")
        ]
    );
}
