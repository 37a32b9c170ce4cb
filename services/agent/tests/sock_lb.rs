//! Kernel tests of the socket load balancer (issue #14): the real `sock_lb.bpf.o` programs
//! attached to the machine's cgroup v2 root, a test node with dual-stack pods, services
//! programmed through `LbState` as the agent's service watch does. A pod's connect to a VIP
//! reaches a backend (TCP and UDP, IPv4 and IPv6; the reply of unconnected UDP and
//! getpeername show the VIP); sockets of a namespace that is not this node's are never
//! translated; weights are honoured; a terminating backend gets no new connection while an
//! established one keeps working; a frontend without an active backend refuses
//! (ECONNREFUSED); session affinity; a reload (agent restart) keeps translating; and nothing
//! stays attached to the cgroup root after the pins are removed.
//!
//! Needs root, bpffs, cgroup v2, `ip`, `ping` and `bpftool`. Outside CI it skips loudly
//! without them; under `CI=true` it fails instead. Namespaces and pins (with the cgroup
//! links) are removed by guards, also when an assertion fails.

mod support;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kino_agent::datapath::lb::sock::cgroup2_mount;
use kino_agent::datapath::lb::{
    Algorithm, BackendSpec, FrontendKind, FrontendSpec, L4Addr, L4Protocol, LbConfig, LbState,
    NetnsMap, NetnsOwner, SockLb,
};
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::netns::netns_cookie;
use support::{
    ANSWER_WAIT, Pod, World, in_netns, in_node, kernel_tests_possible, node_with_dual_stack_pods,
    run,
};

const VIP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 0x10);
const PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

/// A server answering every TCP connection and UDP datagram with its own name (one byte),
/// on both families of a pod, stopped on drop.
struct WhoAmI {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WhoAmI {
    fn start(pod: &Pod, name: u8) -> Self {
        let binds = [
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, BACKEND_PORT)),
            SocketAddr::from((pod.ip6(), BACKEND_PORT)),
        ];
        let (tcp, udp): (Vec<TcpListener>, Vec<UdpSocket>) = in_netns(&pod.netns, move || {
            (
                binds
                    .iter()
                    .map(|b| TcpListener::bind(b).expect("tcp listen"))
                    .collect(),
                binds
                    .iter()
                    .map(|b| UdpSocket::bind(b).expect("udp bind"))
                    .collect(),
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for listener in tcp {
            listener.set_nonblocking(true).expect("nonblocking");
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            use std::io::Write;
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(&[name]);
                            // Keep it open until the client closes (established connections).
                            let stop = stop.clone();
                            std::thread::spawn(move || {
                                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                                let mut buf = [0u8; 16];
                                while !stop.load(Ordering::Relaxed) {
                                    match stream.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(_) => {
                                            let _ = stream.write_all(&[name]);
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                ErrorKind::WouldBlock | ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => break,
                                    }
                                }
                            });
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
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&[name], from);
                    }
                }
            }));
        }
        WhoAmI { stop, threads }
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A TCP connection from `netns` to `to`: the backend's name and the peer the socket
/// reports (getpeername), or the connect error.
fn who_tcp(netns: &Path, to: SocketAddr) -> Result<(u8, SocketAddr, TcpStream), ErrorKind> {
    let mut stream = in_netns(netns, move || TcpStream::connect_timeout(&to, ANSWER_WAIT))
        .map_err(|e| e.kind())?;
    stream.set_read_timeout(Some(ANSWER_WAIT)).expect("timeout");
    let mut name = [0u8; 1];
    stream.read_exact(&mut name).map_err(|e| e.kind())?;
    let peer = stream.peer_addr().expect("getpeername");
    Ok((name[0], peer, stream))
}

/// An unconnected UDP datagram from `netns` to `to`: the backend's name and the source the
/// reply showed (recvmsg).
fn who_udp(netns: &Path, to: SocketAddr) -> Option<(u8, SocketAddr)> {
    in_netns(netns, move || {
        let any: IpAddr = if to.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind((any, 0)).expect("udp bind");
        socket.set_read_timeout(Some(ANSWER_WAIT)).expect("timeout");
        socket.send_to(b"?", to).ok()?;
        let mut buf = [0u8; 8];
        let (_, from) = socket.recv_from(&mut buf).ok()?;
        Some((buf[0], from))
    })
}

