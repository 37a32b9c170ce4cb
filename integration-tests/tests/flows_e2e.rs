//! Flows end to end (issue #6): two pods through kino-cni, a policy from the compiler that
//! lets the client reach web on TCP 8080 only, and `kino observe` against the real agent's
//! flow observer — the denied connection to port 80 as a DROPPED flow with both pod names,
//! the reason POLICY_DENIED and the right addresses and ports; the allowed connection as
//! FORWARDED policy verdicts; compact lines, `--not`, `-o jsonpb`, `--follow` and the
//! observer's ServerStatus.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kino_api::flow::ServerStatusRequest;
use kino_api::flow::flow_service_client::FlowServiceClient;
use kino_integration_tests::binary;
use kino_integration_tests::world::{Netns, Suite, kernel_tests_possible, result_ip};
use serde_json::{Value, json};

const POLICY: &str = r#"apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web-8080-from-client, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

fn pod_ip(result: &Value) -> String {
    result_ip(result, 0)
}

fn kino_ok(suite: &Suite, args: &[&str]) -> String {
    suite.kino_ok(args)
}

fn flows_target(suite: &Suite) -> String {
    format!("unix:{}", suite.dir.path().join("flows.sock").display())
}

/// `kino observe <args> --server <the suite's observer>`: its stdout.
fn observe(suite: &Suite, args: &[&str]) -> String {
    let target = flows_target(suite);
    let mut all = vec!["observe"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &target]);
    kino_ok(suite, &all)
}

/// One JSON object per line.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A TCP connection attempt from `ns` to `ip:port` (bash's /dev/tcp), 2 s at most.
fn tcp_attempt(ns: &Netns, ip: &str, port: u16) -> bool {
    ns.try_exec(&[
        "timeout",
        "2",
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{ip}/{port}"),
    ])
    .status
    .success()
}

