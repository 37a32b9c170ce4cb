//! Shutdown draining: a handle that says "we are shutting down", and a tower layer that ends
//! idle response streams (watches) with UNAVAILABLE so HTTP/2 graceful shutdown can finish.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tower::{Layer, Service};

/// Tells whether the server is shutting down; long-running handlers may `select!` on
/// [`Draining::wait`] to finish their streams themselves (e.g. with a final message).
#[derive(Debug, Clone)]
pub struct Draining {
    rx: watch::Receiver<bool>,
}

impl Draining {
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Self {
        Self { rx }
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has started (or the server is gone).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the sender (the server) is gone: that is shutdown too.
        let _ = rx.wait_for(|draining| *draining).await;
    }
}

/// Layer wrapping every response body in [`EndOnDrainBody`].
#[derive(Debug, Clone)]
pub(crate) struct EndStreamsLayer {
    draining: Draining,
}

impl EndStreamsLayer {
    pub(crate) fn new(draining: Draining) -> Self {
        Self { draining }
    }
}

impl<S> Layer<S> for EndStreamsLayer {
    type Service = EndStreams<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndStreams {
            inner,
            draining: self.draining.clone(),
        }
    }
}

/// See [`EndStreamsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct EndStreams<S> {
    inner: S,
    draining: Draining,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for EndStreams<S>
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
        let response = self.inner.call(request);
        let draining = self.draining.clone();
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                if body.is_end_stream() {
                    body
                } else {
                    tonic::body::Body::new(EndOnDrainBody::new(body, draining))
                }
            }))
        })
    }
}

/// Passes the inner body through; once shutdown starts and the inner body has nothing ready,
/// ends it with trailers `grpc-status: UNAVAILABLE`, so clients reconnect and resume.
///
/// Ready frames always go first: a unary response (already complete when the body is built)
/// is never cut, and a stream's queued messages are flushed before it ends.
struct EndOnDrainBody {
    inner: tonic::body::Body,
    drained: BoxFuture<()>,
    ended: bool,
}

impl EndOnDrainBody {
    fn new(inner: tonic::body::Body, draining: Draining) -> Self {
        Self {
            inner,
            drained: Box::pin(async move { draining.wait().await }),
            ended: false,
        }
    }
}

impl HttpBody for EndOnDrainBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame)),
            Poll::Pending => {}
        }
        if this.drained.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.ended = true;
        let status = tonic::Status::unavailable(
            "server is shutting down; reconnect (to another replica) and resume",
        );
        let mut trailers = http::HeaderMap::new();
        // Only fails for a message that cannot be a header value; ours is static ASCII.
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
