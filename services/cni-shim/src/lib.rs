//! kino-cni: the CNI plugin a container runtime runs to attach pods to the Kinocilium network.
//!
//! It parses the runtime's environment and stdin ([`spec`]), asks the node's kino agent over
//! its unix socket ([`agent`]), and answers with a CNI result or the spec's error JSON
//! ([`errors`]). CNI 1.1.0, 1.0.0 and 0.4.0: ADD, DEL, CHECK, STATUS, GC and VERSION, each
//! answered in the version of the configuration.

#![warn(missing_docs)]

pub mod agent;
pub mod errors;
pub mod spec;

use std::path::Path;

use agent::{Agent, check_request, create_request, delete_request, gc_request};
use errors::{CniError, ErrorCode};
use spec::args::{AddParams, CniArgs, valid_attachments};
use spec::result::CniResult;
use spec::{
    CniEnv, Command, NetworkConfig, PREFERRED_VERSION, VersionResult, decode_object, peek_version,
};
use tracing::Instrument;

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
pub async fn run(env: impl Fn(&str) -> Option<String>, stdin: std::io::Result<Vec<u8>>) -> Reply {
    // Errors answer in the configuration's version whenever it can be read.
    let reply_version = stdin.as_ref().ok().and_then(|bytes| peek_version(bytes));
    match handle(env, stdin).await {
        Ok(stdout) => Reply {
            stdout,
            success: true,
        },
        Err(error) => Reply {
            stdout: error.to_json(reply_version.as_deref().unwrap_or(PREFERRED_VERSION)),
            success: false,
        },
    }
}

async fn handle(
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
    // The trace of a pod's attachment starts here; the agent call carries it on.
    let span = tracing::info_span!(
        "kino-cni",
        otel.name = format!("CNI {}", env.command.as_str()),
        cni.command = env.command.as_str(),
        cni.version = config.cni_version.as_str(),
        cni.network = config.name.as_str(),
        cni.container_id = env.container_id.as_deref().unwrap_or(""),
        cni.ifname = env.ifname.as_deref().unwrap_or(""),
        cni.netns = env.netns.as_deref().unwrap_or(""),
        // ADD fills these in as it learns them (CNI_ARGS, then the agent's answer).
        k8s.pod.name = tracing::field::Empty,
        k8s.namespace.name = tracing::field::Empty,
        k8s.node.name = tracing::field::Empty,
        endpoint.id = tracing::field::Empty,
        endpoint.ips = tracing::field::Empty,
        endpoint.interface = tracing::field::Empty,
        cni.error_code = tracing::field::Empty,
        cni.error_details = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let outcome = dispatch(&env, &config).instrument(span.clone()).await;
    if let Err(error) = &outcome {
        span.record("cni.error_code", error.code.code());
        span.record("cni.error_details", error.details.as_str());
        // Marks the span as failed, with the message Jaeger shows.
        span.record("otel.status_description", error.msg.as_str());
    }
    outcome
}

async fn dispatch(env: &CniEnv, config: &NetworkConfig) -> Result<String, CniError> {
    let agent = Agent::from_config(config);
    match env.command {
        Command::Add => add(env, config, &agent).await,
        Command::Del => del(env, &agent).await,
        Command::Check => check(env, config, &agent).await,
        Command::Status => status(&agent).await,
        Command::Gc => gc(config, &agent).await,
        Command::Version => unreachable!("VERSION is answered without the agent"),
    }
}

/// ADD: everything is checked before the agent is asked, so a bad request changes nothing.
async fn add(env: &CniEnv, config: &NetworkConfig, agent: &Agent) -> Result<String, CniError> {
    let args = CniArgs::parse(env.args.as_deref())?;
    let span = tracing::Span::current();
    if let Some(pod) = &args.pod_name {
        span.record("k8s.pod.name", pod.as_str());
    }
    if let Some(namespace) = &args.pod_namespace {
        span.record("k8s.namespace.name", namespace.as_str());
    }
    let params = AddParams::new(&args, &config.raw)?;
    let prev = config
        .prev_result()
        .map(|value| CniResult::from_prev_result(value, config.cni_version))
        .transpose()?;
    let netns = env.netns.as_deref().unwrap_or_default();
    if !Path::new(netns).exists() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("the container's network namespace {netns} does not exist"),
            "CNI_NETNS must name the network namespace of a running container (e.g. /run/netns/NAME or /proc/PID/ns/net)",
        ));
    }
    if let Some(what) = spec::not_a_network_namespace(Path::new(netns)) {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {netns} is not a network namespace"),
            format!(
                "{netns} is {what}; CNI_NETNS must name the network namespace of a running container (e.g. /run/netns/NAME or /proc/PID/ns/net)"
            ),
        ));
    }
    let response = agent
        .create_endpoint(create_request(env, config, &params))
        .await
        .map_err(|error| error.to_cni_error(Command::Add))?;
    let invalid_answer = |reason: String| {
        CniError::new(
            ErrorCode::Internal,
            "the kino agent returned an invalid CNI result",
            format!(
                "CreateEndpoint on {}: {reason}; the runtime should DEL this attachment",
                agent::socket_target(&agent.socket)
            ),
        )
    };
    let ours = agent::result_from_response(&response).map_err(invalid_answer)?;
    let ifname = env.ifname.as_deref().unwrap_or_default();
    if ours.sandbox_interface(ifname, None).is_none() {
        return Err(invalid_answer(format!(
            "no interface named {ifname} inside the pod in the result"
        )));
    }
    let ips: Vec<&str> = response.ips.iter().map(|ip| ip.address.as_str()).collect();
    span.record("endpoint.ips", ips.join(",").as_str());
    if let Some(endpoint) = &response.endpoint {
        span.record("endpoint.id", endpoint.id);
        span.record("k8s.node.name", endpoint.node_name.as_str());
        if let Some(networking) = &endpoint.networking {
            span.record("endpoint.interface", networking.interface_name.as_str());
        }
        tracing::info!(
            endpoint.id = endpoint.id,
            lxc = endpoint
                .networking
                .as_ref()
                .map_or("", |n| n.interface_name.as_str()),
            "endpoint created"
        );
    }
    let result = match prev {
        Some(prev) => ours.chained_after(prev),
        None => ours,
    };
    Ok(result.to_json(config.cni_version))
}

