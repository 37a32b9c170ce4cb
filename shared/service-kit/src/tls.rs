//! mTLS flags for servers and for clients of upstream services (PEM files), and where their
//! defaults come from: the PKI directory (`--pki-dir`, `/var/lib/kino/pki`) that
//! `kino pki init` fills.
//!
//! Server and client flags have distinct names so a binary can flatten both:
//! server `--tls-cert/--tls-key/--tls-client-ca/--insecure`, client `--upstream-tls-*`.
//! Safe by default: a TCP listener serves mTLS with the PKI directory's files unless the
//! operator passes `--insecure` (plaintext, no authorization, a loud warning); a unix
//! socket needs neither (its 0600 mode admits only its owner).

mod client;
mod server;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub(crate) use client::tls_connector;
pub(crate) use server::{ReloadingServerTls, ServerTlsFiles, tls_incoming};

use crate::ServiceError;
use crate::pki::{CA_CERT, DEFAULT_PKI_DIR};

/// Where the default certificates live; flatten once into a binary's config.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PkiArgs {
    /// Directory of the CA and the certificates `kino pki init` made; the default of every
    /// --tls-* and --upstream-tls-* file.
    #[arg(long = "pki-dir", env = "KINO_PKI_DIR", value_name = "DIR", default_value = DEFAULT_PKI_DIR)]
    pub pki_dir: PathBuf,
}

impl Default for PkiArgs {
    fn default() -> Self {
        PkiArgs {
            pki_dir: PathBuf::from(DEFAULT_PKI_DIR),
        }
    }
}

impl PkiArgs {
    /// A PKI directory other than the default.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        PkiArgs {
            pki_dir: dir.into(),
        }
    }
}

/// Server TLS flags; flatten into a binary's config, then fill the defaults with
/// [`TlsArgs::with_pki_defaults`].
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this server [default: <pki-dir>/<service>.crt].
    #[arg(long = "tls-cert", env = "KINO_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert [default: <pki-dir>/<service>.key].
    #[arg(long = "tls-key", env = "KINO_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle that signed the clients' certificates (every caller needs one: mTLS)
    /// [default: <pki-dir>/ca.crt].
    #[arg(long = "tls-client-ca", env = "KINO_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve TCP in plaintext with NO authorization: anyone who can connect may do
    /// anything. Only for a machine where every local user is trusted, or behind another
    /// authenticating proxy. Unix sockets ignore it.
    #[arg(long = "insecure", env = "KINO_INSECURE")]
    pub insecure: bool,

    /// Whether the file paths were filled from the PKI directory (not given as flags).
    #[arg(skip)]
    pub from_pki: bool,
}

impl TlsArgs {
    /// mTLS with these files.
    pub fn mtls(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: impl Into<PathBuf>,
    ) -> Self {
        TlsArgs {
            tls_cert: Some(cert.into()),
            tls_key: Some(key.into()),
            tls_client_ca: Some(client_ca.into()),
            insecure: false,
            from_pki: false,
        }
    }

    /// Plaintext TCP without authorization (the `--insecure` choice).
    pub fn insecure() -> Self {
        TlsArgs {
            insecure: true,
            ..TlsArgs::default()
        }
    }

    /// Whether any file flag was given explicitly.
    pub fn has_explicit_files(&self) -> bool {
        !self.from_pki
            && (self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_client_ca.is_some())
    }

    /// Fills the files not given with `<pki-dir>/<stem>.crt`, `<pki-dir>/<stem>.key` and
    /// `<pki-dir>/ca.crt` (nothing is read yet). Nothing changes with `--insecure` or when
    /// every file is given.
    pub fn with_pki_defaults(mut self, pki: &PkiArgs, stem: &str) -> Self {
        if self.insecure || self.has_explicit_files() {
            return self;
        }
        let dir = &pki.pki_dir;
        self.tls_cert = Some(dir.join(format!("{stem}.crt")));
        self.tls_key = Some(dir.join(format!("{stem}.key")));
        self.tls_client_ca = Some(dir.join(CA_CERT));
        self.from_pki = true;
        self
    }

    /// The files of an mTLS listener; an error says what is missing and the ways out.
    pub(crate) fn server_files(&self, addr: &str) -> Result<ServerTlsFiles, ServiceError> {
        if self.insecure {
            return Err(ServiceError::TlsConfig(
                "--insecure serves plaintext; it has no TLS files".to_owned(),
            ));
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            _ => {
                let missing: Vec<&str> = [
                    (self.tls_cert.is_none(), "--tls-cert"),
                    (self.tls_key.is_none(), "--tls-key"),
                    (self.tls_client_ca.is_none(), "--tls-client-ca"),
                ]
                .into_iter()
                .filter_map(|(missing, flag)| missing.then_some(flag))
                .collect();
                Err(ServiceError::TlsRequired {
                    addr: addr.to_owned(),
                    missing: missing.join(", "),
                })
            }
        }
    }
}

