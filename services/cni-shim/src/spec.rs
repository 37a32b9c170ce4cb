//! CNI specification types: versions, commands, the runtime's environment, the network
//! configuration on stdin and the VERSION result.
//!
//! kino-cni speaks CNI 1.1.0, 1.0.0 and 0.4.0 and answers in the version the configuration
//! asks for. [`args`] reads the per-attachment parameters, [`result`] the CNI result in each
//! version.

pub mod args;
pub mod result;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::errors::{CniError, ErrorCode};

/// Versions of the CNI spec kino-cni speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The version used when the runtime names none (and for errors before the config is read).
pub const PREFERRED_VERSION: &str = "1.1.0";
/// The agent's local API socket when the configuration has no `agentSocket`.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/kino/agent.sock";
/// How long kino-cni waits for the agent (connect + answer) without `agentTimeoutSeconds`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A version of the CNI spec that kino-cni speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.4.0: ADD, DEL, CHECK, VERSION; results carry `ips[].version`.
    V0_4_0,
    /// 1.0.0: results drop `ips[].version` and `interfaces[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC.
    V1_1_0,
}

impl CniVersion {
    /// The version for `text`, if kino-cni speaks it.
    pub fn parse(text: &str) -> Option<CniVersion> {
        match text {
            "0.4.0" => Some(CniVersion::V0_4_0),
            "1.0.0" => Some(CniVersion::V1_0_0),
            "1.1.0" => Some(CniVersion::V1_1_0),
            _ => None,
        }
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether this version defines `command` (STATUS and GC arrived in 1.1.0).
    pub fn defines(self, command: Command) -> bool {
        match command {
            Command::Status | Command::Gc => self >= CniVersion::V1_1_0,
            Command::Add | Command::Del | Command::Check | Command::Version => true,
        }
    }
}

/// A CNI operation, from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach a container from the network.
    Del,
    /// Verify a container's attachment.
    Check,
    /// Report whether ADD can be served.
    Status,
    /// Clean up attachments not in the runtime's valid list.
    Gc,
    /// Report the spec versions spoken.
    Version,
}

impl Command {
    /// Every command, in the order the spec lists them.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ];

    /// The command named `text` (exactly as the spec spells it).
    pub fn parse(text: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The command as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Environment variables the spec requires for this command, besides `CNI_COMMAND`.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }
}

/// The runtime's `CNI_*` environment, checked for the command it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: path of the container's network namespace.
    pub netns: Option<String>,
    /// `CNI_IFNAME`: interface name inside the container.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE;…` extra arguments.
    pub args: Option<String>,
    /// `CNI_PATH`: where the runtime looks for plugins.
    pub path: Option<String>,
}

impl CniEnv {
    /// Reads and checks the environment through `lookup`, reporting every problem at once
    /// (code 4, naming each variable).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let command = match get("CNI_COMMAND") {
            None => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "CNI_COMMAND is not set",
                    "kino-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND set to ADD, DEL, CHECK, STATUS, GC or VERSION and the network configuration on stdin",
                ));
            }
            Some(text) => Command::parse(&text).ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("unknown CNI_COMMAND {text:?}"),
                    "CNI_COMMAND must be one of ADD, DEL, CHECK, STATUS, GC, VERSION (CNI spec 1.1.0)",
                )
            })?,
        };
        let env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        };
        let mut problems: Vec<String> = command
            .required_env()
            .iter()
            .filter(|name| get(name).is_none())
            .map(|name| format!("{name} is not set"))
            .collect();
        if let Some(id) = &env.container_id
            && let Err(reason) = check_container_id(id)
        {
            problems.push(format!("CNI_CONTAINERID {id:?} {reason}"));
        }
        if let Some(ifname) = &env.ifname
            && let Err(reason) = check_ifname(ifname)
        {
            problems.push(format!("CNI_IFNAME {ifname:?} {reason}"));
        }
        if problems.is_empty() {
            return Ok(env);
        }
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "invalid CNI environment for {}: {}",
                command.as_str(),
                problems.join("; ")
            ),
            format!(
                "CNI {} needs {} set by the container runtime (CNI spec 1.1.0, \"Parameters\")",
                command.as_str(),
                std::iter::once("CNI_COMMAND")
                    .chain(command.required_env().iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// Spec: not empty, an alphanumeric first, then alphanumerics, `_`, `.` or `-`.
fn check_container_id(id: &str) -> Result<(), &'static str> {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return Err("must start with a letter or digit"),
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err("may contain only letters, digits, '_', '.' and '-'")
    }
}

