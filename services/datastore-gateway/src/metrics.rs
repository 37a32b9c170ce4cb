//! The gateway's Prometheus metrics: store operation latencies (timed by
//! [`crate::store::instrumented::InstrumentedStore`]), watch fan-out lag (timed by the watch
//! hub), and — read at scrape time — resources per kind, watch subscribers and backend watches
//! per kind, and the store's revision.

use std::sync::{Arc, LazyLock};

use kino_telemetry::metrics::{LATENCY_BUCKETS, gauge_vec, histogram_vec, on_scrape};
use prometheus::{CounterVec, GaugeVec, Histogram, HistogramVec};

use crate::Gateway;

/// Store operation metrics, by backend and operation.
pub(crate) struct StoreMetrics {
    pub(crate) latency: HistogramVec,
    pub(crate) errors: CounterVec,
}

pub(crate) static STORE: LazyLock<StoreMetrics> = LazyLock::new(|| StoreMetrics {
    latency: histogram_vec(
        "kino_datastore_store_operation_seconds",
        "Duration of backing-store operations (etcd requests or embedded-file transactions), by backend and operation.",
        &["backend", "operation"],
        LATENCY_BUCKETS,
    ),
    errors: kino_telemetry::metrics::counter_vec(
        "kino_datastore_store_errors_total",
        "Backing-store operations that failed in the backend (unavailable, I/O); refusals such as NotFound or CAS conflicts are not counted.",
        &["backend", "operation"],
    ),
});

/// Watch lag buckets: 0.1 ms to 5 s.
const LAG_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Time from the shared backend watch delivering a change to the gateway to the change being
/// handed to a subscriber's stream (live changes only; replays of the ring are not lag).
pub(crate) static WATCH_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    kino_telemetry::metrics::register(
        Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "kino_datastore_watch_lag_seconds",
                "Time from the store's watch delivering a change to the gateway (about its commit) to the change being queued on a subscriber's stream.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid histogram"),
    )
});

struct ScrapedGauges {
    resources: GaugeVec,
    subscribers: GaugeVec,
    backend_watches: GaugeVec,
    revision: GaugeVec,
}

static GAUGES: LazyLock<ScrapedGauges> = LazyLock::new(|| ScrapedGauges {
    resources: gauge_vec(
        "kino_datastore_resources",
        "Resources stored, by kind.",
        &["kind"],
    ),
    subscribers: gauge_vec(
        "kino_datastore_watch_subscribers",
        "Client watches open, by kind.",
        &["kind"],
    ),
    backend_watches: gauge_vec(
        "kino_datastore_backend_watches",
        "Watches open on the backing store (one shared per kind, plus one per client that fell behind the ring), by kind.",
        &["kind"],
    ),
    revision: gauge_vec(
        "kino_datastore_revision",
        "The backing store's current and compacted revisions.",
        &["revision"],
    ),
});

/// Reads `gateway`'s state into the scraped gauges before every scrape.
pub fn install(gateway: Arc<Gateway>) {
    LazyLock::force(&STORE);
    LazyLock::force(&WATCH_LAG);
    on_scrape(move || {
        let gateway = gateway.clone();
        async move {
            let gauges = &*GAUGES;
            match gateway.resource_counts().await {
                Ok(counts) => {
                    for (kind, count) in counts {
                        gauges
                            .resources
                            .with_label_values(&[kind])
                            .set(count as f64);
                    }
                }
                Err(error) => tracing::warn!(%error, "counting resources for metrics"),
            }
            match gateway.status().await {
                Ok(status) => {
                    gauges.subscribers.reset();
                    gauges.backend_watches.reset();
                    for fanout in status.watches {
                        gauges
                            .subscribers
                            .with_label_values(&[&fanout.kind])
                            .set(fanout.subscribers as f64);
                        gauges
                            .backend_watches
                            .with_label_values(&[&fanout.kind])
                            .set(fanout.backend_watches as f64);
                    }
                    gauges
                        .revision
                        .with_label_values(&["current"])
                        .set(status.store.revision as f64);
                    gauges
                        .revision
                        .with_label_values(&["compacted"])
                        .set(status.store.compact_revision as f64);
                }
                Err(error) => tracing::warn!(%error, "reading the store status for metrics"),
            }
        }
    });
}
