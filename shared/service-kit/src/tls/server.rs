//! The server side of mTLS: a rustls configuration rebuilt whenever the certificate, key or
//! client CA files change (new connections get the new files; open ones keep theirs, as in
//! etcd), and the stream of TLS connections a listener hands to tonic.
//!
//! tonic's own TLS settings are fixed when the server starts, hence this. Client
//! certificates are optional at the TLS layer so that a caller without one reaches the
//! authorization layer and gets UNAUTHENTICATED with an explanation; a certificate the CA
//! did not sign fails the handshake.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{read_certificates, read_private_key};
use crate::ServiceError;

/// How often the files are compared with the ones in use.
pub(crate) const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;

/// The three files of an mTLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerTlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: PathBuf,
}

impl ServerTlsFiles {
    fn read_all(&self) -> Result<[Vec<u8>; 3], ServiceError> {
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ServiceError::TlsFile {
                flag,
                path: path.clone(),
                source,
            })
        };
        Ok([
            read("--tls-cert", &self.cert)?,
            read("--tls-key", &self.key)?,
            read("--tls-client-ca", &self.client_ca)?,
        ])
    }
}

struct Current {
    /// The files' bytes the configuration was built from.
    contents: [Vec<u8>; 3],
    config: Arc<ServerConfig>,
    /// Contents that failed to load, so a bad file is reported once, not every second.
    rejected: Option<[Vec<u8>; 3]>,
}

/// An mTLS server configuration that follows its files.
pub(crate) struct ReloadingServerTls {
    files: ServerTlsFiles,
    current: Mutex<Current>,
}

impl ReloadingServerTls {
    /// Loads the files now; a missing or bad file is an error naming its flag and path.
    pub(crate) fn load(files: ServerTlsFiles) -> Result<Arc<Self>, ServiceError> {
        let contents = files.read_all()?;
        let config = build_config(&files)?;
        tracing::info!(
            cert = %files.cert.display(),
            client_ca = %files.client_ca.display(),
            certificate = %describe(&files),
            "mTLS: serving with this certificate; client certificates must be signed by the CA"
        );
        Ok(Arc::new(ReloadingServerTls {
            files,
            current: Mutex::new(Current {
                contents,
                config,
                rejected: None,
            }),
        }))
    }

    /// The configuration for the next handshake.
    fn config(&self) -> Arc<ServerConfig> {
        self.lock().config.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // A panic elsewhere cannot leave `Current` half-written (fields are replaced whole).
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reloads if any file changed; returns whether the configuration was replaced.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let Ok(contents) = self.files.read_all() else {
            // Mid-rotation (a file renamed away) or gone: keep serving with what we have;
            // the next check sees the finished state.
            return false;
        };
        {
            let current = self.lock();
            if current.contents == contents || current.rejected.as_ref() == Some(&contents) {
                return false;
            }
        }
        match build_config(&self.files) {
            Ok(config) => {
                let mut current = self.lock();
                current.contents = contents;
                current.config = config;
                current.rejected = None;
                tracing::info!(
                    cert = %self.files.cert.display(),
                    certificate = %describe(&self.files),
                    "mTLS: certificate, key or client CA changed on disk; new connections use them"
                );
                true
            }
            Err(error) => {
                self.lock().rejected = Some(contents);
                tracing::warn!(%error, "mTLS: the changed TLS files cannot be used; still serving with the previous ones");
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_CHECK_INTERVAL`] until dropped with its task.
    pub(crate) async fn follow_files(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let this = self.clone();
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

fn build_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, ServiceError> {
    let chain = read_certificates("--tls-cert", &files.cert)?;
    let key = read_private_key("--tls-key", &files.key)?;
    let mut roots = RootCertStore::empty();
    for ca in read_certificates("--tls-client-ca", &files.client_ca)? {
        roots.add(ca).map_err(|e| ServiceError::TlsPem {
            flag: "--tls-client-ca",
            path: files.client_ca.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        // No certificate at all reaches the authorization layer (UNAUTHENTICATED, explained);
        // a certificate the CA did not sign fails the handshake.
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServiceError::TlsPem {
            flag: "--tls-client-ca",
            path: files.client_ca.clone(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServiceError::TlsConfig(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServiceError::TlsPem {
            flag: "--tls-key",
            path: files.key.clone(),
            reason: format!("does not go with {}: {e}", files.cert.display()),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// `CN=…, O=…, expires …` of the certificate file, for logs.
fn describe(files: &ServerTlsFiles) -> String {
    let Ok(chain) = read_certificates("--tls-cert", &files.cert) else {
        return "unreadable".to_owned();
    };
    let Some(Ok((_, cert))) = chain
        .first()
        .map(|der| X509Certificate::from_der(der.as_ref()))
    else {
        return "unparsable".to_owned();
    };
    format!(
        "{} (serial {}, expires {})",
        cert.subject(),
        cert.raw_serial_as_string(),
        cert.validity().not_after
    )
}

/// TLS connections accepted on `listener`, each handshake on a task of its own (a slow or
/// hostile client never holds up the others). Stops accepting — and closes the listener —
/// when the stream is dropped.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadingServerTls>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accepting a TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.config());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let _ = sender.send(Ok(tls_stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake not finished within 10 s; connection dropped");
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