/// Client TLS flags for the upstream services a binary calls; flatten into its config, then
/// fill the defaults with [`ClientTlsArgs::with_pki_defaults`].
///
/// With a CA (given, or `<pki-dir>/ca.crt`), targets without a scheme (`host:port`) use TLS;
/// `http://host:port` is always plaintext, `unix:` sockets always plaintext.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA bundle that signed the upstream servers' certificates; turns TLS on
    /// [default: <pki-dir>/ca.crt when it exists].
    #[arg(
        long = "upstream-tls-ca",
        env = "KINO_UPSTREAM_TLS_CA",
        value_name = "PEM"
    )]
    pub upstream_tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to upstreams (needs --upstream-tls-key)
    /// [default: <pki-dir>/<identity>.crt when it exists].
    #[arg(
        long = "upstream-tls-cert",
        env = "KINO_UPSTREAM_TLS_CERT",
        value_name = "PEM"
    )]
    pub upstream_tls_cert: Option<PathBuf>,

    /// PEM private key of --upstream-tls-cert [default: <pki-dir>/<identity>.key].
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

    /// Why the default PKI directory could not be used (e.g. not root): reported when a
    /// TCP target is dialled, so commands that need no TLS still work.
    #[arg(skip)]
    pub unusable_pki: Option<String>,
}

impl ClientTlsArgs {
    /// TLS with this CA and client identity.
    pub fn mtls(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ClientTlsArgs {
            upstream_tls_ca: Some(ca.into()),
            upstream_tls_cert: Some(cert.into()),
            upstream_tls_key: Some(key.into()),
            ..ClientTlsArgs::default()
        }
    }

    /// Whether TLS to upstreams is configured (a CA is given).
    pub fn is_enabled(&self) -> bool {
        self.upstream_tls_ca.is_some()
    }

