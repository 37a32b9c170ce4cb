//! A test's own PKI, made by the suite's `kino_service_kit::pki` exactly as `kino pki init`
//! makes the local one: a CA, the services' certificates, agents and the admin. Tests point
//! every process at it (`KINO_PKI_DIR`), never at the machine's `/var/lib/kino/pki`.

use std::path::{Path, PathBuf};

use kino_service_kit::ClientTlsArgs;
use kino_service_kit::pki::{Issue, Pki, Subject, local_suite};
use kino_service_kit::principal::Role;

/// A CA in a directory of the test, with certificates issued on demand.
pub struct TestPki {
    pki: Pki,
}

impl TestPki {
    /// The local suite's certificates for `node` (gateway, ipam, policy-compiler, the
    /// node's agent as `agent`, admin) plus an operator's, in `dir`.
    pub fn create(dir: &Path, node: &str) -> TestPki {
        let (pki, _) = Pki::open_or_create(dir)
            .unwrap_or_else(|e| panic!("creating a test PKI in {}: {e}", dir.display()));
        for issue in local_suite(node, &[]) {
            pki.issue(&issue).expect("issuing a suite certificate");
        }
        let pki = TestPki { pki };
        pki.issue(Subject::role(Role::Operator), "operator");
        pki
    }

    /// The PKI another part of the test created in `dir`, as it is.
    pub fn open(dir: &Path) -> TestPki {
        let pki = Pki::open(dir)
            .unwrap_or_else(|e| panic!("opening the test PKI in {}: {e}", dir.display()));
        TestPki { pki }
    }

    /// The directory (what `--pki-dir` / `KINO_PKI_DIR` take).
    pub fn dir(&self) -> &Path {
        self.pki.dir()
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.pki.ca_path()
    }

    /// Issues `subject` as `<stem>.crt`/`<stem>.key`.
    pub fn issue(&self, subject: Subject, stem: &str) {
        self.pki
            .issue(&Issue::local(subject, &[]).with_stem(stem))
            .unwrap_or_else(|e| panic!("issuing {stem}: {e}"));
    }

    /// The agent certificate of another node, as `agent-<node>`; returns the stem.
    pub fn issue_agent(&self, node: &str) -> String {
        let stem = format!("agent-{node}");
        self.issue(Subject::agent(node), &stem);
        stem
    }

    /// Client flags presenting `<stem>.crt`.
    pub fn client(&self, stem: &str) -> ClientTlsArgs {
        ClientTlsArgs::mtls(
            self.pki.ca_path(),
            self.pki.cert_path(stem),
            self.pki.key_path(stem),
        )
    }

    /// The same as command-line flags (`--upstream-tls-ca … --upstream-tls-key …`).
    pub fn client_flags(&self, stem: &str) -> Vec<String> {
        vec![
            "--upstream-tls-ca".into(),
            self.pki.ca_path().display().to_string(),
            "--upstream-tls-cert".into(),
            self.pki.cert_path(stem).display().to_string(),
            "--upstream-tls-key".into(),
            self.pki.key_path(stem).display().to_string(),
        ]
    }
}
