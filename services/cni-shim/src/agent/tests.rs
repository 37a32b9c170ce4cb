//! Unit tests of the agent client (`agent.rs`): requests built from the CNI input, results
//! from the agent's answers, and errors that name the socket and the call.

use kino_api::agent::{CniDns, CniInterface, CniIpConfig, CniRoute};

use super::*;
use crate::spec::Command;
use crate::spec::args::{CniArgs, Label};

fn env(command: Command) -> CniEnv {
    CniEnv {
        command,
        container_id: Some("c0ffee".into()),
        netns: Some("/run/netns/pod1".into()),
        ifname: Some("eth0".into()),
        args: None,
        path: Some("/opt/cni/bin".into()),
    }
}

fn config() -> NetworkConfig {
    NetworkConfig::parse(
        br#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni","mtu":1400,"ipamPool":"blue"}"#,
    )
    .expect("valid")
}

fn response() -> CreateEndpointResponse {
    CreateEndpointResponse {
        endpoint: None,
        interfaces: vec![
            CniInterface {
                name: "lxc0a1b2c3d4e5f".into(),
                mac: "5e:00:00:00:00:01".into(),
                sandbox: String::new(),
                mtu: 1400,
            },
            CniInterface {
                name: "eth0".into(),
                mac: "0a:58:0a:00:01:17".into(),
                sandbox: "/run/netns/pod1".into(),
                mtu: 1400,
            },
        ],
        ips: vec![CniIpConfig {
            address: "10.0.1.23/32".into(),
            gateway: "10.0.1.1".into(),
            interface: 1,
        }],
        routes: vec![CniRoute {
            destination: "0.0.0.0/0".into(),
            gateway: "10.0.1.1".into(),
        }],
        dns: Some(CniDns::default()),
    }
}

#[test]
fn create_request_carries_everything_the_runtime_gave() {
    let args =
        CniArgs::parse(Some("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.1.9;FOO=bar")).expect("args");
    let mut params = AddParams::new(&args, &serde_json::Map::new()).expect("params");
    params.labels = vec![Label {
        source: "container".into(),
        key: "app".into(),
        value: "web".into(),
    }];
    let request = create_request(&env(Command::Add), &config(), &params);
    assert_eq!(request.container_id, "c0ffee");
    assert_eq!(request.netns_path, "/run/netns/pod1");
    assert_eq!(request.ifname, "eth0");
    assert_eq!(
        request.pod,
        Some(PodRef {
            namespace: "default".into(),
            name: "web".into()
        })
    );
    let labels = request.labels.expect("labels").labels;
    assert_eq!(
        (
            labels[0].source.as_str(),
            labels[0].key.as_str(),
            labels[0].value.as_str()
        ),
        ("container", "app", "web")
    );
    assert_eq!(request.requested_ipv4, "10.0.1.9");
    assert_eq!(request.requested_ipv6, "");
    assert_eq!(request.requested_mac, "");
    assert_eq!(request.ipam_pool, "blue");
    assert_eq!(request.cni_network_name, "kino");
    assert_eq!(request.mtu, 1400);
    assert_eq!(request.cni_args.get("FOO").map(String::as_str), Some("bar"));

    let bare = create_request(&env(Command::Add), &config(), &AddParams::default());
    assert_eq!((bare.pod, bare.labels), (None, None));
}

#[test]
fn delete_check_and_gc_requests_name_the_attachment() {
    let delete = delete_request(&env(Command::Del));
    assert_eq!(delete.netns_path, "/run/netns/pod1");
    match delete.target {
        Some(delete_endpoint_request::Target::Attachment(a)) => {
            assert_eq!(
                (a.container_id.as_str(), a.ifname.as_str()),
                ("c0ffee", "eth0")
            );
        }
        other => panic!("by attachment, got {other:?}"),
    }
    let mut prev = result_from_response(&response()).expect("valid");
    prev.ips.push(IpConfig {
        address: "192.168.0.2/24".parse().unwrap(),
        gateway: None,
        interface: Some(0),
    });
    let check = check_request(&env(Command::Check), &prev, 1);
    assert_eq!(check.expected_addresses, ["10.0.1.23/32"], "only eth0's");
    assert_eq!(check.expected_mac, "0a:58:0a:00:01:17");
    assert_eq!(check.attachment.expect("attachment").container_id, "c0ffee");
    let gc = gc_request(
        &config(),
        &[Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }],
    );
    assert_eq!(gc.valid_attachments.len(), 1);
    assert_eq!(gc.cni_network_name, "kino");
    assert!(!gc.dry_run);
}