    /// Fills what no flag gave from the PKI directory: its `ca.crt`, and `<stem>.crt` /
    /// `<stem>.key` when both exist. A missing directory leaves TLS off; one that cannot be
    /// read (another user's, mode 0700) is remembered and reported when a TCP target is
    /// dialled.
    pub fn with_pki_defaults(mut self, pki: &PkiArgs, stem: &str) -> Self {
        if self.upstream_tls_ca.is_some()
            || self.upstream_tls_cert.is_some()
            || self.upstream_tls_key.is_some()
        {
            return self;
        }
        let dir = &pki.pki_dir;
        let ca = dir.join(CA_CERT);
        match std::fs::metadata(&ca) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return self,
            Err(e) => {
                self.unusable_pki = Some(format!(
                    "cannot use the credentials in {} ({e}): they are root's; run as root, or give --upstream-tls-ca/--upstream-tls-cert/--upstream-tls-key (or --pki-dir)",
                    dir.display()
                ));
                return self;
            }
        }
        self.upstream_tls_ca = Some(ca);
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        if cert.exists() && key.exists() {
            self.upstream_tls_cert = Some(cert);
            self.upstream_tls_key = Some(key);
        }
        self
    }

    /// The identity the client certificate carries, when one is configured.
    pub fn client_principal(&self) -> Result<Option<crate::principal::Principal>, ServiceError> {
        let Some(cert) = &self.upstream_tls_cert else {
            return Ok(None);
        };
        let chain = read_certificates("--upstream-tls-cert", cert)?;
        crate::principal::Principal::from_certificate(&chain[0])
            .map(Some)
            .map_err(|reason| ServiceError::TlsPem {
                flag: "--upstream-tls-cert",
                path: cert.clone(),
                reason,
            })
    }

    /// Checks the flags and reads the files now (so a bad file fails at start-up, not at the
    /// first call); `None` when TLS is off.
    pub fn check(&self) -> Result<Option<()>, ServiceError> {
        self.rustls_config().map(|config| config.map(|_| ()))
    }

    /// The rustls client configuration from the files as they are now; `None` when TLS is
    /// off. Read at every new connection, so renewed certificates are picked up.
    pub(crate) fn rustls_config(
        &self,
    ) -> Result<Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>, ServiceError> {
        let Some(ca) = &self.upstream_tls_ca else {
            if self.upstream_tls_cert.is_some() || self.upstream_tls_key.is_some() {
                return Err(ServiceError::TlsConfig(
                    "--upstream-tls-cert/--upstream-tls-key need --upstream-tls-ca (the CA that signed the servers' certificates)"
                        .to_owned(),
                ));
            }
            return Ok(None);
        };
        let roots = read_certificates("--upstream-tls-ca", ca)?;
        let identity = match (&self.upstream_tls_cert, &self.upstream_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_certificates("--upstream-tls-cert", cert)?,
                read_private_key("--upstream-tls-key", key)?,
            )),
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
        };
        client::build_config(ca, roots, identity).map(Some)
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
pub(crate) fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ServiceError> {
    let pem = read_file(flag, path)?;
    let unusable = |reason: String| ServiceError::TlsPem {
        flag,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("malformed PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(unusable(
            "no PEM CERTIFICATE block found (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certificates)
}

/// Reads a PEM file that must hold a private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_private_key(
    flag: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, ServiceError> {
    let pem = read_file(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ServiceError::TlsPem {
        flag,
        path: path.to_owned(),
        reason: format!("no PEM private key found (PKCS#8, PKCS#1 or SEC1): {e}"),
    })
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
    fn defaults_come_from_the_pki_directory() {
        let pki = PkiArgs::at("/etc/kino-test-pki");
        let server = TlsArgs::default().with_pki_defaults(&pki, "ipam");
        assert_eq!(
            server,
            TlsArgs {
                tls_cert: Some("/etc/kino-test-pki/ipam.crt".into()),
                tls_key: Some("/etc/kino-test-pki/ipam.key".into()),
                tls_client_ca: Some("/etc/kino-test-pki/ca.crt".into()),
                insecure: false,
                from_pki: true,
            }
        );
        assert!(!server.has_explicit_files());
        // Explicit flags and --insecure are left as given.
        let explicit = TlsArgs::mtls("/a.crt", "/a.key", "/ca.crt");
        assert_eq!(explicit.clone().with_pki_defaults(&pki, "ipam"), explicit);
        assert_eq!(
            TlsArgs::insecure().with_pki_defaults(&pki, "ipam"),
            TlsArgs::insecure()
        );
    }

    #[test]
    fn a_client_uses_the_pki_directory_only_when_it_exists() {
        let missing = PkiArgs::at("/nonexistent/kino/pki");
        let client = ClientTlsArgs::default().with_pki_defaults(&missing, "admin");
        assert_eq!(client, ClientTlsArgs::default());
        assert!(client.check().expect("ok").is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = crate::pki::Pki::open_or_create(dir.path()).expect("CA");
        pki.issue(&crate::pki::Issue::local(
            crate::pki::Subject::role(crate::principal::Role::Admin),
            &[],
        ))
        .expect("admin");
        let client = ClientTlsArgs::default().with_pki_defaults(&PkiArgs::at(dir.path()), "admin");
        assert_eq!(client.upstream_tls_ca, Some(dir.path().join("ca.crt")));
        assert_eq!(client.upstream_tls_cert, Some(dir.path().join("admin.crt")));
        assert!(client.check().expect("usable").is_some());
        // No certificate of that name: TLS with the CA, no client identity.
        let client =
            ClientTlsArgs::default().with_pki_defaults(&PkiArgs::at(dir.path()), "operator");
        assert!(client.is_enabled() && client.upstream_tls_cert.is_none());
    }

    #[test]
    fn incomplete_flags_are_rejected() {
        let args = TlsArgs {
            tls_cert: Some("/x.crt".into()),
            ..TlsArgs::default()
        };
        let message = args
            .server_files("127.0.0.1:7402")
            .expect_err("rejected")
            .to_string();
        assert!(message.contains("--tls-key, --tls-client-ca"), "{message}");
        assert!(message.contains("--insecure"), "{message}");

        let args = ClientTlsArgs {
            upstream_tls_cert: Some("/c.crt".into()),
            ..ClientTlsArgs::default()
        };
        let message = args.check().expect_err("rejected").to_string();
        assert!(message.contains("--upstream-tls-ca"), "{message}");
    }

    #[test]
    fn unreadable_file_names_flag_and_path() {
        let args = ClientTlsArgs::mtls(
            "/nonexistent/kino/ca.crt",
            "/nonexistent/kino/c.crt",
            "/nonexistent/kino/c.key",
        );
        let message = args.check().expect_err("rejected").to_string();
        assert!(message.contains("--upstream-tls-ca"), "{message}");
        assert!(message.contains("/nonexistent/kino/ca.crt"), "{message}");
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
        let message = args.check().expect_err("rejected").to_string();
        assert!(message.contains("--upstream-tls-ca"), "{message}");
        assert!(message.contains("no PEM CERTIFICATE"), "{message}");
    }
}
