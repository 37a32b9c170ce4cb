//! Services end to end (issue #14) on a cluster of real agents (see
//! `kino_integration_tests::cluster`): a `Service` record written into the gateway — as
//! kino-ipam writes it — is followed by every agent into its socket load balancer. A pod's
//! connects to the VIP reach backends on both nodes (TCP, IPv4 and IPv6, spread over both)
//! and its unconnected UDP gets replies from the VIP; the external host's connect is not
//! translated; every node routes the service CIDRs as unreachable; a terminating backend
//! gets no new connection; a deleted service is no longer translated; and nothing of the
//! agents stays attached to the machine's cgroup root after the cluster is gone.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kino_api::datastore::Resource;
use kino_api::service::{
    Backend, BackendState, Frontend, FrontendType, Protocol, Service, ServiceType,
};
use kino_integration_tests::cluster::{Cluster, ClusterOptions, ClusterPod};
use kino_integration_tests::world::{Netns, kernel_tests_possible};
use kino_service_kit::records::RecordClient;
use prost::Message;

const VIP: &str = "172.20.0.10";
const VIP6: &str = "fd00:ffff::10";

/// A server in a pod answering each TCP connection and UDP datagram on port 8080 (both
/// families) with `name`; killed on drop.
struct NameServer(Child);

