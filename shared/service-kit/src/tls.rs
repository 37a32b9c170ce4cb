//! TLS and mTLS flags for servers and for clients of upstream services (PEM files).
//!
//! Server and client flags have distinct names so a binary can flatten both:
//! server `--tls-cert/--tls-key/--tls-client-ca`, client `--upstream-tls-*`.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::ServiceError;

/// Server TLS flags; flatten into a binary's config. No flags = plaintext (h2c).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this server; turns TLS on (needs --tls-key).
    #[arg(long = "tls-cert", env = "KINO_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "KINO_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle; when set, clients must present a certificate signed by it (mTLS).
    #[arg(long = "tls-client-ca", env = "KINO_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// Whether any server TLS flag is set.
    pub fn is_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_client_ca.is_some()
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.tls_client_ca.is_some()
    }

    /// Checks the flags and reads the files; `None` when TLS is off.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, ServiceError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => return Ok(None),
            (None, None) => {
                return Err(ServiceError::TlsConfig(
                    "--tls-client-ca (mTLS) needs a server identity too: set --tls-cert and --tls-key"
                        .to_owned(),
                ));
            }
            (Some(_), None) => {
                return Err(ServiceError::TlsConfig(
                    "--tls-cert is set but --tls-key is not: the server identity needs both PEM files"
                        .to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ServiceError::TlsConfig(
                    "--tls-key is set but --tls-cert is not: the server identity needs both PEM files"
                        .to_owned(),
                ));
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let identity = Identity::from_pem(
            read_certificates("--tls-cert", cert)?,
            read_private_key("--tls-key", key)?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_certificates(
                "--tls-client-ca",
                ca,
            )?));
        }
        Ok(Some(config))
    }
}

/// Client TLS flags for the upstream services a binary calls; flatten into its config.
///
/// With `--upstream-tls-ca` set, targets without a scheme (`host:port`) use TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA bundle that signed the upstream servers' certificates; turns TLS on.
    #[arg(
        long = "upstream-tls-ca",
        env = "KINO_UPSTREAM_TLS_CA",
        value_name = "PEM"
    )]
    pub upstream_tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to upstreams that require mTLS (needs --upstream-tls-key).
    #[arg(
        long = "upstream-tls-cert",
        env = "KINO_UPSTREAM_TLS_CERT",
        value_name = "PEM"
    )]
    pub upstream_tls_cert: Option<PathBuf>,

    /// PEM private key of --upstream-tls-cert.
    #[arg(
        long = "upstream-tls-key",
        env = "KINO_UPSTREAM_TLS_KEY",
        value_name = "PEM"
    )]
    pub upstream_tls_key: Option<PathBuf>,

    /// Name to verify in the upstream certificates instead of the target's host.
    #[arg(
        long = "upstream-tls-server-name",
        env = "KINO_UPSTREAM_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub upstream_tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// Whether TLS to upstreams is configured (a CA is given).
    pub fn is_enabled(&self) -> bool {
        self.upstream_tls_ca.is_some()
    }

    /// Checks the flags and reads the files; `None` when no client TLS flag is set.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, ServiceError> {
        let Some(ca) = &self.upstream_tls_ca else {
            if self.upstream_tls_cert.is_some() || self.upstream_tls_key.is_some() {
                return Err(ServiceError::TlsConfig(
                    "--upstream-tls-cert/--upstream-tls-key need --upstream-tls-ca (the CA that signed the servers' certificates)"
                        .to_owned(),
                ));
            }
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            read_certificates("--upstream-tls-ca", ca)?,
        ));
        match (&self.upstream_tls_cert, &self.upstream_tls_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read_certificates("--upstream-tls-cert", cert)?,
                    read_private_key("--upstream-tls-key", key)?,
                ));
            }
            (Some(_), None) => {
                return Err(ServiceError::TlsConfig(
                    "--upstream-tls-cert is set but --upstream-tls-key is not: the client identity needs both PEM files"
                        .to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ServiceError::TlsConfig(
                    "--upstream-tls-key is set but --upstream-tls-cert is not: the client identity needs both PEM files"
                        .to_owned(),
                ));
            }
        }
        if let Some(name) = &self.upstream_tls_server_name {
            config = config.domain_name(name.clone());
        }
        Ok(Some(config))
    }
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, ServiceError> {
    std::fs::read(path).map_err(|source| ServiceError::TlsFile {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM file that must hold at least one certificate (checked now, not at handshake).
fn read_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, ServiceError> {
    let pem = read_file(flag, path)?;
    let unusable = |reason: String| ServiceError::TlsPem {
        flag,
        path: path.to_owned(),
        reason,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| unusable(format!("malformed PEM: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(unusable(
            "no PEM CERTIFICATE block found (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold a private key (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, ServiceError> {
    let pem = read_file(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ServiceError::TlsPem {
        flag,
        path: path.to_owned(),
        reason: format!("no PEM private key found (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: TlsArgs,
        #[command(flatten)]
        client: ClientTlsArgs,
    }

    #[test]
    fn server_and_client_flags_coexist() {
        let cli = Cli::try_parse_from([
            "x",
            "--tls-cert",
            "/s.crt",
            "--tls-key",
            "/s.key",
            "--upstream-tls-ca",
            "/ca.crt",
        ])
        .expect("flags parse");
        assert_eq!(cli.server.tls_cert.as_deref(), Some(Path::new("/s.crt")));
        assert_eq!(
            cli.client.upstream_tls_ca.as_deref(),
            Some(Path::new("/ca.crt"))
        );
    }

    #[test]
    fn no_flags_means_plaintext() {
        assert!(TlsArgs::default().server_config().expect("ok").is_none());
        assert!(
            ClientTlsArgs::default()
                .client_config()
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn cert_without_key_is_rejected() {
        let args = TlsArgs {
            tls_cert: Some("/x.crt".into()),
            ..TlsArgs::default()
        };
        let message = args.server_config().expect_err("rejected").to_string();
        assert!(message.contains("--tls-key"), "{message}");

        let args = TlsArgs {
            tls_client_ca: Some("/ca.crt".into()),
            ..TlsArgs::default()
        };
        let message = args.server_config().expect_err("rejected").to_string();
        assert!(message.contains("--tls-cert"), "{message}");

        let args = ClientTlsArgs {
            upstream_tls_cert: Some("/c.crt".into()),
            ..ClientTlsArgs::default()
        };
        let message = args.client_config().expect_err("rejected").to_string();
        assert!(message.contains("--upstream-tls-ca"), "{message}");
    }

    #[test]
    fn unreadable_file_names_flag_and_path() {
        let args = TlsArgs {
            tls_cert: Some("/nonexistent/kino/server.crt".into()),
            tls_key: Some("/nonexistent/kino/server.key".into()),
            tls_client_ca: None,
        };
        let message = args.server_config().expect_err("rejected").to_string();
        assert!(message.contains("--tls-cert"), "{message}");
        assert!(
            message.contains("/nonexistent/kino/server.crt"),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_pem_is_rejected_up_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let args = ClientTlsArgs {
            upstream_tls_ca: Some(junk.clone()),
            ..ClientTlsArgs::default()
        };
        let message = args.client_config().expect_err("rejected").to_string();
        assert!(message.contains("--upstream-tls-ca"), "{message}");
        assert!(message.contains("no PEM CERTIFICATE"), "{message}");
    }
}
