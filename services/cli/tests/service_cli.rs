//! `kino service` end to end: real `kino-datastore-gateway` (embedded backend) and
//! `kino-ipam` processes on unix sockets in a temporary directory, and the built `kino`
//! binary run as an operator runs it. Create (ClusterIPs of both families and a NodePort in
//! front of two pods' addresses), list in `cilium service list`'s columns, get as JSON with
//! ids and nodes, update a backend to terminating, kino-ipam's refusals (an unknown backend,
//! a frontend another service holds) and a usage error as errors on stderr, delete.

mod support;

use std::process::{Command, Output, Stdio};

use kino_api::ipam as pb;
use kino_service_kit::ClientTlsArgs;
use support::{Service, json, row, start_gateway, text};

/// The suite of the test and how to run `kino` against it.
struct Suite {
    ipam_address: String,
    // Fields drop in order: IPAM, the gateway, then their directory.
    _ipam: Service,
    _gateway: Service,
    _dir: tempfile::TempDir,
}

impl Suite {
    fn start() -> Suite {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = dir.path().join("ipam.sock");
        let (gateway, datastore) = start_gateway(dir.path());
        let mut ipam_service = Service::start(
            dir.path(),
            "kino-ipam",
            &[
                format!("--listen=unix:{}", ipam.display()),
                format!("--datastore=unix:{}", datastore.display()),
            ],
        );
        ipam_service.wait_for_socket(&ipam);
        Suite {
            ipam_address: format!("unix:{}", ipam.display()),
            _ipam: ipam_service,
            _gateway: gateway,
            _dir: dir,
        }
    }

    fn kino(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kino"))
            .args(args)
            .env("KINO_IPAM", &self.ipam_address)
            .env("KINO_TIMEOUT", "10s")
            .env_remove("KINO_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("runs kino")
    }

    /// `kino ARGS`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kino(args);
        assert!(
            out.status.success(),
            "kino {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `kino ARGS`, which must fail with exit status 1; its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.kino(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kino {args:?}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// A pod's address on `node`, allocated as its agent would (the CLI has no command).
    async fn pod(&self, node: &str, container: &str) -> String {
        let channel = kino_service_kit::connect(&self.ipam_address, &ClientTlsArgs::default())
            .await
            .expect("connects to kino-ipam");
        pb::ipam_service_client::IpamServiceClient::new(channel)
            .allocate(pb::AllocateRequest {
                node: node.into(),
                family: kino_api::types::IpFamily::Ipv4 as i32,
                owner: Some(pb::Owner {
                    container_id: container.into(),
                    ifname: "eth0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("allocates")
            .into_inner()
            .allocation
            .expect("an allocation")
            .address
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_commands_against_a_real_ipam() {
    let suite = Suite::start();
    assert!(suite.ok(&["service", "list"]).starts_with("No services."));
    let (a, b) = (suite.pod("n1", "c1").await, suite.pod("n2", "c2").await);
    let (backend_a, backend_b) = (format!("{a}:8080"), format!("{b}:8080"));

    let created = suite.ok(&[
        "service",
        "create",
        "web",
        "--frontend",
        "172.20.0.10:80/tcp",
        "--frontend",
        "[fd00:ffff::a]:80/tcp",
        "--backend",
        &backend_a,
        "--backend",
        &format!("{backend_b},weight=2"),
        "--node-port",
        "30080",
    ]);
    assert!(
        created.starts_with("name:        default/web\ntype:        NodePort\n"),
        "{created}"
    );

    let list = suite.ok(&["service", "list"]);
    assert_eq!(
        list.lines().next().map(|l| l
            .split("   ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()),
        Some(vec!["ID", "Frontend", "Service Type", "Backend"]),
        "{list}"
    );
    assert_eq!(
        row(&list, &["1"]),
        [
            "1",
            "172.20.0.10:80/TCP",
            "ClusterIP",
            "1",
            "=>",
            &backend_a,
            "(active)"
        ]
    );
    assert_eq!(
        row(&list, &["2", "=>"]),
        ["2", "=>", &backend_b, "(active,", "weight", "2)"],
        "the second backend on a continuation line: {list}"
    );
    assert_eq!(row(&list, &["2", "[fd00:ffff::a]:80/TCP"])[2], "ClusterIP");
    assert_eq!(row(&list, &["3"])[..3], ["3", "*:30080/TCP", "NodePort"]);

    let got = json(&suite.ok(&["service", "get", "web", "-o", "json"]));
    let service = &got["service"];
    assert_eq!(service["type"], "SERVICE_TYPE_NODE_PORT");
    assert_eq!(service["frontends"][2]["type"], "FRONTEND_TYPE_NODE_PORT");
    assert_eq!(service["frontends"][2]["id"], 3);
    assert_eq!(service["backends"][0]["nodeName"], "n1");
    assert_eq!(service["backends"][1]["nodeName"], "n2");
    assert_eq!(service["backends"][1]["weight"], 2);
    let revision = service["revision"]
        .as_str()
        .expect("int64 as a string")
        .to_owned();

    suite.ok(&[
        "service",
        "update",
        "web",
        "--terminate-backend",
        &backend_a,
    ]);
    let list = suite.ok(&["service", "list"]);
    assert_eq!(row(&list, &["1"])[6], "(terminating)", "{list}");
    let updated = json(&suite.ok(&["service", "get", "web", "-o", "json"]));
    assert_ne!(
        updated["service"]["revision"].as_str(),
        Some(revision.as_str())
    );
    assert_eq!(updated["service"]["frontends"][0]["id"], 1, "ids kept");

    let stderr = suite.fails(&[
        "service",
        "create",
        "api",
        "--frontend",
        "172.20.0.11:80/tcp",
        "--backend",
        "10.9.9.9:80",
    ]);
    assert!(
        stderr.starts_with("error: kino-ipam answered InvalidArgument: invalid service.backends[0].address: 10.9.9.9 is not a known backend"),
        "{stderr}"
    );
    let stderr = suite.fails(&[
        "service",
        "create",
        "api",
        "--frontend",
        "172.20.0.10:80/tcp",
        "--backend",
        &backend_a,
    ]);
    assert!(
        stderr.contains("172.20.0.10:80/TCP is held by service default/web"),
        "{stderr}"
    );
    let stderr = suite.fails(&[
        "service",
        "update",
        "web",
        "--remove-backend",
        "10.9.9.9:80",
    ]);
    assert_eq!(
        stderr,
        "error: service default/web has no backend 10.9.9.9:80 (`kino service get web` lists them)\n"
    );
    let stderr = suite.fails(&["service", "get", "nope"]);
    assert!(
        stderr.contains("NotFound") && stderr.contains("service default/nope"),
        "{stderr}"
    );

    let deleted = suite.ok(&["service", "delete", "web"]);
    assert!(
        deleted.starts_with("service default/web deleted: frontends 172.20.0.10:80/TCP (ID 1)"),
        "{deleted}"
    );
    let listed = json(&suite.ok(&["service", "list", "-o", "json"]));
    assert_eq!(listed["services"], serde_json::json!([]));
}
