//! Listen addresses and bound listeners (TCP or unix socket).

use std::fmt;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

use crate::ServiceError;

/// Where a service listens: `127.0.0.1:7401`, `[::1]:7401`, `:7402` or `unix:/run/kino/agent.sock`.
///
/// `:PORT` means `127.0.0.1:PORT`: the local setup stays off the network unless an operator
/// asks for `0.0.0.0:PORT` (or a specific address) explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A unix stream socket at this path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = ServiceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ServiceError::InvalidListenAddr {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let text = input.trim();
        if let Some(rest) = text.strip_prefix("unix:") {
            // Accept both `unix:/path` and the URL-ish `unix:///path`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("the unix socket path is empty"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(port) = text.strip_prefix(':') {
            let port: u16 = port
                .parse()
                .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
            return Ok(ListenAddr::Tcp(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                port,
            ))));
        }
        if let Some(port) = text.strip_prefix("localhost:") {
            let port: u16 = port
                .parse()
                .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
            return Ok(ListenAddr::Tcp(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                port,
            ))));
        }
        text.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| invalid("not an IP address with a port"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

/// A bound listener; bind first to learn the real address (e.g. after port 0), then serve it.
#[derive(Debug)]
pub struct Listener {
    pub(crate) kind: ListenerKind,
}

#[derive(Debug)]
pub(crate) enum ListenerKind {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        socket: SocketFile,
    },
}

impl Listener {
    /// Binds `addr`. For a unix socket: creates the parent directory, replaces a stale socket
    /// file (refusing if a live server answers on it), and sets the socket's mode to 0600.
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ServiceError> {
        match addr {
            ListenAddr::Tcp(socket_addr) => {
                let listener =
                    TcpListener::bind(socket_addr)
                        .await
                        .map_err(|source| ServiceError::Bind {
                            addr: addr.clone(),
                            source,
                        })?;
                Ok(Listener {
                    kind: ListenerKind::Tcp(listener),
                })
            }
            ListenAddr::Unix(path) => bind_unix(addr, path).await,
        }
    }

    /// The address actually bound (the real port when bound to port 0).
    pub fn local_addr(&self) -> ListenAddr {
        match &self.kind {
            ListenerKind::Tcp(listener) => listener
                .local_addr()
                .map(ListenAddr::Tcp)
                .unwrap_or_else(|_| ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0)))),
            ListenerKind::Unix { socket, .. } => ListenAddr::Unix(socket.path.clone()),
        }
    }
}

async fn bind_unix(addr: &ListenAddr, path: &Path) -> Result<Listener, ServiceError> {
    let setup = |action: &'static str| {
        let path = path.to_owned();
        move |source| ServiceError::SocketSetup {
            action,
            path,
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(setup("create the parent directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket file outlives a crashed server; only a live peer makes it "in use".
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServiceError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(setup("remove the stale socket file"))?;
            tracing::info!(path = %path.display(), "removed stale unix socket");
        }
        Ok(_) => {
            return Err(ServiceError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => return Err(setup("inspect the existing path")(source)),
    }
    let listener = UnixListener::bind(path).map_err(|source| ServiceError::Bind {
        addr: addr.clone(),
        source,
    })?;
    // From here on the file is ours: the guard removes it on every exit path.
    let socket = SocketFile {
        path: path.to_owned(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(setup("set mode 0600 on the socket"))?;
    Ok(Listener {
        kind: ListenerKind::Unix { listener, socket },
    })
}

/// Owns a unix socket file and removes it when dropped.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "removed unix socket"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove unix socket")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ListenAddr {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            parse("127.0.0.1:7401"),
            ListenAddr::Tcp("127.0.0.1:7401".parse().unwrap())
        );
        assert_eq!(
            parse("[::1]:7401"),
            ListenAddr::Tcp("[::1]:7401".parse().unwrap())
        );
        assert_eq!(
            parse(":7402"),
            ListenAddr::Tcp("127.0.0.1:7402".parse().unwrap())
        );
        assert_eq!(
            parse("0.0.0.0:7402"),
            ListenAddr::Tcp("0.0.0.0:7402".parse().unwrap())
        );
        assert_eq!(
            parse("localhost:7403"),
            ListenAddr::Tcp("127.0.0.1:7403".parse().unwrap())
        );
        assert_eq!(
            parse("unix:/run/kino/agent.sock"),
            ListenAddr::Unix("/run/kino/agent.sock".into())
        );
        assert_eq!(
            parse("unix:///run/kino/agent.sock"),
            ListenAddr::Unix("/run/kino/agent.sock".into())
        );
    }

    #[test]
    fn display_round_trips() {
        for text in ["127.0.0.1:7401", "[::1]:7401", "unix:/run/kino/agent.sock"] {
            assert_eq!(parse(text).to_string(), text);
            assert_eq!(parse(&parse(text).to_string()), parse(text));
        }
    }

    #[test]
    fn rejects_garbage_with_the_input_named() {
        for text in ["", "7401", "unix:", ":http", "host.example:7401", "1.2.3.4"] {
            let error = text.parse::<ListenAddr>().expect_err(text).to_string();
            assert!(error.contains(&format!("{text:?}")), "{error}");
        }
    }
}
