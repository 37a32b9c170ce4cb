//! Client side: a tower layer that puts the current span's trace context on every request.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::propagation::{current_context, inject_context};

/// A gRPC channel that sends the caller's trace context with every request; use it as
/// `FooServiceClient<TracedChannel>`.
pub type TracedChannel = TraceContextService<tonic::transport::Channel>;

/// Wraps a tonic channel (or any HTTP service) in [`TraceContextService`].
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    TraceContextLayer.layer(channel)
}

/// Tower layer producing [`TraceContextService`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// Injects W3C `traceparent` from `tracing::Span::current()` into each outgoing request.
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S> TraceContextService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for TraceContextService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Called synchronously from the generated client method, i.e. inside the caller's span.
        inject_context(&current_context(), request.headers_mut());
        self.inner.call(request)
    }
}