/// Spec: Linux interface name rules: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn check_ifname(ifname: &str) -> Result<(), &'static str> {
    if ifname.len() > 15 {
        return Err("is longer than 15 bytes");
    }
    if ifname == "." || ifname == ".." {
        return Err("must not be \".\" or \"..\"");
    }
    if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// The network configuration a runtime passes on stdin (one plugin's entry of a conflist).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `cniVersion`, one kino-cni speaks.
    pub cni_version: CniVersion,
    /// `name`: the network's name.
    pub name: String,
    /// `type`: the plugin's binary name (normally `kino-cni`).
    pub plugin_type: String,
    /// `agentSocket`: the agent's local API socket (default [`DEFAULT_AGENT_SOCKET`]).
    pub agent_socket: PathBuf,
    /// `agentTimeoutSeconds`: how long to wait for the agent (default
    /// [`DEFAULT_AGENT_TIMEOUT`]).
    pub agent_timeout: Duration,
    /// `mtu`: MTU of the pod's interface; `None` for the agent's default.
    pub mtu: Option<u32>,
    /// `ipamPool`: the IPAM pool to allocate from; `None` for the agent's pool.
    pub ipam_pool: Option<String>,
    /// The whole object, for the keys later operations read (`args`, `runtimeConfig`,
    /// `prevResult`, …).
    pub raw: Map<String, Value>,
}

impl NetworkConfig {
    /// Decodes and checks stdin: 6 when it is no JSON object, 7 when a required key is
    /// missing or malformed, 1 when its `cniVersion` is not one kino-cni speaks.
    pub fn parse(stdin: &[u8]) -> Result<NetworkConfig, CniError> {
        let raw = decode_object(stdin)?;
        let version_text = required_string(&raw, "cniVersion")?;
        let name = required_string(&raw, "name")?;
        check_network_name(&name)?;
        let plugin_type = required_string(&raw, "type")?;
        let agent_socket = match raw.get("agentSocket") {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(Value::String(text)) => parse_agent_socket(text)?,
            Some(other) => {
                return Err(invalid_config(format!(
                    "\"agentSocket\" must be a string (an absolute socket path), not {other}"
                )));
            }
        };
        let agent_timeout = match raw.get("agentTimeoutSeconds") {
            None => DEFAULT_AGENT_TIMEOUT,
            Some(value) => value
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    invalid_config(format!(
                        "\"agentTimeoutSeconds\" must be a number of seconds from 0 to 3600, got {value}"
                    ))
                })?,
        };
        let mtu = match raw.get("mtu") {
            None => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .filter(|mtu| (68..=65535).contains(mtu))
                    .and_then(|mtu| u32::try_from(mtu).ok())
                    .ok_or_else(|| {
                        invalid_config(format!(
                            "\"mtu\" must be a whole number from 68 to 65535, got {value}"
                        ))
                    })?,
            ),
        };
        let ipam_pool = match raw.get("ipamPool") {
            None => None,
            Some(Value::String(pool)) if !pool.is_empty() => Some(pool.clone()),
            Some(other) => {
                return Err(invalid_config(format!(
                    "\"ipamPool\" must be the name of an IPAM pool, got {other}"
                )));
            }
        };
        let cni_version = CniVersion::parse(&version_text).ok_or_else(|| {
            CniError::new(
                ErrorCode::IncompatibleVersion,
                "incompatible CNI versions",
                format!(
                    "config is {version_text:?}, kino-cni supports {}; set \"cniVersion\" in the network configuration to one of them",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })?;
        Ok(NetworkConfig {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            agent_timeout,
            mtu,
            ipam_pool,
            raw,
        })
    }

    /// `prevResult`, when the runtime passed one (ADD later in a chain, CHECK, DEL).
    pub fn prev_result(&self) -> Option<&Value> {
        self.raw.get("prevResult").filter(|value| !value.is_null())
    }
}

