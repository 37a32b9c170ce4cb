//! The service kit's error for starting, serving and connecting (datastore records have their
//! own, [`crate::records::RecordError`], which each service turns into its error).

use std::path::PathBuf;

use crate::ListenAddr;

/// What went wrong starting, running or connecting to a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A listen address could not be parsed.
    #[error(
        "invalid listen address {input:?}: {reason}; expected IP:PORT, [IPv6]:PORT, :PORT (= 127.0.0.1:PORT) or unix:/path/to.sock"
    )]
    InvalidListenAddr {
        /// The text given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Binding the listener failed.
    #[error(
        "cannot listen on {addr}: {source}; if another process holds it, stop that process or choose another address"
    )]
    Bind {
        /// Where we tried to listen.
        addr: ListenAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A live server already answers on the unix socket.
    #[error(
        "unix:{} is in use: another process accepts connections on it; stop that process or choose another socket path",
        path.display()
    )]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },

    /// The socket path exists and is not a socket, so it is not ours to delete.
    #[error(
        "cannot listen on unix:{}: the path exists and is not a socket; refusing to delete it, remove it yourself or choose another path",
        path.display()
    )]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },

    /// Preparing the unix socket's directory, stale file or permissions failed.
    #[error("cannot {action} for unix:{}: {source}", path.display())]
    SocketSetup {
        /// What we were doing, e.g. "create the parent directory".
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Inconsistent TLS flags (e.g. a certificate without its key).
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),

    /// A TLS file could not be read.
    #[error("cannot read {flag} file {}: {source}", path.display())]
    TlsFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A TLS file was read but holds no usable PEM content.
    #[error("{flag} file {} is not usable: {reason}", path.display())]
    TlsPem {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A TCP listener has neither its mTLS files nor an explicit `--insecure`.
    #[error(
        "{addr} is TCP and serves mTLS only, but {missing} is not set; give the files, leave them unset to use <pki-dir> (`kino pki init` makes it), or pass --insecure to serve plaintext with no authorization"
    )]
    TlsRequired {
        /// The listen address.
        addr: String,
        /// The flags that are missing.
        missing: String,
    },

    /// `--insecure` and TLS files were both given.
    #[error(
        "--insecure (plaintext, no authorization) contradicts --tls-cert/--tls-key/--tls-client-ca; choose one"
    )]
    InsecureWithTls,

    /// Creating or reading the PKI directory failed.
    #[error("cannot {action} {}: {detail}", path.display())]
    Pki {
        /// What we were doing.
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// A TCP target would need the default credentials, which this user cannot read.
    #[error("cannot dial {target} with mTLS: {reason}")]
    CredentialsUnreadable {
        /// The target as given.
        target: String,
        /// Which directory and why.
        reason: String,
    },

    /// TLS was configured for a unix-socket listener.
    #[error(
        "TLS is not supported on unix:{}: access to a unix socket is controlled by its file mode (0600); drop the --tls-* flags or listen on TCP",
        path.display()
    )]
    TlsOnUnixSocket {
        /// The socket path.
        path: PathBuf,
    },

    /// The gRPC reflection service could not be built from the descriptor sets.
    #[error("cannot build gRPC reflection from the registered file descriptor sets: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),

    /// The gRPC server stopped with an error.
    #[error("gRPC server on {addr} failed: {detail}")]
    Serve {
        /// Where it listened.
        addr: ListenAddr,
        /// The error and its causes.
        detail: String,
    },

    /// A client target could not be parsed.
    #[error(
        "invalid gRPC target {target:?}: {reason}; expected HOST:PORT, :PORT, http://HOST:PORT, https://HOST:PORT or unix:/path/to.sock"
    )]
    InvalidTarget {
        /// The text given.
        target: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Connecting to a gRPC target failed.
    #[error("cannot connect to {target}: {detail}; is the service running and reachable there?")]
    Connect {
        /// The target as given.
        target: String,
        /// The error and its causes.
        detail: String,
    },
}

/// `error: cause: cause ...`, because tonic's transport errors say little at the top level.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
