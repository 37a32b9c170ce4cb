//! Running code inside another network namespace: on a dedicated OS thread that `setns`ed
//! into it and has its own single-threaded tokio runtime (so netlink connections it opens,
//! sockets and `/proc/sys/net` writes all act there), never on a shared runtime thread.
//! Also a namespace's cookie (`SO_NETNS_COOKIE`), the id eBPF programs see it by.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Entering or running in a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace path could not be opened (the namespace is gone, or the path is wrong).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path given (`/run/netns/x`, `/proc/PID/ns/net`).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a network namespace (a plain file, a directory, another
    /// kind of namespace): a wrong `CNI_NETNS`.
    #[error(
        "{path} is not a network namespace ({what}); CNI_NETNS must name one, e.g. /run/netns/NAME or /proc/PID/ns/net"
    )]
    NotNetworkNamespace {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// `setns` refused (not a network namespace, or no CAP_SYS_ADMIN).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: nix::Error,
    },
    /// Its cookie could not be read (`SO_NETNS_COOKIE` on a socket opened in it).
    #[error("cannot read the cookie of network namespace {path}: {source}")]
    Cookie {
        /// The path given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The thread or its runtime could not be started, or it panicked.
    #[error("worker thread for network namespace {path}: {reason}")]
    Thread {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Opens a network namespace file, for `setns` or to pass its fd in a netlink request;
/// anything else (a plain file, a directory, a mount namespace) is refused here, by name,
/// rather than by the kernel as an EINVAL deep inside a netlink request.
pub fn open_netns(path: &Path) -> Result<File, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    // NS_GET_NSTYPE (linux/nsfs.h: _IO(0xb7, 0x3)) answers the namespace type of an nsfs
    // file, and ENOTTY for any other file.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the open descriptor's inode.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind == libc::CLONE_NEWNET {
        return Ok(file);
    }
    let what = if kind >= 0 {
        format!("a namespace of another type, {kind:#x}")
    } else {
        match file.metadata() {
            Ok(meta) if meta.is_dir() => "a directory".to_owned(),
            Ok(meta) if meta.is_file() => "a regular file".to_owned(),
            Ok(_) => "not a namespace file".to_owned(),
            Err(e) => format!("unreadable: {e}"),
        }
    };
    Err(NetnsError::NotNetworkNamespace {
        path: path.to_owned(),
        what,
    })
}

/// Moves the calling thread into the network namespace at `path`. Only for threads that are
/// dedicated to that namespace (see [`run_in_netns`]).
pub fn enter_netns(path: &Path) -> Result<(), NetnsError> {
    let file = open_netns(path)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_owned(),
        source,
    })
}

/// Runs `work` on a new thread inside the network namespace at `path`, with a current-thread
/// tokio runtime, and returns its output. The caller's thread and runtime are not blocked.
pub async fn run_in_netns<F, Fut, T>(path: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let owned = path.to_owned();
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kino-netns".to_owned())
        .spawn(move || {
            let outcome = (|| {
                enter_netns(&owned)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetnsError::Thread {
                        path: owned.clone(),
                        reason: format!("cannot build its runtime: {e}"),
                    })?;
                Ok(runtime.block_on(work()))
            })();
            let _ = done.send(outcome);
        });
    if let Err(e) = spawned {
        return Err(NetnsError::Thread {
            path: path.to_owned(),
            reason: format!("cannot spawn: {e}"),
        });
    }
    result.await.unwrap_or_else(|_| {
        Err(NetnsError::Thread {
            path: path.to_owned(),
            reason: "it panicked".to_owned(),
        })
    })
}

/// The cookie of the calling thread's network namespace: `SO_NETNS_COOKIE` of a socket it
/// opens (the value `bpf_get_netns_cookie` gives programs for that namespace's sockets;
/// unique for the machine's uptime, never reused).
pub fn current_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned (and closed) by `socket` right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the network namespace at `path` (read on a short-lived thread inside it).
pub fn netns_cookie(path: &Path) -> Result<u64, NetnsError> {
    let owned = path.to_owned();
    let worker = std::thread::Builder::new()
        .name("kino-netns-cookie".to_owned())
        .spawn(move || {
            enter_netns(&owned)?;
            current_netns_cookie().map_err(|source| NetnsError::Cookie {
                path: owned.clone(),
                source,
            })
        })
        .map_err(|e| NetnsError::Thread {
            path: path.to_owned(),
            reason: format!("cannot spawn: {e}"),
        })?;
    worker.join().unwrap_or_else(|_| {
        Err(NetnsError::Thread {
            path: path.to_owned(),
            reason: "it panicked".to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_has_one_cookie() {
        let here = current_netns_cookie().expect("SO_NETNS_COOKIE (Linux >= 5.14)");
        assert_ne!(here, 0);
        assert_eq!(current_netns_cookie().expect("again"), here);
        // Through the path of our own namespace: the same cookie (when we may setns).
        if let Ok(cookie) = netns_cookie(Path::new("/proc/self/ns/net")) {
            assert_eq!(cookie, here);
        }
    }
}
