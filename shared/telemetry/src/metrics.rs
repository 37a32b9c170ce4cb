//! Prometheus metrics: one registry per process, metrics computed at scrape time, and the
//! `/metrics` HTTP endpoint.
//!
//! - Metrics live in the process-wide [`registry`]. Services declare theirs once (in a
//!   `LazyLock` static) with [`counter_vec`], [`gauge_vec`], [`histogram_vec`] or
//!   [`scraped_counter_vec`]; a duplicate name is a programming error and panics at first use.
//! - State that already exists elsewhere (endpoints, pools, identities, kernel counters) is not
//!   mirrored on every change: a hook registered with [`on_scrape`] reads it when Prometheus
//!   scrapes, and sets gauges (or [`ScrapedCounterVec`]s for monotonic counters kept by
//!   someone else, e.g. the datapath's per-CPU maps).
//! - [`serve`] starts the HTTP endpoint on the address of a service's `--metrics-address`
//!   flag ([`MetricsAddress`]); [`render`] produces the same text for tests and tools.
//! - Every gRPC server gets per-RPC counts, errors and latencies from
//!   [`crate::RpcOutcomeLayer`] (installed by `kino_service_kit::serve`).

mod address;
mod endpoint;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use prometheus::core::Collector;
use prometheus::proto::{Counter, MetricFamily, MetricType};
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry, TextEncoder,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use address::MetricsAddress;
pub use endpoint::{MetricsServer, serve};

/// Latency buckets (seconds) for requests and store operations: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long one scrape hook may take before the scrape goes on without it (a stuck lock must
/// not make `/metrics` hang).
const HOOK_TIMEOUT: Duration = Duration::from_secs(5);

type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Hook = Arc<dyn Fn() -> HookFuture + Send + Sync>;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
/// One scrape at a time: hooks reset and refill gauges, which must not interleave.
static SCRAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process-wide registry every Kinocilium metric is registered in.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers `collector` in [`registry`] and returns it.
///
/// # Panics
/// If a metric of the same name is already registered (declare each metric once, in a static).
pub fn register<C: Collector + Clone + 'static>(collector: C) -> C {
    if let Err(error) = REGISTRY.register(Box::new(collector.clone())) {
        panic!("registering a metric: {error} (declare each metric once, in a static)");
    }
    collector
}

/// A registered counter family.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> CounterVec {
    register(CounterVec::new(Opts::new(name, help), labels).expect("valid counter definition"))
}

/// A registered gauge without labels.
pub fn gauge(name: &str, help: &str) -> Gauge {
    register(Gauge::with_opts(Opts::new(name, help)).expect("valid gauge definition"))
}

/// A registered gauge family.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition"))
}

/// A registered histogram family with `buckets` (upper bounds, seconds for latencies).
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid histogram definition"),
    )
}

/// A registered [`ScrapedCounterVec`].
pub fn scraped_counter_vec(name: &str, help: &str, labels: &[&str]) -> ScrapedCounterVec {
    register(ScrapedCounterVec(
        GaugeVec::new(Opts::new(name, help), labels).expect("valid counter definition"),
    ))
}

/// A counter whose values are counted elsewhere (kernel maps, another component) and copied in
/// at scrape time with [`ScrapedCounterVec::set`]; exposed with the `counter` type so that
/// `rate()` and reset detection work.
#[derive(Clone)]
pub struct ScrapedCounterVec(GaugeVec);

impl ScrapedCounterVec {
    /// Sets the current total of one label combination.
    pub fn set(&self, labels: &[&str], total: f64) {
        self.0.with_label_values(labels).set(total);
    }

    /// Forgets every label combination (call before re-reading the source, so that gone
    /// series disappear).
    pub fn reset(&self) {
        self.0.reset();
    }
}

impl Collector for ScrapedCounterVec {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        for family in &mut families {
            family.set_field_type(MetricType::COUNTER);
            for metric in family.mut_metric() {
                let mut counter = Counter::default();
                counter.set_value(metric.get_gauge().get_value());
                metric.set_counter(counter);
            }
        }
        families
    }
}

/// Runs `hook` before every scrape (and [`render`]); it reads some state and sets the gauges
/// that describe it. Hooks run one scrape at a time, each bounded to a few seconds.
pub fn on_scrape<F, Fut>(hook: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let hook: Hook = Arc::new(move || Box::pin(hook()));
    HOOKS.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
}

/// Runs the scrape hooks and renders every metric in the Prometheus text format (0.0.4).
pub async fn render() -> String {
    let _one_at_a_time = SCRAPE.lock().await;
    let hooks: Vec<Hook> = HOOKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Hooks read state, sometimes over gRPC (IPAM asks the datastore): keep those calls out
    // of the traces, or every scrape would add a trace per service to Jaeger.
    let span = tracing::info_span!("metrics.scrape");
    let _ = span.set_parent(unsampled());
    for hook in hooks {
        let hook = hook().instrument(span.clone());
        if tokio::time::timeout(HOOK_TIMEOUT, hook).await.is_err() {
            tracing::warn!(
                timeout_secs = HOOK_TIMEOUT.as_secs(),
                "a metrics scrape hook timed out; its metrics keep their previous values"
            );
        }
    }
    let mut text = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&REGISTRY.gather(), &mut text) {
        tracing::warn!(%error, "encoding metrics");
    }
    String::from_utf8(text).unwrap_or_default()
}

/// A parent context whose children are not sampled (never exported), with ids that are
/// valid so that the decision propagates to the services the hooks call.
fn unsampled() -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x6b69_6e6f_6d65_7472_6963_7373_6372_6170_u128),
        SpanId::from(0x6d65_7472_6963_7321_u64),
        TraceFlags::default(),
        false,
        TraceState::default(),
    ))
}

/// `kino_build_info{service, version} 1`: which binary and version answers on this endpoint.
fn build_info(service: &'static str) {
    static BUILD_INFO: LazyLock<GaugeVec> = LazyLock::new(|| {
        gauge_vec(
            "kino_build_info",
            "Always 1; the labels name the Kinocilium service and its version.",
            &["service", "version"],
        )
    });
    BUILD_INFO
        .with_label_values(&[service, env!("CARGO_PKG_VERSION")])
        .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrape_runs_hooks_and_renders_counter_types() {
        let seen = scraped_counter_vec(
            "kino_test_seen_total",
            "Test: a counter kept elsewhere.",
            &["reason"],
        );
        let gauge = gauge_vec("kino_test_things", "Test: things by kind.", &["kind"]);
        let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            let (seen, gauge, polls) = (seen.clone(), gauge.clone(), polls.clone());
            on_scrape(move || {
                let (seen, gauge, polls) = (seen.clone(), gauge.clone(), polls.clone());
                async move {
                    let n = polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    seen.reset();
                    seen.set(&["POLICY_DENIED"], 7.0 * n as f64);
                    gauge.reset();
                    gauge.with_label_values(&["Node"]).set(3.0);
                }
            });
        }
        let first = render().await;
        assert!(
            first.contains("# TYPE kino_test_seen_total counter"),
            "{first}"
        );
        assert!(
            first.contains("kino_test_seen_total{reason=\"POLICY_DENIED\"} 7"),
            "{first}"
        );
        assert!(
            first.contains("kino_test_things{kind=\"Node\"} 3"),
            "{first}"
        );
        let second = render().await;
        assert!(
            second.contains("kino_test_seen_total{reason=\"POLICY_DENIED\"} 14"),
            "hooks run on every scrape: {second}"
        );
    }
}
