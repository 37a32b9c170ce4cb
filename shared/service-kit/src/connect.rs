//! Client channels to other services, with trace-context propagation built in; TCP targets
//! use mTLS (re-reading the certificate files at each new connection) when a CA is set.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kino_telemetry::TracedChannel;
use tonic::transport::{Channel, Endpoint};

use crate::error::error_chain;
use crate::{ClientTlsArgs, ServiceError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on connections with open streams, so a dead peer ends a watch promptly.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects now; fails (naming the target) if the service is not reachable.
///
/// Targets: `127.0.0.1:7401`, `:7402` (= 127.0.0.1), `http://host:port`, `https://host:port`,
/// `unix:/run/kino/agent.sock`. A target without a scheme uses TLS iff `--upstream-tls-ca`
/// is set; unix sockets are always plaintext (protected by their file mode).
pub async fn connect(target: &str, tls: &ClientTlsArgs) -> Result<TracedChannel, ServiceError> {
    let (endpoint, transport) = endpoint(target, tls)?;
    let channel = match transport {
        Transport::Unix(path) => endpoint.connect_with_connector(unix_connector(path)).await,
        Transport::Tls => {
            endpoint
                .connect_with_connector(crate::tls::tls_connector(tls.clone()))
                .await
        }
        Transport::Plain => endpoint.connect().await,
    }
    .map_err(|e| ServiceError::Connect {
        target: target.to_owned(),
        detail: error_chain(&e),
    })?;
    Ok(kino_telemetry::traced(channel))
}

/// Like [`connect`] but connects on first use (and reconnects after failures), so a
/// service can start before its dependencies. Must be called inside a Tokio runtime.
pub fn connect_lazy(target: &str, tls: &ClientTlsArgs) -> Result<TracedChannel, ServiceError> {
    let (endpoint, transport) = endpoint(target, tls)?;
    let channel: Channel = match transport {
        Transport::Unix(path) => endpoint.connect_with_connector_lazy(unix_connector(path)),
        Transport::Tls => {
            endpoint.connect_with_connector_lazy(crate::tls::tls_connector(tls.clone()))
        }
        Transport::Plain => endpoint.connect_lazy(),
    };
    Ok(kino_telemetry::traced(channel))
}

/// A parsed client target.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Unix(PathBuf),
    Uri { uri: String, tls: bool },
}

fn parse_target(target: &str, tls_configured: bool) -> Result<Target, ServiceError> {
    let invalid = |reason: &str| ServiceError::InvalidTarget {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    let text = target.trim();
    if let Some(rest) = text.strip_prefix("unix:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(invalid("the unix socket path is empty"));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if text.starts_with("http://") {
        return Ok(Target::Uri {
            uri: text.to_owned(),
            tls: false,
        });
    }
    if text.starts_with("https://") {
        return Ok(Target::Uri {
            uri: text.to_owned(),
            tls: true,
        });
    }
    if text.contains("://") {
        return Err(invalid("only http://, https:// and unix: are supported"));
    }
    let authority = match text.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_owned(),
    };
    let port = authority
        .rsplit_once(':')
        .map(|(_, port)| port)
        .ok_or_else(|| invalid("a port is required (HOST:PORT)"))?;
    port.parse::<u16>()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    let scheme = if tls_configured { "https" } else { "http" };
    Ok(Target::Uri {
        uri: format!("{scheme}://{authority}"),
        tls: tls_configured,
    })
}

/// How a channel reaches its server.
enum Transport {
    Unix(PathBuf),
    Tls,
    Plain,
}

/// The endpoint for `target` and how to reach it.
fn endpoint(target: &str, tls: &ClientTlsArgs) -> Result<(Endpoint, Transport), ServiceError> {
    let (endpoint, transport) = match parse_target(target, tls.is_enabled())? {
        Target::Unix(path) => {
            // The authority only fills the :authority header; the connector ignores the URI.
            (
                Endpoint::from_static("http://localhost"),
                Transport::Unix(path),
            )
        }
        Target::Uri { uri, tls: use_tls } => {
            // Plaintext by default only because the PKI could not be read: say so, rather
            // than let the server's TLS refuse us with a puzzling transport error.
            if let Some(reason) = &tls.unusable_pki
                && !use_tls
                && !target.trim().starts_with("http://")
            {
                return Err(ServiceError::CredentialsUnreadable {
                    target: target.to_owned(),
                    reason: reason.clone(),
                });
            }
            // Our connector runs the TLS handshake, so tonic sees a plain http:// endpoint.
            let uri = match (use_tls, uri.strip_prefix("https://")) {
                (true, Some(rest)) => format!("http://{rest}"),
                _ => uri,
            };
            let endpoint = Endpoint::from_shared(uri).map_err(|e| ServiceError::InvalidTarget {
                target: target.to_owned(),
                reason: error_chain(&e),
            })?;
            if use_tls {
                if !tls.is_enabled() {
                    return Err(ServiceError::TlsConfig(format!(
                        "target {target:?} uses https but --upstream-tls-ca is not set: give the CA that signed the server's certificate"
                    )));
                }
                // The files are checked now, so a bad one fails here, not at the first call.
                tls.check()?;
                (endpoint, Transport::Tls)
            } else {
                (endpoint, Transport::Plain)
            }
        }
    };
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    Ok((endpoint, transport))
}

fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    let path = Arc::new(path);
    tower::service_fn(move |_: http::Uri| {
        let path = Arc::clone(&path);
        async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            parse_target("127.0.0.1:7401", false).expect("ok"),
            Target::Uri {
                uri: "http://127.0.0.1:7401".into(),
                tls: false
            }
        );
        assert_eq!(
            parse_target(":7402", true).expect("ok"),
            Target::Uri {
                uri: "https://127.0.0.1:7402".into(),
                tls: true
            }
        );
        assert_eq!(
            parse_target("[::1]:7401", false).expect("ok"),
            Target::Uri {
                uri: "http://[::1]:7401".into(),
                tls: false
            }
        );
        assert_eq!(
            parse_target("http://gw:7401", true).expect("ok"),
            Target::Uri {
                uri: "http://gw:7401".into(),
                tls: false
            }
        );
        assert_eq!(
            parse_target("https://gw:7401", false).expect("ok"),
            Target::Uri {
                uri: "https://gw:7401".into(),
                tls: true
            }
        );
        assert_eq!(
            parse_target("unix:/run/kino/agent.sock", true).expect("ok"),
            Target::Unix("/run/kino/agent.sock".into())
        );
    }

    #[test]
    fn bad_targets_are_named() {
        for target in ["gw", "gw:port", "ftp://gw:21", "unix:"] {
            let message = parse_target(target, false).expect_err(target).to_string();
            assert!(message.contains(&format!("{target:?}")), "{message}");
        }
    }

    #[tokio::test]
    async fn https_without_ca_is_a_clear_error() {
        let message = connect_lazy("https://127.0.0.1:7401", &ClientTlsArgs::default())
            .expect_err("needs a CA")
            .to_string();
        assert!(message.contains("--upstream-tls-ca"), "{message}");
    }
}