/// Polls `check` every 200 ms for up to 10 s.
fn eventually<T>(what: &str, suite: &Suite, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in 10 s; agent log:\n{}",
            suite.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kino_observe_shows_denied_and_allowed_flows_with_both_pods() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = Suite::start("flw").await;
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    for name in ["web", "client"] {
        let ns = Netns::new(&format!("{}-{name}", suite.prefix));
        let mut config = suite.cni_config("1.1.0");
        config["args"] = json!({"labels": {"app": name}});
        let out = suite.cni(
            "ADD",
            &format!("{}-{name}", suite.prefix),
            Some(&ns.path()),
            &config,
            &format!("IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=shop"),
        );
        assert_eq!(out.code, 0, "ADD {name}: {out:?}");
        ips.push(pod_ip(&out.json()));
        pods.push(ns);
    }
    let (web_ip, client_ip) = (ips[0].clone(), ips[1].clone());
    let client = &pods[1];

    // Before any policy: the ping is allowed, a new connection at both points.
    assert!(client.ping(&web_ip, 1), "client cannot ping web");
    let pings = eventually("the ping's policy verdicts", &suite, || {
        let flows = json_lines(&observe(
            &suite,
            &[
                "--all",
                "--verdict",
                "FORWARDED",
                "--protocol",
                "icmp",
                "-o",
                "json",
            ],
        ));
        (flows.len() >= 2).then_some(flows)
    });
    for flow in &pings {
        assert_eq!(flow["source"]["podName"], "client", "{flow}");
        assert_eq!(flow["destination"]["podName"], "web", "{flow}");
        assert_eq!(
            flow["eventType"], "FLOW_EVENT_TYPE_POLICY_VERDICT",
            "{flow}"
        );
        assert_eq!(
            flow["policyMatchType"], "POLICY_MATCH_TYPE_NOT_ENFORCED",
            "{flow}"
        );
    }

    // The policy: only TCP 8080 from the client.
    let policy_file = suite.dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY).unwrap();
    kino_ok(&suite, &["policy", "import", policy_file.to_str().unwrap()]);
    eventually("ingress enforcement on web", &suite, || {
        let text = kino_ok(&suite, &["endpoint", "get", "shop/web", "-o", "json"]);
        let web: Value = serde_json::from_str(&text).unwrap();
        (web["policy"]["enforcement"]["ingress"] == json!(true)).then_some(())
    });
    assert!(!tcp_attempt(client, &web_ip, 80), "web:80 must be denied");
    // Allowed (nothing listens: web answers with a RST, which is a reply).
    tcp_attempt(client, &web_ip, 8080);

    // `kino observe --verdict DROPPED -o json`: the denied SYN with everything resolved.
    let drop = eventually("the denied connection in kino observe", &suite, || {
        json_lines(&observe(
            &suite,
            &["--all", "--verdict", "DROPPED", "-o", "json"],
        ))
        .into_iter()
        .find(|f| f["l4"]["tcp"]["destinationPort"] == json!(80))
    });
    assert_eq!(drop["verdict"], "VERDICT_DROPPED", "{drop}");
    assert_eq!(drop["dropReason"], "DROP_REASON_POLICY_DENIED", "{drop}");
    assert_eq!(drop["trafficDirection"], "DIRECTION_INGRESS", "{drop}");
    assert_eq!(drop["ip"]["source"], client_ip.as_str(), "{drop}");
    assert_eq!(drop["ip"]["destination"], web_ip.as_str(), "{drop}");
    assert_eq!(drop["source"]["namespace"], "shop", "{drop}");
    assert_eq!(drop["source"]["podName"], "client", "{drop}");
    assert_eq!(drop["destination"]["namespace"], "shop", "{drop}");
    assert_eq!(drop["destination"]["podName"], "web", "{drop}");
    assert_eq!(drop["l4"]["tcp"]["flags"]["syn"], true, "{drop}");
    assert_eq!(drop["isReply"], false, "{drop}");
    assert_eq!(drop["nodeName"], suite.node_name(), "{drop}");
    let source_port = drop["l4"]["tcp"]["sourcePort"].as_u64().unwrap_or(0);
    assert!(source_port >= 1024, "{drop}");
    assert!(
        drop["source"]["identity"].as_u64().unwrap_or(0) >= 256
            && drop["destination"]["identity"].as_u64().unwrap_or(0) >= 256,
        "{drop}"
    );

    // The allowed connection: FORWARDED verdicts, web's by its L3-L4 entry.
    let allowed = eventually("the allowed connection's verdicts", &suite, || {
        let flows = json_lines(&observe(
            &suite,
            &[
                "--all",
                "--verdict",
                "FORWARDED",
                "--to-port",
                "8080",
                "-o",
                "json",
            ],
        ));
        (flows.len() >= 2).then_some(flows)
    });
    assert!(
        allowed
            .iter()
            .any(|f| f["trafficDirection"] == "DIRECTION_INGRESS"
                && f["policyMatchType"] == "POLICY_MATCH_TYPE_L3_L4"
                && f["destination"]["podName"] == "web"),
        "{allowed:#?}"
    );

    // Compact lines, pod filters on both sides.
    let text = observe(
        &suite,
        &[
            "--all",
            "--from-pod",
            "shop/client",
            "--to-pod",
            "shop/web",
            "--to-port",
            "80",
        ],
    );
    let line = text
        .lines()
        .find(|l| l.contains("DROPPED"))
        .unwrap_or_else(|| panic!("no DROPPED line:\n{text}"));
    assert!(
        line.contains(&format!("shop/client:{source_port} (ID:"))
            && line.contains("-> shop/web:80 (ID:")
            && line.contains("policy-verdict:none INGRESS Policy denied DROPPED (TCP Flags: SYN)"),
        "{line}"
    );

    // --not: everything but the drops.
    let text = observe(
        &suite,
        &["--all", "--not", "--verdict", "DROPPED", "-o", "json"],
    );
    let rest = json_lines(&text);
    assert!(!rest.is_empty());
    assert!(
        rest.iter().all(|f| f["verdict"] != "VERDICT_DROPPED"),
        "{text}"
    );
    // No TCP flow but from or to the namespace: --namespace matches either side.
    let text = observe(
        &suite,
        &["--all", "--protocol", "tcp", "--not", "--namespace", "shop"],
    );
    assert!(text.trim().is_empty(), "{text}");

    // -o jsonpb: GetFlowsResponse objects.
    let responses = json_lines(&observe(&suite, &["--last", "3", "-o", "jsonpb"]));
    assert_eq!(responses.len(), 3, "{responses:#?}");
    for r in &responses {
        assert!(
            r["flow"].is_object() && r["nodeName"] == suite.node_name(),
            "{r}"
        );
    }

    // --follow: a new drop arrives while following.
    let mut follower = Command::new(binary("kino"))
        .args([
            "observe",
            "--follow",
            "--verdict",
            "DROPPED",
            "--to-port",
            "80",
            "-o",
            "json",
            "--server",
            &flows_target(&suite),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kino observe --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    tcp_attempt(client, &web_ip, 80);
    let line = received
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed flow within 10 s");
    let followed: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(followed["destination"]["podName"], "web", "{followed}");
    follower.kill().expect("stopping the follower");
    let _ = follower.wait();

    // ServerStatus: flows seen, nothing lost.
    let channel = kino_service_kit::connect(
        &flows_target(&suite),
        &kino_service_kit::ClientTlsArgs::default(),
    )
    .await
    .expect("connecting to the flow observer");
    let status = FlowServiceClient::new(channel)
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus")
        .into_inner();
    assert!(
        status.seen_flows >= 5 && status.num_flows >= 5,
        "{status:?}"
    );
    assert_eq!(status.lost_events, 0, "{status:?}");
    assert_eq!(status.node_name, suite.node_name());

    for (name, ns) in ["web", "client"].iter().zip(&pods) {
        let out = suite.cni(
            "DEL",
            &format!("{}-{name}", suite.prefix),
            Some(&ns.path()),
            &suite.cni_config("1.1.0"),
            "",
        );
        assert_eq!(out.code, 0, "DEL {name}: {out:?}");
    }
}
