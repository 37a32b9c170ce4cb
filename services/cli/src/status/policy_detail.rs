//! The policy-compiler's part of `kino status`: the latest policy revision and how many
//! endpoints enforce it (GetPolicyRealization over every endpoint), so an operator sees
//! realized vs latest at a glance.

use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::policy::{GetPolicyRealizationRequest, GetPolicyRealizationResponse};
use kino_service_kit::TracedChannel;
use serde::Serialize;

use crate::policy::is_realized;

/// Endpoints behind named in the report at most.
const NAMED_AT_MOST: usize = 5;

/// Latest policy revision and its realization across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDetail {
    /// The compiler's current policy revision.
    pub latest_revision: i64,
    /// Endpoints in the cluster.
    pub endpoints: usize,
    /// Endpoints that do not enforce the latest revision yet.
    pub pending: usize,
    /// The lowest revision an endpoint enforces (0 when none is known).
    pub min_realized_revision: i64,
    /// A few of the endpoints behind, `node/id (namespace/pod): why`.
    pub behind: Vec<String>,
}

impl From<GetPolicyRealizationResponse> for PolicyDetail {
    fn from(r: GetPolicyRealizationResponse) -> Self {
        let realized = is_realized(&r);
        PolicyDetail {
            latest_revision: r.revision,
            endpoints: r.endpoints.len(),
            pending: if realized {
                0
            } else {
                r.endpoints.iter().filter(|e| !e.realized).count()
            },
            min_realized_revision: r.min_realized_revision,
            behind: r
                .endpoints
                .iter()
                .filter(|e| !e.realized)
                .take(NAMED_AT_MOST)
                .map(|e| format!("{}: {}", crate::policy::endpoint_text(e), e.reason))
                .collect(),
        }
    }
}

/// Asks a serving compiler how far the agents are; the error is one line for DETAIL.
pub async fn policy_status(channel: TracedChannel) -> Result<PolicyDetail, String> {
    match PolicyServiceClient::new(channel)
        .get_policy_realization(GetPolicyRealizationRequest::default())
        .await
    {
        Ok(response) => Ok(response.into_inner().into()),
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(
            "serving, but too old to report policy realization (no GetPolicyRealization)".into(),
        ),
        Err(status) => Err(format!(
            "serving, but GetPolicyRealization failed: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// One line: the latest revision and how many endpoints enforce it.
pub fn describe_policy(p: &PolicyDetail) -> String {
    let endpoints = if p.endpoints == 1 {
        "1 endpoint".to_owned()
    } else {
        format!("{} endpoints", p.endpoints)
    };
    if p.pending == 0 {
        format!(
            "policy revision {}, enforced by all {endpoints}",
            p.latest_revision
        )
    } else {
        format!(
            "policy revision {}, {} of {endpoints} behind (lowest realized {})",
            p.latest_revision, p.pending, p.min_realized_revision
        )
    }
}

#[cfg(test)]
mod tests {
    use kino_api::policy::EndpointRealization;

    use super::*;

    #[test]
    fn realization_reads_like_a_sentence() {
        let mut response = GetPolicyRealizationResponse {
            revision: 42,
            compiler_revision: 42,
            endpoints: vec![EndpointRealization {
                node_name: "node-1".into(),
                endpoint_id: 3,
                realized_revision: 42,
                realized: true,
                ..Default::default()
            }],
            pending: 0,
            min_realized_revision: 42,
        };
        let detail = PolicyDetail::from(response.clone());
        assert_eq!(
            describe_policy(&detail),
            "policy revision 42, enforced by all 1 endpoint"
        );
        response.endpoints.push(EndpointRealization {
            node_name: "node-2".into(),
            endpoint_id: 9,
            realized_revision: 40,
            realized: false,
            reason: "its agent realized revision 40, below 42".into(),
            ..Default::default()
        });
        response.min_realized_revision = 40;
        let detail = PolicyDetail::from(response);
        assert_eq!(
            describe_policy(&detail),
            "policy revision 42, 1 of 2 endpoints behind (lowest realized 40)"
        );
        assert_eq!(
            detail.behind,
            ["node-2/9: its agent realized revision 40, below 42"]
        );
    }
}
