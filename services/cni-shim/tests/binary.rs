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

#[test]
fn agent_commands_fail_honestly_until_the_datapath_exists() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    let config = r#"{"cniVersion":"1.0.0","name":"kino","type":"kino-cni","agentSocket":"/tmp/kino-test/agent.sock"}"#;
    let (json, ok) = kino_cni(&env, config);
    assert_error(&json, ok, 11, "1.0.0");
    assert!(json["msg"].as_str().unwrap().contains("issue #4"), "{json}");
    assert!(
        json["details"]
            .as_str()
            .unwrap()
            .contains("unix:/tmp/kino-test/agent.sock"),
        "{json}"
    );
}
