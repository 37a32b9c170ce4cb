//! Process signals that stop a service.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let name = wait_for_signal().await;
    tracing::info!(signal = name, "shutdown signal received");
}

/// Waits for SIGTERM or SIGINT and names the one that came. If a handler cannot be
/// installed (never expected on Linux) that signal is simply not waited for.
pub(crate) async fn wait_for_signal() -> &'static str {
    let wait = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
                name
            }
            Err(error) => {
                tracing::warn!(signal = name, %error, "cannot install signal handler");
                std::future::pending().await
            }
        }
    };
    tokio::select! {
        name = wait(SignalKind::terminate(), "SIGTERM") => name,
        name = wait(SignalKind::interrupt(), "SIGINT") => name,
    }
}
