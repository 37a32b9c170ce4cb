//! Policy end to end: two pods with labels through kino-cni, a KinoNetworkPolicy imported
//! into kino-policy-compiler, the agent applying the compiler's stream to its maps (client's
//! ping to web denied at web's ingress and counted), the policy deleted (ping works again),
//! and `kino endpoint get` showing enforcement and the realized revision; `kino policy
//! import|delete --wait` returning only once the datapath enforces the change (a ping that
//! worked is denied the moment import returns), `kino status` showing realized vs latest,
//! and a wait that cannot finish (agent stopped) failing by its timeout, naming the
//! endpoint.

use std::time::{Duration, Instant};

use kino_integration_tests::world::{Netns, Suite, kernel_tests_possible, result_ip};
use serde_json::{Value, json};

fn pod_ip(result: &Value) -> String {
    result_ip(result, 0)
}

fn kino_ok(suite: &Suite, args: &[&str]) -> String {
    suite.kino_ok(args)
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

/// Pods `shop/web` (app=web) and `shop/client` (app=client) added through kino-cni: their
/// namespaces and IPv4 addresses, web first.
fn web_and_client(suite: &Suite) -> (Vec<Netns>, Vec<String>) {
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
    (pods, ips)
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_from_the_compiler_is_enforced_and_lifted() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("pol").await;
    let (pods, ips) = web_and_client(&suite);
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

/// `kino endpoint labels` while traffic runs: the client gains the label a policy allows
/// (its ping to web starts working), loses it again (denied again); a pod created while a
/// policy selects it is enforced the moment ADD returns; bad edits are refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn label_changes_move_endpoints_between_identities() {
    if !kernel_tests_possible() {
        return;
    }
    let suite = Suite::start("lbl").await;
    let policy_file = suite.dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY).unwrap();
    kino_ok(&suite, &["policy", "import", policy_file.to_str().unwrap()]);

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
        if name == "web" {
            // Selected by a policy that exists already: enforced as soon as ADD returns
            // (no window in which the new pod accepts everything).
            let web = endpoint(&suite, "shop/web");
            assert_eq!(
                web["policy"]["enforcement"]["ingress"],
                json!(true),
                "web is not enforced when its ADD returns: {web}"
            );
        }
        ips.push(pod_ip(&out.json()));
        pods.push(ns);
    }
    let (web_ip, client) = (ips[0].clone(), &pods[1]);
    assert!(
        !client.ping(&web_ip, 1),
        "client (app=client) reaches web although only app=other may"
    );
    let before = number(&endpoint(&suite, "shop/client")["identity"]);

    // Become app=other: a new identity, and web's policy now admits it.
    let out = kino_ok(
        &suite,
        &["endpoint", "labels", "shop/client", "--add", "app=other"],
    );
    let client_ep = endpoint(&suite, "shop/client");
    let other = number(&client_ep["identity"]);
    assert!(
        other >= 256 && other != before,
        "identity unchanged: {client_ep}"
    );
    assert!(
        out.contains(&format!("identity {before} -> {other}"))
            && out.contains("container:app=other"),
        "kino endpoint labels output:\n{out}"
    );
    let labels = client_ep["labels"]["labels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        labels
            .iter()
            .any(|l| l["key"] == "app" && l["value"] == "other")
            && !labels
                .iter()
                .any(|l| l["key"] == "app" && l["value"] == "client"),
        "labels not replaced: {client_ep}"
    );
    eventually("client's ping to web working as app=other", &suite, || {
        client.ping(&web_ip, 1)
    });

    // The same edit again changes nothing.
    let out = kino_ok(
        &suite,
        &["endpoint", "labels", "shop/client", "--add", "app=other"],
    );
    assert!(out.contains("(unchanged)"), "{out}");

    // Lose the label: back to a label set no policy admits.
    let out = kino_ok(&suite, &["endpoint", "labels", "shop/client", "-d", "app"]);
    let after = number(&endpoint(&suite, "shop/client")["identity"]);
    assert!(after >= 256 && after != other, "{out}");
    eventually("client's ping to web denied again", &suite, || {
        !client.ping(&web_ip, 1)
    });

    // Bad edits: named, exit 1 (agent refused) or 2 (bad flag), nothing changed.
    let bad = suite.kino(&["endpoint", "labels", "shop/client", "--delete", "nope"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has no label \"nope\""), "{stderr}");
    let bad = suite.kino(&[
        "endpoint",
        "labels",
        "shop/client",
        "--add",
        "reserved:host",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let bad = suite.kino(&["endpoint", "labels", "shop/client", "--delete", "app=x"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = suite.kino(&["endpoint", "labels", "shop/nobody", "--add", "a=b"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no endpoint"));
    assert_eq!(number(&endpoint(&suite, "shop/client")["identity"]), after);

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
}

const DENY_CLIENT: &str = r#"apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web-deny-client, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

/// Runs `kino` with the flow observer's socket too (`kino status` checks it).
fn kino_status(suite: &Suite) -> Value {
    let flows = format!("unix:{}", suite.dir.path().join("flows.sock").display());
    let out = suite.kino(&["status", "-o", "json", "--flows", &flows]);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "kino status printed no JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["components"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["component"] == name))
        .unwrap_or_else(|| panic!("no {name} in kino status: {status}"))
}

/// The revision an import or delete printed ("Revision: N …").
fn printed_revision(text: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix("Revision: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no revision printed:\n{text}"))
}

/// `kino policy import --wait`: returns only once web's datapath enforces the policy — no
/// polling after it: the very next ping is denied — and `delete --wait` once it no longer
/// does. `kino status` shows the agent's realized revision beside the latest. With the
/// agent stopped, a wait cannot finish: it fails after --wait-timeout naming web's
/// endpoint; the restarted agent catches up and the same wait succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn import_wait_returns_once_the_datapath_enforces() {
    if !kernel_tests_possible() {
        return;
    }
    let mut suite = Suite::start("pwt").await;
    let (pods, ips) = web_and_client(&suite);
    let (web_ip, client) = (ips[0].clone(), &pods[1]);
    assert!(
        client.ping(&web_ip, 2),
        "client cannot ping web before any policy"
    );
    let web_id = number(&endpoint(&suite, "shop/web")["id"]);

    let deny = suite.dir.path().join("deny.yaml");
    std::fs::write(&deny, DENY_CLIENT).unwrap();
    let deny = deny.to_str().unwrap();
    let out = kino_ok(
        &suite,
        &["policy", "import", deny, "--wait", "--wait-timeout", "20s"],
    );
    let imported = printed_revision(&out);
    assert!(
        out.contains(&format!(
            "Revision {imported} is enforced by all 1 endpoint selected"
        )),
        "{out}"
    );
    // No retry: enforced when the command returned.
    assert!(
        !client.ping(&web_ip, 1),
        "client's ping to web passed right after import --wait returned:\n{out}"
    );
    let web = endpoint(&suite, "shop/web");
    assert!(
        number(&web["policy"]["realizedRevision"]) >= imported,
        "web's datapath is below the import's revision {imported}: {web}"
    );

    // kino status: the agent's realized revision beside the compiler's latest.
    let status = kino_status(&suite);
    let agent = component(&status, "agent");
    assert!(
        number(&agent["agent"]["policyRevision"]) >= imported,
        "agent's realized revision not reported: {agent}"
    );
    let policy = component(&status, "policy-compiler");
    assert!(
        number(&policy["policy"]["latestRevision"]) >= imported
            && number(&policy["policy"]["endpoints"]) == 2,
        "{policy}"
    );
    let flows = format!("unix:{}", suite.dir.path().join("flows.sock").display());
    let table =
        String::from_utf8_lossy(&suite.kino(&["status", "--flows", &flows]).stdout).into_owned();
    assert!(
        table.contains("policy revision:") && table.contains("realized, latest"),
        "{table}"
    );

    // Deleted and waited for: the next ping passes.
    let out = kino_ok(
        &suite,
        &["policy", "delete", "shop/web-deny-client", "--wait"],
    );
    let deleted = printed_revision(&out);
    assert!(deleted > imported, "{out}");
    assert!(
        client.ping(&web_ip, 1),
        "client's ping to web denied right after delete --wait returned:\n{out}"
    );

    // The agent stopped: the datapath keeps enforcing what it had, but nothing new. The
    // wait fails by its timeout, naming web's endpoint and how far its agent got.
    suite.stop_agent("KILL");
    let out = suite.kino(&["policy", "import", deny, "--wait", "--wait-timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let node = suite.node_name().to_owned();
    assert!(
        stderr.contains("is not enforced after")
            && stderr.contains(&format!("{node}/{web_id} (shop/web)"))
            && stderr.contains("its agent realized revision"),
        "{stderr}"
    );
    // What was stored is still shown.
    assert!(stdout.contains("shop/web-deny-client"), "{stdout}");
    assert!(
        client.ping(&web_ip, 1),
        "the stopped agent's datapath changed"
    );

    // Back: the agent catches up and the same wait succeeds.
    suite.start_agent();
    let out = kino_ok(
        &suite,
        &["policy", "import", deny, "--wait", "--wait-timeout", "20s"],
    );
    assert!(out.contains("unchanged"), "{out}");
    assert!(
        !client.ping(&web_ip, 1),
        "denied once the restarted agent caught up"
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
}
