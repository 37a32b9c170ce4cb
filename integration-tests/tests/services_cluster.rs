//! Services on a three-node cluster through the real API (issue #14): every service here is
//! made with `kino service create|update` against kino-ipam — never a record written by hand
//! — and every agent follows it into its socket load balancer. Backends on nodes 1 and 2
//! are reached from a pod on node 3 (TCP and UDP, IPv4 and IPv6) with a fair spread; the
//! translation happens on the client's node only, never for the external host; backends
//! added, terminated and removed under a running connection loop; ClientIP affinity;
//! hairpin (a backend reaching itself through its service); and a policy denying the
//! backend's identity denies the service, with the drop seen on the backend's node.
//! `kino bpf lb list` shows node 3's maps (and says why when an agent has no load balancer).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kino_integration_tests::cluster::{Cluster, ClusterOptions, ClusterPod, NameServer};
use kino_integration_tests::world::{Netns, kernel_tests_possible};

const VIP: &str = "172.20.0.10";
const VIP6: &str = "fd00:ffff::10";
const STICKY_VIP: &str = "172.20.0.11";
const SELF_VIP: &str = "172.20.0.12";
const LOOP_VIP: &str = "172.20.0.13";

/// How long a change may take to show (generous: the tests poll, they never assert a time).
const CHANGE: Duration = Duration::from_secs(30);

fn family(ip: &str) -> &'static str {
    if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    }
}

/// `count` new sockets from `netns` to `ip:port` (TCP connects, or unconnected UDP
/// `sendto`s from a fresh socket each): the name each got, and the peer address the socket
/// saw (getpeername / the reply's source). Refusals are retried for 10 s at first (the
/// servers start); any other failure is the error.
fn names(
    netns: &Netns,
    ip: &str,
    port: u16,
    udp: bool,
    count: usize,
) -> Result<(Vec<String>, Vec<String>), String> {
    let program = format!(
        "import socket,time,sys\n\
         names=[]; peers=[]\n\
         deadline=time.time()+10\n\
         while len(names)<{count}:\n  \
         try:\n    \
         if {udp}:\n      \
         s=socket.socket(socket.{f},socket.SOCK_DGRAM); s.settimeout(3)\n      \
         s.sendto(b'?',('{ip}',{port})); d,a=s.recvfrom(64)\n    \
         else:\n      \
         s=socket.socket(socket.{f}); s.settimeout(3)\n      \
         s.connect(('{ip}',{port})); a=s.getpeername(); d=s.recv(16)\n  \
         except ConnectionRefusedError:\n    \
         s.close()\n    \
         if names or time.time()>deadline: print('refused'); sys.exit(1)\n    \
         time.sleep(0.1); continue\n  \
         except OSError as e:\n    print('error', e); sys.exit(1)\n  \
         names.append(d.decode()); peers.append(a[0]); s.close()\n\
         print(' '.join(names)); print(' '.join(peers))\n",
        f = family(ip),
        udp = if udp { "True" } else { "False" },
    );
    let out = netns.try_exec(&["python3", "-c", &program]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut lines = text.lines();
    let mut words = || -> Vec<String> {
        lines
            .next()
            .unwrap_or_default()
            .split(' ')
            .map(str::to_owned)
            .collect()
    };
    Ok((words(), words()))
}

/// How many answers each name got.
fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    counts
}

/// Every one of `backends` answered, each between a third and three times its fair share.
fn assert_spread(what: &str, names: &[String], backends: &[&str]) {
    let counts = tally(names);
    let share = names.len() / backends.len();
    for backend in backends {
        let got = counts.get(*backend).copied().unwrap_or(0);
        assert!(
            got >= share / 3 && got <= share * 3,
            "{what}: {backend} answered {got} of {} (share {share}): {counts:?}",
            names.len()
        );
    }
    assert_eq!(
        counts.values().sum::<usize>(),
        counts
            .iter()
            .filter(|(name, _)| backends.contains(&name.as_str()))
            .map(|(_, n)| n)
            .sum::<usize>(),
        "{what}: answers from outside the backends: {counts:?}"
    );
}

