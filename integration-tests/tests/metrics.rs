//! Every long-running service serves Prometheus metrics: after a CNI ADD (and a spoofed packet
//! the datapath drops), each `/metrics` endpoint is scraped over HTTP and its per-RPC counts
//! and domain metrics checked against what happened.

use kino_integration_tests::scrape::{http_get, sample};
use kino_integration_tests::world::{Netns, Suite, SuiteOptions, kernel_tests_possible};

/// The body of a `/metrics` response, after checking the head.
fn body(response: std::io::Result<String>, service: &str) -> String {
    let response = response.unwrap_or_else(|e| panic!("scraping {service}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{service}: not an HTTP response: {response}"));
    assert!(head.contains(" 200 "), "{service}: {head}");
    assert!(
        head.contains("text/plain; version=0.0.4"),
        "{service}: Prometheus text format: {head}"
    );
    assert!(
        body.contains(&format!("kino_build_info{{service=\"{service}\"")),
        "{service}: {body}"
    );
    body.to_owned()
}

/// A sample that must exist; returns its value.
fn value(text: &str, service: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels)
        .unwrap_or_else(|| panic!("{service}: no {name}{labels:?} in:\n{text}"))
}

/// `kino_grpc_server_handled_total` of one method with code OK.
fn handled_ok(text: &str, service: &str, grpc_service: &str, method: &str) -> f64 {
    value(
        text,
        service,
        "kino_grpc_server_handled_total",
        &[
            ("grpc_service", grpc_service),
            ("grpc_method", method),
            ("grpc_code", "OK"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_its_metrics() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = Suite::start_with(
        "m",
        SuiteOptions {
            metrics: true,
            ..SuiteOptions::default()
        },
    )
    .await;
    let metrics = suite.metrics.clone().expect("metrics on");
    let pod = Netns::new(&format!("{}-p1", suite.prefix));
    let add = suite.cni(
        "ADD",
        "ctr-metered",
        Some(&pod.path()),
        &suite.cni_config("1.1.0"),
        "IgnoreUnknown=1;K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=shop",
    );
    assert_eq!(add.code, 0, "{add:?}\nagent log:\n{}", suite.agent_log());
    let result = add.json();
    let gateway_ip = result["ips"][0]["gateway"].as_str().expect("a gateway");
    let listed = suite.kino(&["endpoint", "list", "-o", "json"]).stdout;
    let endpoints: serde_json::Value = serde_json::from_slice(&listed).expect("json");
    let endpoint_id = endpoints["endpoints"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no endpoint in {endpoints}"))
        .to_string();

    // A packet from an address that is not the pod's: the datapath drops it (anti-spoofing)
    // and counts the drop in the endpoint's counters map.
    pod.exec(&["ip", "addr", "add", "192.0.2.77/32", "dev", "eth0"]);
    let _ = pod.try_exec(&["ping", "-c", "1", "-W", "1", "-I", "192.0.2.77", gateway_ip]);
    // And traffic it may send.
    let _ = pod.ping(gateway_ip, 1);

    // datastore-gateway.
    let gw = body(
        http_get(&metrics.gateway, "/metrics"),
        "kino-datastore-gateway",
    );
    const DATASTORE: &str = "kino.datastore.v1.DatastoreService";
    assert!(handled_ok(&gw, "gateway", DATASTORE, "Create") >= 1.0);
    assert!(
        value(
            &gw,
            "gateway",
            "kino_grpc_server_handling_seconds_count",
            &[("grpc_service", DATASTORE), ("grpc_method", "Create")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &gw,
            "gateway",
            "kino_datastore_resources",
            &[("kind", "Endpoint")]
        ),
        1.0
    );
    assert!(
        value(
            &gw,
            "gateway",
            "kino_datastore_resources",
            &[("kind", "Node")]
        ) >= 1.0
    );
    // The policy-compiler and IPAM watch kinds through the gateway.
    assert!(
        value(
            &gw,
            "gateway",
            "kino_datastore_watch_subscribers",
            &[("kind", "Endpoint")]
        ) >= 1.0
    );
    assert!(
        value(
            &gw,
            "gateway",
            "kino_datastore_backend_watches",
            &[("kind", "Endpoint")]
        ) >= 1.0
    );
    assert!(
        value(
            &gw,
            "gateway",
            "kino_datastore_watch_lag_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        value(
            &gw,
            "gateway",
            "kino_datastore_store_operation_seconds_count",
            &[("backend", "embedded"), ("operation", "create")]
        ) >= 1.0
    );
    assert!(
        value(
            &gw,
            "gateway",
            "kino_datastore_revision",
            &[("revision", "current")]
        ) > 0.0
    );

    // ipam.
    let ipam = body(http_get(&metrics.ipam, "/metrics"), "kino-ipam");
    assert!(handled_ok(&ipam, "ipam", "kino.ipam.v1.IpamService", "Allocate") >= 1.0);
    let v4 = [("pool", "default"), ("family", "IPv4")];
    assert_eq!(
        value(&ipam, "ipam", "kino_ipam_allocations_total", &v4),
        1.0
    );
    assert_eq!(
        value(&ipam, "ipam", "kino_ipam_pool_allocated_addresses", &v4),
        1.0
    );
    assert!(value(&ipam, "ipam", "kino_ipam_pool_capacity_addresses", &v4) > 1.0);
    let utilisation = value(&ipam, "ipam", "kino_ipam_pool_utilisation_ratio", &v4);
    assert!(utilisation > 0.0 && utilisation < 1.0, "{utilisation}");
    let node = [
        ("pool", "default"),
        ("node", suite.node_name()),
        ("family", "IPv4"),
    ];
    assert_eq!(
        value(&ipam, "ipam", "kino_ipam_node_allocated_addresses", &node),
        1.0
    );
    assert!(value(&ipam, "ipam", "kino_ipam_node_capacity_addresses", &node) > 1.0);
    assert!(value(&ipam, "ipam", "kino_ipam_node_utilisation_ratio", &node) > 0.0);

    // policy-compiler.
    let policy = body(
        http_get(&metrics.policy, "/metrics"),
        "kino-policy-compiler",
    );
    assert!(
        handled_ok(
            &policy,
            "policy-compiler",
            "kino.policy.v1.PolicyService",
            "AllocateIdentity"
        ) >= 1.0
    );
    assert!(
        value(
            &policy,
            "policy-compiler",
            "kino_policy_identities",
            &[("class", "endpoint")]
        ) >= 1.0
    );
    assert!(
        value(
            &policy,
            "policy-compiler",
            "kino_policy_identities",
            &[("class", "reserved")]
        ) >= 1.0
    );
    assert_eq!(
        value(&policy, "policy-compiler", "kino_policy_endpoints", &[]),
        1.0
    );
    assert!(
        value(
            &policy,
            "policy-compiler",
            "kino_policy_compile_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(value(&policy, "policy-compiler", "kino_policy_view_revision", &[]) > 0.0);
    for name in [
        "kino_policy_compiled_entries",
        "kino_policy_compiled_identity_changes_total",
    ] {
        value(&policy, "policy-compiler", name, &[]);
    }

    // agent, inside the node namespace.
    let agent = body(
        suite.node.http_get(&metrics.agent, "/metrics"),
        "kino-agent",
    );
    assert!(
        handled_ok(
            &agent,
            "agent",
            "kino.agent.v1.AgentService",
            "CreateEndpoint"
        ) == 1.0
    );
    assert_eq!(
        value(
            &agent,
            "agent",
            "kino_agent_endpoints",
            &[("state", "ready")]
        ),
        1.0
    );
    value(
        &agent,
        "agent",
        "kino_agent_policy_map_entries",
        &[("endpoint_id", &endpoint_id), ("direction", "ingress")],
    );
    assert!(
        value(
            &agent,
            "agent",
            "kino_agent_drops_total",
            &[("reason", "spoofed_source")]
        ) >= 1.0,
        "the spoofed ping was dropped and counted:\n{agent}"
    );
    assert!(
        value(
            &agent,
            "agent",
            "kino_agent_forwarded_packets_total",
            &[("direction", "egress")]
        ) >= 1.0
    );
    value(&agent, "agent", "kino_agent_flows_seen_total", &[]);
    value(
        &agent,
        "agent",
        "kino_agent_flows_lost_total",
        &[("source", "datapath_ring")],
    );

    // Anything but /metrics (and /) is a 404 that says where the metrics are.
    let missing = http_get(&metrics.gateway, "/nope").expect("answers");
    assert!(missing.starts_with("HTTP/1.0 404") || missing.starts_with("HTTP/1.1 404"));
}