fn frontend(
    id: u32,
    ip: IpAddr,
    protocol: L4Protocol,
    backends: &[(&Pod, u32, bool)],
) -> FrontendSpec {
    FrontendSpec {
        id,
        address: L4Addr {
            ip,
            port: PORT,
            protocol,
        },
        kind: FrontendKind::ClusterIp,
        backends: backends
            .iter()
            .map(|(pod, weight, active)| BackendSpec {
                address: L4Addr {
                    ip: if ip.is_ipv4() {
                        pod.ip.into()
                    } else {
                        pod.ip6().into()
                    },
                    port: BACKEND_PORT,
                    protocol,
                },
                weight: *weight,
                active: *active,
            })
            .collect(),
        affinity_timeout: None,
    }
}

/// Program ids attached to `cgroup` (bpftool's view of the kernel).
fn attached_programs(cgroup: &Path) -> Vec<u64> {
    let out = run(&[
        "bpftool",
        "-j",
        "cgroup",
        "show",
        &cgroup.display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // [{"id":123,"attach_type":"cgroup_inet4_connect",...},...] without a JSON dependency.
    text.split("\"id\":")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Waits (up to 10 s) until none of `programs` is attached to `cgroup`: a link whose last
/// reference went is released by a kernel work item, a moment later. True when they are gone.
fn detached(cgroup: &Path, programs: &[u64]) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attached = attached_programs(cgroup);
        if programs.iter().all(|p| !attached.contains(p)) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn link_program_ids(pin_dir: &Path) -> Vec<u64> {
    let dir = pin_dir.join("cgroup");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let link = aya::programs::links::PinnedLink::from_pin(e.path()).ok()?;
            let info = aya::programs::links::FdLink::from(link).info().ok()?;
            Some(u64::from(info.program_id()))
        })
        .collect()
}

fn tools_present(test: &str) -> bool {
    if !kernel_tests_possible(test) {
        return false;
    }
    if std::process::Command::new("bpftool")
        .arg("version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{test}: bpftool is needed in CI"
        );
        eprintln!("SKIPPED {test}: bpftool is not installed");
        return false;
    }
    true
}

/// The node: its datapath and socket LB loaded and attached, `registered` pods' namespaces
/// (and the node's, when `node_too`) in kino_lb_netns.
struct LbNode {
    state: LbState,
    netns: NetnsMap,
    _sock: SockLb,
    pin_dir: PathBuf,
}

fn load_lb(node: &str, registered: &[&Pod], config: LbConfig) -> LbNode {
    let pin_dir = Path::new(DEFAULT_PIN_ROOT).join(node);
    let (mut sock, maps, mut netns) =
        SockLb::load(&pin_dir, config.maglev_table_size).expect("loading the socket LB");
    sock.attach(&cgroup2_mount().expect("cgroup2"))
        .expect("attaching at the cgroup root");
    for pod in registered {
        let cookie = netns_cookie(&pod.netns).expect("pod netns cookie");
        netns
            .insert(
                cookie,
                NetnsOwner::Pod {
                    endpoint_id: pod.id,
                    identity: pod.identity,
                    ipv4: pod.ip,
                    ipv6: Some(pod.ip6()),
                },
            )
            .expect("recording the pod's netns");
    }
    let state = LbState::adopt(maps, config).expect("adopting the LB maps");
    LbNode {
        state,
        netns,
        _sock: sock,
        pin_dir,
    }
}

