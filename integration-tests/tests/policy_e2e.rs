//! Policy end to end: two pods with labels through kino-cni, a KinoNetworkPolicy imported
//! into kino-policy-compiler, the agent applying the compiler's stream to its maps (client's
//! ping to web denied at web's ingress and counted), the policy deleted (ping works again),
//! and `kino endpoint get` showing enforcement and the realized revision.

use std::time::{Duration, Instant};

use kino_integration_tests::world::{Netns, Suite, kernel_tests_possible};
use serde_json::{Value, json};

fn pod_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips in {result}"));
    address.split('/').next().unwrap().to_owned()
}

fn kino_ok(suite: &Suite, args: &[&str]) -> String {
    let out = suite.kino(args);
    assert!(
        out.status.success(),
        "kino {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn endpoint(suite: &Suite, pod: &str) -> Value {
    let text = kino_ok(suite, &["endpoint", "get", pod, "-o", "json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("no JSON ({e}): {text}"))
}

fn number(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Polls `check` every 200 ms for up to 10 s.
fn eventually(what: &str, suite: &Suite, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in 10 s; agent log:\n{}\npolicy-compiler log:\n{}",
            suite.agent_log(),
            suite.policy_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const POLICY: &str = r#"apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web-from-other, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn policy_from_the_compiler_is_enforced_and_lifted() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("pol").await;
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    for (name, app) in [("web", "web"), ("client", "client")] {
        let ns = Netns::new(&format!("{}-{name}", suite.prefix));
        let mut config = suite.cni_config("1.1.0");
        config["args"] = json!({"labels": {"app": app}});
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
    let (web_ip, client) = (ips[0].clone(), &pods[1]);
    let web = endpoint(&suite, "shop/web");
    let client_ep = endpoint(&suite, "shop/client");
    let (web_identity, client_identity) =
        (number(&web["identity"]), number(&client_ep["identity"]));
    assert!(web_identity >= 256, "web has no identity: {web}");
    assert!(
        client_identity >= 256 && client_identity != web_identity,
        "{client_ep}"
    );
    assert!(
        client.ping(&web_ip, 2),
        "client cannot ping web before any policy"
    );

    // Only app=other may reach web: client's ping is dropped at web's ingress.
    let policy_file = suite.dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY).unwrap();
    kino_ok(&suite, &["policy", "import", policy_file.to_str().unwrap()]);
    eventually("ingress enforcement on web", &suite, || {
        endpoint(&suite, "shop/web")["policy"]["enforcement"]["ingress"] == json!(true)
    });
    eventually("client's ping to web failing", &suite, || {
        !client.ping(&web_ip, 1)
    });
    let web = endpoint(&suite, "shop/web");
    let drops = web["counters"]["drops"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        drops.iter().any(|d| d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("POLICY_DENIED"))
            && d["direction"]
                .as_str()
                .is_some_and(|r| r.contains("INGRESS"))
            && number(&d["packets"]) > 0),
        "no POLICY_DENIED ingress drops counted on web: {web}"
    );
    let revision = number(&web["policy"]["realizedRevision"]);
    assert!(revision > 0, "no realized revision: {web}");
    // The client itself is not selected: nothing enforced there.
    let client_ep = endpoint(&suite, "shop/client");
    assert_eq!(
        client_ep["policy"]["enforcement"]["ingress"],
        json!(false),
        "{client_ep}"
    );
    let text = kino_ok(&suite, &["endpoint", "get", "shop/web"]);
    assert!(
        text.contains(&revision.to_string()),
        "revision not shown:\n{text}"
    );

    // Policy gone: enforcement off, ping works again, revision moves on.
    kino_ok(&suite, &["policy", "delete", "shop/web-from-other"]);
    eventually("ingress enforcement lifted", &suite, || {
        endpoint(&suite, "shop/web")["policy"]["enforcement"]["ingress"] != json!(true)
    });
    eventually("client's ping to web working again", &suite, || {
        client.ping(&web_ip, 1)
    });
    let after = number(&endpoint(&suite, "shop/web")["policy"]["realizedRevision"]);
    assert!(
        after > revision,
        "realized revision did not advance: {after} <= {revision}"
    );

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
    assert!(suite.lxc_links().is_empty(), "{:?}", suite.lxc_links());

    // Without the compiler no identity can be had: ADD fails with 11 (try again), naming
    // the compiler's address, and leaves nothing behind.
    suite.stop_policy_compiler("KILL");
    let ns = Netns::new(&format!("{}-late", suite.prefix));
    let mut config = suite.cni_config("1.1.0");
    config["args"] = json!({"labels": {"app": "web"}});
    let out = suite.cni(
        "ADD",
        &format!("{}-late", suite.prefix),
        Some(&ns.path()),
        &config,
        "IgnoreUnknown=1;K8S_POD_NAME=late;K8S_POD_NAMESPACE=shop",
    );
    assert_eq!(out.json()["code"], json!(11), "{out:?}");
    assert!(
        out.stdout.contains("policy.sock"),
        "the address is not named: {out:?}"
    );
    assert!(suite.lxc_links().is_empty(), "{:?}", suite.lxc_links());
}
