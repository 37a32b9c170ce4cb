//! Reaching the host's loopback from a test's network namespace: a TCP listener on the
//! namespace's `127.0.0.1:<port>` whose connections are relayed to the host's
//! `127.0.0.1:<port>`. The agent runs inside a node namespace; this is how it reaches an OTLP
//! receiver the test runs on the host, with the address it would use on a real node.

use std::io;
use std::path::Path;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The running relay; dropping it closes the listener and every relayed connection.
pub struct LoopbackForward {
    task: JoinHandle<()>,
}

impl LoopbackForward {
    /// Listens on `127.0.0.1:port` inside the namespace at `netns` (e.g. `/run/netns/x`) and
    /// relays to the same port on the host. Call from a Tokio runtime.
    pub fn start(netns: &Path, port: u16) -> io::Result<LoopbackForward> {
        let netns = netns.to_owned();
        // A socket belongs to the namespace it was created in: create it from a thread that
        // joined the namespace (setns changes only that thread), then serve it from here.
        let listener = std::thread::spawn(move || -> io::Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .expect("forward listener thread")?;
        let listener = TcpListener::from_std(listener)?;
        let task = tokio::spawn(async move {
            // Owned by the task: aborting it drops (and so aborts) every relay.
            let mut relays = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                relays.spawn(async move {
                    // The runtime's threads are in the host's namespace.
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while relays.try_join_next().is_some() {}
            }
        });
        Ok(LoopbackForward { task })
    }
}

impl Drop for LoopbackForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
