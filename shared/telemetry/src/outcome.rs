//! Server side: what became of each RPC — Prometheus counts, errors and latencies per
//! service/method/code, and the gRPC status on the request span.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{CounterVec, HistogramVec};
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::{LATENCY_BUCKETS, counter_vec, histogram_vec};

/// Label value for paths that name no service this server serves (bounds the label set).
const UNKNOWN: &str = "unknown";

struct RpcMetrics {
    started: CounterVec,
    handled: CounterVec,
    errors: CounterVec,
    latency: HistogramVec,
}

static RPC: LazyLock<RpcMetrics> = LazyLock::new(|| RpcMetrics {
    started: counter_vec(
        "kino_grpc_server_started_total",
        "RPCs received, by gRPC service and method.",
        &["grpc_service", "grpc_method"],
    ),
    handled: counter_vec(
        "kino_grpc_server_handled_total",
        "RPCs completed, by gRPC service, method and status code (streams count when they end).",
        &["grpc_service", "grpc_method", "grpc_code"],
    ),
    errors: counter_vec(
        "kino_grpc_server_errors_total",
        "RPCs completed with a status other than OK, by gRPC service and method.",
        &["grpc_service", "grpc_method"],
    ),
    latency: histogram_vec(
        "kino_grpc_server_handling_seconds",
        "Time from receiving an RPC to its response being ready (unary: the whole call; streams: until the stream is open).",
        &["grpc_service", "grpc_method"],
        LATENCY_BUCKETS,
    ),
});

/// Tower layer for gRPC servers: counts every RPC ([`RpcOutcome`]) and puts its status on the
/// request span (`rpc.grpc.status_code`; span status error with the message for the codes
/// OpenTelemetry calls server errors: Unknown, DeadlineExceeded, Unimplemented, Internal,
/// Unavailable, DataLoss).
///
/// Only the services in `known` get their own label values; any other path counts as
/// `unknown`, so a client cannot grow the label set.
#[derive(Debug, Clone)]
pub struct RpcOutcomeLayer {
    known: Arc<HashSet<String>>,
}

impl RpcOutcomeLayer {
    /// A layer for a server serving the fully-qualified gRPC services `known`.
    pub fn new<I, S>(known: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LazyLock::force(&RPC);
        Self {
            known: Arc::new(known.into_iter().map(Into::into).collect()),
        }
    }
}

impl<S> Layer<S> for RpcOutcomeLayer {
    type Service = RpcOutcome<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcOutcome {
            inner,
            known: self.known.clone(),
        }
    }
}

/// See [`RpcOutcomeLayer`].
#[derive(Debug, Clone)]
pub struct RpcOutcome<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RpcOutcome<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = Rpc::of(request.uri().path(), &self.known);
        RPC.started
            .with_label_values(&[&rpc.service, &rpc.method])
            .inc();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            RPC.latency
                .with_label_values(&[&rpc.service, &rpc.method])
                .observe(started.elapsed().as_secs_f64());
            // A status in the headers is a trailers-only response: the RPC is over (tonic
            // answers unary errors this way). Otherwise the status comes in the trailers.
            if let Some(status) = tonic::Status::from_header_map(response.headers()) {
                // Polled inside the request span (tonic enters it around the call).
                record_on_span(&status);
                rpc.finish(status.code());
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(OutcomeBody::new(body, rpc))))
        })
    }
}

/// Writes the RPC's status onto the current (request) span.
fn record_on_span(status: &tonic::Status) {
    let span = tracing::Span::current();
    span.record("rpc.grpc.status_code", status.code() as i64);
    if status.code() == Code::Ok {
        return;
    }
    span.record("rpc.grpc.status_message", status.message());
    if is_server_error(status.code()) {
        span.record(
            "otel.status_description",
            format!("{}: {}", code_name(status.code()), status.message()),
        );
    }
}

/// The codes OpenTelemetry's gRPC conventions count as a server span error; the others are
/// the caller's problem (or an expected answer such as NotFound or a CAS conflict).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The canonical code names (as grpc-go prints them), for the `grpc_code` label.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Service and method labels of one RPC.
struct Rpc {
    service: String,
    method: String,
}

