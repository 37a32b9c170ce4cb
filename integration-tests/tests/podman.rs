//! The real runtime: podman (Debian's 4.3, runc, the CNI backend) runs two busybox containers
//! on a network whose conflist names `kino-cni`. They get addresses from kino-ipam, ping each
//! other and fetch a page over HTTP through the eBPF datapath; `kino endpoint list` shows both;
//! the lxc `kino endpoint get` names is in `ip link` of the node with the same ifindex; and
//! `podman rm -f` makes the lxc, the endpoint, its datastore record and its IP disappear.
//!
//! Podman runs with a private containers.conf (`CONTAINERS_CONF`), storage (`--root`,
//! `--runroot`) and CNI config directory under the test's temp directory; the agent runs in
//! the Suite's node namespace (podman calls kino-cni from the host namespace and creates each
//! container's namespace under /run/netns). Everything is removed even when the test fails.
//! Outside CI the test skips loudly without root or podman; in CI it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kino_integration_tests::bin_dir;
use kino_integration_tests::world::{Suite, kernel_tests_possible};
use serde_json::Value;

/// What the web container serves.
const PAGE: &str = "hello from a kino pod\n";
/// Port of busybox httpd in the web container.
const HTTP_PORT: u16 = 8080;

/// Directories podman (or runc, libcni, containers/image) creates outside its private
/// configuration on first use: runc's state root, libcni's result cache, the blob-info cache.
/// The guard removes those that did not exist before the test, once they hold no files.
const GLOBAL_DIRS: [&str; 3] = ["/run/runc", "/var/lib/cni", "/var/lib/containers"];

/// Podman confined to a directory; its containers, images, storage, namespaces and the
/// global directories it created are removed on drop.
struct Podman {
    dir: PathBuf,
    conf: PathBuf,
    network: String,
    /// Network namespaces of the containers started (podman's `SandboxKey`).
    netns: Vec<PathBuf>,
    created_globals: Vec<PathBuf>,
}

