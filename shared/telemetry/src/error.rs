//! Errors of telemetry set-up.

/// Why telemetry could not be initialised.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The `--log-level` / `KINO_LOG` value is not a valid filter.
    #[error(
        "invalid log filter {value:?} (--log-level / KINO_LOG): {source}; use e.g. `info` or `info,kino_agent=debug`"
    )]
    InvalidLogLevel {
        /// The rejected filter text.
        value: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// The OTLP span exporter could not be built from the endpoint.
    #[error(
        "cannot set up OTLP span export to {endpoint:?} (OTEL_EXPORTER_OTLP_ENDPOINT): {source}; use a URL such as http://127.0.0.1:4317 or unset the variable"
    )]
    OtlpExporter {
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    /// OTLP export needs a Tokio runtime (its gRPC channel runs there).
    #[error(
        "OTLP span export to {endpoint:?} needs a Tokio runtime: call kino_telemetry::init from inside the runtime (e.g. in #[tokio::main])"
    )]
    NoTokioRuntime {
        /// The configured endpoint.
        endpoint: String,
    },

    /// A global tracing subscriber was already installed in this process.
    #[error(
        "telemetry is already initialised in this process (kino_telemetry::init called twice?)"
    )]
    AlreadyInitialised(#[source] tracing_subscriber::util::TryInitError),

    /// The `/metrics` endpoint could not listen on its address.
    #[error(
        "cannot serve metrics on {addr} (--metrics-address): {source}; pick a free port or pass `--metrics-address off`"
    )]
    MetricsBind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}