/// The `cniVersion` string of stdin, if it is a JSON object that has one: errors are
/// reported in that version whenever it can be read.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(stdin).ok()? {
        Value::Object(map) => match map.get("cniVersion") {
            Some(Value::String(version)) if !version.is_empty() => Some(version.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Decodes stdin as a JSON object (code 6 otherwise).
pub fn decode_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    let decode_error = |reason: String| {
        CniError::new(
            ErrorCode::DecodingFailure,
            "cannot decode the network configuration on stdin",
            reason,
        )
    };
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(decode_error(format!(
            "stdin must be a JSON object, got {}",
            json_kind(&other)
        ))),
        Err(e) if stdin.iter().all(u8::is_ascii_whitespace) => Err(decode_error(format!(
            "stdin is empty ({e}); the runtime must pass the network configuration on stdin"
        ))),
        Err(e) => Err(decode_error(format!("stdin is not valid JSON: {e}"))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_config(details: String) -> CniError {
    CniError::new(
        ErrorCode::InvalidNetworkConfig,
        "invalid network configuration",
        details,
    )
}

fn required_string(config: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match config.get(key) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::String(_)) => Err(invalid_config(format!("\"{key}\" is empty"))),
        Some(other) => Err(invalid_config(format!(
            "\"{key}\" must be a string, got {}",
            json_kind(other)
        ))),
        None => Err(invalid_config(format!(
            "\"{key}\" is missing; every network configuration needs \"cniVersion\", \"name\" and \"type\""
        ))),
    }
}

/// Spec: an alphanumeric first, then alphanumerics, `_`, `.` or `-`.
fn check_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Ok(());
    }
    Err(invalid_config(format!(
        "\"name\" {name:?} is not a valid network name: it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
    )))
}

/// `agentSocket`: `/path` or `unix:/path`.
fn parse_agent_socket(text: &str) -> Result<PathBuf, CniError> {
    let path = text
        .strip_prefix("unix:")
        .map(|rest| rest.strip_prefix("//").unwrap_or(rest))
        .unwrap_or(text);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(invalid_config(format!(
            "\"agentSocket\" {text:?} must be an absolute path to the agent's unix socket, e.g. {DEFAULT_AGENT_SOCKET}"
        )))
    }
}

