//! Server side: the per-request span, continuing the caller's trace.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::propagation::extract_context;

/// Span for one incoming gRPC request, child of the caller's `traceparent` if it sent one.
///
/// Pass it to `tonic::transport::Server::builder().trace_fn(grpc_server_span)`.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = split_grpc_path(path);
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        // Filled in by `RpcOutcomeLayer` when the RPC fails.
        rpc.grpc.status_code = tracing::field::Empty,
        rpc.grpc.status_message = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let parent = extract_context(request.headers());
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to link.
        let _ = span.set_parent(parent);
    }
    span
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_grpc_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

#[cfg(test)]
mod tests {
    use super::split_grpc_path;

    #[test]
    fn splits_service_and_method() {
        assert_eq!(
            split_grpc_path("/kino.datastore.v1.DatastoreService/Get"),
            ("kino.datastore.v1.DatastoreService", "Get")
        );
        assert_eq!(split_grpc_path("/odd"), ("odd", ""));
    }
}
