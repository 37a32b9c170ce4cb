//! `kino policy` and `kino identity` end to end: real `kino-datastore-gateway` (embedded
//! backend) and `kino-policy-compiler` processes on unix sockets in a temporary directory,
//! and the built `kino` binary run as an operator runs it. Import (invalid: every error with
//! its path, nothing stored; valid: a KinoNetworkPolicy and a Kubernetes NetworkPolicy),
//! validate, list, get, trace (labels, and a pod with no agent to ask), delete, and the
//! identity list with the reserved identities.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Service, json, row, start_gateway, text};

use kino_api::policy as pb;
use kino_api::types::{Label, Labels};
use kino_service_kit::ClientTlsArgs;

const POLICIES: &str = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  description: lb may reach web on 80-90
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    toPorts: [{ports: [{port: "80", endPort: 90, protocol: TCP}]}]
  - fromEntities: [host]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 53, protocol: UDP}]}]
"#;

const INVALID: &str = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: fine, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{}]
---
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: broken, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports:
      - {port: "80"}
      - {port: "99999"}
"#;

const BAD_PORT_PATH: &str = "spec.ingress[0].toPorts[0].ports[1].port";

/// The suite of the test and how to run `kino` against it.
struct Suite {
    policy_address: String,
    // Fields drop in order: the compiler, the gateway, then their directory.
    _compiler: Service,
    _gateway: Service,
    dir: tempfile::TempDir,
}

impl Suite {
    fn start() -> Suite {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy.sock");
        let (gateway, datastore) = start_gateway(dir.path());
        let mut compiler = Service::start(
            dir.path(),
            "kino-policy-compiler",
            &[
                format!("--listen=unix:{}", policy.display()),
                format!("--datastore=unix:{}", datastore.display()),
            ],
        );
        compiler.wait_for_socket(&policy);
        Suite {
            policy_address: format!("unix:{}", policy.display()),
            dir,
            _compiler: compiler,
            _gateway: gateway,
        }
    }

    /// Runs `kino ARGS` (with `stdin` when given) against the suite; no agent runs.
    fn kino(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kino"));
        command
            .args(args)
            .env("KINO_POLICY", &self.policy_address)
            .env("KINO_AGENT_SOCKET", self.dir.path().join("agent.sock"))
            .env("KINO_TIMEOUT", "10s")
            .env_remove("KINO_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("runs kino");
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("writes stdin");
        }
        child.wait_with_output().expect("kino finishes")
    }

    /// `kino ARGS`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kino(args, None);
        assert!(
            out.status.success(),
            "kino {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("writes the file");
        path.display().to_string()
    }
}

fn labels(text: &[(&str, &str)]) -> Labels {
    Labels {
        labels: text
            .iter()
            .map(|(key, value)| Label {
                key: (*key).into(),
                value: (*value).into(),
                source: "container".into(),
            })
            .collect(),
    }
}

/// Allocates identities as an agent does (the CLI has no command for it).
async fn allocate(address: &str, labels: Labels) -> u32 {
    let channel = kino_service_kit::connect(address, &ClientTlsArgs::default())
        .await
        .expect("connects to the compiler");
    pb::policy_service_client::PolicyServiceClient::new(channel)
        .allocate_identity(pb::AllocateIdentityRequest {
            labels: Some(labels),
        })
        .await
        .expect("allocates")
        .into_inner()
        .identity
        .expect("an identity")
        .id
}

