//! kino-cni: the CNI plugin a container runtime runs to attach pods to the Kinocilium network.
//!
//! It parses the runtime's environment and stdin ([`spec`]), and answers with a CNI result or
//! the spec's error JSON ([`errors`]). VERSION works now; ADD, DEL, CHECK, STATUS and GC need
//! the agent's endpoints and datapath (issue #4), so after checking their input they fail
//! honestly with "try again later" (STATUS: "plugin not available"), naming the agent socket
//! they would call.

#![warn(missing_docs)]

pub mod errors;
pub mod spec;

use errors::{CniError, ErrorCode};
use spec::{CniEnv, Command, NetworkConfig, VersionResult, decode_object, peek_version};

/// The issue that brings the agent's endpoints and datapath, which every command but VERSION needs.
pub const DATAPATH_ISSUE: u32 = 4;

/// What to print on stdout and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The result or error JSON (may be empty on success).
    pub stdout: String,
    /// Exit with status 0 when true, non-zero otherwise.
    pub success: bool,
}

/// Runs one CNI invocation: `env` looks up environment variables, `stdin` is what the runtime
/// wrote to stdin (or the error reading it).
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: std::io::Result<Vec<u8>>) -> Reply {
    // Errors answer in the configuration's version whenever it can be read.
    let reply_version = stdin.as_ref().ok().and_then(|bytes| peek_version(bytes));
    match handle(env, stdin) {
        Ok(stdout) => Reply {
            stdout,
            success: true,
        },
        Err(error) => Reply {
            stdout: error.to_json(reply_version.as_deref()),
            success: false,
        },
    }
}

fn handle(
    env: impl Fn(&str) -> Option<String>,
    stdin: std::io::Result<Vec<u8>>,
) -> Result<String, CniError> {
    let env = CniEnv::from_lookup(env)?;
    let stdin = stdin.map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            "cannot read the network configuration from stdin",
            e.to_string(),
        )
    })?;
    if env.command == Command::Version {
        return version(&stdin);
    }
    let config = NetworkConfig::parse(&stdin)?;
    if !config.cni_version.defines(env.command) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "config version {} does not allow {}",
                config.cni_version.as_str(),
                env.command.as_str()
            ),
            format!(
                "{} exists since CNI 1.1.0; set \"cniVersion\": \"1.1.0\" in the network configuration",
                env.command.as_str()
            ),
        ));
    }
    Err(agent_unavailable(&env, &config))
}

/// VERSION: answer in the version the runtime asked for (spec 1.1.0, "VERSION").
fn version(stdin: &[u8]) -> Result<String, CniError> {
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match decode_object(stdin)?.get("cniVersion") {
            None => None,
            Some(serde_json::Value::String(version)) if !version.is_empty() => {
                Some(version.clone())
            }
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    "invalid VERSION request",
                    format!("\"cniVersion\" must be a non-empty string, got {other}"),
                ));
            }
        }
    };
    Ok(serde_json::to_string(&VersionResult::new(asked)).expect("strings serialise"))
}

