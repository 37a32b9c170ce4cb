//! What the kernel tests of the policy datapath share: the guard of kernel capabilities,
//! namespaces and pins removed on drop, a thread in the node's namespace, pods, and TCP/UDP
//! traffic made by sockets opened inside a pod's namespace (no external tools beyond `ip` and
//! `ping`). Same structure as tests/datapath.rs. [`fake_peers`] stands in for the suite's
//! services where a test runs the endpoint manager; [`cluster`] builds nodes on an underlay
//! for the tests between nodes.

#![allow(dead_code)]

pub mod cluster;
pub mod fake_peers;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use kino_agent::datapath::ipcache::IDENTITY_HOST;
use kino_agent::datapath::loader::{DEFAULT_PIN_ROOT, ensure_bpffs};
use kino_agent::datapath::{Datapath, EndpointCounters};
use kino_agent::datapath::{IpPrefix, IpcacheEntry};
use kino_agent::devices::{
    NodeDevicesConfig, NodeIpv6Config, ensure_node_devices, ensure_node_ipv6,
};
use kino_agent::endpoint::{EndpointSpec, VethRequest, create_endpoint};
use kino_agent::netlink::Netlink;

static NEXT_WORLD: AtomicU32 = AtomicU32::new(0);

/// The pods' gateway in every test world.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pods' IPv6 gateway in every dual-stack test world (an address inside the world).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
/// How long a probe that should be answered waits for its answer. Generous: on a loaded
/// machine (CI, tests running side by side) scheduling the echo server or the client can take
/// seconds, and what the test checks is that the answer comes, not how soon. A wrong drop is
/// still caught, only later.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long a probe that should be dropped waits before it counts as dropped. A policy drop is
/// silent, so "dropped" can only mean "no answer within this"; a packet wrongly let through is
/// answered in well under it on an idle machine (and the tests that expect drops also check
/// the drop counters, which do not depend on time).
pub const DROP_WAIT: Duration = Duration::from_millis(400);

/// Whether this machine can run kernel tests; skips (or fails under CI) saying why not.
pub fn kernel_tests_possible(test: &str) -> bool {
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root".to_owned())
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("`ip` (iproute2) is not installed".to_owned())
    } else if Command::new("ping").arg("-V").output().is_err() {
        Some("`ping` (iputils-ping) is not installed".to_owned())
    } else if let Err(e) = ensure_bpffs(Path::new("/sys/fs/bpf")) {
        Some(format!("no bpffs: {e}"))
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: kernel tests must run in CI, but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (run as root with iproute2, iputils-ping and bpffs)");
            false
        }
    }
}

