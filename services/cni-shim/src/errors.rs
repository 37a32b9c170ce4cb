//! CNI errors: the spec's well-known codes, kino-cni's own, the error JSON printed on
//! stdout, and how the agent's gRPC answers map onto them.
//!
//! | agent outcome | ADD | DEL | CHECK | GC | STATUS |
//! |---|---|---|---|---|---|
//! | not reachable (no socket, refused), no answer in time | 11 | 11 | 11 | 11 | 50 |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `RESOURCE_EXHAUSTED`, `CANCELLED` | 11 | 11 | 11 | 11 | 50 |
//! | `INVALID_ARGUMENT`, `OUT_OF_RANGE`, `ALREADY_EXISTS` | 7 | 7 | 7 | 7 | 50 |
//! | `NOT_FOUND` | 7 | success | 100 | 999 | 50 |
//! | `FAILED_PRECONDITION` | 999 | 999 | 100 | 999 | 50 |
//! | anything else (`INTERNAL`, `UNIMPLEMENTED`, `UNKNOWN`, …) | 999 | 999 | 999 | 999 | 50 |
//!
//! Why: 11 ("try again later") is for conditions that clear up by themselves: the agent not
//! running yet, restarting, busy, a compare-and-swap race, or an exhausted pool (it clears as
//! pods are deleted; runtimes retry ADD anyway). DEL answers 11 rather than success when the
//! agent cannot be asked, because the endpoint (lxc, address, map entries) may still exist and
//! the runtime forgets the attachment after a successful DEL; an answered `NOT_FOUND` means
//! nothing is left, so DEL succeeds. STATUS has its own codes (50, or 51 when the agent reports
//! its datapath failing), whatever the cause. 100 is kino-cni's "the attachment is not as
//! `prevResult` says" for CHECK; 999 is libcni's "internal error".

use serde::Serialize;

use crate::agent::{AgentError, AgentFailure, socket_target};
use crate::spec::{Command, PREFERRED_VERSION};

/// Well-known CNI error codes (spec 1.1.0, "Error"); 1–99 are reserved to the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's cniVersion is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a field of the network configuration is not supported.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a required environment variable (CNI_COMMAND, CNI_CONTAINERID, …) is missing or invalid.
    InvalidEnvironment,
    /// 5: reading stdin failed.
    IoFailure,
    /// 6: stdin could not be decoded as a JSON object.
    DecodingFailure,
    /// 7: the network configuration is invalid.
    InvalidNetworkConfig,
    /// 11: a transient condition; the runtime should try again later.
    TryAgainLater,
    /// 50: the plugin cannot serve ADD requests (STATUS).
    PluginNotAvailable,
    /// 51: the plugin cannot serve ADD requests and existing containers may have limited
    /// connectivity (STATUS).
    LimitedConnectivity,
    /// 100 (kino-cni's own): CHECK found the attachment missing or not as `prevResult` says.
    AttachmentMismatch,
    /// 999 (libcni's "internal error"): the agent failed in a way no other code describes.
    Internal,
}

impl ErrorCode {
    /// The numeric code put in the error JSON.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::AttachmentMismatch => 100,
            ErrorCode::Internal => 999,
        }
    }
}

/// A CNI failure: code, short message and long details, as the spec's error JSON carries them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}: {details}", code.code())]
pub struct CniError {
    /// The well-known code.
    pub code: ErrorCode,
    /// Short message (the spec's `msg`).
    pub msg: String,
    /// What went wrong in full and what to do about it (the spec's `details`).
    pub details: String,
}

impl CniError {
    /// An error with `code`, a short `msg` and the full `details`.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON object for a reply in `cni_version` (the config's, when it was readable).
    pub fn to_json(&self, cni_version: Option<&str>) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorResult<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let result = ErrorResult {
            cni_version: cni_version.unwrap_or(PREFERRED_VERSION),
            code: self.code.code(),
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string(&result).expect("a struct of strings and numbers serialises")
    }
}

/// How to start the agent, or point kino-cni at it; part of every "cannot reach" error.
pub fn start_agent_hint(socket: &str) -> String {
    format!(
        "start kino-agent on this node (`kino-agent --socket {path}`; `kino status --agent-socket {path}` shows whether it is up), or set \"agentSocket\" in the network configuration to the socket it listens on",
        path = socket.strip_prefix("unix:").unwrap_or(socket)
    )
}