/// Runs a trace until its output contains every `expected` line (the compiler applies
/// imports and allocations through its datastore watches, so it may lag a moment).
fn trace_until(suite: &Suite, args: &[&str], expected: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = suite.kino(args, None);
        let stdout = text(&out.stdout);
        if out.status.success() && expected.iter().all(|e| stdout.contains(e)) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "kino {args:?} never showed {expected:?}; last ({}):\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_identity_commands_against_a_real_compiler() {
    let suite = Suite::start();

    // Identities: the reserved ones, as Cilium shows them.
    let identities = suite.ok(&["identity", "list"]);
    assert_eq!(
        identities.lines().next(),
        Some("ID   LABELS"),
        "{identities}"
    );
    for (id, label) in [
        ("1", "reserved:host"),
        ("2", "reserved:world"),
        ("3", "reserved:unmanaged"),
        ("4", "reserved:health"),
        ("5", "reserved:init"),
        ("6", "reserved:remote-node"),
    ] {
        assert_eq!(row(&identities, &[id]), [id, label], "{identities}");
    }
    let listed = json(&suite.ok(&["identity", "list", "-o", "json"]));
    let reserved: Vec<u64> = listed["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .filter(|i| i["reserved"] == true)
        .map(|i| i["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(reserved, [1, 2, 3, 4, 5, 6]);
    assert!(
        suite
            .ok(&["identity", "get", "2"])
            .contains("Labels:       reserved:world")
    );

    // An invalid file: every error with its path, exit status 1, nothing stored.
    let invalid = suite.write("invalid.yaml", INVALID);
    let out = suite.kino(&["policy", "import", &invalid], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("rejected {invalid}")), "{stderr}");
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "document 1, {BAD_PORT_PATH}: \"99999\" is not a port (1-65535)"
        )),
        "{stderr}"
    );
    assert!(suite.ok(&["policy", "list"]).starts_with("No policies."));
    let out = suite.kino(&["policy", "validate", &invalid], None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("document 1 (shop/broken), {BAD_PORT_PATH}: ")),
        "{stdout}"
    );

    // The valid file: created, then unchanged on a second import.
    let valid = suite.write("web.yaml", POLICIES);
    let validated = suite.ok(&["policy", "validate", &valid]);
    assert!(
        validated.contains("2 valid policy document(s)"),
        "{validated}"
    );
    let imported = suite.ok(&["policy", "import", &valid]);
    assert_eq!(
        row(&imported, &["shop/web"])[..3],
        ["shop/web", "KinoNetworkPolicy", "created"],
        "{imported}"
    );
    let dns_revision = row(&imported, &["shop/dns"])[3].to_owned();
    assert_eq!(
        row(&imported, &["shop/dns"])[..3],
        ["shop/dns", "NetworkPolicy", "created"],
        "{imported}"
    );
    assert!(imported.contains("Revision: "), "{imported}");
    let again = suite.ok(&["policy", "import", &valid]);
    assert_eq!(row(&again, &["shop/web"])[2], "unchanged", "{again}");

    // List: NAMESPACE NAME KIND SELECTS REVISION.
    let list = suite.ok(&["policy", "list"]);
    assert_eq!(
        list.lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAMESPACE", "NAME", "KIND", "SELECTS", "REVISION"]),
        "{list}"
    );
    assert_eq!(
        row(&list, &["shop", "dns"]),
        [
            "shop",
            "dns",
            "NetworkPolicy",
            "(all)",
            dns_revision.as_str()
        ],
        "{list}"
    );
    assert_eq!(
        row(&list, &["shop", "web"])[..4],
        ["shop", "web", "KinoNetworkPolicy", "app=web"],
        "{list}"
    );
    let listed = json(&suite.ok(&["policy", "list", "-n", "shop", "-o", "json"]));
    assert_eq!(listed["policies"].as_array().map(Vec::len), Some(2));
    assert!(
        suite
            .ok(&["policy", "list", "-n", "other"])
            .starts_with("No policies.")
    );

    // Get: a summary, the document (re-importable), the API's JSON.
    let summary = suite.ok(&["policy", "get", "shop/web"]);
    for expected in [
        "Kind:      KinoNetworkPolicy",
        "spec: endpoints app=web (lb may reach web on 80-90)",
        "allow from endpoints app=lb on 80-90/TCP",
        "allow from entity host on every port",
    ] {
        assert!(summary.contains(expected), "{expected:?} in\n{summary}");
    }
    let yaml = suite.ok(&["policy", "get", "web", "-n", "shop", "-o", "yaml"]);
    assert!(yaml.contains("kind: KinoNetworkPolicy"), "{yaml}");
    let out = suite.kino(&["policy", "validate", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", text(&out.stdout));
    let got = json(&suite.ok(&["policy", "get", "shop/dns", "-o", "json"]));
    assert_eq!(got["policy"]["kind"], "POLICY_KIND_K8S_NETWORK_POLICY");
    assert_eq!(got["revision"].as_str(), Some(dns_revision.as_str()));
    let out = suite.kino(&["policy", "get", "dns"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("policy default/dns does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("shop/dns"), "the hint names it: {stderr}");

    // Trace with identities, as the agent would have allocated them.
    let web = allocate(
        &suite.policy_address,
        labels(&[("app", "web"), ("namespace", "shop")]),
    )
    .await;
    let lb = allocate(
        &suite.policy_address,
        labels(&[("app", "lb"), ("namespace", "shop")]),
    )
    .await;
    let identities = suite.ok(&["identity", "list"]);
    assert_eq!(
        row(&identities, &[web.to_string().as_str()]),
        [web.to_string().as_str(), "container:app=web"],
        "{identities}"
    );
    assert!(
        suite
            .ok(&["identity", "get", &lb.to_string()])
            .contains("container:app=lb\n              container:namespace=shop"),
    );
    let lb_labels = "container:app=lb,container:namespace=shop";
    let web_labels = "container:app=web,container:namespace=shop";
    let header = format!(
        "Ingress policy of the destination (identity {web}), toward the source (identity {lb}):"
    );
    let entry = format!("  policy-map entry hit: ingress remote={lb} 80-90/TCP → allow\n");
    trace_until(
        &suite,
        &[
            "policy", "trace", "--src", lb_labels, "--dst", web_labels, "--dport", "80/tcp",
        ],
        &[
            &header,
            "    * shop/web spec.ingress[0] (KinoNetworkPolicy): lb may reach web on 80-90\n",
            &entry,
            "  Ingress verdict: allowed (an allow rule matched and no deny rule did)\n",
            // The NetworkPolicy selects every pod of shop for egress: only DNS leaves lb.
            "  Egress verdict: denied (enforced and no rule allows it: default deny)\n",
            "Final verdict: DENIED\n",
        ],
    );
    let trace = suite.ok(&[
        "policy",
        "trace",
        "-s",
        lb_labels,
        "-d",
        web_labels,
        "--dport",
        "80/tcp",
        "--direction",
        "ingress",
    ]);
    assert!(
        trace.contains("Final verdict (ingress only): ALLOWED"),
        "{trace}"
    );
    assert!(!trace.contains("Egress policy"), "{trace}");
    let traced = json(&suite.ok(&[
        "policy",
        "trace",
        "-s",
        &lb.to_string(),
        "-d",
        &web.to_string(),
        "--dport",
        "91/tcp",
        "-o",
        "json",
    ]));
    assert_eq!(traced["verdict"], "POLICY_VERDICT_DENY");
    assert_eq!(traced["ingress"]["reason"], "TRACE_REASON_DEFAULT_DENY");
    assert_eq!(traced["egress"]["deniedBy"], serde_json::json!([]));

    // A pod with no agent to ask: traced with its standalone labels, and said so.
    let trace = suite.ok(&[
        "policy",
        "trace",
        "--src",
        "shop/client",
        "--dst",
        web_labels,
        "--dport",
        "53/udp",
    ]);
    for expected in [
        "Tracing from: pod shop/client [container:namespace=shop,container:pod=client]\n",
        "did not answer; traced with its standalone labels container:namespace=shop,container:pod=client",
        "  allowed by:\n    * shop/dns spec.egress[0] (NetworkPolicy)\n",
        "  Egress verdict: allowed (an allow rule matched and no deny rule did)\n",
        "  Ingress verdict: denied (enforced and no rule allows it: default deny)\n",
        "Final verdict: DENIED\n",
    ] {
        assert!(trace.contains(expected), "{expected:?} in\n{trace}");
    }

    // Delete: gone from the list; a second delete fails.
    let deleted = suite.ok(&["policy", "delete", "shop/web"]);
    assert!(
        deleted.starts_with("policy shop/web deleted\nRevision: "),
        "{deleted}"
    );
    let list = suite.ok(&["policy", "list"]);
    assert!(!list.contains("web"), "{list}");
    assert_eq!(row(&list, &["shop", "dns"])[1], "dns");
    let out = suite.kino(&["policy", "delete", "shop/web"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("policy shop/web does not exist"));

    // Nobody at the address: the error names it and the fix.
    let nowhere = format!("unix:{}", suite.dir.path().join("nothing.sock").display());
    let out = suite.kino(&["--policy", &nowhere, "policy", "list"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach kino-policy-compiler at {nowhere}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("--policy ADDRESS (env KINO_POLICY"),
        "{stderr}"
    );
}

/// Writes an Identity record straight into the datastore, as an older compiler (without
/// the label limits) could have stored it.
async fn store_identity(datastore: &str, id: u32, labels: Labels) {
    use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
    use kino_api::datastore::{CreateRequest, Resource};
    use prost::Message as _;
    let channel = kino_service_kit::connect(datastore, &ClientTlsArgs::default())
        .await
        .expect("connects to the gateway");
    let identity = pb::Identity {
        id,
        labels: Some(labels),
        ..Default::default()
    };
    DatastoreServiceClient::new(channel)
        .create(CreateRequest {
            resource: Some(Resource {
                kind: "Identity".into(),
                name: id.to_string(),
                spec: Some(prost_types::Any {
                    type_url: "type.googleapis.com/kino.policy.v1.Identity".into(),
                    value: identity.encode_to_vec(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("the gateway stores the identity");
}

fn many_labels(count: usize, key_len: usize) -> Labels {
    Labels {
        labels: (0..count)
            .map(|i| Label {
                key: format!("{}{i:08}", "0".repeat(key_len.saturating_sub(8))),
                value: "v".into(),
                source: "container".into(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_labels_are_refused_and_a_huge_identity_still_lists() {
    let suite = Suite::start();
    let channel = kino_service_kit::connect(&suite.policy_address, &ClientTlsArgs::default())
        .await
        .expect("connects to the compiler");
    let mut client = pb::policy_service_client::PolicyServiceClient::new(channel);

    // 20 000 labels in one identity, and a 100 KB label key: refused, naming field and limit.
    let status = client
        .allocate_identity(pb::AllocateIdentityRequest {
            labels: Some(many_labels(20_000, 8)),
        })
        .await
        .expect_err("20 000 labels are refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("labels: 20000 labels")
            && status.message().contains("at most 256"),
        "{}",
        status.message()
    );
    let status = client
        .allocate_identity(pb::AllocateIdentityRequest {
            labels: Some(many_labels(1, 100_000)),
        })
        .await
        .expect_err("a 100 KB label key is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("labels[0].key") && status.message().contains("at most 63"),
        "{}",
        status.message()
    );
    assert!(
        status.message().len() < 512,
        "the message repeats the whole key: {} bytes",
        status.message().len()
    );

    // An identity of 10 000 labels already in the datastore: `kino identity list` shows it.
    let datastore = format!("unix:{}", suite.dir.path().join("datastore.sock").display());
    let mut huge = many_labels(10_000, 8);
    // One label line wider than 65 535 columns (a width `format!` cannot pad to).
    huge.labels.push(Label {
        key: "long".into(),
        value: "x".repeat(70_000),
        source: "container".into(),
    });
    store_identity(&datastore, 4242, huge).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = suite.kino(&["identity", "list"], None);
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "kino panicked:\n{stderr}");
        assert!(out.status.success(), "kino identity list failed:\n{stderr}");
        if stdout.contains("4242") {
            assert!(stdout.contains("container:00009999=v"), "{stdout:.2000}");
            break;
        }
        assert!(Instant::now() < deadline, "identity 4242 never listed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
