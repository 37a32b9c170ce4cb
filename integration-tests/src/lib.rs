//! Shared pieces of the end-to-end tests and benchmarks: real processes (etcd, the
//! Kinocilium binaries) started on free loopback ports and stopped (and cleaned up) on drop.

pub mod cluster;
pub mod etcd;
pub mod forward;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod rr;
pub mod scrape;
pub mod stats;
pub mod world;

use std::path::PathBuf;

/// Directory holding the workspace's built binaries (`target/debug` or `target/release`,
/// whichever this test or bench was built into).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    // Tests run from target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, failing with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Whether the run is in CI, where missing tools are failures rather than skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Skips (returns true) outside CI when `tool` is missing; panics in CI.
pub fn require_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return false;
    }
    assert!(
        !in_ci(),
        "{tool} is required in CI; ./integration-tests/run.sh installs it"
    );
    eprintln!("SKIPPED: {tool} not installed (./integration-tests/run.sh installs it)");
    true
}
