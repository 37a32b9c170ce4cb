//! kino-policy-compiler (`kino.policy.v1`) as the CLI calls it: one call bounded by
//! `--timeout`, and errors that name the address and the fix (`--policy`, `KINO_POLICY`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_service_kit::{ClientTlsArgs, TracedChannel};

/// The default address of kino-policy-compiler (and of `--policy`).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:7403";

/// Where kino-policy-compiler is and how long a call may take.
#[derive(Debug, Clone, Copy)]
pub struct CompilerTarget<'a> {
    /// `host:port`, `http(s)://host:port` or `unix:/path` (`--policy`).
    pub address: &'a str,
    /// Client TLS (`--upstream-tls-*`).
    pub tls: &'a ClientTlsArgs,
    /// Limit of each call, connection included (`--timeout`).
    pub timeout: Duration,
}

/// A failed call to kino-policy-compiler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompilerCallError {
    /// The address called.
    pub target: String,
    /// The RPC, e.g. `ListPolicies`.
    pub rpc: &'static str,
    /// What went wrong.
    pub failure: CompilerFailure,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompilerFailure {
    /// `--policy` is not an address.
    InvalidAddress(String),
    /// No connection (nothing listening, wrong host, TLS mismatch).
    Unreachable(String),
    /// No answer within the timeout.
    TimedOut(Duration),
    /// The compiler answered with an error.
    Status(tonic::Code, String),
}

impl fmt::Display for CompilerCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        let rpc = self.rpc;
        let fix = format!(
            "start kino-policy-compiler or pass --policy ADDRESS (env KINO_POLICY; default {DEFAULT_ADDRESS})"
        );
        match &self.failure {
            CompilerFailure::InvalidAddress(reason) => {
                write!(f, "--policy {target:?} is not an address: {reason}; {fix}")
            }
            CompilerFailure::Unreachable(detail) => write!(
                f,
                "cannot reach kino-policy-compiler at {target}: {detail}; {fix}"
            ),
            CompilerFailure::TimedOut(after) => write!(
                f,
                "kino-policy-compiler at {target} did not answer {rpc} within {:.1}s; raise --timeout if it is just busy, or check --policy (env KINO_POLICY)",
                after.as_secs_f64()
            ),
            CompilerFailure::Status(tonic::Code::Unimplemented, message) => write!(
                f,
                "the service at {target} does not implement kino.policy.v1 {rpc} ({message}); is --policy (env KINO_POLICY) pointing at kino-policy-compiler?"
            ),
            CompilerFailure::Status(tonic::Code::Unavailable, message) => write!(
                f,
                "kino-policy-compiler at {target} is unavailable for {rpc}: {message} (`kino status` shows whether the datastore-gateway and the compiler are SERVING)"
            ),
            CompilerFailure::Status(code, message) => write!(
                f,
                "kino-policy-compiler at {target} answered {rpc} with {code:?}: {message}"
            ),
        }
    }
}

impl CompilerCallError {
    /// The gRPC code the compiler answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match &self.failure {
            CompilerFailure::Status(code, _) => Some(*code),
            _ => None,
        }
    }

    /// The compiler's own message, if it answered with an error.
    pub fn message(&self) -> Option<&str> {
        match &self.failure {
            CompilerFailure::Status(_, message) => Some(message),
            _ => None,
        }
    }
}

/// Connects to kino-policy-compiler once, for one or more calls.
pub async fn connect(
    target: CompilerTarget<'_>,
    rpc: &'static str,
) -> Result<PolicyServiceClient<TracedChannel>, CompilerCallError> {
    let failed = |failure| CompilerCallError {
        target: target.address.to_owned(),
        rpc,
        failure,
    };
    let connecting = kino_service_kit::connect(target.address, target.tls);
    match tokio::time::timeout(target.timeout, connecting).await {
        Err(_) => Err(failed(CompilerFailure::TimedOut(target.timeout))),
        Ok(Ok(channel)) => Ok(PolicyServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(kino_api::limits::MAX_POLICY_REQUEST_BYTES)),
        Ok(Err(kino_service_kit::ServiceError::Connect { detail, .. })) => {
            Err(failed(CompilerFailure::Unreachable(detail)))
        }
        Ok(Err(kino_service_kit::ServiceError::InvalidTarget { reason, .. })) => {
            Err(failed(CompilerFailure::InvalidAddress(reason)))
        }
        Ok(Err(other)) => Err(failed(CompilerFailure::Unreachable(other.to_string()))),
    }
}

/// Makes one call on a connected client, within the target's timeout.
pub async fn call<Resp, Fut>(
    target: CompilerTarget<'_>,
    client: &PolicyServiceClient<TracedChannel>,
    rpc: &'static str,
    call: impl FnOnce(PolicyServiceClient<TracedChannel>) -> Fut,
) -> Result<Resp, CompilerCallError>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let failure = match tokio::time::timeout(target.timeout, call(client.clone())).await {
        Ok(Ok(response)) => return Ok(response.into_inner()),
        Ok(Err(status)) => CompilerFailure::Status(status.code(), status.message().to_owned()),
        Err(_) => CompilerFailure::TimedOut(target.timeout),
    };
    Err(CompilerCallError {
        target: target.address.to_owned(),
        rpc,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(failure: CompilerFailure) -> String {
        CompilerCallError {
            target: "127.0.0.1:7403".into(),
            rpc: "ListPolicies",
            failure,
        }
        .to_string()
    }

    #[test]
    fn errors_name_the_address_and_the_fix() {
        let down = error(CompilerFailure::Unreachable("connection refused".into()));
        assert!(
            down.contains("cannot reach kino-policy-compiler at 127.0.0.1:7403"),
            "{down}"
        );
        assert!(
            down.contains("--policy ADDRESS (env KINO_POLICY; default 127.0.0.1:7403)"),
            "{down}"
        );
        let slow = error(CompilerFailure::TimedOut(Duration::from_secs(2)));
        assert!(slow.contains("ListPolicies within 2.0s"), "{slow}");
        let wrong = error(CompilerFailure::Status(
            tonic::Code::Unimplemented,
            "unknown service".into(),
        ));
        assert!(
            wrong.contains("pointing at kino-policy-compiler"),
            "{wrong}"
        );
        let loading = error(CompilerFailure::Status(
            tonic::Code::Unavailable,
            "still loading".into(),
        ));
        assert!(loading.contains("kino status"), "{loading}");
        let bad = error(CompilerFailure::InvalidAddress("no port".into()));
        assert!(bad.starts_with("--policy \"127.0.0.1:7403\""), "{bad}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let address = format!("unix:{}", dir.path().join("policy.sock").display());
        let tls = ClientTlsArgs::default();
        let target = CompilerTarget {
            address: &address,
            tls: &tls,
            timeout: Duration::from_secs(2),
        };
        let error = connect(target, "ListPolicies")
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(error.failure, CompilerFailure::Unreachable(_)),
            "{error}"
        );
        assert!(error.to_string().contains(&address), "{error}");
    }
}
