//! The `/metrics` HTTP endpoint (plain HTTP/1.1, as Prometheus scrapes it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{MetricsAddress, build_info, render};
use crate::TelemetryError;

/// Content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client that sends no complete request head in this long is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The running `/metrics` endpoint; dropping it stops serving.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (the real port when the flag asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` on `address` (nothing when it is [`MetricsAddress::Off`]) until the
/// returned handle is dropped. `service` names the binary in `kino_build_info`.
///
/// Binding happens before this returns, so a taken port fails start-up with a clear error.
pub async fn serve(
    service: &'static str,
    address: MetricsAddress,
) -> Result<Option<MetricsServer>, TelemetryError> {
    let MetricsAddress::Tcp(addr) = address else {
        tracing::info!(service, "metrics endpoint off (--metrics-address off)");
        return Ok(None);
    };
    build_info(service);
    let bind_error = |source| TelemetryError::MetricsBind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(accept(listener, service));
    tracing::info!(service, address = %local_addr, "serving Prometheus metrics on http://{local_addr}/metrics");
    Ok(Some(MetricsServer { local_addr, task }))
}

async fn accept(listener: TcpListener, service: &'static str) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| respond(request, service)),
                );
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

async fn respond<B>(
    request: http::Request<B>,
    service: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    let plain = "text/plain; charset=utf-8";
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            reply(StatusCode::OK, TEXT_FORMAT, render().await)
        }
        (&Method::GET | &Method::HEAD, "/") => reply(
            StatusCode::OK,
            plain,
            format!("{service}: Prometheus metrics at /metrics\n"),
        ),
        (_, "/metrics" | "/") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "use GET\n".to_owned(),
        ),
        (_, path) => reply(
            StatusCode::NOT_FOUND,
            plain,
            format!("{path} not found; metrics are at /metrics\n"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_stops_on_drop() {
        let server = serve("kino-test", "127.0.0.1:0".parse().unwrap())
            .await
            .expect("binds")
            .expect("on");
        let addr = server.local_addr();
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
            "{metrics}"
        );
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(
            metrics.contains("kino_build_info{service=\"kino-test\""),
            "{metrics}"
        );
        assert!(get(addr, "/nope").await.contains(" 404 "));

        // A taken port is a clear start-up error.
        let error = serve("kino-test", MetricsAddress::Tcp(addr))
            .await
            .expect_err("port taken");
        assert!(error.to_string().contains("--metrics-address"), "{error}");

        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn off_serves_nothing() {
        assert!(
            serve("kino-test", MetricsAddress::Off)
                .await
                .unwrap()
                .is_none()
        );
    }
}