/// The VERSION result: the version in use and every version spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    /// The `cniVersion` given on input (or [`PREFERRED_VERSION`] without one).
    pub cni_version: String,
    /// [`SUPPORTED_VERSIONS`].
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// The answer to VERSION for a request in `cni_version`.
    pub fn new(cni_version: Option<String>) -> VersionResult {
        VersionResult {
            cni_version: cni_version.unwrap_or_else(|| PREFERRED_VERSION.to_owned()),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// What `path` is when it exists but is not a network namespace (a plain file, a directory,
/// another kind of namespace); `None` for a network namespace (or a path that cannot be
/// opened, which the agent then reports).
pub fn not_a_network_namespace(path: &std::path::Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    // NS_GET_NSTYPE (linux/nsfs.h: _IO(0xb7, 0x3)): the type of an nsfs file, ENOTTY for any
    // other file.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the open descriptor's inode.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind == libc::CLONE_NEWNET {
        return None;
    }
    if kind >= 0 {
        return Some(format!("a namespace of another type ({kind:#x})"));
    }
    Some(match file.metadata() {
        Ok(meta) if meta.is_dir() => "a directory".to_owned(),
        Ok(meta) if meta.is_file() => "a regular file".to_owned(),
        _ => "not a namespace file".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CniEnv::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn versions_round_trip_and_order() {
        for text in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(text).expect(text).as_str(), text);
        }
        assert_eq!(CniVersion::parse("0.3.1"), None);
        assert_eq!(CniVersion::parse("1.1"), None);
        assert!(CniVersion::V1_1_0.defines(Command::Status));
        assert!(!CniVersion::V1_0_0.defines(Command::Gc));
        assert!(CniVersion::V0_4_0.defines(Command::Check));
    }

    #[test]
    fn commands_parse_exactly() {
        for command in Command::ALL {
            assert_eq!(Command::parse(command.as_str()), Some(command));
        }
        assert_eq!(Command::parse("add"), None);
        assert_eq!(Command::parse(""), None);
    }

    #[test]
    fn add_env_is_complete() {
        let parsed = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/pod"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=web"),
        ])
        .expect("valid ADD env");
        assert_eq!(parsed.command, Command::Add);
        assert_eq!(parsed.ifname.as_deref(), Some("eth0"));
        assert_eq!(parsed.path, None);
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        for vars in [
            vec![],
            vec![("CNI_COMMAND", "")],
            vec![("CNI_COMMAND", "FOO")],
        ] {
            let error = env(&vars).expect_err("no usable command");
            assert_eq!(error.code, ErrorCode::InvalidEnvironment);
            assert!(error.msg.contains("CNI_COMMAND"), "{error}");
        }
    }

    #[test]
    fn every_env_problem_is_named() {
        let error = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0:1")]).expect_err("bad");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        for needle in [
            "CNI_CONTAINERID is not set",
            "CNI_NETNS is not set",
            "\"eth0:1\"",
        ] {
            assert!(error.msg.contains(needle), "{needle}: {error}");
        }
        let error = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ])
        .expect_err("bad");
        assert!(error.msg.contains("must start with a letter"), "{error}");
        assert!(error.msg.contains("longer than 15"), "{error}");
        // DEL does not need CNI_NETNS; GC needs CNI_PATH; STATUS needs nothing else.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("DEL without netns");
        assert!(env(&[("CNI_COMMAND", "GC")]).is_err());
        env(&[("CNI_COMMAND", "STATUS")]).expect("STATUS");
    }

    #[test]
    fn config_parses_with_defaults() {
        let config = NetworkConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"kino","type":"kino-cni","args":{"labels":{"app":"web"}}}"#,
        )
        .expect("valid");
        assert_eq!(config.cni_version, CniVersion::V1_0_0);
        assert_eq!(config.name, "kino");
        assert_eq!(config.plugin_type, "kino-cni");
        assert_eq!(config.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert!(config.raw.contains_key("args"));
        let config = NetworkConfig::parse(
            br#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni","agentSocket":"unix:/tmp/a.sock"}"#,
        )
        .expect("valid");
        assert_eq!(config.agent_socket, PathBuf::from("/tmp/a.sock"));
    }

    #[test]
    fn optional_keys_parse() {
        let config = NetworkConfig::parse(
            br#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni","agentTimeoutSeconds":2.5,"mtu":1450,"ipamPool":"blue","prevResult":{"ips":[]}}"#,
        )
        .expect("valid");
        assert_eq!(config.agent_timeout, Duration::from_millis(2500));
        assert_eq!(config.mtu, Some(1450));
        assert_eq!(config.ipam_pool.as_deref(), Some("blue"));
        assert!(config.prev_result().is_some());
        let config =
            NetworkConfig::parse(br#"{"cniVersion":"1.1.0","name":"kino","type":"kino-cni"}"#)
                .expect("valid");
        assert_eq!(config.agent_timeout, DEFAULT_AGENT_TIMEOUT);
        assert_eq!((config.mtu, config.ipam_pool.as_deref()), (None, None));
        assert!(config.prev_result().is_none());
    }

    #[test]
    fn config_errors_have_the_right_codes() {
        for (stdin, code, needle) in [
            (
                &b"not json"[..],
                ErrorCode::DecodingFailure,
                "not valid JSON",
            ),
            (b"", ErrorCode::DecodingFailure, "empty"),
            (b"[1]", ErrorCode::DecodingFailure, "an array"),
            (
                br#"{"name":"n","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
                "\"cniVersion\" is missing",
            ),
            (
                br#"{"cniVersion":"1.0.0","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
                "\"name\" is missing",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                ErrorCode::InvalidNetworkConfig,
                "\"type\" is missing",
            ),
            (
                br#"{"cniVersion":1,"name":"n","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
                "a number",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"_n","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
                "network name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","agentSocket":"rel.sock"}"#,
                ErrorCode::InvalidNetworkConfig,
                "absolute",
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
                ErrorCode::IncompatibleVersion,
                "\"0.3.1\"",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","agentTimeoutSeconds":0}"#,
                ErrorCode::InvalidNetworkConfig,
                "agentTimeoutSeconds",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":9000000}"#,
                ErrorCode::InvalidNetworkConfig,
                "\"mtu\"",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipamPool":7}"#,
                ErrorCode::InvalidNetworkConfig,
                "ipamPool",
            ),
        ] {
            let error = NetworkConfig::parse(stdin).expect_err(needle);
            assert_eq!(error.code, code, "{needle}: {error}");
            assert!(error.details.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn version_is_peeked_when_readable() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(br#"{"cniVersion":4}"#), None);
        assert_eq!(peek_version(b"nope"), None);
    }

    #[test]
    fn version_result_lists_supported_versions() {
        let json = serde_json::to_value(VersionResult::new(None)).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]})
        );
        let json = serde_json::to_value(VersionResult::new(Some("1.0.0".into()))).expect("ok");
        assert_eq!(json["cniVersion"], "1.0.0");
    }
}