/// Runs a command and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made by this test, deleted on drop (with every link in it).
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates it, with `lo` up.
    pub fn new(name: String) -> Self {
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a command inside.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs a command inside that must succeed.
    pub fn exec_ok(&self, args: &[&str]) {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// The pins of the test's node, removed on drop (the links first, which detaches them).
pub struct Pins {
    /// The node name (pin directory).
    pub node: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = Datapath::remove_pins(Path::new(DEFAULT_PIN_ROOT), &self.node) {
            eprintln!("cleanup: removing pins of {}: {e}", self.node);
        }
        // Only if no other node (test or agent) pins there.
        let _ = std::fs::remove_dir(DEFAULT_PIN_ROOT);
    }
}

/// Names of one test's world: unique per process and test.
pub struct World {
    /// Prefix of its namespaces.
    pub prefix: String,
    /// Its node name.
    pub node: String,
}

impl World {
    /// A fresh world (`kp` = kernel policy test).
    pub fn new() -> Self {
        let n = NEXT_WORLD.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Self {
            prefix: format!("kp{pid}x{n}"),
            node: format!("kp-{pid}-{n}"),
        }
    }

    /// A namespace of this world.
    pub fn netns(&self, role: &str) -> Netns {
        Netns::new(format!("{}-{role}", self.prefix))
    }

    /// The pin guard of this world.
    pub fn pins(&self) -> Pins {
        Pins {
            node: self.node.clone(),
        }
    }
}

/// Runs `scenario` on a thread inside the node's namespace with its own runtime; its panic
/// (a failed assertion) is re-raised here after the thread is gone, so guards still clean up.
pub fn in_node<F, Fut>(node: &Netns, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let path = node.path();
    let thread = std::thread::spawn(move || {
        kino_agent::netns::enter_netns(&path).expect("entering the node's netns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `work` on a thread inside the namespace at `path` (sockets it opens stay there).
pub fn in_netns<T: Send + 'static>(path: &Path, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_owned();
    std::thread::spawn(move || {
        kino_agent::netns::enter_netns(&path).expect("entering a pod's netns");
        work()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A pod of the test: its namespace and endpoint.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its namespace's path.
    pub netns: PathBuf,
    /// Its namespace's name.
    pub ns_name: String,
    /// Container id (names the lxc).
    pub container_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Endpoint id.
    pub id: u32,
    /// Security identity.
    pub identity: u32,
}

impl Pod {
    /// Pod `i` of a world: 10.244.0.(10+i), endpoint id 100+i.
    pub fn new(world: &World, ns: &Netns, i: u8, identity: u32) -> Self {
        Pod {
            netns: ns.path(),
            ns_name: ns.name.clone(),
            container_id: format!("{}-container-{i}", world.prefix),
            ip: Ipv4Addr::new(10, 244, 0, 10 + i),
            id: 100 + u32::from(i),
            identity,
        }
    }

    /// The endpoint to create.
    pub fn spec(&self) -> EndpointSpec {
        EndpointSpec {
            id: self.id,
            identity: self.identity,
            veth: VethRequest {
                container_id: self.container_id.clone(),
                ifname: "eth0".to_owned(),
                netns: self.netns.clone(),
                ipv4: self.ip,
                ipv6: None,
                gateway_v4: GATEWAY,
                gateway_v6: None,
                mac: None,
                mtu: None,
            },
        }
    }

    /// Its IPv6 address in a dual-stack world: `fd00:244::<last octet of its IPv4>`.
    pub fn ip6(&self) -> Ipv6Addr {
        let [.., last] = self.ip.octets();
        Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(last))
    }

    /// The endpoint to create with an IPv6 address too ([`Pod::ip6`], gateway [`GATEWAY_V6`]).
    pub fn dual_stack_spec(&self) -> EndpointSpec {
        let mut spec = self.spec();
        spec.veth.ipv6 = Some(self.ip6());
        spec.veth.gateway_v6 = Some(GATEWAY_V6);
        spec
    }

    /// Pings `to` from this pod; true once both of 2 echoes are answered (within
    /// [`ANSWER_WAIT`]).
    pub fn ping(&self, to: impl Into<IpAddr>) -> bool {
        ping_ip_from_ns(&self.ns_name, to.into(), None)
    }

    /// Pings `to` from this pod; true if neither of 2 echoes (0.2 s apart) is answered
    /// within a second.
    pub fn ping_dropped(&self, to: impl Into<IpAddr>) -> bool {
        ping_ip_from_ns_dropped(&self.ns_name, to.into(), None)
    }

    /// An echo server on `port` (TCP and UDP) in this pod.
    pub fn serve(&self, ports: &[u16]) -> EchoServer {
        EchoServer::start(&self.netns, ports)
    }

    /// An echo server on `port` (TCP and UDP) on the pod's IPv4 (any) and IPv6 addresses.
    pub fn serve_dual_stack(&self, ports: &[u16]) -> EchoServer {
        let addresses = [Ipv4Addr::UNSPECIFIED.into(), self.ip6().into()];
        EchoServer::start_on(&self.netns, &addresses, ports)
    }

    /// A TCP connection to `to:port` from this pod that exchanges one byte; true if it did
    /// (within [`ANSWER_WAIT`]).
    pub fn tcp(&self, to: impl Into<IpAddr>, port: u16) -> bool {
        tcp_exchange(&self.netns, to, port)
    }

    /// A TCP connection attempt to `to:port` from this pod; true if it did not open and
    /// exchange a byte within [`DROP_WAIT`].
    pub fn tcp_dropped(&self, to: impl Into<IpAddr>, port: u16) -> bool {
        tcp_exchange_dropped(&self.netns, to, port)
    }

    /// A UDP socket of this pod connected to `to:port`.
    pub fn udp(&self, to: impl Into<IpAddr>, port: u16) -> UdpFlow {
        UdpFlow::connect(&self.netns, to, port)
    }
}

/// `ping` from namespace `ns` (from the address `source` when given): true once 2 echoes
/// are answered (ping's deadline: [`ANSWER_WAIT`]).
pub fn ping_from_ns(ns: &str, to: Ipv4Addr, source: Option<Ipv4Addr>) -> bool {
    ping_ip_from_ns(ns, to.into(), source.map(IpAddr::from))
}

/// [`ping_from_ns`] for either family.
pub fn ping_ip_from_ns(ns: &str, to: IpAddr, source: Option<IpAddr>) -> bool {
    let deadline = ANSWER_WAIT.as_secs().to_string();
    ping(ns, to, source, &["-c", "2", "-i", "0.2", "-w", &deadline])
}

/// `ping` from namespace `ns` (from `source` when given): true if neither of 2 echoes (0.2 s
/// apart) is answered within a second.
pub fn ping_from_ns_dropped(ns: &str, to: Ipv4Addr, source: Option<Ipv4Addr>) -> bool {
    ping_ip_from_ns_dropped(ns, to.into(), source.map(IpAddr::from))
}

/// [`ping_from_ns_dropped`] for either family.
pub fn ping_ip_from_ns_dropped(ns: &str, to: IpAddr, source: Option<IpAddr>) -> bool {
    !ping(ns, to, source, &["-c", "2", "-i", "0.2", "-W", "1"])
}

/// Runs ping in `ns` with `how` (count and waits); true if it succeeded (`-w`: every echo
/// answered by the deadline; `-W` alone: at least one answered).
fn ping(ns: &str, to: IpAddr, source: Option<IpAddr>, how: &[&str]) -> bool {
    let to = to.to_string();
    let source = source.map(|s| s.to_string());
    let mut args = vec!["ip", "netns", "exec", ns, "ping", "-n"];
    args.extend(how);
    if let Some(source) = &source {
        args.extend(["-I", source]);
    }
    args.push(&to);
    run(&args).status.success()
}

/// Creates the node devices, loads the datapath and creates the pods' endpoints.
pub async fn node_with_pods(node_name: &str, pods: &[Pod]) -> (Netlink, Datapath) {
    let netlink = Netlink::connect().expect("netlink in the node");
    ensure_node_devices(
        &netlink,
        &NodeDevicesConfig {
            gateway: GATEWAY,
            pod_cidr: Some("10.244.0.0/24".parse().expect("cidr")),
        },
    )
    .await
    .expect("node devices");
    let mut datapath =
        Datapath::load(Path::new(DEFAULT_PIN_ROOT), node_name).expect("loading the datapath");
    for pod in pods {
        create_endpoint(&netlink, &mut datapath, &pod.spec())
            .await
            .unwrap_or_else(|e| panic!("creating endpoint {}: {e}", pod.id));
    }
    (netlink, datapath)
}

/// [`node_with_pods`] on a dual-stack node: `kino_host` also holds [`GATEWAY_V6`] and routes
/// `fd00:244::/120`, the pods get IPv6 addresses too, and both gateways are host (1) in the
/// ipcache (as the agent's start-up puts them).
pub async fn node_with_dual_stack_pods(node_name: &str, pods: &[Pod]) -> (Netlink, Datapath) {
    let (netlink, mut datapath) = node_with_pods(node_name, &[]).await;
    ensure_node_ipv6(
        &netlink,
        &NodeIpv6Config {
            gateway: GATEWAY_V6,
            pod_cidr: Some("fd00:244::/120".parse().expect("cidr")),
        },
    )
    .await
    .expect("node IPv6");
    for gateway in [IpAddr::from(GATEWAY), IpAddr::from(GATEWAY_V6)] {
        datapath
            .ipcache_mut()
            .upsert(&IpcacheEntry::new(IpPrefix::host(gateway), IDENTITY_HOST))
            .expect("host entry");
    }
    for pod in pods {
        create_endpoint(&netlink, &mut datapath, &pod.dual_stack_spec())
            .await
            .unwrap_or_else(|e| panic!("creating dual-stack endpoint {}: {e}", pod.id));
    }
    (netlink, datapath)
}

/// An endpoint's counters.
pub fn counters(datapath: &Datapath, id: u32) -> EndpointCounters {
    datapath.maps().counters(id).expect("reading counters")
}

/// TCP and UDP echo servers on some ports of a namespace, stopped on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `ports` (TCP and UDP, all addresses) inside the namespace at `netns`.
    pub fn start(netns: &Path, ports: &[u16]) -> Self {
        Self::start_on(netns, &[Ipv4Addr::UNSPECIFIED.into()], ports)
    }

    /// Listens on `ports` (TCP and UDP) of each of `addresses` inside the namespace at
    /// `netns` (0.0.0.0 and an IPv6 address: both families without a dual-stack socket).
    pub fn start_on(netns: &Path, addresses: &[IpAddr], ports: &[u16]) -> Self {
        let binds: Vec<SocketAddr> = addresses
            .iter()
            .flat_map(|a| ports.iter().map(move |p| SocketAddr::new(*a, *p)))
            .collect();
        let (tcp, udp): (Vec<TcpListener>, Vec<UdpSocket>) = in_netns(netns, move || {
            let tcp = binds
                .iter()
                .map(|b| TcpListener::bind(b).unwrap_or_else(|e| panic!("tcp listen {b}: {e}")))
                .collect();
            let udp = binds
                .iter()
                .map(|b| UdpSocket::bind(b).unwrap_or_else(|e| panic!("udp bind {b}: {e}")))
                .collect();
            (tcp, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for listener in tcp {
            listener.set_nonblocking(true).expect("nonblocking");
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let stop = stop.clone();
                            std::thread::spawn(move || echo_tcp(stream, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        for socket in udp {
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        EchoServer { stop, threads }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Echoes until the peer closes or the server stops (so no socket outlives the test).
fn echo_tcp(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// Connects from the namespace at `netns` to `to:port`, sends a byte and reads it back; true
/// if it did within [`ANSWER_WAIT`] (each step).
pub fn tcp_exchange(netns: &Path, to: impl Into<IpAddr>, port: u16) -> bool {
    tcp_exchange_within(netns, to.into(), port, ANSWER_WAIT)
}

/// [`tcp_exchange`] expected to fail: true if no byte came back within [`DROP_WAIT`].
pub fn tcp_exchange_dropped(netns: &Path, to: impl Into<IpAddr>, port: u16) -> bool {
    !tcp_exchange_within(netns, to.into(), port, DROP_WAIT)
}

fn tcp_exchange_within(netns: &Path, to: IpAddr, port: u16, wait: Duration) -> bool {
    let Some(mut stream) = tcp_connect_within(netns, to, port, wait) else {
        return false;
    };
    exchange(&mut stream)
}

/// A TCP connection from the namespace at `netns` (reads on it wait up to [`ANSWER_WAIT`]),
/// or `None` if it cannot be opened within [`ANSWER_WAIT`].
pub fn tcp_connect(netns: &Path, to: impl Into<IpAddr>, port: u16) -> Option<TcpStream> {
    tcp_connect_within(netns, to.into(), port, ANSWER_WAIT)
}

fn tcp_connect_within(netns: &Path, to: IpAddr, port: u16, wait: Duration) -> Option<TcpStream> {
    let stream = in_netns(netns, move || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), wait).ok()
    })?;
    stream.set_read_timeout(Some(wait)).expect("timeout");
    Some(stream)
}

/// Sends a byte on an open connection and reads the echo; true if it came back within the
/// stream's read timeout.
pub fn exchange(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    stream.write_all(b"x").is_ok() && stream.read_exact(&mut buf).is_ok() && buf == *b"x"
}

/// A UDP flow (one socket, one peer: one 5-tuple) from a pod.
pub struct UdpFlow {
    socket: UdpSocket,
    sequence: u32,
}

impl UdpFlow {
    /// Opens the socket in the namespace at `netns`, connected to `to:port`.
    pub fn connect(netns: &Path, to: impl Into<IpAddr>, port: u16) -> Self {
        let to = to.into();
        let socket = in_netns(netns, move || {
            let any: IpAddr = if to.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind((any, 0)).expect("udp bind");
            socket.connect((to, port)).expect("udp connect");
            socket
        });
        UdpFlow {
            socket,
            sequence: 0,
        }
    }

    /// Sends a numbered datagram and waits for its echo; true if it came back within
    /// [`ANSWER_WAIT`] (late echoes of earlier datagrams are skipped).
    pub fn exchange(&mut self) -> bool {
        self.exchange_within(ANSWER_WAIT)
    }

    /// [`UdpFlow::exchange`] expected to fail: true if no echo came back within
    /// [`DROP_WAIT`].
    pub fn exchange_dropped(&mut self) -> bool {
        !self.exchange_within(DROP_WAIT)
    }

    fn exchange_within(&mut self, wait: Duration) -> bool {
        self.socket.set_read_timeout(Some(wait)).expect("timeout");
        self.sequence += 1;
        let sent = self.sequence.to_be_bytes();
        if self.socket.send(&sent).is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(4) if buf[..4] == sent => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}