/// The flows node `i` observed (its last 10 000) matching `filter` flags, as JSON lines.
fn flows(cluster: &Cluster, i: usize, filter: &[&str]) -> Vec<String> {
    let server = cluster.flows(i);
    let mut args = vec![
        "observe", "--server", &server, "--last", "10000", "-o", "json",
    ];
    args.extend_from_slice(filter);
    cluster
        .kino_ok(i, &args)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The socket translations node `i` reported for sockets of `source`.
fn translations_from(cluster: &Cluster, i: usize, source: &str) -> Vec<String> {
    flows(cluster, i, &["--type", "sock-lb"])
        .into_iter()
        .filter(|l| l.contains(&format!("\"source\":\"{source}\"")))
        .collect()
}

/// Node `i`'s most recent socket translation (a JSON line), if it made any.
fn last_translation(cluster: &Cluster, i: usize) -> Option<String> {
    let server = cluster.flows(i);
    let args = [
        "observe", "--server", &server, "--last", "1", "-o", "json", "--type", "sock-lb",
    ];
    cluster.kino_ok(i, &args).lines().next().map(str::to_owned)
}

/// Whether node `i`'s maps (`kino bpf lb list -o json`) hold `backend` as an ACTIVE
/// backend of a frontend on `vip`.
fn active_in_maps(cluster: &Cluster, i: usize, vip: &str, backend: &str) -> bool {
    let json: serde_json::Value =
        serde_json::from_str(&cluster.kino_ok(i, &["bpf", "lb", "list", "-o", "json"]))
            .expect("kino bpf lb list -o json");
    json["entries"].as_array().into_iter().flatten().any(|e| {
        e["frontendAddress"] == vip
            && e["backends"].as_array().into_iter().flatten().any(|b| {
                b["address"] == backend
                    && b["state"].as_str().unwrap_or("BACKEND_STATE_ACTIVE")
                        == "BACKEND_STATE_ACTIVE"
            })
    })
}

/// Waits until `done` holds, failing with `what` and the agents' logs after [`CHANGE`].
fn wait_for(cluster: &Cluster, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + CHANGE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn three_nodes(tag: &str) -> impl std::future::Future<Output = Cluster> + '_ {
    Cluster::start_converged(
        tag,
        ClusterOptions {
            nodes: 3,
            routing: "tunnel",
            agent_args: Vec::new(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterip_backends_on_two_nodes_serve_a_pod_on_the_third() {
    if !kernel_tests_possible() {
        return;
    }
    let cluster = three_nodes("sc3").await;
    let web1 = cluster.add_pod(0, "web1", &[("app", "web")]);
    let web2 = cluster.add_pod(1, "web2", &[("app", "web")]);
    let client = cluster.add_pod(2, "client", &[("app", "client")]);
    let _servers = [
        NameServer::start(&web1, "web1"),
        NameServer::start(&web2, "web2"),
    ];
    for web in [&web1, &web2] {
        names(&client.netns, &web.ipv4, 8080, false, 1).unwrap_or_else(|e| {
            panic!("{} directly: {e}\n{}", web.container, cluster.agent_logs())
        });
    }
    let dual = !client.ipv6.is_empty() && !web1.ipv6.is_empty() && !web2.ipv6.is_empty();
    eprintln!("pods with IPv6: {dual}");

    // One service: TCP and UDP on the IPv4 VIP (and the IPv6 one where the pods have IPv6).
    let mut create = vec![
        "service".to_owned(),
        "create".to_owned(),
        "web".to_owned(),
        "--frontend".to_owned(),
        format!("{VIP}:80/tcp"),
        "--frontend".to_owned(),
        format!("{VIP}:80/udp"),
    ];
    let mut backends = vec![web1.ipv4.clone(), web2.ipv4.clone()];
    if dual {
        create.extend([
            "--frontend".to_owned(),
            format!("[{VIP6}]:80/tcp"),
            "--frontend".to_owned(),
            format!("[{VIP6}]:80/udp"),
        ]);
        backends.extend([format!("[{}]", web1.ipv6), format!("[{}]", web2.ipv6)]);
    }
    for backend in &backends {
        create.extend(["--backend".to_owned(), format!("{backend}:8080")]);
    }
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    cluster.kino_ok(2, &create);
    let listed = cluster.kino_ok(2, &["service", "list"]);
    assert!(
        listed.contains(&format!("{VIP}:80/TCP")) && listed.contains(&web2.ipv4),
        "{listed}"
    );

    // `kino bpf lb list` on node 3: the frontend under the id the API gave it, both backends
    // in slots 1 and 2.
    wait_for(&cluster, "node 3 never programmed the service", || {
        active_in_maps(&cluster, 2, VIP, &web2.ipv4)
    });
    let got: serde_json::Value =
        serde_json::from_str(&cluster.kino_ok(2, &["service", "get", "web", "-o", "json"]))
            .unwrap();
    let id = got["service"]["frontends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["address"] == VIP && f["protocol"] == "PROTOCOL_TCP")
        .and_then(|f| f["id"].as_u64())
        .unwrap_or_else(|| panic!("no TCP frontend on {VIP}: {got}"));
    let maps: serde_json::Value =
        serde_json::from_str(&cluster.kino_ok(2, &["bpf", "lb", "list", "-o", "json"])).unwrap();
    let entry = maps["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["frontendAddress"] == VIP && e["protocol"] == "PROTOCOL_TCP")
        .unwrap_or_else(|| panic!("node 3 lists no TCP frontend on {VIP}: {maps}"));
    assert_eq!(entry["frontendId"].as_u64(), Some(id), "{entry}");
    let mut slots: Vec<(String, u64)> = entry["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_owned(),
                b["slot"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    slots.sort_by_key(|(_, slot)| *slot);
    let mut addresses: Vec<&str> = slots.iter().map(|(a, _)| a.as_str()).collect();
    addresses.sort();
    let mut want = vec![web1.ipv4.as_str(), web2.ipv4.as_str()];
    want.sort();
    assert_eq!(addresses, want, "{entry}");
    assert_eq!(
        slots.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [1, 2],
        "{entry}"
    );
    let table = cluster.kino_ok(2, &["bpf", "lb", "list"]);
    assert!(
        table.starts_with("SERVICE ADDRESS")
            && table.contains("BACKEND ADDRESS (REVNAT_ID) (SLOT)"),
        "{table}"
    );
    for (address, slot) in &slots {
        assert!(
            table.contains(&format!("{address}:8080/TCP ({id}) ({slot})")),
            "{table}"
        );
    }
    assert!(table.contains(&format!("{VIP}:80/TCP")), "{table}");

    // Every family and protocol reaches both backends, spread fairly, the VIP as the peer.
    let mut cases = vec![(VIP, false, 300), (VIP, true, 60)];
    if dual {
        cases.extend([(VIP6, false, 60), (VIP6, true, 60)]);
    }
    for (vip, udp, count) in cases {
        let what = format!("{} to {vip}", if udp { "UDP" } else { "TCP" });
        let (got, peers) = names(&client.netns, vip, 80, udp, count)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", cluster.agent_logs()));
        assert_eq!(got.len(), count, "{what}: {got:?}");
        assert!(
            peers.iter().all(|p| p == vip),
            "{what}: the peer must show as the VIP: {peers:?}"
        );
        assert_spread(&what, &got, &["web1", "web2"]);
    }

    // Scope: node 3 translated the client's sockets, nodes 1 and 2 none of them. Its
    // flows name the service and the backend chosen.
    let translated = translations_from(&cluster, 2, &client.ipv4);
    assert!(
        !translated.is_empty(),
        "node 3 reported no translation of the client's sockets"
    );
    assert!(
        translated
            .iter()
            .all(|l| l.contains("\"serviceNamespace\":\"default\"")
                && l.contains("\"serviceName\":\"web\"")
                && (l.contains(&format!("\"backendAddress\":\"{}\"", web1.ipv4))
                    || l.contains(&format!("\"backendAddress\":\"{}\"", web2.ipv4))
                    || (dual && l.contains("\"backendAddress\":\"fd")))),
        "node 3's translations must name default/web and a backend: {translated:#?}"
    );
    let server = cluster.flows(2);
    let compact = cluster.kino_ok(
        2,
        &[
            "observe", "--server", &server, "--last", "3", "--type", "sock-lb",
        ],
    );
    eprintln!("{compact}");
    assert!(compact.contains("(svc default/web) => "), "{compact}");
    // No pod of nodes 1 and 2 has connected to a service yet: any translation they
    // reported would be of a socket not theirs.
    for i in [0, 1] {
        let foreign = last_translation(&cluster, i);
        assert!(
            foreign.is_none(),
            "node {} translated a socket of another node: {foreign:?}",
            i + 1
        );
    }
    // The external host's connect to the VIP is translated by no node's hook: it leaves
    // untranslated (towards node 1, which routes the service CIDR as unreachable), and no
    // node reports a new translation.
    let before: Vec<Option<String>> = (0..3).map(|i| last_translation(&cluster, i)).collect();
    cluster.external.exec(&[
        "ip",
        "route",
        "add",
        "172.20.0.0/16",
        "via",
        &cluster.nodes[0].ipv4,
    ]);
    let external = names(&cluster.external, VIP, 80, false, 1);
    assert!(
        external.is_err(),
        "the external host reached the VIP: {external:?}"
    );
    let after: Vec<Option<String>> = (0..3).map(|i| last_translation(&cluster, i)).collect();
    assert_eq!(
        before, after,
        "a node translated the external host's socket"
    );

    // ClientIP affinity: every connection of one client goes to one backend.
    cluster.kino_ok(
        0,
        &[
            "service",
            "create",
            "sticky",
            "--frontend",
            &format!("{STICKY_VIP}:80/tcp"),
            "--backend",
            &format!("{}:8080", web1.ipv4),
            "--backend",
            &format!("{}:8080", web2.ipv4),
            "--affinity",
            "ClientIP",
        ],
    );
    let other = cluster.add_pod(0, "other", &[("app", "other")]);
    for pod in [&client, &other] {
        let (got, _) = names(&pod.netns, STICKY_VIP, 80, false, 30)
            .unwrap_or_else(|e| panic!("{} to the sticky VIP: {e}", pod.container));
        assert!(
            got.iter().all(|n| *n == got[0]),
            "{}: affinity broken: {:?}",
            pod.container,
            tally(&got)
        );
    }

    // Hairpin: web1 reaches itself through a service whose only backend it is.
    cluster.kino_ok(
        0,
        &[
            "service",
            "create",
            "self",
            "--frontend",
            &format!("{SELF_VIP}:80/tcp"),
            "--backend",
            &format!("{}:8080", web1.ipv4),
        ],
    );
    let (got, peers) = names(&web1.netns, SELF_VIP, 80, false, 5)
        .unwrap_or_else(|e| panic!("web1 to its own service: {e}\n{}", cluster.agent_logs()));
    assert!(got.iter().all(|n| n == "web1"), "{got:?}");
    assert!(peers.iter().all(|p| p == SELF_VIP), "{peers:?}");
    // … and lands on itself among the others through the shared one.
    let (got, _) = names(&web1.netns, VIP, 80, false, 40).expect("web1 to the VIP");
    assert_spread("web1 to the VIP", &got, &["web1", "web2"]);

    // A policy admitting only app=other to app=web denies the client the service: the
    // translated connect is dropped at the backend, on the backend's node, for the policy.
    cluster.import_policy(
        "web-from-other",
        "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {name: web-from-other, namespace: default}\nspec:\n  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: other}}]\n",
    );
    let denied = names(&client.netns, SELF_VIP, 80, false, 1);
    assert!(denied.is_err(), "the client reached web1 under the policy");
    let drops: Vec<String> = flows(&cluster, 0, &["--verdict", "DROPPED"])
        .into_iter()
        .filter(|l| {
            l.contains(&format!("\"source\":\"{}\"", client.ipv4))
                && l.contains(&format!("\"destination\":\"{}\"", web1.ipv4))
        })
        .collect();
    assert!(
        !drops.is_empty() && drops.iter().all(|l| l.contains("POLICY_DENIED")),
        "node 1 must show the client's packets to web1 dropped by policy: {drops:#?}"
    );
    // The admitted pod still gets the service.
    let (got, _) = names(&other.netns, SELF_VIP, 80, false, 3).expect("other under the policy");
    assert!(got.iter().all(|n| n == "web1"), "{got:?}");

    for name in ["web", "sticky", "self"] {
        cluster.kino_ok(0, &["service", "delete", name]);
    }
    wait_for(&cluster, "the deleted service still answers", || {
        names(&client.netns, VIP, 80, false, 1).is_err()
    });
}

/// A connection loop in a pod: a new TCP connection to `ip:80` every 20 ms, each line
/// `<generation> <name>` where the generation is the content of a file read before the
/// connect, so a line says which phase of the test its connect started in.
struct ConnectLoop {
    child: Child,
    lines: Arc<Mutex<Vec<(String, String)>>>,
    generation: std::path::PathBuf,
}

impl ConnectLoop {
    fn start(pod: &ClusterPod, ip: &str, generation: std::path::PathBuf) -> Self {
        std::fs::write(&generation, "start").unwrap();
        let program = format!(
            "import socket,time\n\
             while True:\n  \
             g=open('{}').read().strip()\n  \
             s=socket.socket(); s.settimeout(3)\n  \
             try:\n    s.connect(('{ip}',80)); n=s.recv(16).decode() or 'closed'\n  \
             except OSError as e: n='error'\n  \
             s.close(); print(g, n, flush=True); time.sleep(0.02)\n",
            generation.display()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pod.netns.name, "python3", "-c", &program])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((g, n)) = line.split_once(' ') {
                    sink.lock().unwrap().push((g.to_owned(), n.to_owned()));
                }
            }
        });
        ConnectLoop {
            child,
            lines,
            generation,
        }
    }

    /// Connects from now on start in `generation`.
    fn enter(&self, generation: &str) {
        std::fs::write(&self.generation, generation).unwrap();
    }

    /// The names answered to connects started in `generation`.
    fn names_in(&self, generation: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(g, _)| g == generation)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

impl Drop for ConnectLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-lived TCP connection from a pod through `ip:80` to the backend named `want`
/// (connects until one lands there); `echo` sends a line over it and returns the answer.
struct Established {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Established {
    fn open(pod: &ClusterPod, ip: &str, want: &str) -> Self {
        let program = format!(
            "import socket,sys\n\
             for _ in range(200):\n  \
             c=socket.create_connection(('{ip}',80),timeout=5); n=c.recv(16).decode()\n  \
             if n=='{want}': break\n  \
             c.close()\n\
             print(n, flush=True)\n\
             for line in sys.stdin:\n  \
             c.sendall(line.strip().encode()); print(c.recv(64).decode(), flush=True)\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pod.netns.name, "python3", "-c", &program])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), want, "no connection landed on {want}");
        Established {
            child,
            stdin,
            stdout,
        }
    }

    fn echo(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for Established {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_added_terminated_and_removed_under_a_connection_loop() {
    if !kernel_tests_possible() {
        return;
    }
    let cluster = three_nodes("sch").await;
    let web1 = cluster.add_pod(0, "web1", &[("app", "web")]);
    let web2 = cluster.add_pod(1, "web2", &[("app", "web")]);
    let web3 = cluster.add_pod(0, "web3", &[("app", "web")]);
    let client = cluster.add_pod(2, "client", &[("app", "client")]);
    let _servers = [
        NameServer::start(&web1, "web1"),
        NameServer::start(&web2, "web2"),
        NameServer::start(&web3, "web3"),
    ];
    for web in [&web1, &web2, &web3] {
        names(&client.netns, &web.ipv4, 8080, false, 1)
            .unwrap_or_else(|e| panic!("{} directly: {e}", web.container));
    }
    let backend = |pod: &ClusterPod| format!("{}:8080", pod.ipv4);
    cluster.kino_ok(
        2,
        &[
            "service",
            "create",
            "web",
            "--frontend",
            &format!("{LOOP_VIP}:80/tcp"),
            "--backend",
            &backend(&web1),
            "--backend",
            &backend(&web2),
        ],
    );
    wait_for(&cluster, "node 3 never programmed the service", || {
        active_in_maps(&cluster, 2, LOOP_VIP, &web2.ipv4)
    });
    let looping = ConnectLoop::start(
        &client,
        LOOP_VIP,
        cluster.suite.dir.path().join("generation"),
    );
    let mut held = Established::open(&client, LOOP_VIP, "web2");
    assert_eq!(held.echo("hello"), "hello");

    // Added: web3 gets connections of the running loop.
    looping.enter("added");
    cluster.kino_ok(
        2,
        &["service", "update", "web", "--add-backend", &backend(&web3)],
    );
    let added_at = Instant::now();
    wait_for(&cluster, "the added backend got no connection", || {
        looping.names_in("added").iter().any(|n| n == "web3")
    });
    eprintln!(
        "web3 got its first connection {:?} after the update",
        added_at.elapsed()
    );

    // Terminating: once node 3 applied it, no connect started after goes to web2; the
    // connection already established to web2 keeps working.
    cluster.kino_ok(
        2,
        &[
            "service",
            "update",
            "web",
            "--terminate-backend",
            &backend(&web2),
        ],
    );
    wait_for(&cluster, "node 3 still has web2 active", || {
        !active_in_maps(&cluster, 2, LOOP_VIP, &web2.ipv4)
    });
    looping.enter("terminated");
    wait_for(
        &cluster,
        "the loop made no connection after the change",
        || looping.names_in("terminated").len() >= 50,
    );
    let after = looping.names_in("terminated");
    assert!(
        !after.iter().any(|n| n == "web2"),
        "new connections reached the terminating web2: {:?}",
        tally(&after)
    );
    assert_spread("after web2 terminated", &after, &["web1", "web3"]);
    assert_eq!(
        held.echo("still"),
        "still",
        "the connection to the terminating backend broke"
    );

    // Removed: the same for web1, and web2's established connection still works.
    cluster.kino_ok(
        2,
        &[
            "service",
            "update",
            "web",
            "--remove-backend",
            &backend(&web1),
            "--remove-backend",
            &backend(&web2),
        ],
    );
    wait_for(&cluster, "node 3 still has web1", || {
        !active_in_maps(&cluster, 2, LOOP_VIP, &web1.ipv4)
    });
    looping.enter("removed");
    wait_for(
        &cluster,
        "the loop made no connection after the removal",
        || looping.names_in("removed").len() >= 30,
    );
    let after = looping.names_in("removed");
    assert!(
        after.iter().all(|n| n == "web3"),
        "new connections reached a removed backend: {:?}",
        tally(&after)
    );
    assert_eq!(held.echo("removed"), "removed");
    // No connect of the whole loop failed: every change kept the service answering.
    let all: Vec<String> = looping
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    assert!(
        all.iter().all(|n| n.starts_with("web")),
        "connections failed during the changes: {:?}",
        tally(&all)
    );
    drop(held);
    drop(looping);
    cluster.kino_ok(2, &["service", "delete", "web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kino_bpf_lb_list_says_when_the_agent_has_no_load_balancer() {
    if !kernel_tests_possible() {
        return;
    }
    let cluster = Cluster::start_converged(
        "scn",
        ClusterOptions {
            nodes: 1,
            routing: "tunnel",
            agent_args: vec!["--socket-lb=false".to_owned()],
        },
    )
    .await;
    let out = cluster.kino(0, &["bpf", "lb", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--socket-lb=false") && stderr.contains("start it with --socket-lb=true"),
        "the refusal must say why and what to do: {stderr}"
    );
}