/// The honest answer while the agent has no endpoints or datapath.
fn agent_unavailable(env: &CniEnv, config: &NetworkConfig) -> CniError {
    let attachment = format!(
        "container {} ({}) on network {:?}",
        env.container_id.as_deref().unwrap_or("?"),
        env.ifname.as_deref().unwrap_or("?"),
        config.name
    );
    let (code, task) = match env.command {
        Command::Add => (ErrorCode::TryAgainLater, format!("attach {attachment}")),
        Command::Del => (ErrorCode::TryAgainLater, format!("detach {attachment}")),
        Command::Check => (ErrorCode::TryAgainLater, format!("check {attachment}")),
        Command::Gc => (
            ErrorCode::TryAgainLater,
            format!(
                "garbage-collect the attachments of network {:?}",
                config.name
            ),
        ),
        // STATUS has its own code for "cannot serve ADD" (spec 1.1.0, "STATUS").
        Command::Status => (
            ErrorCode::PluginNotAvailable,
            format!("serve ADD requests on network {:?}", config.name),
        ),
        Command::Version => unreachable!("VERSION is answered without the agent"),
    };
    CniError::new(
        code,
        format!("the kino agent datapath is not implemented yet (issue #{DATAPATH_ISSUE})"),
        format!(
            "kino-cni cannot {task}: it would call the kino agent at unix:{} (network config key \"agentSocket\"), but the agent's endpoints and eBPF datapath arrive with issue #{DATAPATH_ISSUE}",
            config.agent_socket.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CONFIG: &str = r#"{"cniVersion":"1.0.0","name":"kino","type":"kino-cni"}"#;

    fn invoke(vars: &[(&str, &str)], stdin: &str) -> (serde_json::Value, bool) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let reply = run(
            |name| vars.get(name).cloned(),
            Ok(stdin.as_bytes().to_vec()),
        );
        let json = serde_json::from_str(&reply.stdout)
            .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {:?}", reply.stdout));
        (json, reply.success)
    }

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
        ]
    }

    #[test]
    fn version_answers_in_the_asked_version() {
        let (json, ok) = invoke(&[("CNI_COMMAND", "VERSION")], "");
        assert!(ok);
        assert_eq!(
            json,
            serde_json::json!({"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]})
        );
        let (json, ok) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert!(ok);
        assert_eq!(json["cniVersion"], "0.4.0");
        let (json, ok) = invoke(&[("CNI_COMMAND", "VERSION")], "{not json");
        assert!(!ok);
        assert_eq!(json["code"], 6);
    }

    #[test]
    fn errors_use_the_config_version() {
        let (json, ok) = invoke(&add_env(), CONFIG);
        assert!(!ok);
        assert_eq!(json["cniVersion"], "1.0.0");
        let (json, _) = invoke(&[], CONFIG);
        assert_eq!(json["code"], 4);
        assert_eq!(json["cniVersion"], "1.0.0");
        let (json, _) = invoke(&add_env(), "garbage");
        assert_eq!(json["code"], 6);
        assert_eq!(json["cniVersion"], "1.1.0");
    }

    #[test]
    fn agent_commands_say_try_again_naming_issue_and_socket() {
        for (command, code) in [("ADD", 11), ("DEL", 11), ("CHECK", 11)] {
            let mut vars = add_env();
            vars[0].1 = command;
            vars.push(("CNI_PATH", "/opt/cni/bin"));
            let (json, ok) = invoke(&vars, CONFIG);
            assert!(!ok, "{command}");
            assert_eq!(json["code"], code, "{command}: {json}");
            let msg = json["msg"].as_str().expect("msg");
            assert!(msg.contains("issue #4"), "{command}: {msg}");
            let details = json["details"].as_str().expect("details");
            assert!(details.contains("unix:/run/kino/agent.sock"), "{details}");
        }
        let config =
            r#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni","agentSocket":"/tmp/k.sock"}"#;
        let (json, _) = invoke(&[("CNI_COMMAND", "STATUS")], config);
        assert_eq!(json["code"], 50, "{json}");
        assert!(
            json["details"]
                .as_str()
                .expect("details")
                .contains("unix:/tmp/k.sock")
        );
        let (json, _) = invoke(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            config,
        );
        assert_eq!(json["code"], 11, "{json}");
    }

    #[test]
    fn status_and_gc_need_version_1_1_0() {
        for vars in [
            vec![("CNI_COMMAND", "STATUS")],
            vec![("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        ] {
            let (json, ok) = invoke(&vars, CONFIG);
            assert!(!ok);
            assert_eq!(json["code"], 1, "{json}");
            assert!(
                json["msg"]
                    .as_str()
                    .expect("msg")
                    .contains("does not allow")
            );
        }
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let (json, ok) = invoke(
            &add_env(),
            r#"{"cniVersion":"0.3.1","name":"kino","type":"kino-cni"}"#,
        );
        assert!(!ok);
        assert_eq!(json["code"], 1);
        assert_eq!(json["msg"], "incompatible CNI versions");
    }

    #[test]
    fn stdin_read_failure_is_code_5() {
        let reply = run(
            |name| (name == "CNI_COMMAND").then(|| "VERSION".to_owned()),
            Err(std::io::Error::other("broken pipe")),
        );
        assert!(!reply.success);
        let json: serde_json::Value = serde_json::from_str(&reply.stdout).expect("JSON");
        assert_eq!(json["code"], 5);
    }
}
