//! A safety net under every server: no `grpc-message` leaves longer than
//! [`MAX_STATUS_MESSAGE_BYTES`].
//!
//! Error messages quote caller input cut to 128 bytes ([`kino_api::quote`]), but a message
//! can still grow from many parts (a list of document errors, a peer's message wrapped in
//! ours). A status message travels as one HTTP/2 header, percent-encoded (up to 3 bytes per
//! byte); stock clients refuse header lists over 8–16 KiB (grpc-core, grpc-go) and fail the
//! call with an error of their own that hides ours. So the layer cuts the message, in the
//! headers of a trailers-only response and in the trailers of any other, at a character
//! boundary, and says how long it was.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tower::{Layer, Service};

/// The longest status message sent, in bytes before percent-encoding (at most three times
/// that on the wire: well under every stock client's header limit).
pub const MAX_STATUS_MESSAGE_BYTES: usize = 2048;

/// Cuts an over-long status message in `headers` (headers or trailers); anything else in
/// them is kept.
pub fn cap_status_message(headers: &mut http::HeaderMap) {
    let Some(value) = headers.get("grpc-message") else {
        return;
    };
    // Percent-encoding only grows a message: a short header needs no decoding.
    if value.len() <= MAX_STATUS_MESSAGE_BYTES {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return;
    }
    let note = format!(" … (message cut: {} bytes in all)", message.len());
    let mut end = MAX_STATUS_MESSAGE_BYTES - note.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let cut = tonic::Status::with_details(
        status.code(),
        format!("{}{note}", &message[..end]),
        status.details().to_vec().into(),
    );
    // Only fails for a message that cannot be a header value; a cut valid one can.
    let _ = cut.add_header(headers);
}

/// Layer applying [`cap_status_message`] to every response of the server.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MessageCapLayer;

impl<S> Layer<S> for MessageCapLayer {
    type Service = MessageCap<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageCap { inner }
    }
}

/// See [`MessageCapLayer`].
#[derive(Debug, Clone)]
pub(crate) struct MessageCap<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for MessageCap<S>
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
        Box::pin(async move {
            let mut response = response.await?;
            cap_status_message(response.headers_mut());
            Ok(response.map(|body| {
                if body.is_end_stream() {
                    body
                } else {
                    tonic::body::Body::new(CapTrailersBody { inner: body })
                }
            }))
        })
    }
}

/// Passes the body through, cutting the status message of its trailers.
struct CapTrailersBody {
    inner: tonic::body::Body,
}

impl HttpBody for CapTrailersBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.get_mut().inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    cap_status_message(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &http::HeaderMap) -> String {
        tonic::Status::from_header_map(headers)
            .expect("a status")
            .message()
            .to_owned()
    }

    #[test]
    fn long_messages_are_cut_short_ones_kept() {
        let mut headers = http::HeaderMap::new();
        tonic::Status::invalid_argument("name \"x\" is bad")
            .add_header(&mut headers)
            .unwrap();
        cap_status_message(&mut headers);
        assert_eq!(message(&headers), "name \"x\" is bad");

        let mut headers = http::HeaderMap::new();
        let long = format!("name {} is bad", "é x%".repeat(300_000));
        tonic::Status::invalid_argument(long.clone())
            .add_header(&mut headers)
            .unwrap();
        cap_status_message(&mut headers);
        let cut = message(&headers);
        assert!(cut.len() <= MAX_STATUS_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.starts_with("name é x%"), "{cut:.40}");
        assert!(
            cut.ends_with(&format!("(message cut: {} bytes in all)", long.len())),
            "{}",
            &cut[cut.len() - 60..]
        );
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(headers["grpc-message"].len() <= 3 * MAX_STATUS_MESSAGE_BYTES);
    }
}