impl CniError {
    /// The CNI error for a failed agent call made for `command` (see the module's table).
    /// DEL's `NOT_FOUND` is not an error: callers treat it as success before calling this.
    pub fn from_agent(command: Command, error: &AgentError) -> CniError {
        use tonic::Code;
        let socket = socket_target(&error.socket);
        let transient = match &error.failure {
            AgentFailure::Unreachable { .. } | AgentFailure::TimedOut { .. } => true,
            AgentFailure::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Cancelled
            ),
        };
        let verb = match command {
            Command::Add => "attach the container",
            Command::Del => "detach the container",
            Command::Check => "check the attachment",
            Command::Gc => "garbage-collect stale endpoints",
            Command::Status => "serve ADD requests",
            Command::Version => "report versions",
        };
        if command == Command::Status {
            let details = match error.failure {
                AgentFailure::Status { .. } => error.to_string(),
                _ => format!("{error}; {}", start_agent_hint(&socket)),
            };
            return CniError::new(
                ErrorCode::PluginNotAvailable,
                format!("kino-cni cannot {verb}: the kino agent is not available"),
                details,
            );
        }
        if let AgentFailure::Unreachable { .. } = error.failure {
            let then = if command == Command::Del {
                "; DEL is retried because the endpoint may still exist (its lxc, address and BPF map entries are only removed by the agent)"
            } else {
                ""
            };
            return CniError::new(
                ErrorCode::TryAgainLater,
                format!("kino-cni cannot {verb}: the kino agent is not running at {socket}"),
                format!("{error}; {}{then}", start_agent_hint(&socket)),
            );
        }
        let code = if transient {
            ErrorCode::TryAgainLater
        } else {
            match (command, error.code()) {
                (_, Some(Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists)) => {
                    ErrorCode::InvalidNetworkConfig
                }
                (Command::Add, Some(Code::NotFound)) => ErrorCode::InvalidNetworkConfig,
                (Command::Check, Some(Code::NotFound | Code::FailedPrecondition)) => {
                    ErrorCode::AttachmentMismatch
                }
                _ => ErrorCode::Internal,
            }
        };
        let msg = match code {
            ErrorCode::TryAgainLater => format!("kino-cni cannot {verb} now; try again later"),
            ErrorCode::InvalidNetworkConfig => {
                format!("the kino agent refused to {verb}: invalid request")
            }
            ErrorCode::AttachmentMismatch if error.code() == Some(Code::NotFound) => {
                "the attachment does not exist on the kino agent".to_owned()
            }
            ErrorCode::AttachmentMismatch => "the attachment is not as it was created".to_owned(),
            _ => format!("the kino agent failed to {verb}"),
        };
        CniError::new(code, msg, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn codes_match_the_spec() {
        assert_eq!(ErrorCode::IncompatibleVersion.code(), 1);
        assert_eq!(ErrorCode::UnsupportedField.code(), 2);
        assert_eq!(ErrorCode::UnknownContainer.code(), 3);
        assert_eq!(ErrorCode::InvalidEnvironment.code(), 4);
        assert_eq!(ErrorCode::IoFailure.code(), 5);
        assert_eq!(ErrorCode::DecodingFailure.code(), 6);
        assert_eq!(ErrorCode::InvalidNetworkConfig.code(), 7);
        assert_eq!(ErrorCode::TryAgainLater.code(), 11);
        assert_eq!(ErrorCode::PluginNotAvailable.code(), 50);
        assert_eq!(ErrorCode::LimitedConnectivity.code(), 51);
        assert_eq!(ErrorCode::AttachmentMismatch.code(), 100);
        assert_eq!(ErrorCode::Internal.code(), 999);
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
            let error = CniError::from_agent(command, &down);
            assert_eq!(error.code, ErrorCode::TryAgainLater, "{command:?}");
            assert!(error.msg.contains("unix:/run/kino/agent.sock"), "{error}");
            assert!(error.details.contains("start kino-agent"), "{error}");
            assert!(error.details.contains("agentSocket"), "{error}");
            assert!(error.details.contains("os error 2"), "{error}");
        }
        let del = CniError::from_agent(Command::Del, &down);
        assert!(del.details.contains("DEL is retried"), "{del}");
        let slow = agent_error(AgentFailure::TimedOut {
            after: Duration::from_secs(30),
        });
        let error = CniError::from_agent(Command::Add, &slow);
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
            let mapped = CniError::from_agent(Command::Status, &error);
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
            let error = CniError::from_agent(command, &status(code));
            assert_eq!(error.code.code(), expected, "{command:?} {code:?}: {error}");
            assert!(error.details.contains("the agent's words"), "{error}");
            assert!(
                error.details.contains("unix:/run/kino/agent.sock"),
                "{error}"
            );
        }
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let error = CniError::new(ErrorCode::TryAgainLater, "short", "long");
        let json: serde_json::Value =
            serde_json::from_str(&error.to_json(Some("1.0.0"))).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "short", "details": "long"})
        );
        let json: serde_json::Value =
            serde_json::from_str(&error.to_json(None)).expect("valid JSON");
        assert_eq!(json["cniVersion"], "1.1.0");
    }
}
