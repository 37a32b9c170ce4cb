//! The policy-compiler's Prometheus metrics: compile latency (timed where the view
//! recompiles) and — read from the view at scrape time — identities, policies, compiled
//! entries and endpoints.

use std::sync::{Arc, LazyLock};

use kino_telemetry::metrics::{gauge, gauge_vec, on_scrape};
use prometheus::{Counter, Gauge, GaugeVec, Histogram, HistogramOpts, Opts};

use crate::compile::kind_name;
use crate::identity::{IdentityClass, LOCAL_SCOPE};
use crate::policy_map::CompiledPolicy;
use crate::service::PolicyService;

/// Compile latency buckets: 10 µs to 10 s (a small change recompiles in microseconds).
const COMPILE_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters and timings of incremental compilation.
pub(crate) struct CompileMetrics {
    /// Duration of one incremental recompilation (one batch of datastore changes).
    pub(crate) seconds: Histogram,
    /// Identities whose compiled policy changed.
    pub(crate) changed_identities: Counter,
}

pub(crate) static COMPILE: LazyLock<CompileMetrics> = LazyLock::new(|| {
    CompileMetrics {
    seconds: kino_telemetry::metrics::register(
        Histogram::with_opts(
            HistogramOpts::new(
                "kino_policy_compile_seconds",
                "Duration of one incremental recompilation (the identities a batch of datastore changes touched).",
            )
            .buckets(COMPILE_BUCKETS.to_vec()),
        )
        .expect("valid histogram"),
    ),
    changed_identities: kino_telemetry::metrics::register(
        Counter::with_opts(Opts::new(
            "kino_policy_compiled_identity_changes_total",
            "Identities whose compiled policy changed (each is streamed to the agents that need it).",
        ))
        .expect("valid counter"),
    ),
}
});

struct ViewGauges {
    identities: GaugeVec,
    policies: GaugeVec,
    compiled_identities: GaugeVec,
    compiled_entries: Gauge,
    endpoints: Gauge,
    revision: Gauge,
}

static VIEW: LazyLock<ViewGauges> = LazyLock::new(|| ViewGauges {
    identities: gauge_vec(
        "kino_policy_identities",
        "Security identities the compiler knows, by class (endpoint, cidr, reserved).",
        &["class"],
    ),
    policies: gauge_vec(
        "kino_policy_policies",
        "Policies imported, by kind (KinoNetworkPolicy, NetworkPolicy).",
        &["kind"],
    ),
    compiled_identities: gauge_vec(
        "kino_policy_compiled_identities",
        "Endpoint identities with a compiled policy, by enforcement (none, ingress, egress, both).",
        &["enforcement"],
    ),
    compiled_entries: gauge(
        "kino_policy_compiled_entries",
        "Policy-map entries compiled, summed over identities (each endpoint's BPF policy map holds its identity's entries).",
    ),
    endpoints: gauge(
        "kino_policy_endpoints",
        "Endpoints the compiler follows in the datastore.",
    ),
    revision: gauge(
        "kino_policy_view_revision",
        "Datastore revision the compiled state reflects.",
    ),
});

fn enforcement(policy: &CompiledPolicy) -> &'static str {
    match (policy.enforcement.ingress, policy.enforcement.egress) {
        (false, false) => "none",
        (true, false) => "ingress",
        (false, true) => "egress",
        (true, true) => "both",
    }
}

/// Reads the view into the gauges before every scrape.
pub fn install(service: Arc<PolicyService>) {
    LazyLock::force(&COMPILE);
    on_scrape(move || {
        let service = service.clone();
        async move {
            let gauges = &*VIEW;
            let view = service.view();
            let compiler = view.compiler();
            // Counted without walking the CIDR identities (one per prefix policies name):
            // a scrape holds the view's read lock, which the compiler waits for.
            let cidr = compiler.cidr_identities().len();
            let (mut endpoint, mut reserved) = (0usize, 0usize);
            for info in compiler.identities().range(..LOCAL_SCOPE).map(|(_, i)| i) {
                match info.class {
                    IdentityClass::Endpoint => endpoint += 1,
                    IdentityClass::Reserved => reserved += 1,
                    IdentityClass::Cidr(_) => {}
                }
            }
            for (class, count) in [
                ("endpoint", endpoint),
                ("cidr", cidr),
                ("reserved", reserved),
            ] {
                gauges
                    .identities
                    .with_label_values(&[class])
                    .set(count as f64);
            }
            gauges.policies.reset();
            for policy in compiler.policies().values() {
                gauges
                    .policies
                    .with_label_values(&[kind_name(policy.kind)])
                    .inc();
            }
            gauges.compiled_identities.reset();
            for policy in compiler.compiled().values() {
                gauges
                    .compiled_identities
                    .with_label_values(&[enforcement(policy)])
                    .inc();
            }
            gauges
                .compiled_entries
                .set(compiler.compiled_entries() as f64);
            gauges.endpoints.set(view.endpoints().count() as f64);
            gauges.revision.set(view.revision() as f64);
        }
    });
}
