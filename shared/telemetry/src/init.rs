//! Installs the process-wide tracing subscriber and OpenTelemetry pipeline.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, fmt};

use crate::{LogArgs, LogFormat, TelemetryError};

/// Environment variable that turns on OTLP/gRPC span export (e.g. `http://127.0.0.1:4317`).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long dropping the guard waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Crates whose own spans never go to OpenTelemetry: the OTLP exporter uses them itself, so
/// tracing them would export spans about exporting spans.
const NOT_TRACED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// Filter directives added unless `--log-level` mentions opentelemetry itself.
const QUIET_UNLESS_ASKED: &[&str] = &[
    "opentelemetry=warn",
    "opentelemetry_sdk=warn",
    "opentelemetry_otlp=warn",
];

/// Keeps the tracer provider alive; dropping it flushes and shuts down span export.
///
/// Hold it in `main` until the end, so that short-lived processes (the CLI) still export.
/// Drop it on a multi-threaded Tokio runtime (the `#[tokio::main]` default) or outside one:
/// the final export runs on the runtime's I/O.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if !self.exporting {
            return;
        }
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "flushing OTLP spans at exit failed; the last spans may be lost");
        }
    }
}

/// Installs logging (stderr, pretty or JSON, filtered by `args.log_level`) and tracing
/// (OTLP export to `$OTEL_EXPORTER_OTLP_ENDPOINT` when set, with `service.name =
/// service_name`); sets the global W3C TraceContext propagator.
///
/// The OpenTelemetry layer is installed even without an endpoint, so a service that does not
/// export still passes incoming trace ids on to the services it calls.
pub fn init(service_name: &'static str, args: &LogArgs) -> Result<TelemetryGuard, TelemetryError> {
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|e| !e.trim().is_empty());
    let (dispatch, guard) = build(service_name, args, endpoint.as_deref())?;
    dispatch
        .try_init()
        .map_err(TelemetryError::AlreadyInitialised)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(guard.provider.clone());
    tracing::debug!(
        service = service_name,
        otlp_endpoint = endpoint.as_deref().unwrap_or("(off)"),
        log_format = %args.log_format,
        log_level = %args.log_level,
        "telemetry initialised"
    );
    Ok(guard)
}

/// Builds the subscriber without installing it (tests use it with `with_default`).
pub(crate) fn build(
    service_name: &'static str,
    args: &LogArgs,
    otlp_endpoint: Option<&str>,
) -> Result<(Dispatch, TelemetryGuard), TelemetryError> {
    let mut env_filter =
        EnvFilter::try_new(&args.log_level).map_err(|source| TelemetryError::InvalidLogLevel {
            value: args.log_level.clone(),
            source,
        })?;
    // The SDK logs its own life cycle at info; keep its warnings and errors (failed exports)
    // unless the operator asked for opentelemetry's logs explicitly.
    if !args.log_level.contains("opentelemetry") {
        for quiet in QUIET_UNLESS_ASKED {
            env_filter = env_filter.add_directive(quiet.parse().expect("static directive"));
        }
    }
    let provider = tracer_provider(service_name, otlp_endpoint)?;

    let logs: Box<dyn Layer<Registry> + Send + Sync> = match args.log_format {
        LogFormat::Pretty => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(env_filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(env_filter)
            .boxed(),
    };
    // Spans go to OpenTelemetry independently of the log level, so `--log-level warn` does
    // not break traces.
    let traced_targets = NOT_TRACED.iter().fold(
        Targets::new().with_default(LevelFilter::INFO),
        |targets, target| targets.with_target(*target, LevelFilter::OFF),
    );
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name))
        .with_filter(traced_targets);

    let subscriber = Registry::default().with(logs).with(traces);
    let guard = TelemetryGuard {
        provider,
        exporting: otlp_endpoint.is_some(),
    };
    Ok((Dispatch::new(subscriber), guard))
}

