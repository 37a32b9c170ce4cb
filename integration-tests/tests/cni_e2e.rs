//! kino-cni driven exactly as a container runtime drives it, against the real agent (eBPF
//! datapath in a node network namespace), IPAM and datastore: ADD in every CNI version, CHECK,
//! DEL (also after the pod's netns is gone), GC, STATUS, bad input leaving nothing behind,
//! an agent killed with SIGKILL while pods ping each other, and chaining with the reference
//! portmap plugin.

use std::process::{Command, Stdio};
use std::time::Duration;

use kino_api::agent::ListBpfEndpointsRequest;
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::datastore::ListRequest;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::ipam::ListAllocationsRequest;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_integration_tests::world::{Netns, Suite, kernel_tests_possible, result_ip};
use serde_json::{Value, json};

fn pod_ip(result: &Value) -> String {
    result_ip(result, 0)
}

/// The pod's IPv6 address: the result's second `ips` entry (the pool is dual-stack).
fn pod_ip6(result: &Value) -> String {
    let address = result["ips"][1]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no IPv6 entry in the ips of {result}"));
    assert!(address.ends_with("/128"), "{result}");
    address.split('/').next().unwrap().to_owned()
}

fn pod_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=shop")
}

/// What is left of this world in IPAM, the BPF map, the datastore and the node's links.
async fn leftovers(suite: &Suite) -> (usize, usize, usize, usize) {
    let connect = |target: String| async move {
        kino_service_kit::connect(&target, &Default::default())
            .await
            .unwrap()
    };
    let allocations = IpamServiceClient::new(connect(suite.ipam_target()).await)
        .list_allocations(ListAllocationsRequest {
            node: suite.node_name().to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .allocations
        .len();
    let agent_target = format!("unix:{}", suite.agent_socket().display());
    let bpf = AgentServiceClient::new(connect(agent_target).await)
        .list_bpf_endpoints(ListBpfEndpointsRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries
        .len();
    let records = DatastoreServiceClient::new(connect(suite.datastore_target()).await)
        .list(ListRequest {
            kind: "Endpoint".into(),
            namespace: suite.node_name().to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .resources
        .len();
    (allocations, bpf, records, suite.lxc_links().len())
}

fn kino_json(suite: &Suite, args: &[&str]) -> Value {
    let out = suite.kino(args);
    assert!(
        out.status.success(),
        "kino {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kino {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `ping` in the background for `count` × 100 ms; returns (transmitted, received).
fn background_ping(ns: &Netns, ip: &str, count: u32) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-i", "0.1", "-W", "1"])
        .args(["-c", &count.to_string(), ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ping_counts(child: std::process::Child) -> (u32, u32, String) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"))
        .to_owned();
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1], line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_networking_survive_an_agent_crash_and_leave_nothing_behind() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("e").await;
    let p1 = Netns::new(&format!("{}-p1", suite.prefix));
    let p2 = Netns::new(&format!("{}-p2", suite.prefix));

    // ADD in 1.1.0 with pod metadata and jumbo frames.
    let mut jumbo = suite.cni_config("1.1.0");
    jumbo["mtu"] = 9000.into();
    let add1 = suite.cni(
        "ADD",
        "ctr-one",
        Some(&p1.path()),
        &jumbo,
        &pod_args("web-1"),
    );
    assert_eq!(add1.code, 0, "{add1:?}\nagent log:\n{}", suite.agent_log());
    let r1 = add1.json();
    assert_eq!(r1["cniVersion"], "1.1.0");
    // Both ends of the veth have the MTU asked for, and the result says so.
    assert_eq!(r1["interfaces"][0]["mtu"], 9000, "{r1}");
    assert_eq!(r1["interfaces"][1]["mtu"], 9000, "{r1}");
    let eth0 = p1.exec(&["ip", "-o", "link", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&eth0.stdout).contains(" mtu 9000 "),
        "{eth0:?}"
    );
    let ip1 = pod_ip(&r1);
    assert!(r1["ips"][0]["address"].as_str().unwrap().ends_with("/32"));
    let lxc1 = r1["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(lxc1.starts_with("lxc"), "{r1}");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r1["interfaces"][1]["sandbox"],
        p1.path().display().to_string()
    );
    let gateway = r1["ips"][0]["gateway"].as_str().unwrap().to_owned();
    // Dual-stack (the default pool has fd00::/104): an IPv6 /128 with its gateway and an IPv6
    // default route too.
    let ip1_v6 = pod_ip6(&r1);
    let gateway_v6 = r1["ips"][1]["gateway"].as_str().unwrap().to_owned();
    let routes = r1["routes"].to_string();
    assert!(
        routes.contains("\"::/0\"") && routes.contains(&gateway_v6),
        "{r1}"
    );

    // ADD in 0.4.0 asking for a specific address (podman's --network net:ip=…).
    let wanted = format!("{}.200", ip1.rsplit_once('.').unwrap().0);
    let add2 = suite.cni(
        "ADD",
        "ctr-two",
        Some(&p2.path()),
        &suite.cni_config("0.4.0"),
        &format!("{};IP={wanted}", pod_args("web-2")),
    );
    assert_eq!(add2.code, 0, "{add2:?}");
    let r2 = add2.json();
    assert_eq!(r2["cniVersion"], "0.4.0");
    assert_eq!(r2["ips"][0]["version"], "4");
    assert_eq!(pod_ip(&r2), wanted);
    assert_eq!(r2["ips"][1]["version"], "6", "{r2}");
    let ip2_v6 = pod_ip6(&r2);

    // Traffic: pod ↔ pod through the eBPF redirect, pod → node gateway, in both families.
    assert!(p1.ping(&wanted, 3), "p1 cannot ping p2");
    assert!(p2.ping(&ip1, 3), "p2 cannot ping p1");
    assert!(p1.ping(&gateway, 2), "p1 cannot ping its gateway");
    assert!(p1.ping(&ip2_v6, 2), "p1 cannot ping p2 over IPv6");
    assert!(p2.ping(&ip1_v6, 2), "p2 cannot ping p1 over IPv6");
    assert!(p1.ping(&gateway_v6, 2), "p1 cannot ping its IPv6 gateway");

    // What an operator sees: the endpoint, its lxc, the same ifindex in `ip link`.
    let list = kino_json(&suite, &["endpoint", "list", "-o", "json"]);
    let endpoints = list
        .as_array()
        .unwrap_or_else(|| list["endpoints"].as_array().unwrap());
    assert_eq!(endpoints.len(), 2, "{list}");
    let ep = kino_json(&suite, &["endpoint", "get", &ip1, "-o", "json"]);
    let ep = if ep.get("endpoint").is_some() {
        ep["endpoint"].clone()
    } else {
        ep
    };
    let networking = &ep["networking"];
    assert_eq!(networking["addressing"]["ipv6"], ip1_v6.as_str(), "{ep}");
    assert_eq!(
        networking["addressing"]["ipv6Gateway"],
        gateway_v6.as_str(),
        "{ep}"
    );
    assert_eq!(networking["interfaceName"], lxc1.as_str(), "{ep}");
    let ifindex = networking["interfaceIndex"].as_u64().unwrap();
    let links = suite.lxc_links();
    let line = links
        .iter()
        .find(|l| l.contains(&lxc1))
        .unwrap_or_else(|| panic!("{lxc1} not in ip link: {links:?}"));
    assert!(
        line.starts_with(&format!("{ifindex}: ")),
        "{line} vs {ifindex}"
    );
    assert!(line.contains(" mtu 9000 "), "{line}");
    let lxc2_line = links
        .iter()
        .find(|l| l.contains(r2["interfaces"][0]["name"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("p2's lxc not in ip link: {links:?}"));
    assert!(lxc2_line.contains(" mtu 1500 "), "{lxc2_line}");
    // The programs sit on both lxcs as tc filters.
    let attach_modes = |suite: &Suite| {
        let bpf = kino_json(suite, &["bpf", "endpoint", "list", "-o", "json"]);
        let entries = bpf
            .as_array()
            .cloned()
            .unwrap_or_else(|| bpf["entries"].as_array().cloned().unwrap_or_default());
        entries
            .iter()
            .map(|e| e["attachMode"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let modes = attach_modes(&suite);
    assert!(
        modes.len() >= 2 && modes.iter().all(|m| m == "tc"),
        "{modes:?}"
    );
    let labels = ep["labels"].to_string();
    assert!(
        labels.contains("web-1") && labels.contains("shop"),
        "{labels}"
    );
    let egress = ep["counters"]["egressPackets"]
        .as_str()
        .map(|s| s.parse::<u64>().unwrap())
        .or_else(|| ep["counters"]["egressPackets"].as_u64())
        .unwrap_or(0);
    assert!(egress > 0, "the datapath counted no packet: {ep}");

    // CHECK against the previous result, and a retried ADD gets the same address.
    let mut check = suite.cni_config("1.1.0");
    check["prevResult"] = r1.clone();
    let checked = suite.cni(
        "CHECK",
        "ctr-one",
        Some(&p1.path()),
        &check,
        &pod_args("web-1"),
    );
    assert_eq!(checked.code, 0, "{checked:?}");
    let again = suite.cni(
        "ADD",
        "ctr-one",
        Some(&p1.path()),
        &suite.cni_config("1.1.0"),
        &pod_args("web-1"),
    );
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(pod_ip(&again.json()), ip1);

    // SIGKILL the agent while the pods ping each other; a new agent adopts everything.
    let ping = background_ping(&p1, &wanted, 40);
    tokio::time::sleep(Duration::from_millis(800)).await;
    suite.stop_agent("KILL");
    tokio::time::sleep(Duration::from_millis(500)).await;
    suite.start_agent();
    let (sent, received, summary) = ping_counts(ping);
    assert_eq!(
        sent, received,
        "pings lost across the agent restart: {summary}"
    );
    let after = kino_json(&suite, &["endpoint", "list", "-o", "json"]);
    let after = after
        .as_array()
        .cloned()
        .unwrap_or_else(|| after["endpoints"].as_array().unwrap().clone());
    let ips: Vec<String> = after
        .iter()
        .map(|e| {
            e["networking"]["addressing"]["ipv4"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(ips.contains(&ip1) && ips.contains(&wanted), "{ips:?}");
    assert!(p2.ping(&ip1, 2), "traffic after the restart");
    assert!(p2.ping(&ip1_v6, 2), "IPv6 traffic after the restart");
    // The new agent adopted the filters rather than adding others.
    let modes = attach_modes(&suite);
    assert!(
        modes.len() >= 2 && modes.iter().all(|m| m == "tc"),
        "{modes:?}"
    );

    // DEL p2: its lxc disappears; DEL is idempotent.
    let del = suite.cni(
        "DEL",
        "ctr-two",
        Some(&p2.path()),
        &suite.cni_config("0.4.0"),
        "",
    );
    assert_eq!(del.code, 0, "{del:?}");
    let lxc2 = r2["interfaces"][0]["name"].as_str().unwrap();
    assert!(!suite.lxc_links().iter().any(|l| l.contains(lxc2)));
    let del = suite.cni(
        "DEL",
        "ctr-two",
        Some(&p2.path()),
        &suite.cni_config("0.4.0"),
        "",
    );
    assert_eq!(del.code, 0, "a second DEL succeeds: {del:?}");

    // DEL after the pod's namespace is already gone (runtime crashed, netns removed).
    p1.delete();
    let del = suite.cni("DEL", "ctr-one", None, &suite.cni_config("1.1.0"), "");
    assert_eq!(del.code, 0, "{del:?}");

    assert_eq!(
        leftovers(&suite).await,
        (0, 0, 0, 0),
        "(IPAM allocations, BPF entries, datastore records, lxc links) left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gc_status_and_a_dead_agent() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("b").await;
    let config = suite.cni_config("1.1.0");

    // A netns that does not exist: refused before anything is allocated.
    let missing = std::path::PathBuf::from(format!("/run/netns/{}-missing", suite.prefix));
    let out = suite.cni("ADD", "ctr-x", Some(&missing), &config, "");
    assert_ne!(out.code, 0);
    assert!(out.json()["code"].as_u64().is_some(), "{out:?}");
    assert!(out.stdout.contains("missing"), "names the netns: {out:?}");

    // A pod that already has an eth0: the agent refuses and rolls back its address.
    let busy = Netns::new(&format!("{}-busy", suite.prefix));
    busy.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let out = suite.cni("ADD", "ctr-busy", Some(&busy.path()), &config, "");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("eth0"), "{out:?}");

    // A requested address outside the node's block.
    let p = Netns::new(&format!("{}-p", suite.prefix));
    let out = suite.cni("ADD", "ctr-ip", Some(&p.path()), &config, "IP=192.0.2.7");
    assert_eq!(out.json()["code"], 7, "{out:?}");
    assert!(out.stdout.contains("192.0.2.7"), "{out:?}");

    // Malformed config.
    let out = suite.cni(
        "ADD",
        "ctr-bad",
        Some(&p.path()),
        &json!({"name": "kino"}),
        "",
    );
    assert_eq!(out.json()["code"], 7, "{out:?}");

    assert_eq!(
        leftovers(&suite).await,
        (0, 0, 0, 0),
        "failed ADDs leave nothing behind"
    );

    // STATUS answers when the agent is up.
    let status = suite.cni("STATUS", "", None, &config, "");
    assert_eq!(status.code, 0, "{status:?}");

    // GC: keeps the valid attachment, collects the other.
    let keep = Netns::new(&format!("{}-keep", suite.prefix));
    let drop_ns = Netns::new(&format!("{}-drop", suite.prefix));
    assert_eq!(
        suite
            .cni("ADD", "ctr-keep", Some(&keep.path()), &config, "")
            .code,
        0
    );
    let dropped = suite.cni("ADD", "ctr-drop", Some(&drop_ns.path()), &config, "");
    assert_eq!(dropped.code, 0, "{dropped:?}");
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-keep", "ifname": "eth0"}]);
    let out = suite.cni("GC", "", None, &gc, "");
    assert_eq!(out.code, 0, "{out:?}");
    let lxc_dropped = dropped.json()["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!suite.lxc_links().iter().any(|l| l.contains(&lxc_dropped)));
    assert_eq!(
        leftovers(&suite).await,
        (2, 2, 1, 1),
        "only ctr-keep remains (its IPv4 and IPv6 address)"
    );

    // The agent down: ADD says "try again later" (11), naming the socket.
    suite.stop_agent("TERM");
    let out = suite.cni("ADD", "ctr-late", Some(&p.path()), &config, "");
    assert_eq!(out.json()["code"], 11, "{out:?}");
    assert!(
        out.stdout
            .contains(&suite.agent_socket().display().to_string()),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_before_portmap_the_result_flows_on_and_the_port_forwards() {
    if !kernel_tests_possible() || kino_integration_tests::require_tool("/usr/lib/cni/portmap") {
        return;
    }
    let suite = Suite::start("c").await;
    let pod = Netns::new(&format!("{}-pod", suite.prefix));
    // portmap 1.1.1 speaks at most 1.0.0: the conflist's version.
    let kino_conf = suite.cni_config("1.0.0");
    let add = suite.cni("ADD", "ctr-pm", Some(&pod.path()), &kino_conf, "");
    assert_eq!(add.code, 0, "{add:?}");
    let result = add.json();
    let pod_address = pod_ip(&result);
    let gateway = result["ips"][0]["gateway"].as_str().unwrap().to_owned();

    // The runtime hands our result to the next plugin as prevResult (in the node netns,
    // where this runtime would run).
    let portmap_conf = json!({
        "cniVersion": "1.0.0",
        "name": "kino",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": result,
    });
    let portmap = |command: &str, conf: &Value| {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &suite.node.name, "/usr/lib/cni/portmap"])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "ctr-pm")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = portmap("ADD", &portmap_conf);
    assert!(
        out.status.success(),
        "portmap ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let chained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        chained["ips"], result["ips"],
        "portmap passed our result on"
    );
    assert_eq!(chained["interfaces"], result["interfaces"]);

    // A server in the pod; a client in the node connects to the node's address:18080.
    let server = Command::new("ip")
        .args(["netns", "exec", &pod.name, "python3", "-c"])
        .arg(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',8080))\ns.listen(1)\nc,_=s.accept()\nc.sendall(b'hello from the pod')\nc.close()",
        )
        .spawn()
        .unwrap();
    let _server = KillOnDrop(server);
    let mut got = String::new();
    for _ in 0..50 {
        let out = suite.node.try_exec(&[
            "python3",
            "-c",
            &format!(
                "import socket\nc=socket.create_connection(('{gateway}',18080),timeout=2)\nprint(c.recv(64).decode())"
            ),
        ]);
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got.contains("hello") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        got.contains("hello from the pod"),
        "port 18080 on the node did not reach {pod_address}:8080: {got:?}"
    );

    // DEL in reverse order: portmap removes its rules, kino-cni the endpoint.
    let mut del_conf = portmap_conf.clone();
    del_conf["prevResult"] = result.clone();
    let out = portmap("DEL", &del_conf);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut kino_del = kino_conf.clone();
    kino_del["prevResult"] = result;
    let del = suite.cni("DEL", "ctr-pm", Some(&pod.path()), &kino_del, "");
    assert_eq!(del.code, 0, "{del:?}");
    let rules = suite.node.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("18080"),
        "portmap left rules"
    );
    assert!(suite.lxc_links().is_empty());
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
