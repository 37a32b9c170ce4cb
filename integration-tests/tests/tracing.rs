//! One OpenTelemetry trace per CNI ADD: kino-cni → agent → IPAM (and the policy-compiler) →
//! datastore-gateway → its store (etcd with `KINO_TEST_ETCD_ENDPOINTS`, else the embedded
//! file), exported over OTLP to a real receiver (rotel) and checked span by span: services,
//! parent links across every hop, attributes, and the error of a failed ADD.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kino_integration_tests::in_ci;
use kino_integration_tests::otlp::{ReceivedSpan, Rotel, rotel_binary};
use kino_integration_tests::world::{Netns, Suite, SuiteOptions, kernel_tests_possible};

/// How long the spans of an ADD may take to arrive (services export in batches).
const EXPORT_WAIT: Duration = Duration::from_secs(30);

const CNI: &str = "kino-cni";
const AGENT: &str = "kino-agent";
const IPAM: &str = "kino-ipam";
const GATEWAY: &str = "kino-datastore-gateway";

/// The spans of one trace, by span id.
struct Trace<'a> {
    spans: Vec<&'a ReceivedSpan>,
    by_id: HashMap<&'a str, &'a ReceivedSpan>,
}

impl<'a> Trace<'a> {
    fn of(all: &'a [ReceivedSpan], trace_id: &str) -> Trace<'a> {
        let spans: Vec<&ReceivedSpan> = all.iter().filter(|s| s.trace_id == trace_id).collect();
        let by_id = spans.iter().map(|s| (s.id.as_str(), *s)).collect();
        Trace { spans, by_id }
    }

    fn services(&self) -> BTreeSet<&str> {
        self.spans.iter().map(|s| s.service.as_str()).collect()
    }

    fn parent(&self, span: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
        self.by_id.get(span.parent_id.as_str()).copied()
    }

    /// Spans of `service` whose parent belongs to another service: where the service was
    /// entered over gRPC.
    fn entries(&self, service: &str) -> Vec<&'a ReceivedSpan> {
        self.spans
            .iter()
            .filter(|s| s.service == service)
            .filter(|s| self.parent(s).is_some_and(|p| p.service != service))
            .copied()
            .collect()
    }

    fn describe(&self) -> String {
        self.spans
            .iter()
            .map(|s| {
                let parent = self
                    .parent(s)
                    .map(|p| format!("{}:{}", p.service, p.name))
                    .unwrap_or_else(|| format!("<{}>", s.parent_id));
                format!(
                    "  {} {:<28} {:<55} parent {parent} {}\n",
                    s.id, s.service, s.name, s.status_code
                )
            })
            .collect()
    }
}

/// The root span of the CNI call for `container_id`.
fn cni_span<'a>(spans: &'a [ReceivedSpan], container_id: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.service == CNI && s.attr("cni.container_id") == container_id)
}