impl Rpc {
    fn of(path: &str, known: &HashSet<String>) -> Rpc {
        match path.trim_start_matches('/').split_once('/') {
            Some((service, method)) if known.contains(service) && !method.contains('/') => Rpc {
                service: service.to_owned(),
                method: method.to_owned(),
            },
            _ => Rpc {
                service: UNKNOWN.to_owned(),
                method: UNKNOWN.to_owned(),
            },
        }
    }

    fn finish(&self, code: Code) {
        RPC.handled
            .with_label_values(&[&self.service, &self.method, code_name(code)])
            .inc();
        if code != Code::Ok {
            RPC.errors
                .with_label_values(&[&self.service, &self.method])
                .inc();
        }
    }
}

/// A response body that counts the RPC when its trailers (the status) go out, or as
/// Canceled when it is dropped before the end (the client went away).
struct OutcomeBody {
    inner: tonic::body::Body,
    rpc: Option<Rpc>,
}

impl OutcomeBody {
    fn new(inner: tonic::body::Body, rpc: Rpc) -> Self {
        Self {
            inner,
            rpc: Some(rpc),
        }
    }

    fn finish(&mut self, code: Code) {
        if let Some(rpc) = self.rpc.take() {
            rpc.finish(code);
        }
    }
}

impl HttpBody for OutcomeBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(trailers)
                        .map_or(Code::Unknown, |s| s.code());
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            // Ended without trailers: not a valid gRPC response.
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OutcomeBody {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const SERVICE: &str = "kino.test.v1.OutcomeService";

    fn counted(rendered: &str, line_start: &str) -> f64 {
        rendered
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    async fn call(path: &str, status: Option<tonic::Status>) {
        let inner = tower::service_fn(move |_request: http::Request<()>| {
            let status = status.clone();
            async move {
                Ok::<_, Infallible>(match status {
                    // Trailers-only: how tonic answers a failed unary call.
                    Some(status) => status.into_http(),
                    None => {
                        let mut trailers = http::HeaderMap::new();
                        tonic::Status::ok("").add_header(&mut trailers).unwrap();
                        let frames: Vec<Result<Frame<Bytes>, tonic::Status>> = vec![
                            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
                        http::Response::new(tonic::body::Body::new(body))
                    }
                })
            }
        });
        let service = RpcOutcomeLayer::new([SERVICE]).layer(inner);
        let request = http::Request::builder().uri(path).body(()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }

    #[tokio::test]
    async fn counts_codes_from_headers_and_trailers_and_bounds_labels() {
        let ok = format!(
            "kino_grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Get\",grpc_service=\"{SERVICE}\"}}"
        );
        let not_found = format!(
            "kino_grpc_server_handled_total{{grpc_code=\"NotFound\",grpc_method=\"Get\",grpc_service=\"{SERVICE}\"}}"
        );
        let errors = format!(
            "kino_grpc_server_errors_total{{grpc_method=\"Get\",grpc_service=\"{SERVICE}\"}}"
        );
        let before = crate::metrics::render().await;
        call(&format!("/{SERVICE}/Get"), None).await;
        call(
            &format!("/{SERVICE}/Get"),
            Some(tonic::Status::not_found("no such thing")),
        )
        .await;
        call("/some.Other/Thing", Some(tonic::Status::unimplemented("?"))).await;
        let after = crate::metrics::render().await;
        assert_eq!(counted(&after, &ok) - counted(&before, &ok), 1.0, "{after}");
        assert_eq!(
            counted(&after, &not_found) - counted(&before, &not_found),
            1.0,
            "{after}"
        );
        assert_eq!(counted(&after, &errors) - counted(&before, &errors), 1.0);
        assert!(
            after.contains(
                "kino_grpc_server_handled_total{grpc_code=\"Unimplemented\",grpc_method=\"unknown\",grpc_service=\"unknown\"}"
            ),
            "{after}"
        );
        assert!(!after.contains("some.Other"), "{after}");
        assert!(
            after.contains(&format!(
                "kino_grpc_server_handling_seconds_count{{grpc_method=\"Get\",grpc_service=\"{SERVICE}\"}}"
            )),
            "{after}"
        );
    }
}