#[test]
fn response_becomes_the_cni_result() {
    let result = result_from_response(&response()).expect("valid");
    assert_eq!(result.interfaces.len(), 2);
    assert_eq!(result.interfaces[0].sandbox, None, "host side");
    assert_eq!(result.interfaces[1].mtu, Some(1400));
    assert_eq!(result.ips[0].interface, Some(1));
    assert_eq!(result.ips[0].address.to_string(), "10.0.1.23/32");
    assert_eq!(result.routes[0].gw, Some("10.0.1.1".parse().unwrap()));
    assert!(result.dns.is_empty());
}

#[test]
fn add_prints_exactly_this_in_1_1_0_and_0_4_0() {
    use crate::spec::CniVersion;
    let result = result_from_response(&response()).expect("valid");
    assert_eq!(
        result.to_json(CniVersion::V1_1_0),
        r#"{"cniVersion":"1.1.0","interfaces":[{"name":"lxc0a1b2c3d4e5f","mac":"5e:00:00:00:00:01","mtu":1400},{"name":"eth0","mac":"0a:58:0a:00:01:17","mtu":1400,"sandbox":"/run/netns/pod1"}],"ips":[{"address":"10.0.1.23/32","gateway":"10.0.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.1.1"}]}"#
    );
    assert_eq!(
        result.to_json(CniVersion::V0_4_0),
        r#"{"cniVersion":"0.4.0","interfaces":[{"name":"lxc0a1b2c3d4e5f","mac":"5e:00:00:00:00:01"},{"name":"eth0","mac":"0a:58:0a:00:01:17","sandbox":"/run/netns/pod1"}],"ips":[{"version":"4","address":"10.0.1.23/32","gateway":"10.0.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.1.1"}]}"#
    );
}

#[test]
fn malformed_responses_are_named() {
    for (change, needle) in [
        (
            Box::new(|r: &mut CreateEndpointResponse| r.ips.clear()) as Box<dyn Fn(&mut _)>,
            "0 addresses",
        ),
        (
            Box::new(|r: &mut CreateEndpointResponse| r.ips[0].address = "10.0.1.23".into()),
            "ADDRESS/PREFIX",
        ),
        (
            Box::new(|r: &mut CreateEndpointResponse| r.ips[0].interface = 5),
            "only 2 interfaces",
        ),
        (
            Box::new(|r: &mut CreateEndpointResponse| r.routes[0].gateway = "gw".into()),
            "route gateway",
        ),
    ] {
        let mut response = response();
        change(&mut response);
        let error = result_from_response(&response).expect_err(needle);
        assert!(error.contains(needle), "{needle}: {error}");
    }
}

#[test]
fn errors_name_the_socket_and_rpc() {
    let error = AgentError {
        rpc: "CreateEndpoint",
        socket: "/run/kino/agent.sock".into(),
        failure: AgentFailure::TimedOut {
            after: Duration::from_secs(30),
        },
    };
    assert_eq!(
        error.to_string(),
        "the kino agent at unix:/run/kino/agent.sock did not answer CreateEndpoint within 30.0s"
    );
    assert_eq!(error.code(), None);
    let error = AgentError {
        failure: AgentFailure::Status {
            code: tonic::Code::NotFound,
            message: "no endpoint".into(),
        },
        ..error
    };
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert!(
        error.to_string().contains("NotFound: no endpoint"),
        "{error}"
    );
    assert_eq!(socket_target(Path::new("/x.sock")), "unix:/x.sock");
}