#[test]
fn a_pods_connect_to_a_vip_reaches_a_backend_and_other_namespaces_are_left_alone() {
    if !tools_present(
        "a_pods_connect_to_a_vip_reaches_a_backend_and_other_namespaces_are_left_alone",
    ) {
        return;
    }
    let world = World::new();
    let _pins = world.pins();
    let node = world.netns("node");
    let ns: Vec<_> = (0..4).map(|i| world.netns(&format!("pod{i}"))).collect();
    let pods: Vec<Pod> = ns
        .iter()
        .enumerate()
        .map(|(i, n)| Pod::new(&world, n, i as u8 + 1, 300 + i as u32))
        .collect();
    let node_name = world.node.clone();
    let node_path = node.path();
    let cgroup = cgroup2_mount().expect("cgroup2");
    let before = attached_programs(&cgroup);
    let ours = std::sync::Mutex::new(Vec::new());
    let ours = Arc::new(ours);
    let ours_in = ours.clone();
    in_node(&node, move || async move {
        let (_netlink, _datapath) = node_with_dual_stack_pods(&node_name, &pods).await;
        let (client, stranger) = (&pods[0], &pods[3]);
        let _b1 = WhoAmI::start(&pods[1], b'1');
        let _b2 = WhoAmI::start(&pods[2], b'2');
        let mut lb = load_lb(&node_name, &[client], LbConfig::default());
        *ours_in.lock().unwrap() = link_program_ids(&lb.pin_dir);
        for (id, ip, proto) in [
            (1, IpAddr::from(VIP), L4Protocol::Tcp),
            (2, IpAddr::from(VIP), L4Protocol::Udp),
            (3, IpAddr::from(VIP6), L4Protocol::Tcp),
            (4, IpAddr::from(VIP6), L4Protocol::Udp),
        ] {
            lb.state
                .upsert(&frontend(
                    id,
                    ip,
                    proto,
                    &[(&pods[1], 1, true), (&pods[2], 1, true)],
                ))
                .expect("programming the service");
        }
        for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
            let to = SocketAddr::new(vip, PORT);
            // TCP: a backend answers, and the socket's peer is the VIP.
            let (name, peer, _stream) =
                who_tcp(&client.netns, to).unwrap_or_else(|e| panic!("TCP to {to}: {e:?}"));
            assert!(name == b'1' || name == b'2', "answered by {name}");
            assert_eq!(peer, to, "getpeername shows the frontend");
            // UDP (unconnected: sendmsg/recvmsg): a backend answers, from the VIP.
            let (name, from) =
                who_udp(&client.netns, to).unwrap_or_else(|| panic!("UDP to {to}: no answer"));
            assert!(name == b'1' || name == b'2', "answered by {name}");
            assert_eq!(from, to, "the reply's source is the frontend");
            // A pod whose namespace this node did not record: untouched — the VIP is not
            // routed anywhere, so its connect fails.
            assert!(
                who_tcp(&stranger.netns, to).is_err(),
                "{to} translated for a stranger"
            );
            // The node's own namespace is not recorded either (yet): untouched.
            assert!(
                who_tcp(&node_path, to).is_err(),
                "{to} translated for the unrecorded node"
            );
        }
        // Recording the node's own namespace makes its sockets translated too.
        let own = kino_agent::netns::current_netns_cookie().expect("own cookie");
        lb.netns
            .insert(own, NetnsOwner::Node)
            .expect("recording the node");
        let to = SocketAddr::new(VIP.into(), PORT);
        let (name, _, _) = who_tcp(&node_path, to).expect("the node reaches the VIP");
        assert!(name == b'1' || name == b'2');
    });
    let ours = ours.lock().unwrap().clone();
    assert_eq!(ours.len(), 8, "eight programs were attached");
    let during: Vec<u64> = attached_programs(&cgroup);
    for id in &ours {
        assert!(during.contains(id), "program {id} attached while pinned");
        assert!(!before.contains(id));
    }
    drop(_pins);
    assert!(
        detached(&cgroup, &ours),
        "programs {ours:?} still attached after the pins went"
    );
}

/// Names of `count` new connections from `pod` to `to` (each a new socket).
fn names_of(pod: &Pod, to: SocketAddr, count: usize) -> Vec<u8> {
    (0..count)
        .map(|_| {
            who_tcp(&pod.netns, to)
                .unwrap_or_else(|e| panic!("TCP to {to}: {e:?}"))
                .0
        })
        .collect()
}

fn share(names: &[u8], name: u8) -> f64 {
    names.iter().filter(|n| **n == name).count() as f64 / names.len() as f64
}