impl NameServer {
    fn start(pod: &ClusterPod, name: &str) -> Self {
        let program = format!(
            "import socket,threading\n\
             N=b'{name}'\n\
             def tcp(f,a):\n  s=socket.socket(f)\n  s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n  \
             if f==socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n  \
             s.bind((a,8080)); s.listen(128)\n  \
             while True:\n    c,_=s.accept(); c.sendall(N); c.close()\n\
             def udp(f,a):\n  s=socket.socket(f,socket.SOCK_DGRAM)\n  \
             if f==socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n  \
             s.bind((a,8080))\n  \
             while True:\n    d,a2=s.recvfrom(64); s.sendto(N,a2)\n\
             for t in [(tcp,socket.AF_INET,'0.0.0.0'),(tcp,socket.AF_INET6,'::'),(udp,socket.AF_INET,'0.0.0.0'),(udp,socket.AF_INET6,'::')]:\n  \
             threading.Thread(target=t[0],args=t[1:],daemon=True).start()\n\
             threading.Event().wait()\n"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.netns.name, "python3", "-c", &program])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        NameServer(child)
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `count` TCP connections from `netns` to `ip:port`, retried on refusal for 10 s at first
/// (the servers start): each answer's name, and what getpeername said; or the error.
fn tcp_names(
    netns: &Netns,
    ip: &str,
    port: u16,
    count: usize,
) -> Result<(Vec<String>, String), String> {
    let family = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let program = format!(
        "import socket,time,sys\n\
         names=[]; peer=''\n\
         deadline=time.time()+10\n\
         while len(names)<{count}:\n  \
         c=socket.socket(socket.{family}); c.settimeout(3)\n  \
         try:\n    c.connect(('{ip}',{port}))\n  \
         except ConnectionRefusedError:\n    \
         c.close()\n    \
         if names or time.time()>deadline: print('refused'); sys.exit(1)\n    \
         time.sleep(0.1); continue\n  \
         except OSError as e:\n    print('error', e.errno); sys.exit(1)\n  \
         peer=c.getpeername()[0]; names.append(c.recv(16).decode()); c.close()\n\
         print(' '.join(names)); print(peer)\n"
    );
    let out = netns.try_exec(&["python3", "-c", &program]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut lines = text.lines();
    let names = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .map(str::to_owned)
        .collect();
    Ok((names, lines.next().unwrap_or_default().to_owned()))
}

/// One unconnected UDP datagram from `netns` to `ip:port`: the answer's name and source.
fn udp_name(netns: &Netns, ip: &str, port: u16) -> Option<(String, String)> {
    let family = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let program = format!(
        "import socket\n\
         s=socket.socket(socket.{family},socket.SOCK_DGRAM); s.settimeout(5)\n\
         s.sendto(b'?',('{ip}',{port}))\n\
         d,a=s.recvfrom(64); print(d.decode()); print(a[0])\n"
    );
    let out = netns.try_exec(&["python3", "-c", &program]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut lines = text.lines();
    Some((lines.next()?.to_owned(), lines.next()?.to_owned()))
}

fn backend(address: &str, state: BackendState) -> Backend {
    Backend {
        address: address.to_owned(),
        port: 8080,
        state: state as i32,
        ..Default::default()
    }
}

fn frontend(id: u32, address: &str, protocol: Protocol) -> Frontend {
    Frontend {
        r#type: FrontendType::ClusterIp as i32,
        address: address.to_owned(),
        port: 80,
        protocol: protocol as i32,
        id,
        ..Default::default()
    }
}

/// The record kino-ipam writes for a service.
fn record(service: &Service) -> Resource {
    Resource {
        kind: "Service".into(),
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        spec: Some(prost_types::Any {
            type_url: "type.googleapis.com/kino.service.v1.Service".into(),
            value: service.encode_to_vec(),
        }),
        ..Default::default()
    }
}

/// Program ids behind the link pins under `dir` (bpftool's view).
fn pinned_link_programs(dir: &std::path::Path) -> Vec<String> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let out = Command::new("bpftool")
            .args([
                "-j",
                "link",
                "show",
                "pinned",
                &entry.path().display().to_string(),
            ])
            .output()
            .expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(rest) = text.split("\"prog_id\":").nth(1) {
            ids.push(rest.chars().take_while(char::is_ascii_digit).collect());
        }
    }
    ids
}

fn cgroup_programs() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let root = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
        })
        .expect("a cgroup2 mount");
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show", &root])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_record_load_balances_pods_connects_on_every_node() {
    if !kernel_tests_possible() {
        return;
    }
    let cluster = Cluster::start_converged(
        "csvc",
        ClusterOptions {
            nodes: 2,
            routing: "tunnel",
            agent_args: Vec::new(),
        },
    )
    .await;
    let client = cluster.add_pod(0, "client", &[("app", "client")]);
    let web1 = cluster.add_pod(0, "web1", &[("app", "web")]);
    let web2 = cluster.add_pod(1, "web2", &[("app", "web")]);
    let _servers = [
        NameServer::start(&web1, "web1"),
        NameServer::start(&web2, "web2"),
    ];
    // The backends answer directly first (the servers are up).
    for web in [&web1, &web2] {
        tcp_names(&client.netns, &web.ipv4, 8080, 1).unwrap_or_else(|e| {
            panic!("{} directly: {e}\n{}", web.container, cluster.agent_logs())
        });
    }
    for i in 0..2 {
        let routes = cluster.unreachable_routes(i);
        assert!(
            routes
                .iter()
                .any(|r| r.starts_with("unreachable 172.20.0.0/16")),
            "node {i}: {routes:?}"
        );
    }

    let dual = !client.ipv6.is_empty() && !web1.ipv6.is_empty() && !web2.ipv6.is_empty();
    let mut service = Service {
        namespace: "default".into(),
        name: "web".into(),
        r#type: ServiceType::ClusterIp as i32,
        frontends: vec![
            frontend(1, VIP, Protocol::Tcp),
            frontend(2, VIP, Protocol::Udp),
        ],
        backends: vec![
            backend(&web1.ipv4, BackendState::Active),
            backend(&web2.ipv4, BackendState::Active),
        ],
        ..Default::default()
    };
    if dual {
        service.frontends.push(frontend(3, VIP6, Protocol::Tcp));
        service
            .backends
            .push(backend(&web1.ipv6, BackendState::Active));
        service
            .backends
            .push(backend(&web2.ipv6, BackendState::Active));
    }
    let channel = kino_service_kit::connect(
        &cluster.suite.datastore_target(),
        &cluster.suite.admin_tls(),
    )
    .await
    .expect("connecting to the gateway");
    let records = RecordClient::new(channel);
    let stored = records
        .create(record(&service))
        .await
        .expect("writing the Service record");

    // Every new connection to the VIP is translated to one of the backends, spread over both.
    let (names, peer) = tcp_names(&client.netns, VIP, 80, 40)
        .unwrap_or_else(|e| panic!("TCP to the VIP: {e}\n{}", cluster.agent_logs()));
    assert_eq!(peer, VIP, "getpeername shows the VIP");
    for web in ["web1", "web2"] {
        let got = names.iter().filter(|n| *n == web).count();
        assert!(got >= 5, "{web} answered {got} of 40: {names:?}");
    }
    assert_eq!(names.len(), 40);
    let (name, source) = udp_name(&client.netns, VIP, 80).expect("UDP to the VIP answered");
    assert!(name == "web1" || name == "web2", "{name}");
    assert_eq!(source, VIP, "the UDP reply comes from the VIP");
    if dual {
        let (names, peer) = tcp_names(&client.netns, VIP6, 80, 10).expect("TCP to the IPv6 VIP");
        assert_eq!(peer, VIP6);
        assert!(
            names.iter().all(|n| n == "web1" || n == "web2"),
            "{names:?}"
        );
    }
    // The external host's sockets are nobody's: its connect is not translated.
    assert!(
        tcp_names(&cluster.external, VIP, 80, 1).is_err(),
        "the external host reached the VIP"
    );

    // web2 terminating: new connections go to web1 only (once every agent applied it).
    service.backends[1].state = BackendState::Terminating as i32;
    records
        .update(record(&service), stored.revision)
        .await
        .expect("updating the Service record");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (names, _) = tcp_names(&client.netns, VIP, 80, 20).expect("TCP to the VIP");
        if names.iter().all(|n| n == "web1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web2 still gets connections: {names:?}\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Deleted: the VIP is not translated any more (the unreachable route answers).
    records
        .delete("Service", "default", "web", 0)
        .await
        .expect("deleting the Service record");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tcp_names(&client.netns, VIP, 80, 1).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the deleted service still answers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Nothing of the cluster's agents stays attached to the cgroup root.
    let ours: Vec<String> = (0..2)
        .flat_map(|i| {
            pinned_link_programs(
                &cluster
                    .suite
                    .pin_root
                    .join(&cluster.nodes[i].name)
                    .join("cgroup"),
            )
        })
        .collect();
    assert_eq!(ours.len(), 16, "eight socket programs per node attached");
    let during = cgroup_programs();
    for id in &ours {
        assert!(
            during.contains(&format!("\"id\":{id},")),
            "program {id} attached"
        );
    }
    drop(cluster);
    // A link whose last reference went is released by a kernel work item, a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = cgroup_programs();
        if ours
            .iter()
            .all(|id| !after.contains(&format!("\"id\":{id},")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {ours:?} still attached after the cluster: {after}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