/// Checks the trace of the successful ADD; `Err` says what is still missing.
fn check_add_trace(
    spans: &[ReceivedSpan],
    ip: &str,
    node: &str,
    backend: &str,
) -> Result<(), String> {
    let root = cni_span(spans, "ctr-traced").ok_or("no kino-cni span for ctr-traced yet")?;
    let trace = Trace::of(spans, &root.trace_id);
    let services = trace.services();
    for service in [CNI, AGENT, IPAM, GATEWAY] {
        if !services.contains(service) {
            return Err(format!(
                "trace {} has no {service} span yet; it has:\n{}",
                root.trace_id,
                trace.describe()
            ));
        }
    }
    // IPAM's own datastore calls: the gateway's spans arrive in export batches, and the
    // compiler's Get can put the gateway in the trace before IPAM's calls are exported —
    // not there yet is retried (a hop really broken fails the wait with this message).
    if !trace
        .spans
        .iter()
        .any(|s| s.service == GATEWAY && trace.parent(s).is_some_and(|p| p.service == IPAM))
    {
        return Err(format!(
            "IPAM's datastore calls are not in trace {} yet:\n{}",
            root.trace_id,
            trace.describe()
        ));
    }
    // No span of the trace hangs off a span that is not in it (a broken hop).
    // A parent still in its service's export batch arrives later: retried, not failed (a
    // really broken hop fails the wait with this message).
    for span in &trace.spans {
        if span.id != root.id && trace.parent(span).is_none() {
            return Err(format!(
                "span {} {:?} of {} has parent {} outside the trace:\n{}",
                span.id,
                span.name,
                span.service,
                span.parent_id,
                trace.describe()
            ));
        }
    }
    // The root: the CNI call, with what the runtime and the agent told it.
    assert_eq!(root.name, "CNI ADD");
    assert_eq!(root.parent_id, "", "the CNI span starts the trace");
    assert!(!root.is_error(), "{root:#?}");
    assert_eq!(root.attr("cni.command"), "ADD");
    assert_eq!(root.attr("k8s.pod.name"), "web-1");
    assert_eq!(root.attr("k8s.namespace.name"), "shop");
    assert_eq!(root.attr("k8s.node.name"), node);
    assert!(root.attr("endpoint.ips").contains(ip), "{root:#?}");
    assert!(!root.attr("endpoint.id").is_empty(), "{root:#?}");

    // Each hop's entry span is the child of a span of its caller, in the same trace.
    let entered_from = |service: &str, callers: &[&str]| {
        let entries = trace.entries(service);
        assert!(
            !entries.is_empty(),
            "{service} has no span whose parent is another service's:\n{}",
            trace.describe()
        );
        for entry in &entries {
            let parent = trace.parent(entry).expect("entries have parents");
            assert!(
                callers.contains(&parent.service.as_str()),
                "{service} span {:?} has a parent in {} (expected one of {callers:?}):\n{}",
                entry.name,
                parent.service,
                trace.describe()
            );
            assert_eq!(entry.kind, "SPAN_KIND_SERVER", "{entry:#?}");
        }
        entries
    };
    let agent_entries = entered_from(AGENT, &[CNI]);
    assert!(
        agent_entries
            .iter()
            .any(|s| s.name == "kino.agent.v1.AgentService/CreateEndpoint"),
        "{}",
        trace.describe()
    );
    let ipam_entries = entered_from(IPAM, &[AGENT]);
    assert!(
        ipam_entries
            .iter()
            .any(|s| s.name == "kino.ipam.v1.IpamService/Allocate"),
        "{}",
        trace.describe()
    );
    let gateway_entries = entered_from(GATEWAY, &[AGENT, IPAM, "kino-policy-compiler"]);
    assert!(
        gateway_entries
            .iter()
            .any(|s| trace.parent(s).is_some_and(|p| p.service == IPAM)),
        "IPAM's datastore calls are in the trace:\n{}",
        trace.describe()
    );

    // The agent's and IPAM's own spans carry the endpoint.
    let create = trace
        .spans
        .iter()
        .find(|s| s.service == AGENT && s.name == "create endpoint")
        .unwrap_or_else(|| panic!("no agent create-endpoint span:\n{}", trace.describe()));
    assert_eq!(create.attr("container.id"), "ctr-traced");
    assert_eq!(create.attr("k8s.pod.name"), "web-1");
    assert_eq!(create.attr("k8s.node.name"), node);
    assert_eq!(create.attr("endpoint.id"), root.attr("endpoint.id"));
    assert!(create.attr("endpoint.ips").contains(ip), "{create:#?}");
    let allocate = trace
        .spans
        .iter()
        .find(|s| s.service == IPAM && s.name == "IPAM allocate" && s.attr("ipam.family") == "IPv4")
        .unwrap_or_else(|| panic!("no IPAM allocate span:\n{}", trace.describe()));
    assert_eq!(allocate.attr("ipam.address"), ip);
    assert_eq!(allocate.attr("container.id"), "ctr-traced");
    assert_eq!(allocate.attr("ipam.node"), node);

    // The gateway's store calls are spans under its RPCs.
    let store_calls: Vec<&&ReceivedSpan> = trace
        .spans
        .iter()
        .filter(|s| s.service == GATEWAY && s.attr("db.system") == backend)
        .collect();
    // The agent's record is written last: its spans may still be in the gateway's export
    // batch when the rest has arrived (retried, not failed).
    if !store_calls
        .iter()
        .any(|s| s.attr("db.operation") == "create" && s.attr("db.key").starts_with("Endpoint/"))
    {
        return Err(format!(
            "the endpoint record's {backend} create is not a span of the trace yet:\n{}",
            trace.describe()
        ));
    }
    for call in store_calls {
        let parent = trace.parent(call).expect("checked above");
        assert!(
            parent.service == GATEWAY && parent.name.starts_with("kino.datastore.v1."),
            "store call {:?} hangs off {:?}",
            call.name,
            parent.name
        );
    }
    eprintln!(
        "trace {} of the ADD ({} spans):\n{}",
        root.trace_id,
        trace.spans.len(),
        trace.describe()
    );
    Ok(())
}

