//! The suite's own small PKI: a CA and one certificate per identity, written as PEM files
//! into a root-only directory (what `kino pki init` and `kino pki issue` do, and what tests
//! use to build their worlds).
//!
//! Layout of a PKI directory (mode 0700): `ca.crt` (0644) and `ca.key` (0600), then
//! `<stem>.crt` (0644) / `<stem>.key` (0600) per identity, the stem being the role's name
//! (`ipam`, `admin`, …) unless asked otherwise. Certificates carry the identity as the
//! authorization layer reads it ([`crate::principal`]): Subject O = role, CN = name.
//! Every file is written to a temporary name and renamed into place, so a service reloading
//! its files never reads half of one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ServiceError;
use crate::principal::{AGENT_NAME_PREFIX, Role};

/// Where `up.sh` puts the local suite's PKI and where every binary looks by default.
pub const DEFAULT_PKI_DIR: &str = "/var/lib/kino/pki";
/// File name of the CA certificate in a PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA key in a PKI directory.
pub const CA_KEY: &str = "ca.key";

/// How long the CA is valid (as kubeadm's: ten years).
const CA_VALID_DAYS: i64 = 3650;
/// How long an identity's certificate is valid (as kubeadm's: one year).
const LEAF_VALID_DAYS: i64 = 365;
/// `kino pki init` reissues certificates that expire sooner than this.
const RENEW_BEFORE_DAYS: i64 = 30;

/// The identity a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Subject O.
    pub role: Role,
    /// Subject CN.
    pub name: String,
}

impl Subject {
    /// A service or the admin: CN = the role's name.
    pub fn role(role: Role) -> Subject {
        Subject {
            role,
            name: role.as_str().to_owned(),
        }
    }

    /// A node's agent: CN = `kino-agent:<node>`.
    pub fn agent(node: &str) -> Subject {
        Subject {
            role: Role::Agent,
            name: format!("{AGENT_NAME_PREFIX}{node}"),
        }
    }
}

/// One certificate to issue: who, under which file stem, for which server names.
#[derive(Debug, Clone)]
pub struct Issue {
    /// The identity.
    pub subject: Subject,
    /// `<stem>.crt` / `<stem>.key`.
    pub stem: String,
    /// Subject alternative names (DNS names or IP addresses) a client may dial it by.
    pub hosts: Vec<String>,
}

impl Issue {
    /// An identity under its role's stem, valid on loopback (`localhost`, 127.0.0.1, ::1)
    /// plus `extra_hosts`.
    pub fn local(subject: Subject, extra_hosts: &[String]) -> Issue {
        let stem = subject.role.as_str().to_owned();
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        hosts.extend(extra_hosts.iter().cloned());
        Issue {
            subject,
            stem,
            hosts,
        }
    }

    /// The same under another file stem.
    pub fn with_stem(mut self, stem: impl Into<String>) -> Issue {
        self.stem = stem.into();
        self
    }
}

/// What became of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now.
    Issued(PathBuf),
    /// A valid one for the same identity was there; left alone.
    Kept(PathBuf),
}

/// A PKI directory with its CA.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Opens the CA in `dir`, creating the directory (0700) and a new CA if there is none.
    /// Returns whether the CA was created.
    pub fn open_or_create(dir: &Path) -> Result<(Pki, bool), ServiceError> {
        create_private_dir(dir)?;
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Pki::open(dir)?, false)),
            (false, false) => {
                let key_pair =
                    KeyPair::generate().map_err(pki_error("generate the CA key", &key))?;
                let mut params = CertificateParams::new(Vec::<String>::new())
                    .map_err(pki_error("describe the CA", &cert))?;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params
                    .distinguished_name
                    .push(DnType::CommonName, "kinocilium CA");
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, "kinocilium");
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                set_validity(&mut params, CA_VALID_DAYS);
                let key_pem = key_pair.serialize_pem();
                let ca = CertifiedIssuer::self_signed(params, key_pair)
                    .map_err(pki_error("sign the CA certificate", &cert))?;
                write_file(&key, key_pem.as_bytes(), 0o600)?;
                write_file(&cert, ca.pem().as_bytes(), 0o644)?;
                Ok((Pki::open(dir)?, true))
            }
            _ => Err(ServiceError::Pki {
                action: "open the CA".into(),
                path: dir.to_owned(),
                detail: format!(
                    "only one of {CA_CERT} and {CA_KEY} exists; restore the other, or remove both to make a new CA (every certificate must then be reissued)"
                ),
            }),
        }
    }

    /// Opens the CA of an existing PKI directory (needs its key, so: root's).
    pub fn open(dir: &Path) -> Result<Pki, ServiceError> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let cert_pem = read_text(&cert)?;
        let key_pair =
            KeyPair::from_pem(&read_text(&key)?).map_err(pki_error("read the CA key", &key))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)
            .map_err(pki_error("read the CA certificate", &cert))?;
        Ok(Pki {
            dir: dir.to_owned(),
            issuer,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// `<dir>/<stem>.crt`.
    pub fn cert_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.crt"))
    }

    /// `<dir>/<stem>.key`.
    pub fn key_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.key"))
    }

    /// Issues (and writes) a certificate, replacing any under the same stem.
    pub fn issue(&self, request: &Issue) -> Result<PathBuf, ServiceError> {
        let (cert_path, key_path) = (self.cert_path(&request.stem), self.key_path(&request.stem));
        let sans = request
            .hosts
            .iter()
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => host
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(pki_error("use the host name", &cert_path)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::OrganizationName, request.subject.role.as_str());
        params
            .distinguished_name
            .push(DnType::CommonName, request.subject.name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // One certificate per identity, used to serve and to call other services.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALID_DAYS);
        let key = KeyPair::generate().map_err(pki_error("generate a key", &key_path))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(pki_error("sign the certificate", &cert_path))?;
        // Key first: a reloading service that sees the new certificate finds its key.
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(cert_path)
    }

    /// Issues a certificate unless a valid one for the same identity, signed by this CA and
    /// not expiring within 30 days, is already there.
    pub fn ensure(&self, request: &Issue) -> Result<Outcome, ServiceError> {
        let cert_path = self.cert_path(&request.stem);
        if self.key_path(&request.stem).exists() && self.still_good(&cert_path, &request.subject) {
            return Ok(Outcome::Kept(cert_path));
        }
        self.issue(request).map(Outcome::Issued)
    }

    fn still_good(&self, cert_path: &Path, subject: &Subject) -> bool {
        let Ok(pem) = std::fs::read(cert_path) else {
            return false;
        };
        let Some(Ok(der)) = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).next() else {
            return false;
        };
        let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
            return false;
        };
        let names_match = crate::principal::Principal::from_certificate(&der)
            .is_ok_and(|p| p.name == subject.name && p.role == Some(subject.role));
        let issuer_matches = self
            .ca_subject()
            .is_some_and(|ca| cert.issuer().as_raw() == ca.as_slice());
        let renew_at = time::OffsetDateTime::now_utc() + time::Duration::days(RENEW_BEFORE_DAYS);
        names_match && issuer_matches && cert.validity().not_after.to_datetime() > renew_at
    }

    fn ca_subject(&self) -> Option<Vec<u8>> {
        let pem = std::fs::read(self.ca_path()).ok()?;
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()?
            .ok()?;
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        Some(cert.subject().as_raw().to_vec())
    }
}

