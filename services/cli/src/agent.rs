//! The agent's local API (`kino.agent.v1` on its unix socket) as the CLI calls it: one call
//! bounded by `--timeout`, and errors that name the socket and the fix.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_service_kit::{ClientTlsArgs, TracedChannel};

/// A failed call to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AgentCallError {
    /// The agent's target, `unix:/path`.
    pub target: String,
    /// The RPC, e.g. `ListEndpoints`.
    pub rpc: &'static str,
    /// What went wrong.
    pub failure: AgentFailure,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentFailure {
    /// No connection (socket missing, nothing listening, permission denied).
    Unreachable(String),
    /// No answer within the timeout.
    TimedOut(Duration),
    /// The agent answered with an error.
    Status(tonic::Code, String),
}

impl fmt::Display for AgentCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        let rpc = self.rpc;
        match &self.failure {
            AgentFailure::Unreachable(detail) => write!(
                f,
                "cannot reach the kino agent at {target}: {detail}; start kino-agent or pass --agent-socket (env KINO_AGENT_SOCKET) naming the socket it listens on"
            ),
            AgentFailure::TimedOut(after) => write!(
                f,
                "the kino agent at {target} did not answer {rpc} within {:.1}s; raise --timeout if it is just busy",
                after.as_secs_f64()
            ),
            AgentFailure::Status(tonic::Code::Unimplemented, message) => write!(
                f,
                "the kino agent at {target} does not implement {rpc} yet: {message}"
            ),
            AgentFailure::Status(code, message) => {
                write!(
                    f,
                    "the kino agent at {target} answered {rpc} with {code:?}: {message}"
                )
            }
        }
    }
}

impl AgentCallError {
    /// The gRPC code the agent answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match &self.failure {
            AgentFailure::Status(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// `/run/kino/agent.sock` or `unix:/run/kino/agent.sock` as a `unix:` target.
pub fn agent_target(socket: &str) -> String {
    if socket.starts_with('/') {
        format!("unix:{socket}")
    } else {
        socket.to_owned()
    }
}

/// Connects to the agent at `socket` and makes one call, within `timeout`.
pub async fn call<Resp, Fut>(
    socket: &str,
    timeout: Duration,
    rpc: &'static str,
    call: impl FnOnce(AgentServiceClient<TracedChannel>) -> Fut,
) -> Result<Resp, AgentCallError>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let target = agent_target(socket);
    let attempt = async {
        let channel = kino_service_kit::connect(&target, &ClientTlsArgs::default())
            .await
            .map_err(|error| {
                AgentFailure::Unreachable(match error {
                    kino_service_kit::ServiceError::Connect { detail, .. } => detail,
                    other => other.to_string(),
                })
            })?;
        call(AgentServiceClient::new(channel))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| AgentFailure::Status(status.code(), status.message().to_owned()))
    };
    let failure = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(response)) => return Ok(response),
        Ok(Err(failure)) => failure,
        Err(_) => AgentFailure::TimedOut(timeout),
    };
    Err(AgentCallError {
        target,
        rpc,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(failure: AgentFailure) -> String {
        AgentCallError {
            target: "unix:/run/kino/agent.sock".into(),
            rpc: "ListEndpoints",
            failure,
        }
        .to_string()
    }

    #[test]
    fn errors_name_the_socket_and_the_fix() {
        let down = error(AgentFailure::Unreachable(
            "No such file or directory".into(),
        ));
        assert!(down.contains("unix:/run/kino/agent.sock"), "{down}");
        assert!(
            down.contains("start kino-agent or pass --agent-socket"),
            "{down}"
        );
        let unimplemented = error(AgentFailure::Status(
            tonic::Code::Unimplemented,
            "issue #4".into(),
        ));
        assert!(unimplemented.contains("does not implement ListEndpoints yet: issue #4"));
        let slow = error(AgentFailure::TimedOut(Duration::from_secs(2)));
        assert!(slow.contains("within 2.0s"), "{slow}");
        assert_eq!(agent_target("/x.sock"), "unix:/x.sock");
        assert_eq!(agent_target("unix:/x.sock"), "unix:/x.sock");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let error = call(
            socket.to_str().expect("utf-8"),
            Duration::from_secs(2),
            "Status",
            |mut client| async move { client.status(kino_api::agent::StatusRequest {}).await },
        )
        .await
        .expect_err("nothing listens");
        assert!(
            matches!(error.failure, AgentFailure::Unreachable(_)),
            "{error}"
        );
        assert!(error.to_string().contains(&socket.display().to_string()));
    }
}
