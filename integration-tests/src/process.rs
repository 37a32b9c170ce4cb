//! Kinocilium service processes started from the built binaries, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every service's metrics address variable, set to `off`.
const METRICS_OFF: [(&str, &str); 4] = [
    ("KINO_DATASTORE_METRICS_ADDRESS", "off"),
    ("KINO_IPAM_METRICS_ADDRESS", "off"),
    ("KINO_POLICY_METRICS_ADDRESS", "off"),
    ("KINO_AGENT_METRICS_ADDRESS", "off"),
];

/// A running service binary.
pub struct ServiceProcess {
    child: Option<Child>,
    /// What was started, for messages.
    pub name: String,
    /// The log file (stdout + stderr).
    pub log: std::path::PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `args`, logging into `log_dir/<name>.log`.
    ///
    /// Metrics endpoints are off unless `args` or `envs` turn them on (`--metrics-address`):
    /// the services' default ports would collide between tests running in parallel. The PKI
    /// directory is `log_dir/pki` unless `envs` names another (`KINO_PKI_DIR`): a test never
    /// picks up the machine's `/var/lib/kino/pki`, so a TCP listener needs the test's own
    /// certificates ([`crate::pki::TestPki`]) or `--insecure`.
    pub fn start(
        binary: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<ServiceProcess> {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(binary)
            .args(args)
            .envs(METRICS_OFF)
            .env("KINO_PKI_DIR", log_dir.join("pki"))
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        Ok(ServiceProcess {
            child: Some(child),
            name,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (e.g. "TERM", "KILL") and waits up to 10 s for the exit; returns the
    /// exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().expect("process already stopped");
        if let Err(e) = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("{} did not exit within 10 s of SIG{signal}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until a TCP port accepts connections.
pub async fn wait_for_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{addr} not listening after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
