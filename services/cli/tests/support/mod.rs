//! What the CLI's end-to-end tests share: the suite's service processes (built next to
//! `kino`, killed by their pid when dropped) and readers of `kino`'s output.

#![allow(dead_code)] // each test file uses its part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A service process of the test, killed (by its pid) when dropped.
pub struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    pub fn start(dir: &Path, name: &'static str, args: &[String]) -> Service {
        let binary = sibling_binary(name);
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(&binary)
            .args(args)
            .args(["--log-format", "json"])
            // The default metrics ports would collide between tests running in parallel.
            .args(["--metrics-address", "off"])
            .env("KINO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Service { name, child, log }
    }

    /// Waits until the service accepts connections on `socket`.
    pub fn wait_for_socket(&mut self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not listen on {} within 30 s:\n{}",
            self.name,
            socket.display(),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kino-datastore-gateway on an embedded store in `dir`, accepting connections on the
/// returned socket.
pub fn start_gateway(dir: &Path) -> (Service, PathBuf) {
    let socket = dir.join("datastore.sock");
    let mut gateway = Service::start(
        dir,
        "kino-datastore-gateway",
        &[
            format!("--listen=unix:{}", socket.display()),
            "--backend=embedded".into(),
            format!("--data-file={}", dir.join("kino.redb").display()),
        ],
    );
    gateway.wait_for_socket(&socket);
    (gateway, socket)
}

/// A workspace binary built next to `kino` (`cargo build` puts them in one directory).
pub fn sibling_binary(name: &str) -> PathBuf {
    let kino = Path::new(env!("CARGO_BIN_EXE_kino"));
    let path = kino.parent().expect("target dir").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins -p kino-datastore-gateway -p kino-policy-compiler -p kino-ipam` (./integration-tests/run.sh builds every binary)",
        path.display()
    );
    path
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The row of a table whose first columns are `cells`, split on whitespace.
pub fn row<'a>(table: &'a str, cells: &[&str]) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.starts_with(cells))
        .unwrap_or_else(|| panic!("no row starting {cells:?} in\n{table}"))
}