impl Podman {
    /// Writes containers.conf and a conflist naming kino-cni (talking to `agent_socket`).
    fn new(dir: &Path, agent_socket: &Path) -> Podman {
        let created_globals = GLOBAL_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect();
        let dir = dir.join("podman");
        let cni_conf = dir.join("cni");
        for d in [&cni_conf, &dir.join("tmp")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
tmp_dir = "{dir}/tmp"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{plugins}", "/usr/lib/cni"]
network_config_dir = "{cni}"
default_network = "kino"
"#,
                dir = dir.display(),
                plugins = bin_dir().display(),
                cni = cni_conf.display(),
            ),
        )
        .unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kino",
            "plugins": [{"type": "kino-cni", "agentSocket": agent_socket}],
        });
        std::fs::write(cni_conf.join("kino.conflist"), conflist.to_string()).unwrap();
        Podman {
            dir,
            conf,
            network: "kino".to_owned(),
            netns: Vec::new(),
            created_globals,
        }
    }

    /// Runs podman with the private configuration; returns its output whatever the status.
    fn try_run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .output()
            .expect("running podman")
    }

    /// Runs podman, failing the test with its output if it fails; returns stdout, trimmed.
    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Imports a busybox image: /bin/busybox (static) with one symlink per applet, an empty
    /// /etc (podman mounts hosts and resolv.conf there) and the page httpd serves.
    fn import_busybox(&self, image: &str) {
        let rootfs = self.dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "www"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let busybox = rootfs.join("bin/busybox");
        std::fs::copy("/bin/busybox", &busybox).unwrap();
        let applets = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(rootfs.join("www/index.html"), PAGE).unwrap();
        let tar = self.dir.join("busybox.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar of the busybox rootfs failed");
        self.run(&[
            "import",
            "--quiet",
            "--change",
            "ENV PATH=/bin",
            &tar.display().to_string(),
            image,
        ]);
    }

    /// Starts a detached container on the kino network; returns its full id.
    fn start(&mut self, name: &str, image: &str, command: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            image,
        ];
        args.extend_from_slice(command);
        let out = self.try_run(&args);
        // Record its namespace even if `run` failed half way, so the guard can remove it.
        let sandbox = self.try_run(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name]);
        let sandbox = String::from_utf8_lossy(&sandbox.stdout).trim().to_owned();
        if !sandbox.is_empty() {
            self.netns.push(PathBuf::from(sandbox));
        }
        assert!(
            out.status.success(),
            "podman run {name} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman inspect -f <format> <name>`.
    fn inspect(&self, name: &str, format: &str) -> String {
        self.run(&["inspect", "-f", format, name])
    }

    /// Runs a command in a container; returns its output whatever the status.
    fn exec(&self, name: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(command);
        self.try_run(&args)
    }

    /// Unmounts whatever podman left mounted under its directory (deepest first).
    fn unmount_leftovers(&self) {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first: `rm -f` runs CNI DEL, which needs the agent (still running: the
        // guard is declared after the Suite, so it is dropped before it).
        let _ = self.try_run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.try_run(&["rmi", "--all", "--force"]);
        for netns in &self.netns {
            if netns.exists() {
                eprintln!("podman left {}; removing it", netns.display());
                if let Some(name) = netns.file_name() {
                    let _ = Command::new("ip").args(["netns", "del"]).arg(name).status();
                }
            }
        }
        self.unmount_leftovers();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
        for dir in &self.created_globals {
            if only_directories(dir) {
                let _ = std::fs::remove_dir_all(dir);
            } else if dir.ends_with("containers") {
                // containers/image's blob-info cache is the only file podman import writes.
                let _ = std::fs::remove_file(dir.join("cache/blob-info-cache-v1.boltdb"));
                if only_directories(dir) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            } else {
                eprintln!("leaving {} (it holds files)", dir.display());
            }
        }
    }
}

/// Whether `dir` exists and holds no files at any depth (only directories).
fn only_directories(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .all(|e| e.file_type().is_ok_and(|t| t.is_dir()) && only_directories(&e.path()))
}

/// Parses the stdout of `kino ... -o json`, failing with the whole output.
fn kino_json(suite: &Suite, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = suite.kino(&all);
    assert!(
        out.status.success(),
        "kino {all:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kino {all:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Container ids of the endpoints `kino endpoint list` shows.
fn listed_containers(suite: &Suite) -> Vec<String> {
    kino_json(suite, &["endpoint", "list"])["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .map(|e| e["containerId"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The node's `ip -o link` line of `name`, if it exists.
fn node_link(suite: &Suite, name: &str) -> Option<String> {
    let out = suite
        .node
        .try_exec(&["ip", "-o", "link", "show", "dev", name]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Retries `attempt` for up to `timeout` (a server in a fresh container takes a moment).
fn eventually(timeout: Duration, mut attempt: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Whether `elf` is a 64-bit little-endian ELF without a program interpreter (PT_INTERP), so
/// it runs in a rootfs that holds nothing else.
fn is_static_elf64(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at + len)?;
        Some(bytes.iter().rev().fold(0, |n, b| (n << 8) | u64::from(*b)))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = (phoff + i * phentsize) as usize;
        field(at, 4).is_some_and(|kind| kind != u64::from(PT_INTERP))
    })
}

fn podman_possible() -> bool {
    if !kernel_tests_possible() {
        return false;
    }
    for tool in ["podman", "runc", "tar"] {
        if kino_integration_tests::require_tool(tool) {
            return false;
        }
    }
    if !std::fs::read("/bin/busybox").is_ok_and(|elf| is_static_elf64(&elf)) {
        assert!(
            !kino_integration_tests::in_ci(),
            "a static /bin/busybox (Debian busybox-static) is required in CI"
        );
        eprintln!("SKIPPED: podman test needs a static /bin/busybox (Debian busybox-static)");
        return false;
    }
    true
}

#[tokio::test]
async fn podman_containers_get_endpoints_talk_and_leave_nothing() {
    if !podman_possible() {
        return;
    }
    let suite = Suite::start("pm").await;
    // Declared after the Suite so it is dropped first, while the agent still answers DEL.
    let mut podman = Podman::new(suite.dir.path(), &suite.agent_socket());
    let image = format!("localhost/kino-busybox:{}", suite.prefix);
    podman.import_busybox(&image);

    let web_name = format!("{}-web", suite.prefix);
    let client_name = format!("{}-client", suite.prefix);
    let port = HTTP_PORT.to_string();
    let web_id = podman.start(
        &web_name,
        &image,
        &["httpd", "-f", "-p", &port, "-h", "/www"],
    );
    let client_id = podman.start(&client_name, &image, &["sleep", "3600"]);

    // Both got an address from kino-ipam; podman and the agent agree on it.
    let ip_of = |name: &str| podman.inspect(name, "{{.NetworkSettings.Networks.kino.IPAddress}}");
    let (web_ip, client_ip) = (ip_of(&web_name), ip_of(&client_name));
    for (name, ip) in [(&web_name, &web_ip), (&client_name, &client_ip)] {
        assert!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "podman reports no IPv4 address for {name}: {ip:?}; agent log:\n{}",
            suite.agent_log()
        );
        let endpoint = kino_json(&suite, &["endpoint", "get", &format!("default/{name}")]);
        assert_eq!(
            endpoint["networking"]["addressing"]["ipv4"], *ip,
            "kino endpoint get default/{name}: {endpoint:#}"
        );
        let addr = podman.exec(name, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(
            String::from_utf8_lossy(&addr.stdout).contains(&format!("inet {ip}/32")),
            "{name}'s eth0 lacks {ip}/32: {}",
            String::from_utf8_lossy(&addr.stdout)
        );
    }
    assert_ne!(web_ip, client_ip);

    // They ping each other.
    for (from, to) in [(&client_name, &web_ip), (&web_name, &client_ip)] {
        let out = podman.exec(from, &["ping", "-c", "3", "-W", "2", to]);
        assert!(
            out.status.success(),
            "{from} cannot ping {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The client fetches the web container's page over HTTP (busybox wget, and a raw
    // request with nc; `wget -qO-` segfaults under podman exec here).
    let url = format!("http://{web_ip}:{HTTP_PORT}/index.html");
    eventually(Duration::from_secs(10), || {
        let out = podman.exec(&client_name, &["wget", "-O", "/tmp/page", &url]);
        if !out.status.success() {
            return Err(format!(
                "{client_name} cannot fetch {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let page = podman.exec(&client_name, &["cat", "/tmp/page"]);
        match String::from_utf8_lossy(&page.stdout) {
            body if body == PAGE => Ok(()),
            body => Err(format!("{url} served {body:?}, expected {PAGE:?}")),
        }
    });
    let raw = podman.exec(
        &client_name,
        &[
            "sh",
            "-c",
            &format!(
                "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {web_ip} {HTTP_PORT}"
            ),
        ],
    );
    let response = String::from_utf8_lossy(&raw.stdout);
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 ") && response.ends_with(PAGE),
        "raw HTTP request to {web_ip}:{HTTP_PORT} got: {response:?}"
    );

    // `kino endpoint list` shows both containers.
    let listed = listed_containers(&suite);
    for id in [&web_id, &client_id] {
        assert!(listed.contains(id), "container {id} not in {listed:?}");
    }
    assert_eq!(listed.len(), 2, "{listed:?}");

    // The lxc each endpoint names is in the node's `ip link`, with the same ifindex, and its
    // peer is the container's eth0.
    let mut lxcs = Vec::new();
    for name in [&web_name, &client_name] {
        let endpoint = kino_json(&suite, &["endpoint", "get", &format!("default/{name}")]);
        let id = endpoint["id"].as_u64().expect("endpoint id").to_string();
        let endpoint = kino_json(&suite, &["endpoint", "get", &id]);
        let lxc = endpoint["networking"]["interfaceName"]
            .as_str()
            .expect("interfaceName")
            .to_owned();
        let ifindex = endpoint["networking"]["interfaceIndex"]
            .as_u64()
            .expect("interfaceIndex");
        assert!(lxc.starts_with("lxc"), "{endpoint:#}");
        let line = node_link(&suite, &lxc).unwrap_or_else(|| {
            panic!(
                "endpoint {id} names {lxc}, which the node does not have; lxcs: {:?}",
                suite.lxc_links()
            )
        });
        assert!(
            line.starts_with(&format!("{ifindex}: {lxc}@")),
            "ip link shows {line:?}, the endpoint says {lxc} ifindex {ifindex}"
        );
        let peer = podman.exec(name, &["cat", "/sys/class/net/eth0/iflink"]);
        assert_eq!(
            String::from_utf8_lossy(&peer.stdout).trim(),
            ifindex.to_string(),
            "{name}'s eth0 is not the peer of {lxc}"
        );
        // Traffic went through the eBPF programs on that lxc.
        let egress: u64 = endpoint["counters"]["egressPackets"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            egress > 0,
            "no egress packets counted on {lxc}: {endpoint:#}"
        );
        lxcs.push((
            name.clone(),
            lxc,
            id,
            endpoint["networking"]["netnsPath"].clone(),
        ));
    }
    assert_eq!(suite.datastore_names("Endpoint").await.len(), 2);

    // `podman rm -f` makes the lxc disappear, with the endpoint, its record and its IP.
    let namespace_web = format!("default/{web_ip}");
    assert!(
        suite
            .datastore_names("IPAllocation")
            .await
            .contains(&namespace_web),
        "no IPAllocation for {web_ip}"
    );
    for (name, lxc, id, netns) in &lxcs {
        podman.run(&["rm", "--force", "--time", "0", name]);
        assert_eq!(
            node_link(&suite, lxc),
            None,
            "{lxc} of {name} is still in the node after podman rm"
        );
        let gone = suite.kino(&["endpoint", "get", id]);
        assert!(!gone.status.success(), "endpoint {id} still exists");
        assert!(
            !suite
                .datastore_names("Endpoint")
                .await
                .iter()
                .any(|k| k.ends_with(&format!("/{id}"))),
            "endpoint {id}'s datastore record is still there"
        );
        let netns = netns.as_str().unwrap_or_default();
        assert!(
            !netns.is_empty() && !Path::new(netns).exists(),
            "{name}'s network namespace {netns} is still there"
        );
    }
    assert!(listed_containers(&suite).is_empty());
    assert!(suite.lxc_links().is_empty(), "{:?}", suite.lxc_links());
    assert_eq!(
        suite.datastore_names("Endpoint").await,
        Vec::<String>::new()
    );
    let left: Vec<String> = suite
        .datastore_names("IPAllocation")
        .await
        .into_iter()
        .filter(|k| k.contains(&web_ip) || k.contains(&client_ip) || k.contains("owner:"))
        .collect();
    assert!(left.is_empty(), "IPAM still holds {left:?}");
}
