//! The client side of mTLS: a connector that dials TCP and runs the TLS handshake with the
//! files as they are at that moment, so a renewed client certificate or CA is used from the
//! next connection on without restarting the process.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::{ClientTlsArgs, ServiceError};

/// A client configuration trusting `roots`, presenting `identity` if given.
pub(super) fn build_config(
    ca_path: &Path,
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, ServiceError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(|e| ServiceError::TlsPem {
            flag: "--upstream-tls-ca",
            path: ca_path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServiceError::TlsConfig(e.to_string()))?
        .with_root_certificates(store);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            ServiceError::TlsConfig(format!(
                "--upstream-tls-cert and --upstream-tls-key do not go together: {e}"
            ))
        })?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A tower connector for tonic: TCP to the URI's host and port, then TLS verified against
/// the CA for `server_name` (or the URI's host).
pub(crate) fn tls_connector(
    tls: ClientTlsArgs,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    let tls = Arc::new(tls);
    tower::service_fn(move |uri: http::Uri| {
        let tls = Arc::clone(&tls);
        async move {
            let invalid =
                |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, reason);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("{uri} has no port")))?;
            // The files as they are now: a renewed certificate is used from here on.
            let config = tls
                .rustls_config()
                .map_err(|e| invalid(e.to_string()))?
                .ok_or_else(|| invalid("TLS target without --upstream-tls-ca".to_owned()))?;
            let name = tls.upstream_tls_server_name.clone().unwrap_or(host.clone());
            let server_name = ServerName::try_from(name.clone())
                .map_err(|e| invalid(format!("{name:?} is not a server name to verify: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    })
}