#[test]
fn weights_terminating_backends_refusals_affinity_maglev_and_restarts() {
    if !tools_present("weights_terminating_backends_refusals_affinity_maglev_and_restarts") {
        return;
    }
    let world = World::new();
    let _pins = world.pins();
    let node = world.netns("node");
    let ns: Vec<_> = (0..3).map(|i| world.netns(&format!("pod{i}"))).collect();
    let pods: Vec<Pod> = ns
        .iter()
        .enumerate()
        .map(|(i, n)| Pod::new(&world, n, i as u8 + 1, 300 + i as u32))
        .collect();
    let node_name = world.node.clone();
    in_node(&node, move || async move {
        let (_netlink, _datapath) = node_with_dual_stack_pods(&node_name, &pods).await;
        let (client, b1, b2) = (&pods[0], &pods[1], &pods[2]);
        let _s1 = WhoAmI::start(b1, b'1');
        let _s2 = WhoAmI::start(b2, b'2');
        let to = SocketAddr::new(VIP.into(), PORT);
        let mut lb = load_lb(&node_name, &[client], LbConfig::default());

        // Weights 1:3 — about a quarter and three quarters of 200 connections.
        lb.state
            .upsert(&frontend(
                1,
                VIP.into(),
                L4Protocol::Tcp,
                &[(b1, 1, true), (b2, 3, true)],
            ))
            .expect("programming");
        let names = names_of(client, to, 200);
        let heavy = share(&names, b'2');
        assert!(
            (0.6..=0.9).contains(&heavy),
            "weight 3 of 4 got {heavy:.2} of the connections"
        );

        // b2 terminating: an established connection keeps working, new ones all go to b1.
        let (name, _, mut established) = loop {
            let found = who_tcp(&client.netns, to).expect("TCP");
            if found.0 == b'2' {
                break found;
            }
        };
        assert_eq!(name, b'2');
        let writes = lb
            .state
            .upsert(&frontend(
                1,
                VIP.into(),
                L4Protocol::Tcp,
                &[(b1, 1, true), (b2, 3, false)],
            ))
            .expect("b2 terminating");
        assert!(
            writes.written <= 3,
            "a state change is a few writes: {writes:?}"
        );
        assert!(
            names_of(client, to, 50).iter().all(|n| *n == b'1'),
            "a terminating backend got a new connection"
        );
        {
            use std::io::Write;
            established
                .write_all(b"?")
                .expect("the established connection still sends");
            let mut answer = [0u8; 1];
            established.read_exact(&mut answer).expect("and receives");
            assert_eq!(answer, [b'2'], "from its backend");
        }

        // No active backend: refused at connect (ECONNREFUSED), not timed out.
        lb.state
            .upsert(&frontend(
                1,
                VIP.into(),
                L4Protocol::Tcp,
                &[(b1, 1, false), (b2, 3, false)],
            ))
            .expect("all terminating");
        assert_eq!(
            who_tcp(&client.netns, to).err(),
            Some(ErrorKind::ConnectionRefused)
        );
        lb.state
            .upsert(&frontend(1, VIP.into(), L4Protocol::Tcp, &[]))
            .expect("no backends");
        assert_eq!(
            who_tcp(&client.netns, to).err(),
            Some(ErrorKind::ConnectionRefused)
        );

        // Session affinity: every connection of the client goes to the backend it first got.
        let mut sticky = frontend(
            1,
            VIP.into(),
            L4Protocol::Tcp,
            &[(b1, 1, true), (b2, 1, true)],
        );
        sticky.affinity_timeout = Some(60);
        lb.state.upsert(&sticky).expect("affinity");
        let names = names_of(client, to, 30);
        assert!(
            names.iter().all(|n| *n == names[0]),
            "affinity broken: {names:?}"
        );
        let affinities = lb.state.maps().affinities().expect("affinity entries");
        assert!(
            affinities
                .iter()
                .any(|(c, f, _, _)| *c == IpAddr::from(client.ip) && *f == 1),
            "{affinities:?}"
        );

        // An agent restart with Maglev: the new programs replace the old links, the maps and
        // their entries are adopted, and translation goes on (through the tables now).
        let old_programs = link_program_ids(&lb.pin_dir);
        drop(lb);
        assert_eq!(
            names_of(client, to, 3).len(),
            3,
            "the pinned links translate without an agent"
        );
        let maglev = LbConfig {
            algorithm: Algorithm::Maglev,
            ..LbConfig::default()
        };
        let mut lb = load_lb(&node_name, &[client], maglev);
        let new_programs = link_program_ids(&lb.pin_dir);
        assert_eq!(new_programs.len(), 8);
        assert!(
            old_programs.iter().all(|p| !new_programs.contains(p)),
            "old links replaced"
        );
        assert!(
            detached(&cgroup2_mount().expect("cgroup2"), &old_programs),
            "old programs still attached"
        );
        assert_eq!(
            lb.state.frontend_addresses(),
            vec![sticky.address],
            "frontend adopted"
        );
        lb.state
            .upsert(&frontend(
                1,
                VIP.into(),
                L4Protocol::Tcp,
                &[(b1, 1, true), (b2, 1, true)],
            ))
            .expect("programming with Maglev");
        let chunks = lb.state.maps().maglev_chunks().expect("tables");
        assert_eq!(chunks, vec![(1, 0)], "one table chunk at the default size");
        // Each socket hashes (its cookie) to a table slot: both backends get connections.
        let names = names_of(client, to, 60);
        for backend in [b'1', b'2'] {
            assert!(
                share(&names, backend) > 0.15,
                "{} got {:.2}",
                backend as char,
                share(&names, backend)
            );
        }
        // Removing the frontend removes every entry it had.
        let removed = lb.state.remove(&sticky.address).expect("removing");
        assert!(removed.removed >= 6, "{removed:?}");
        assert!(lb.state.maps().frontends().expect("frontends").is_empty());
        assert!(lb.state.maps().backends().expect("backends").is_empty());
        assert!(lb.state.maps().slots().expect("slots").is_empty());
        assert!(lb.state.maps().maglev_chunks().expect("tables").is_empty());
        assert!(
            who_tcp(&client.netns, to).is_err(),
            "a removed frontend is not translated"
        );
    });
}