fn tracer_provider(
    service_name: &'static str,
    otlp_endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder().with_service_name(service_name).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = otlp_endpoint else {
        return Ok(builder.build());
    };
    // The exporter's channel spawns its worker on the current runtime; fail clearly instead
    // of panicking inside tonic.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoTokioRuntime {
            endpoint: endpoint.to_owned(),
        });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::OtlpExporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(builder.with_batch_exporter(exporter).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TraceContextLayer, extract_context, grpc_server_span};
    use opentelemetry::trace::TraceContextExt;
    use tower::{Layer as _, Service, ServiceExt};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    fn local_dispatch() -> (Dispatch, TelemetryGuard) {
        build("kino-telemetry-test", &LogArgs::default(), None).expect("subscriber builds")
    }

    #[tokio::test]
    async fn client_layer_injects_current_trace_and_server_span_continues_it() {
        let (dispatch, _guard) = local_dispatch();
        let _default = tracing::dispatcher::set_default(&dispatch);

        let caller = tracing::info_span!("caller");
        let caller_cx = caller.context();
        let trace_id = caller_cx.span().span_context().trace_id();
        assert!(
            caller_cx.span().span_context().is_valid(),
            "caller span has an OTel context"
        );

        // A real tower service at the bottom captures what would go on the wire.
        let capture = tower::service_fn(|request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(request.headers().clone())
        });
        let mut client = TraceContextLayer.layer(capture);
        let headers = {
            let _entered = caller.enter();
            let request = http::Request::builder()
                .uri("http://127.0.0.1:7401/kino.datastore.v1.DatastoreService/Get")
                .body(())
                .expect("request");
            client
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("call")
        };

        let traceparent = headers
            .get("traceparent")
            .expect("traceparent header injected")
            .to_str()
            .expect("ascii");
        assert!(traceparent.contains(&trace_id.to_string()), "{traceparent}");
        let extracted = extract_context(&headers);
        assert_eq!(extracted.span().span_context().trace_id(), trace_id);

        let mut incoming = http::Request::builder()
            .uri("/kino.datastore.v1.DatastoreService/Get")
            .body(())
            .expect("request");
        *incoming.headers_mut() = headers;
        let server_span = grpc_server_span(&incoming);
        let server_cx = server_span.context();
        assert_eq!(server_cx.span().span_context().trace_id(), trace_id);
        assert_ne!(
            server_cx.span().span_context().span_id(),
            caller_cx.span().span_context().span_id(),
            "the server span is a child, not the caller's span"
        );
    }

    #[test]
    fn no_span_injects_nothing() {
        let (dispatch, _guard) = local_dispatch();
        tracing::dispatcher::with_default(&dispatch, || {
            let mut headers = http::HeaderMap::new();
            crate::inject_context(&crate::current_context(), &mut headers);
            assert!(headers.get("traceparent").is_none());
        });
    }

    #[test]
    fn json_format_builds() {
        let args = LogArgs {
            log_format: LogFormat::Json,
            log_level: "debug,h2=info".to_owned(),
        };
        let (dispatch, _guard) = build("t", &args, None).expect("json subscriber builds");
        tracing::dispatcher::with_default(&dispatch, || tracing::info!(field = 1, "json line"));
    }

    #[test]
    fn invalid_log_level_names_the_flag() {
        let args = LogArgs {
            log_level: "info,=[".to_owned(),
            ..LogArgs::default()
        };
        let error = build("t", &args, None).expect_err("bad filter rejected");
        let message = error.to_string();
        assert!(message.contains("--log-level"), "{message}");
    }

    #[test]
    fn otlp_without_runtime_is_a_clear_error() {
        let error = build("t", &LogArgs::default(), Some("http://127.0.0.1:4317"))
            .expect_err("needs a runtime");
        assert!(
            matches!(error, TelemetryError::NoTokioRuntime { .. }),
            "{error}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn otlp_to_an_absent_collector_still_starts_and_stops() {
        // Nothing listens on port 9 (discard) here; export fails, the service must not.
        let (dispatch, guard) = build(
            "kino-telemetry-test",
            &LogArgs::default(),
            Some("http://127.0.0.1:9"),
        )
        .expect("exporter builds lazily");
        assert!(guard.is_exporting());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("work").in_scope(|| tracing::info!("inside"));
        });
        let started = std::time::Instant::now();
        drop(guard);
        assert!(started.elapsed() < SHUTDOWN_TIMEOUT + Duration::from_secs(2));
    }

    #[test]
    fn init_without_otlp_env_works() {
        // The only test in this binary that installs the global subscriber.
        assert!(
            std::env::var_os(OTLP_ENDPOINT_ENV).is_none(),
            "run the tests without {OTLP_ENDPOINT_ENV}"
        );
        let guard = init("kino-telemetry-test", &LogArgs::default()).expect("init");
        assert!(!guard.is_exporting());
        tracing::info!("logged through the global subscriber");
        let second = init("kino-telemetry-test", &LogArgs::default());
        assert!(matches!(second, Err(TelemetryError::AlreadyInitialised(_))));
    }
}
