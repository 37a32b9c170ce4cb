//! `kino policy import|delete --wait`: returns once every endpoint the policies select
//! enforces the call's revision, as the agents report it (GetPolicyRealization, polled),
//! or fails after `--wait-timeout` naming the endpoints that did not catch up.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kino_api::policy as pb;
use kino_service_kit::TracedChannel;
use pb::policy_service_client::PolicyServiceClient;

use crate::compiler::{CompilerCallError, CompilerTarget, call};

/// How often the realization is asked for while waiting.
const POLL: Duration = Duration::from_millis(100);
/// Endpoints named in a timeout message at most (the count says how many more).
const NAMED_AT_MOST: usize = 10;

/// Why a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The compiler could not be asked.
    #[error(transparent)]
    Compiler(#[from] CompilerCallError),
    /// The timeout passed before every selected endpoint enforced the revision.
    #[error("{}", timeout_text(.waited, .last))]
    TimedOut {
        /// How long it waited.
        waited: Duration,
        /// The last answer.
        last: Box<pb::GetPolicyRealizationResponse>,
    },
}

/// Whether the answer says every selected endpoint enforces the revision.
pub fn is_realized(response: &pb::GetPolicyRealizationResponse) -> bool {
    response.compiler_revision >= response.revision && response.endpoints.iter().all(|e| e.realized)
}

/// Polls until `request`'s endpoints all enforce its revision, or `timeout` passes.
pub async fn wait_realized(
    target: CompilerTarget<'_>,
    client: &PolicyServiceClient<TracedChannel>,
    request: pb::GetPolicyRealizationRequest,
    timeout: Duration,
) -> Result<(pb::GetPolicyRealizationResponse, Duration), WaitError> {
    let started = Instant::now();
    loop {
        let asked = request.clone();
        let response = call(target, client, "GetPolicyRealization", |mut c| async move {
            c.get_policy_realization(asked).await
        })
        .await?;
        let waited = started.elapsed();
        if is_realized(&response) {
            return Ok((response, waited));
        }
        if waited >= timeout {
            return Err(WaitError::TimedOut {
                waited,
                last: Box::new(response),
            });
        }
        tokio::time::sleep(POLL.min(timeout - waited)).await;
    }
}

/// The line printed after a successful wait.
pub fn realized_text(response: &pb::GetPolicyRealizationResponse, waited: Duration) -> String {
    let count = response.endpoints.len();
    let endpoints = if count == 1 {
        "1 endpoint".to_owned()
    } else {
        format!("{count} endpoints")
    };
    if count == 0 {
        format!(
            "Revision {} is in the policy-compiler; it selects no endpoint (waited {:.1}s).\n",
            response.revision,
            waited.as_secs_f64()
        )
    } else {
        format!(
            "Revision {} is enforced by all {endpoints} selected (waited {:.1}s).\n",
            response.revision,
            waited.as_secs_f64()
        )
    }
}

/// An endpoint as `node/id (namespace/pod)`.
pub fn endpoint_text(e: &pb::EndpointRealization) -> String {
    let mut text = format!("{}/{}", e.node_name, e.endpoint_id);
    if let Some(pod) = e.pod.as_ref().filter(|p| !p.name.is_empty()) {
        let _ = write!(text, " ({}/{})", pod.namespace, pod.name);
    }
    text
}

fn timeout_text(waited: &Duration, last: &pb::GetPolicyRealizationResponse) -> String {
    let mut text = format!(
        "policy revision {} is not enforced after {:.1}s (--wait-timeout)",
        last.revision,
        waited.as_secs_f64()
    );
    if last.compiler_revision < last.revision {
        let _ = write!(
            text,
            ": the policy-compiler has only reached revision {} (is it following the datastore?)",
            last.compiler_revision
        );
        return text;
    }
    let behind: Vec<&pb::EndpointRealization> =
        last.endpoints.iter().filter(|e| !e.realized).collect();
    let _ = write!(
        text,
        "; {} of {} selected endpoint(s) have not caught up:",
        behind.len(),
        last.endpoints.len()
    );
    for e in behind.iter().take(NAMED_AT_MOST) {
        let _ = write!(text, "\n  {}: {}", endpoint_text(e), e.reason);
    }
    if behind.len() > NAMED_AT_MOST {
        let _ = write!(text, "\n  … and {} more", behind.len() - NAMED_AT_MOST);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: &str, id: u32, realized: bool, reason: &str) -> pb::EndpointRealization {
        pb::EndpointRealization {
            node_name: node.into(),
            endpoint_id: id,
            pod: Some(kino_api::types::PodRef {
                namespace: "shop".into(),
                name: format!("web-{id}"),
            }),
            identity: 256,
            realized_revision: if realized { 12 } else { 9 },
            realized,
            reason: reason.into(),
        }
    }

    #[test]
    fn realized_only_when_the_compiler_reached_the_revision_and_every_endpoint_did() {
        let mut response = pb::GetPolicyRealizationResponse {
            revision: 12,
            compiler_revision: 12,
            endpoints: vec![endpoint("n1", 1, true, "")],
            ..Default::default()
        };
        assert!(is_realized(&response));
        response.endpoints.push(endpoint("n1", 2, false, "behind"));
        assert!(!is_realized(&response));
        response.endpoints.truncate(1);
        response.compiler_revision = 11;
        assert!(!is_realized(&response));
        // Nothing selected: realized once the compiler has the revision.
        response.endpoints.clear();
        assert!(!is_realized(&response));
        response.compiler_revision = 12;
        assert!(is_realized(&response));
    }

    #[test]
    fn a_timeout_names_the_endpoints_behind_and_why() {
        let last = pb::GetPolicyRealizationResponse {
            revision: 12,
            compiler_revision: 12,
            endpoints: vec![
                endpoint("n1", 1, true, ""),
                endpoint("n2", 7, false, "its agent realized revision 9, below 12"),
            ],
            ..Default::default()
        };
        let text = timeout_text(&Duration::from_millis(2500), &last);
        assert_eq!(
            text,
            "policy revision 12 is not enforced after 2.5s (--wait-timeout); 1 of 2 selected endpoint(s) have not caught up:\n  n2/7 (shop/web-7): its agent realized revision 9, below 12"
        );
    }
}