#[tokio::test]
async fn a_missing_socket_is_unreachable_and_a_silent_one_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent {
        socket: dir.path().join("absent.sock"),
        timeout: Duration::from_secs(5),
    };
    let error = agent.status().await.expect_err("nothing there");
    assert!(
        matches!(&error.failure, AgentFailure::Unreachable { detail } if detail.contains("No such file")),
        "{error:?}"
    );
    // Accepts connections but never speaks HTTP/2.
    let path = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let agent = Agent {
        socket: path,
        timeout: Duration::from_millis(300),
    };
    let error = agent.status().await.expect_err("silent");
    assert_eq!(
        error.failure,
        AgentFailure::TimedOut {
            after: Duration::from_millis(300)
        }
    );
}

fn agent_error(failure: AgentFailure) -> AgentError {
    AgentError {
        rpc: "CreateEndpoint",
        socket: "/run/kino/agent.sock".into(),
        failure,
    }
}

fn status(code: tonic::Code) -> AgentError {
    agent_error(AgentFailure::Status {
        code,
        message: "the agent's words".into(),
    })
}

#[test]
fn agent_down_is_try_again_naming_the_socket_and_the_fix() {
    let down = agent_error(AgentFailure::Unreachable {
        detail: "No such file or directory (os error 2)".into(),
    });
    for command in [Command::Add, Command::Del, Command::Check, Command::Gc] {
        let error = down.to_cni_error(command);
        assert_eq!(error.code, ErrorCode::TryAgainLater, "{command:?}");
        assert!(error.msg.contains("unix:/run/kino/agent.sock"), "{error}");
        assert!(error.details.contains("start kino-agent"), "{error}");
        assert!(error.details.contains("agentSocket"), "{error}");
        assert!(error.details.contains("os error 2"), "{error}");
    }
    let del = down.to_cni_error(Command::Del);
    assert!(del.details.contains("DEL is retried"), "{del}");
    let slow = agent_error(AgentFailure::TimedOut {
        after: Duration::from_secs(30),
    });
    let error = slow.to_cni_error(Command::Add);
    assert_eq!(error.code, ErrorCode::TryAgainLater);
    assert!(error.details.contains("within 30.0s"), "{error}");
}

#[test]
fn status_is_always_plugin_not_available() {
    for error in [
        agent_error(AgentFailure::Unreachable {
            detail: "refused".into(),
        }),
        status(tonic::Code::Unimplemented),
        status(tonic::Code::Internal),
    ] {
        let mapped = error.to_cni_error(Command::Status);
        assert_eq!(mapped.code, ErrorCode::PluginNotAvailable, "{mapped}");
        assert!(
            mapped.details.contains("unix:/run/kino/agent.sock"),
            "{mapped}"
        );
    }
}

#[test]
fn grpc_codes_map_per_command() {
    use tonic::Code;
    for (command, code, expected) in [
        (Command::Add, Code::Unavailable, 11),
        (Command::Add, Code::DeadlineExceeded, 11),
        (Command::Add, Code::Aborted, 11),
        (Command::Add, Code::ResourceExhausted, 11),
        (Command::Add, Code::InvalidArgument, 7),
        (Command::Add, Code::AlreadyExists, 7),
        (Command::Add, Code::OutOfRange, 7),
        (Command::Add, Code::NotFound, 7),
        (Command::Add, Code::FailedPrecondition, 999),
        (Command::Add, Code::Internal, 999),
        (Command::Add, Code::Unimplemented, 999),
        (Command::Add, Code::PermissionDenied, 999),
        (Command::Del, Code::Unavailable, 11),
        (Command::Del, Code::Internal, 999),
        (Command::Check, Code::NotFound, 100),
        (Command::Check, Code::FailedPrecondition, 100),
        (Command::Check, Code::InvalidArgument, 7),
        (Command::Check, Code::Unavailable, 11),
        (Command::Gc, Code::NotFound, 999),
        (Command::Gc, Code::Aborted, 11),
    ] {
        let error = status(code).to_cni_error(command);
        assert_eq!(error.code.code(), expected, "{command:?} {code:?}: {error}");
        assert!(error.details.contains("the agent's words"), "{error}");
        assert!(
            error.details.contains("unix:/run/kino/agent.sock"),
            "{error}"
        );
    }
}
