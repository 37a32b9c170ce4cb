//! Runs the built `kino-cni` exactly as a container runtime does: `CNI_*` environment,
//! the network configuration on stdin, the answer on stdout and in the exit status.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const CONFIG: &str = r#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni"}"#;

/// Runs kino-cni with only `env` set and `stdin` piped in; returns stdout as JSON and success.
fn kino_cni(env: &[(&str, &str)], stdin: &str) -> (Value, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kino-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kino-cni starts");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    let output = child.wait_with_output().expect("kino-cni exits");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}): {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (json, output.status.success())
}

fn assert_error(json: &Value, ok: bool, code: u64, cni_version: &str) {
    assert!(!ok, "exit status must be non-zero: {json}");
    assert_eq!(json["code"], code, "{json}");
    assert_eq!(json["cniVersion"], cni_version, "{json}");
    assert!(
        json["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert!(json["details"].is_string(), "{json}");
}

#[test]
fn version_lists_the_supported_versions() {
    let (json, ok) = kino_cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(ok, "{json}");
    assert_eq!(
        json,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
    let (json, ok) = kino_cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok, "{json}");
    assert_eq!(json["cniVersion"], "1.0.0");
    assert_eq!(
        json["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn bad_environment_is_code_4() {
    let (json, ok) = kino_cni(&[], CONFIG);
    assert_error(&json, ok, 4, "1.1.0");
    assert!(
        json["msg"].as_str().unwrap().contains("CNI_COMMAND"),
        "{json}"
    );

    let (json, ok) = kino_cni(&[("CNI_COMMAND", "ATTACH")], CONFIG);
    assert_error(&json, ok, 4, "1.1.0");

    let (json, ok) = kino_cni(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")], CONFIG);
    assert_error(&json, ok, 4, "1.1.0");
    let msg = json["msg"].as_str().unwrap();
    assert!(
        msg.contains("CNI_CONTAINERID") && msg.contains("CNI_NETNS"),
        "{msg}"
    );
}

#[test]
fn bad_json_is_code_6() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (json, ok) = kino_cni(&env, "{\"cniVersion\": ");
    assert_error(&json, ok, 6, "1.1.0");
    let (json, ok) = kino_cni(&env, "");
    assert_error(&json, ok, 6, "1.1.0");
}

#[test]
fn bad_config_is_code_7_and_bad_version_code_1() {
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (json, ok) = kino_cni(&env, r#"{"cniVersion":"1.0.0","type":"kino-cni"}"#);
    assert_error(&json, ok, 7, "1.0.0");
    assert!(
        json["details"].as_str().unwrap().contains("\"name\""),
        "{json}"
    );

    let (json, ok) = kino_cni(
        &env,
        r#"{"cniVersion":"9.9.9","name":"kino","type":"kino-cni"}"#,
    );
    assert_error(&json, ok, 1, "9.9.9");
    assert_eq!(json["msg"], "incompatible CNI versions");
}

/// A network configuration naming an agent socket in a fresh directory where nothing listens.
fn config_without_agent(version: &str, extra: &str) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let config = format!(
        r#"{{"cniVersion":"{version}","name":"kino","type":"kino-cni","agentSocket":"{}"{extra}}}"#,
        socket.display()
    );
    (dir, config, format!("unix:{}", socket.display()))
}

const ADD_ENV: [(&str, &str); 6] = [
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/proc/self/ns/net"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
    ("CNI_PATH", "/opt/cni/bin"),
];

#[test]
fn add_with_the_agent_down_is_code_11_naming_the_socket_and_the_fix() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let (_dir, config, socket) =
            config_without_agent(version, r#","args":{"labels":{"app":"web"}}"#);
        let (json, ok) = kino_cni(&ADD_ENV, &config);
        assert_error(&json, ok, 11, version);
        assert!(json["msg"].as_str().unwrap().contains(&socket), "{json}");
        let details = json["details"].as_str().unwrap();
        assert!(details.contains("start kino-agent"), "{json}");
        assert!(details.contains("\"agentSocket\""), "{json}");
    }
}

#[test]
fn del_with_the_agent_down_is_code_11_so_the_runtime_retries() {
    // As podman sends it: no CNI_NETNS requirement, the cached prevResult attached.
    let (_dir, config, socket) = config_without_agent(
        "1.0.0",
        r#","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"lxc0","mac":"5e:00:00:00:00:01"},{"name":"eth0","mac":"0a:58:0a:00:01:17","sandbox":"/run/netns/gone"}],"ips":[{"address":"10.0.1.23/32","gateway":"10.0.1.1","interface":1}]}"#,
    );
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
    ];
    let (json, ok) = kino_cni(&env, &config);
    assert_error(&json, ok, 11, "1.0.0");
    assert!(json["msg"].as_str().unwrap().contains(&socket), "{json}");
    assert!(
        json["details"].as_str().unwrap().contains("DEL is retried"),
        "{json}"
    );
}

#[test]
fn check_gc_and_status_with_the_agent_down() {
    let prev = r#","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/proc/self/ns/net"}],"ips":[{"address":"10.0.1.23/32","interface":0}]},"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]"#;
    let (_dir, config, socket) = config_without_agent("1.1.0", prev);
    let mut check = ADD_ENV;
    check[0].1 = "CHECK";
    let (json, ok) = kino_cni(&check, &config);
    assert_error(&json, ok, 11, "1.1.0");
    assert!(json["msg"].as_str().unwrap().contains(&socket), "{json}");

    let (json, ok) = kino_cni(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &config,
    );
    assert_error(&json, ok, 11, "1.1.0");

    let (json, ok) = kino_cni(&[("CNI_COMMAND", "STATUS")], &config);
    assert_error(&json, ok, 50, "1.1.0");
    assert!(
        json["details"].as_str().unwrap().contains(&socket),
        "{json}"
    );
}

#[test]
fn bad_requests_fail_before_the_agent_is_asked() {
    let (_dir, config, _) = config_without_agent("1.1.0", "");
    let mut env = ADD_ENV;
    env[4].1 = "K8S_POD_NAME=web;SURPRISE=1";
    let (json, ok) = kino_cni(&env, &config);
    assert_error(&json, ok, 4, "1.1.0");
    assert!(json["msg"].as_str().unwrap().contains("SURPRISE"), "{json}");

    let mut env = ADD_ENV;
    env[2].1 = "/run/netns/kino-binary-test-missing";
    let (json, ok) = kino_cni(&env, &config);
    assert_error(&json, ok, 3, "1.1.0");

    // A path that exists but is no network namespace: a plain file, a directory, the
    // mount namespace of this process. Named, with its variable.
    let (dir, ..) = config_without_agent("1.1.0", "");
    let file = dir.path().join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    let file = file.display().to_string();
    let directory = dir.path().display().to_string();
    for path in [file.as_str(), directory.as_str(), "/proc/self/ns/mnt"] {
        let mut env: Vec<(&str, &str)> = ADD_ENV.to_vec();
        env[2].1 = path;
        let (json, ok) = kino_cni(&env, &config);
        assert_error(&json, ok, 4, "1.1.0");
        let msg = json["msg"].as_str().unwrap();
        assert!(msg.contains("CNI_NETNS") && msg.contains(path), "{json}");
    }

    let (json, ok) = kino_cni(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &config,
    );
    assert_error(&json, ok, 7, "1.1.0");
    assert!(
        json["details"]
            .as_str()
            .unwrap()
            .contains("cni.dev/valid-attachments"),
        "{json}"
    );
}

#[test]
fn stdout_holds_only_the_error_json_even_with_debug_logs() {
    let (_dir, config, _) = config_without_agent("1.0.0", "");
    let mut env: Vec<(&str, &str)> = ADD_ENV.to_vec();
    env.push(("KINO_LOG", "debug"));
    // kino_cni() parses stdout as exactly one JSON object.
    let (json, ok) = kino_cni(&env, &config);
    assert_error(&json, ok, 11, "1.0.0");
}
