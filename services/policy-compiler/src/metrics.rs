//! The policy-compiler's Prometheus instruments: compile latency (timed where the view
//! recompiles) and the gauges of identities, policies, compiled entries and endpoints (set
//! at scrape time by the service, `service/gauges.rs`, which reads the view).
//!
//! Instruments only: this file names nothing of the crate, so any layer may record into it
//! without an import loop.

use std::sync::LazyLock;

use kino_telemetry::metrics::{gauge, gauge_vec};
use prometheus::{Counter, Gauge, GaugeVec, Histogram, HistogramOpts, Opts};

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

/// Gauges of the compiler's view, set before every scrape.
pub(crate) struct ViewGauges {
    /// Identities by class.
    pub(crate) identities: GaugeVec,
    /// Policies by kind.
    pub(crate) policies: GaugeVec,
    /// Compiled endpoint identities by enforcement.
    pub(crate) compiled_identities: GaugeVec,
    /// Policy-map entries summed over identities.
    pub(crate) compiled_entries: Gauge,
    /// Endpoints followed.
    pub(crate) endpoints: Gauge,
    /// The view's datastore revision.
    pub(crate) revision: Gauge,
}

pub(crate) static VIEW: LazyLock<ViewGauges> = LazyLock::new(|| ViewGauges {
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