use rustls_pki_types::pem::PemObject;

/// The certificates `kino pki init` makes for the local suite: the three cluster services,
/// the flow relay, the agent of `node`, and the admin (the CLI).
pub fn local_suite(node: &str, extra_hosts: &[String]) -> Vec<Issue> {
    vec![
        Issue::local(Subject::role(Role::DatastoreGateway), extra_hosts),
        Issue::local(Subject::role(Role::Ipam), extra_hosts),
        Issue::local(Subject::role(Role::PolicyCompiler), extra_hosts),
        Issue::local(Subject::role(Role::FlowRelay), extra_hosts),
        Issue::local(Subject::agent(node), extra_hosts),
        Issue::local(Subject::role(Role::Admin), &[]),
    ]
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree by a few minutes.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// Creates `dir` (and parents) and makes it 0700: keys live there.
fn create_private_dir(dir: &Path) -> Result<(), ServiceError> {
    std::fs::create_dir_all(dir).map_err(io_error("create the PKI directory", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("make the PKI directory private (0700)", dir))
}

/// Writes `bytes` to a temporary file of mode `mode` beside `path`, then renames it over.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServiceError> {
    let temporary = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    // Explicitly: the mode given to open() is masked by the umask.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error("move into place", path))
}

fn read_text(path: &Path) -> Result<String, ServiceError> {
    std::fs::read_to_string(path).map_err(io_error("read", path))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError {
    let path = path.to_owned();
    move |e| ServiceError::Pki {
        action: action.to_owned(),
        path,
        detail: e.to_string(),
    }
}

fn pki_error<E: std::fmt::Display>(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(E) -> ServiceError {
    let path = path.to_owned();
    move |e| ServiceError::Pki {
        action: action.to_owned(),
        path,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn init_writes_private_files_and_keeps_valid_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("pki");
        let (pki, created) = Pki::open_or_create(&dir).expect("CA");
        assert!(created);
        for issue in local_suite("node-1", &[]) {
            assert!(matches!(pki.ensure(&issue), Ok(Outcome::Issued(_))));
        }
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(&dir.join("agent.key")), 0o600);
        assert_eq!(mode(&dir.join("admin.crt")), 0o644);

        let agent = std::fs::read(dir.join("agent.crt")).expect("agent.crt");
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(&agent)
            .next()
            .expect("a certificate")
            .expect("PEM");
        let principal = crate::principal::Principal::from_certificate(&der).expect("parses");
        assert_eq!(principal.role, Some(Role::Agent));
        assert_eq!(principal.node(), Some("node-1"));

        // Again: same CA, nothing reissued; another node's agent is reissued.
        let (pki, created) = Pki::open_or_create(&dir).expect("CA again");
        assert!(!created);
        let before = std::fs::read(dir.join("ipam.crt")).expect("ipam.crt");
        assert!(matches!(
            pki.ensure(&Issue::local(Subject::role(Role::Ipam), &[])),
            Ok(Outcome::Kept(_))
        ));
        assert_eq!(
            std::fs::read(dir.join("ipam.crt")).expect("ipam.crt"),
            before
        );
        assert!(matches!(
            pki.ensure(&Issue::local(Subject::agent("node-2"), &[])),
            Ok(Outcome::Issued(_))
        ));
    }

    #[test]
    fn half_a_ca_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CA_CERT), "x").expect("write");
        let error = Pki::open_or_create(dir.path())
            .expect_err("half a CA")
            .to_string();
        assert!(error.contains("ca.key"), "{error}");
    }
}