/// DEL: succeeds when the agent says the endpoint is gone (or was never there); fails with 11
/// whenever something may be left, so the runtime calls DEL again.
async fn del(env: &CniEnv, agent: &Agent) -> Result<String, CniError> {
    match agent.delete_endpoint(delete_request(env)).await {
        Ok(response) if response.errors.is_empty() => Ok(String::new()),
        Ok(response) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            "the kino agent could not remove everything of the endpoint",
            format!(
                "DeleteEndpoint on {} carried on past these failures: {}; DEL again to retry them",
                agent::socket_target(&agent.socket),
                response.errors.join("; ")
            ),
        )),
        Err(error) if error.code() == Some(tonic::Code::NotFound) => Ok(String::new()),
        Err(error) => Err(error.to_cni_error(Command::Del)),
    }
}

/// CHECK: the pod interface and addresses come from `prevResult`; the agent compares them
/// with the endpoint and the kernel.
async fn check(env: &CniEnv, config: &NetworkConfig, agent: &Agent) -> Result<String, CniError> {
    let value = config.prev_result().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "CHECK needs prevResult",
            "the runtime must pass the result of the attachment's ADD as \"prevResult\" (CNI spec, CHECK)",
        )
    })?;
    let prev = CniResult::from_prev_result(value, config.cni_version)?;
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let netns = env.netns.as_deref().unwrap_or_default();
    let mismatch = |details: String| {
        CniError::new(
            ErrorCode::AttachmentMismatch,
            "prevResult does not describe a kino attachment",
            details,
        )
    };
    let index = prev.sandbox_interface(ifname, Some(netns)).ok_or_else(|| {
        mismatch(format!(
            "prevResult has no interface {ifname} in sandbox {netns}; it lists {}",
            prev.interfaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.sandbox.as_deref().unwrap_or("host")))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if !prev.ips.iter().any(|ip| ip.interface == Some(index)) {
        return Err(mismatch(format!(
            "prevResult gives {ifname} no address; kino-cni's ADD always gives one"
        )));
    }
    agent
        .check_endpoint(check_request(env, &prev, index))
        .await
        .map_err(|error| error.to_cni_error(Command::Check))?;
    Ok(String::new())
}

/// STATUS: ready when the agent says it can serve CreateEndpoint.
async fn status(agent: &Agent) -> Result<String, CniError> {
    use kino_api::agent::HealthState;
    let status = agent
        .status()
        .await
        .map_err(|error| error.to_cni_error(Command::Status))?;
    if status.ready {
        return Ok(String::new());
    }
    let failing: Vec<String> = status
        .components
        .iter()
        .filter(|c| !matches!(c.state(), HealthState::Ok | HealthState::Disabled))
        .map(|c| format!("{} {}: {}", c.name, c.state().as_str_name(), c.message))
        .collect();
    // Existing pods keep their traffic while only the control plane is down; a failing
    // datapath is what limits them.
    let datapath_failing = status
        .components
        .iter()
        .any(|c| c.name == "datapath" && c.state() == HealthState::Failure);
    let code = if datapath_failing {
        ErrorCode::LimitedConnectivity
    } else {
        ErrorCode::PluginNotAvailable
    };
    let socket = agent::socket_target(&agent.socket);
    Err(CniError::new(
        code,
        format!("the kino agent on node {:?} is not ready", status.node_name),
        if failing.is_empty() {
            format!("the agent at {socket} reports not ready without naming a component")
        } else {
            format!("the agent at {socket} reports: {}", failing.join("; "))
        },
    ))
}

/// GC: every endpoint not in `cni.dev/valid-attachments` is deleted by the agent.
async fn gc(config: &NetworkConfig, agent: &Agent) -> Result<String, CniError> {
    let valid = valid_attachments(&config.raw)?;
    let response = agent
        .gc(gc_request(config, &valid))
        .await
        .map_err(|error| error.to_cni_error(Command::Gc))?;
    tracing::info!(
        deleted = response.deleted.len(),
        released = response.released_addresses.len(),
        "garbage collected"
    );
    if response.errors.is_empty() {
        return Ok(String::new());
    }
    // What it could not delete (a peer down, a kernel step refused) it deletes on the next
    // GC: try again, not an internal error.
    Err(CniError::new(
        ErrorCode::TryAgainLater,
        "the kino agent could not collect every stale endpoint",
        format!(
            "Gc on {} deleted {} endpoints and carried on past these failures: {}",
            agent::socket_target(&agent.socket),
            response.deleted.len(),
            response.errors.join("; ")
        ),
    ))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CONFIG: &str = r#"{"cniVersion":"1.0.0","name":"kino","type":"kino-cni"}"#;

    async fn invoke(vars: &[(&str, &str)], stdin: &str) -> (serde_json::Value, bool) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let reply = run(
            |name| vars.get(name).cloned(),
            Ok(stdin.as_bytes().to_vec()),
        )
        .await;
        if reply.stdout.is_empty() {
            return (serde_json::Value::Null, reply.success);
        }
        let json = serde_json::from_str(&reply.stdout)
            .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {:?}", reply.stdout));
        (json, reply.success)
    }

    fn env_for(command: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    /// A config whose agent socket is in a fresh temporary directory, where nothing listens.
    fn absent_agent(version: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            r#"{{"cniVersion":"{version}","name":"kino","type":"kino-cni","agentSocket":"{}"}}"#,
            dir.path().join("agent.sock").display()
        );
        (dir, config)
    }

    #[tokio::test]
    async fn version_answers_in_the_asked_version() {
        let (json, ok) = invoke(&[("CNI_COMMAND", "VERSION")], "").await;
        assert!(ok);
        assert_eq!(
            json,
            serde_json::json!({"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]})
        );
        let (json, ok) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#).await;
        assert!(ok);
        assert_eq!(json["cniVersion"], "0.4.0");
        let (json, ok) = invoke(&[("CNI_COMMAND", "VERSION")], "{not json").await;
        assert!(!ok);
        assert_eq!(json["code"], 6);
    }

    #[tokio::test]
    async fn errors_use_the_config_version() {
        let (_dir, config) = absent_agent("0.4.0");
        let (json, ok) = invoke(&env_for("ADD"), &config).await;
        assert!(!ok);
        assert_eq!(json["cniVersion"], "0.4.0");
        let (json, _) = invoke(&[], CONFIG).await;
        assert_eq!(json["code"], 4);
        assert_eq!(json["cniVersion"], "1.0.0");
        let (json, _) = invoke(&env_for("ADD"), "garbage").await;
        assert_eq!(json["code"], 6);
        assert_eq!(json["cniVersion"], "1.1.0");
    }

    #[tokio::test]
    async fn agent_down_is_try_again_naming_the_socket() {
        for command in ["ADD", "DEL", "CHECK", "GC"] {
            let (dir, config) = absent_agent("1.1.0");
            let config = config.replace(
                '}',
                r#","prevResult":{"interfaces":[{"name":"eth0","sandbox":"/proc/self/ns/net"}],"ips":[{"address":"10.0.0.2/32","interface":0}]},"cni.dev/valid-attachments":[]}"#,
            );
            let (json, ok) = invoke(&env_for(command), &config).await;
            assert!(!ok, "{command}");
            assert_eq!(json["code"], 11, "{command}: {json}");
            let socket = format!("unix:{}", dir.path().join("agent.sock").display());
            assert!(json["msg"].as_str().unwrap().contains(&socket), "{json}");
            assert!(
                json["details"]
                    .as_str()
                    .unwrap()
                    .contains("start kino-agent"),
                "{json}"
            );
        }
        let (_dir, config) = absent_agent("1.1.0");
        let (json, ok) = invoke(&[("CNI_COMMAND", "STATUS")], &config).await;
        assert!(!ok);
        assert_eq!(json["code"], 50, "{json}");
    }

    #[tokio::test]
    async fn add_checks_its_input_before_calling_the_agent() {
        let (_dir, config) = absent_agent("1.0.0");
        let mut env = env_for("ADD");
        env.push(("CNI_ARGS", "K8S_POD_NAME=web;FOO=1"));
        let (json, _) = invoke(&env, &config).await;
        assert_eq!(json["code"], 4, "unknown CNI_ARGS key: {json}");

        let mut env = env_for("ADD");
        env[2].1 = "/run/netns/kino-test-does-not-exist";
        let (json, _) = invoke(&env, &config).await;
        assert_eq!(json["code"], 3, "missing netns: {json}");

        let labelled = config.replace('}', r#","args":{"labels":"app=web"}}"#);
        let (json, _) = invoke(&env_for("ADD"), &labelled).await;
        assert_eq!(json["code"], 7, "bad labels: {json}");

        let chained = config.replace('}', r#","prevResult":{"ips":[{"address":"x"}]}}"#);
        let (json, _) = invoke(&env_for("ADD"), &chained).await;
        assert_eq!(json["code"], 7, "bad prevResult: {json}");
    }

    #[tokio::test]
    async fn check_needs_a_prev_result_naming_the_pod_interface() {
        let (_dir, config) = absent_agent("1.0.0");
        let (json, _) = invoke(&env_for("CHECK"), &config).await;
        assert_eq!(json["code"], 7, "{json}");
        assert!(json["msg"].as_str().unwrap().contains("prevResult"));

        let other_netns = config.replace(
            '}',
            r#","prevResult":{"interfaces":[{"name":"eth0","sandbox":"/run/netns/other"}],"ips":[{"address":"10.0.0.2/32","interface":0}]}}"#,
        );
        let (json, _) = invoke(&env_for("CHECK"), &other_netns).await;
        assert_eq!(json["code"], 100, "{json}");
        assert!(
            json["details"]
                .as_str()
                .unwrap()
                .contains("eth0 (/run/netns/other)"),
            "{json}"
        );

        let no_address = config.replace(
            '}',
            r#","prevResult":{"interfaces":[{"name":"eth0","sandbox":"/proc/self/ns/net"}],"ips":[]}}"#,
        );
        let (json, _) = invoke(&env_for("CHECK"), &no_address).await;
        assert_eq!(json["code"], 100, "{json}");
    }

    #[tokio::test]
    async fn gc_needs_the_valid_attachments() {
        let (_dir, config) = absent_agent("1.1.0");
        let (json, _) = invoke(&env_for("GC"), &config).await;
        assert_eq!(json["code"], 7, "{json}");
    }

    #[tokio::test]
    async fn status_and_gc_need_version_1_1_0() {
        for vars in [
            vec![("CNI_COMMAND", "STATUS")],
            vec![("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        ] {
            let (json, ok) = invoke(&vars, CONFIG).await;
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

    #[tokio::test]
    async fn unsupported_version_is_code_1() {
        let (json, ok) = invoke(
            &env_for("ADD"),
            r#"{"cniVersion":"0.3.1","name":"kino","type":"kino-cni"}"#,
        )
        .await;
        assert!(!ok);
        assert_eq!(json["code"], 1);
        assert_eq!(json["msg"], "incompatible CNI versions");
    }

    #[tokio::test]
    async fn stdin_read_failure_is_code_5() {
        let reply = run(
            |name| (name == "CNI_COMMAND").then(|| "VERSION".to_owned()),
            Err(std::io::Error::other("broken pipe")),
        )
        .await;
        assert!(!reply.success);
        let json: serde_json::Value = serde_json::from_str(&reply.stdout).expect("JSON");
        assert_eq!(json["code"], 5);
    }
}
