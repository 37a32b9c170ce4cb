//! Tracing, logs, OTLP export and W3C trace-context propagation for every Kinocilium service.
//!
//! - [`LogArgs`] is flattened into each binary's clap config; [`init`] installs the global
//!   subscriber (pretty or JSON logs on stderr, OTLP span export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and returns a [`TelemetryGuard`] that flushes spans
//!   on drop.
//! - Every gRPC client wraps its channel in [`TraceContextLayer`] (see [`TracedChannel`]) so
//!   the current span's context travels as a `traceparent` header; every server passes
//!   [`grpc_server_span`] to `tonic::transport::Server::builder().trace_fn(..)` so the request
//!   span continues the caller's trace. Handlers do nothing themselves.
//! - [`RpcOutcomeLayer`] (installed by every server) counts each RPC by service, method and
//!   status code, times it, and puts its status on the request span.
//! - [`metrics`] holds the process's Prometheus registry, metrics computed at scrape time and
//!   the `/metrics` endpoint behind each service's `--metrics-address`.

#![warn(missing_docs)]

mod args;
mod client;
mod error;
mod init;
pub mod metrics;
mod outcome;
mod propagation;
mod server;

pub use args::{LogArgs, LogFormat};
pub use client::{TraceContextLayer, TraceContextService, TracedChannel, traced};
pub use error::TelemetryError;
pub use init::{OTLP_ENDPOINT_ENV, TelemetryGuard, init};
pub use outcome::{RpcOutcome, RpcOutcomeLayer};
pub use propagation::{current_context, extract_context, inject_context};
pub use server::grpc_server_span;