/// Checks the trace of the refused ADD.
fn check_failed_trace(spans: &[ReceivedSpan]) -> Result<(), String> {
    let root = cni_span(spans, "ctr-refused").ok_or("no kino-cni span for ctr-refused yet")?;
    let trace = Trace::of(spans, &root.trace_id);
    let failed_create = trace
        .spans
        .iter()
        .find(|s| s.service == AGENT && s.name == "create endpoint")
        .ok_or_else(|| format!("no agent span in the failed ADD yet:\n{}", trace.describe()))?;
    assert!(
        root.is_error(),
        "the CNI span records the failure: {root:#?}"
    );
    assert!(!root.status_message.is_empty(), "{root:#?}");
    assert!(!root.attr("cni.error_code").is_empty(), "{root:#?}");
    assert!(
        failed_create.is_error() && failed_create.status_message.contains("192.0.2.10"),
        "the agent's span says why: {failed_create:#?}"
    );
    eprintln!(
        "trace {} of the refused ADD: kino-cni says {:?}, the agent says {:?}",
        root.trace_id, root.status_message, failed_create.status_message
    );
    Ok(())
}

/// Waits until `check` passes on the received spans, failing with its last complaint.
async fn wait_for(
    rotel: &Rotel,
    what: &str,
    check: impl Fn(&[ReceivedSpan]) -> Result<(), String>,
) {
    let deadline = Instant::now() + EXPORT_WAIT;
    loop {
        let spans = rotel.spans();
        match check(&spans) {
            Ok(()) => return,
            Err(missing) if Instant::now() > deadline => {
                let output = rotel.output();
                let tail: String = output
                    .chars()
                    .skip(output.chars().count().saturating_sub(4000))
                    .collect();
                panic!(
                    "{what}: still incomplete after {EXPORT_WAIT:?}: {missing}\n{} spans received; rotel's last output:\n{tail}",
                    spans.len()
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cni_add_is_one_trace_across_every_service() {
    if !kernel_tests_possible() {
        return;
    }
    let Some(rotel_binary) = rotel_binary() else {
        assert!(
            !in_ci(),
            "rotel-agent is required in CI; ./deploy/local/install-deps.sh installs it"
        );
        eprintln!("SKIPPED: rotel-agent not installed (./deploy/local/install-deps.sh)");
        return;
    };
    let rotel = Rotel::start(&rotel_binary).await.expect("rotel starts");
    let etcd = std::env::var("KINO_TEST_ETCD_ENDPOINTS")
        .ok()
        .filter(|e| !e.is_empty());
    let backend = if etcd.is_some() { "etcd" } else { "embedded" };
    let suite = Suite::start_with(
        "t",
        SuiteOptions {
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), rotel.endpoint()),
                // Export every half second rather than every 5 s: a quicker test.
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "500".into()),
            ],
            etcd_endpoints: etcd,
            // The agent exports from the node namespace to the same address.
            forward_to_host: vec![rotel.port],
            ..SuiteOptions::default()
        },
    )
    .await;
    let traced = Netns::new(&format!("{}-p1", suite.prefix));
    let refused = Netns::new(&format!("{}-p2", suite.prefix));
    let config = suite.cni_config("1.1.0");
    let cni = |container: &str, netns: &Netns, pod: &str, extra: &str| {
        let mut cmd_args = format!("IgnoreUnknown=1;K8S_POD_NAME={pod};K8S_POD_NAMESPACE=shop");
        cmd_args.push_str(extra);
        // kino-cni exports its own span (and flushes it before exiting).
        suite.cni_with_env(
            "ADD",
            container,
            Some(&netns.path()),
            &config,
            &cmd_args,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &rotel.endpoint())],
        )
    };

    let add = cni("ctr-traced", &traced, "web-1", "");
    assert_eq!(add.code, 0, "{add:?}\nagent log:\n{}", suite.agent_log());
    let ip = add.json()["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // An address outside every pool: IPAM refuses, the agent fails, kino-cni reports it.
    let failed = cni("ctr-refused", &refused, "web-2", ";IP=192.0.2.10");
    assert_ne!(failed.code, 0, "{failed:?}");

    let node = suite.node_name().to_owned();
    wait_for(&rotel, "the ADD's trace", |spans| {
        check_add_trace(spans, &ip, &node, backend)
    })
    .await;
    wait_for(&rotel, "the failed ADD's trace", check_failed_trace).await;
}
