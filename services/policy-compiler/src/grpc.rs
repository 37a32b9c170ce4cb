//! The `kino.policy.v1` gRPC adapter: translates requests into [`PolicyService`] calls and
//! domain results and errors into responses and status codes. No logic lives here.
//! [`watch`] converts the policy stream's messages.

pub mod watch;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use kino_api::limits::{self, LimitError};
use kino_api::policy as pb;
use kino_api::policy::policy_service_server::{PolicyService as PolicyApi, PolicyServiceServer};
use kino_api::policy::{
    AllocateIdentityRequest, AllocateIdentityResponse, DeletePolicyRequest, DeletePolicyResponse,
    GetEndpointPolicyRequest, GetEndpointPolicyResponse, GetIdentityRequest, GetIdentityResponse,
    GetPolicyRequest, GetPolicyResponse, ImportPoliciesRequest, ImportPoliciesResponse,
    ListIdentitiesRequest, ListIdentitiesResponse, ListPoliciesRequest, ListPoliciesResponse,
    ReleaseIdentityRequest, ReleaseIdentityResponse, TracePolicyRequest, TracePolicyResponse,
    ValidatePoliciesRequest, ValidatePoliciesResponse, WatchEndpointPolicyRequest,
    WatchEndpointPolicyResponse,
};
use kino_api::quote::quote;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{
    compiled_to_proto, direction_to_proto, document_error_to_proto, labels_from_proto,
    map_entry_to_proto, policy_ref, policy_to_proto, protocol_from_proto, rule_ref_to_proto,
    selector_from_proto, timestamp, verdict_to_proto,
};
use crate::error::PolicyError;
use crate::policy::model::{PolicyKey, PolicyKind, Protocol};
use crate::realization::RealizationQuery;
use crate::service::{ImportAction, PolicyService};
use crate::stream::{Interest, StreamMessage};
use crate::trace::{SideTrace, TraceReason, TraceSubject};
use watch::stream_message_to_proto;

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::policy::policy_service_server::SERVICE_NAME;

/// The stream of compiled-policy updates sent to one agent.
pub type EndpointPolicyStream =
    Pin<Box<dyn Stream<Item = Result<WatchEndpointPolicyResponse, Status>> + Send>>;

/// The `kino.policy.v1.PolicyService` implementation.
#[derive(Debug, Clone)]
pub struct PolicyGrpc {
    service: Arc<PolicyService>,
}

impl PolicyGrpc {
    /// The API over `service`.
    pub fn new(service: Arc<PolicyService>) -> Self {
        PolicyGrpc { service }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
            .max_decoding_message_size(kino_api::limits::MAX_POLICY_REQUEST_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

/// The status of an error.
pub fn status(error: PolicyError) -> Status {
    let message = error.to_string();
    match error {
        PolicyError::Invalid { .. } | PolicyError::InvalidDocuments(_) => {
            Status::invalid_argument(message)
        }
        PolicyError::NotFound(_) => Status::not_found(message),
        PolicyError::Aborted(_) => Status::aborted(message),
        PolicyError::FailedPrecondition(_) => Status::failed_precondition(message),
        PolicyError::Exhausted(_) => Status::resource_exhausted(message),
        PolicyError::Unavailable(_) => Status::unavailable(message),
        PolicyError::Corrupt(_) => Status::data_loss(message),
        PolicyError::Internal(_) => Status::internal(message),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    status(PolicyError::invalid(field, reason))
}

fn policy_key(policy: Option<pb::PolicyRef>) -> Result<PolicyKey, Status> {
    let policy = policy.ok_or_else(|| invalid("policy", "required"))?;
    if policy.name.is_empty() {
        return Err(invalid("policy.name", "required"));
    }
    Ok(PolicyKey {
        namespace: policy.namespace,
        name: policy.name,
    })
}

fn page_size(size: i32) -> Result<usize, Status> {
    usize::try_from(size).map_err(|_| invalid("page_size", format!("{size} is negative")))
}

/// A limit passed: INVALID_ARGUMENT naming the field and the limit.
fn over_limit(error: LimitError) -> Status {
    invalid(&error.field, error.problem)
}

fn labels(
    labels: Option<kino_api::types::Labels>,
    field: &str,
) -> Result<crate::labels::Labels, Status> {
    if let Some(labels) = &labels {
        limits::check_labels(field, labels).map_err(over_limit)?;
    }
    let labels = labels.map(|l| labels_from_proto(&l)).unwrap_or_default();
    if labels.is_empty() {
        return Err(invalid(field, "at least one label is required"));
    }
    Ok(labels)
}

fn trace_subject(peer: Option<pb::TracePeer>, field: &str) -> Result<TraceSubject, Status> {
    use pb::trace_peer::Peer;
    match peer.and_then(|p| p.peer) {
        Some(Peer::Labels(l)) => Ok(TraceSubject::Labels(labels(
            Some(l),
            &format!("{field}.labels"),
        )?)),
        Some(Peer::Pod(pod)) => {
            if pod.name.is_empty() {
                return Err(invalid(&format!("{field}.pod.name"), "required"));
            }
            limits::check_pod_name(&format!("{field}.pod.name"), &pod.name)
                .and_then(|()| {
                    limits::check_namespace(&format!("{field}.pod.namespace"), &pod.namespace)
                })
                .map_err(over_limit)?;
            let ns = if pod.namespace.is_empty() {
                "default".to_owned()
            } else {
                pod.namespace
            };
            Ok(TraceSubject::Pod(ns, pod.name))
        }
        Some(Peer::Identity(id)) => Ok(TraceSubject::Identity(id)),
        Some(Peer::Ip(ip)) => ip.parse::<IpAddr>().map(TraceSubject::Ip).map_err(|_| {
            invalid(
                &format!("{field}.ip"),
                format!("{} is not an IP address", quote(&ip)),
            )
        }),
        None => Err(invalid(field, "required: labels, pod, identity or ip")),
    }
}

fn side_to_proto(side: &SideTrace) -> pb::DirectionTrace {
    pb::DirectionTrace {
        direction: direction_to_proto(side.direction),
        local_identity: side.local_identity,
        remote_identity: side.remote_identity,
        enforced: side.enforced,
        verdict: verdict_to_proto(side.verdict),
        reason: match side.reason {
            TraceReason::NotEnforced => pb::TraceReason::NotEnforced,
            TraceReason::NotAnEndpoint => pb::TraceReason::NotAnEndpoint,
            TraceReason::AllowedByRule => pb::TraceReason::AllowedByRule,
            TraceReason::DeniedByRule => pb::TraceReason::DeniedByRule,
            TraceReason::DefaultDeny => pb::TraceReason::DefaultDeny,
            TraceReason::AllowedLocalhost => pb::TraceReason::AllowedLocalhost,
        } as i32,
        allowed_by: side
            .allowed_by
            .iter()
            .map(|r| rule_ref_to_proto(r))
            .collect(),
        denied_by: side
            .denied_by
            .iter()
            .map(|r| rule_ref_to_proto(r))
            .collect(),
        matched_entry: side
            .matched_entry
            .as_ref()
            .map(|(k, e)| map_entry_to_proto(k, e)),
    }
}

fn progress(revision: i64) -> StreamMessage {
    StreamMessage {
        revision,
        synced: true,
        ..StreamMessage::default()
    }
}

#[tonic::async_trait]
impl PolicyApi for PolicyGrpc {
    async fn import_policies(
        &self,
        request: Request<ImportPoliciesRequest>,
    ) -> Result<Response<ImportPoliciesResponse>, Status> {
        let request = request.into_inner();
        let (imported, revision) = self
            .service
            .import(request.documents, request.default_namespace)
            .await
            .map_err(status)?;
        Ok(Response::new(ImportPoliciesResponse {
            policies: imported
                .iter()
                .map(|i| pb::ImportedPolicy {
                    policy: Some(policy_ref(&i.key)),
                    kind: match i.kind {
                        PolicyKind::Kino => pb::PolicyKind::KinoNetworkPolicy,
                        PolicyKind::K8s => pb::PolicyKind::K8sNetworkPolicy,
                    } as i32,
                    action: match i.action {
                        ImportAction::Created => pb::ImportAction::Created,
                        ImportAction::Updated => pb::ImportAction::Updated,
                        ImportAction::Unchanged => pb::ImportAction::Unchanged,
                    } as i32,
                    revision: i.revision,
                })
                .collect(),
            revision,
        }))
    }

    async fn validate_policies(
        &self,
        request: Request<ValidatePoliciesRequest>,
    ) -> Result<Response<ValidatePoliciesResponse>, Status> {
        let request = request.into_inner();
        let outcome = self
            .service
            .validate(request.documents, request.default_namespace)
            .await
            .map_err(status)?;
        Ok(Response::new(ValidatePoliciesResponse {
            policies: outcome.policies.iter().map(policy_to_proto).collect(),
            errors: outcome.errors.iter().map(document_error_to_proto).collect(),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let key = policy_key(request.into_inner().policy)?;
        let (policy, revision) = self.service.get_policy(&key).await.map_err(status)?;
        Ok(Response::new(GetPolicyResponse {
            policy: Some(policy),
            revision,
        }))
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let request = request.into_inner();
        let kind = match pb::PolicyKind::try_from(request.kind) {
            Ok(pb::PolicyKind::Unspecified) => None,
            Ok(pb::PolicyKind::KinoNetworkPolicy) => Some(PolicyKind::Kino),
            Ok(pb::PolicyKind::K8sNetworkPolicy) => Some(PolicyKind::K8s),
            Err(_) => {
                return Err(invalid(
                    "kind",
                    format!("{} is not a policy kind", request.kind),
                ));
            }
        };
        let (policies, next_page_token, revision) = self
            .service
            .list_policies(
                &request.namespace,
                kind,
                page_size(request.page_size)?,
                &request.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ListPoliciesResponse {
            policies,
            next_page_token,
            revision,
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let key = policy_key(request.into_inner().policy)?;
        let (policy, revision) = self.service.delete_policy(&key).await.map_err(status)?;
        Ok(Response::new(DeletePolicyResponse {
            policy: Some(policy),
            revision,
        }))
    }

    async fn allocate_identity(
        &self,
        request: Request<AllocateIdentityRequest>,
    ) -> Result<Response<AllocateIdentityResponse>, Status> {
        let labels = labels(request.into_inner().labels, "labels")?;
        let allocation = self
            .service
            .allocate_identity(&labels)
            .await
            .map_err(status)?;
        Ok(Response::new(AllocateIdentityResponse {
            identity: Some(allocation.identity.to_proto()),
            created: allocation.created,
        }))
    }

    async fn get_identity(
        &self,
        request: Request<GetIdentityRequest>,
    ) -> Result<Response<GetIdentityResponse>, Status> {
        use pb::get_identity_request::Lookup;
        let identity = match request.into_inner().lookup {
            Some(Lookup::Id(id)) => self.service.get_identity(id).await,
            Some(Lookup::Labels(l)) => {
                let l = labels(Some(l), "labels")?;
                self.service.get_identity_by_labels(&l).await
            }
            None => return Err(invalid("lookup", "give id or labels")),
        }
        .map_err(status)?;
        Ok(Response::new(GetIdentityResponse {
            identity: Some(identity.to_proto()),
        }))
    }

    async fn list_identities(
        &self,
        request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        let request = request.into_inner();
        let selector = request
            .selector
            .as_ref()
            .map(selector_from_proto)
            .transpose()
            .map_err(|e| invalid("selector", e))?;
        let (identities, next_page_token) = self
            .service
            .list_identities(
                selector.as_ref(),
                page_size(request.page_size)?,
                &request.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ListIdentitiesResponse {
            identities: identities.iter().map(|i| i.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn release_identity(
        &self,
        request: Request<ReleaseIdentityRequest>,
    ) -> Result<Response<ReleaseIdentityResponse>, Status> {
        let id = request.into_inner().id;
        let release = self.service.release_identity(id).await.map_err(status)?;
        Ok(Response::new(ReleaseIdentityResponse {
            in_use: release.in_use,
            expire_time: release.expire_time.map(timestamp),
            grace_period: prost_types::Duration::try_from(self.service.allocator().grace()).ok(),
        }))
    }

    type WatchEndpointPolicyStream = EndpointPolicyStream;

    async fn watch_endpoint_policy(
        &self,
        request: Request<WatchEndpointPolicyRequest>,
    ) -> Result<Response<Self::WatchEndpointPolicyStream>, Status> {
        let request = request.into_inner();
        let interest = if !request.identities.is_empty() {
            Interest::Identities(request.identities.iter().copied().collect())
        } else if !request.node_name.is_empty() {
            Interest::Node(request.node_name.clone())
        } else {
            return Err(invalid("node_name", "required unless identities is set"));
        };
        if request.resume_revision < 0 {
            return Err(invalid("resume_revision", "negative"));
        }
        let service = self.service.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut revisions = service.revisions();
            while !service.is_ready() {
                if revisions.changed().await.is_err() {
                    return;
                }
            }
            let mut subscriber =
                service.subscribe(interest, request.resume_revision, &request.resume_epoch);
            let epoch = service.epoch().to_owned();
            let mut first = true;
            loop {
                revisions.borrow_and_update();
                let mut messages = service.catch_up(&mut subscriber);
                if first && messages.is_empty() {
                    messages.push(progress(subscriber.revision().unwrap_or(0)));
                }
                first = false;
                for message in &messages {
                    if tx
                        .send(Ok(stream_message_to_proto(message, &epoch)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if revisions.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_endpoint_policy(
        &self,
        request: Request<GetEndpointPolicyRequest>,
    ) -> Result<Response<GetEndpointPolicyResponse>, Status> {
        let id = request.into_inner().identity;
        let (policy, labels, revision) = self.service.endpoint_policy(id).map_err(status)?;
        Ok(Response::new(GetEndpointPolicyResponse {
            policy: Some(compiled_to_proto(&policy, &labels, revision)),
        }))
    }

    async fn trace_policy(
        &self,
        request: Request<TracePolicyRequest>,
    ) -> Result<Response<TracePolicyResponse>, Status> {
        let request = request.into_inner();
        let source = trace_subject(request.source, "source")?;
        let destination = trace_subject(request.destination, "destination")?;
        let protocol = protocol_from_proto(request.protocol).map_err(|e| invalid("protocol", e))?;
        let port = u16::try_from(request.destination_port).map_err(|_| {
            invalid(
                "destination_port",
                format!("{} is not a port", request.destination_port),
            )
        })?;
        if protocol == Protocol::Any && port != 0 {
            return Err(invalid(
                "protocol",
                "required with a destination port (TCP, UDP or SCTP)",
            ));
        }
        if !protocol.has_ports() && port != 0 {
            return Err(invalid(
                "destination_port",
                format!("{} has no ports; give 0", protocol.as_str()),
            ));
        }
        let trace = self
            .service
            .trace(&source, &destination, protocol, port)
            .map_err(status)?;
        Ok(Response::new(TracePolicyResponse {
            verdict: verdict_to_proto(trace.verdict),
            egress: Some(side_to_proto(&trace.egress)),
            ingress: Some(side_to_proto(&trace.ingress)),
            explanation: trace.explanation,
            revision: trace.revision,
        }))
    }

    async fn get_policy_realization(
        &self,
        request: Request<pb::GetPolicyRealizationRequest>,
    ) -> Result<Response<pb::GetPolicyRealizationResponse>, Status> {
        let request = request.into_inner();
        let mut policies = Vec::with_capacity(request.policies.len());
        for (i, policy) in request.policies.into_iter().enumerate() {
            if policy.name.is_empty() {
                return Err(invalid(&format!("policies[{i}].name"), "required"));
            }
            policies.push(PolicyKey {
                namespace: policy.namespace,
                name: policy.name,
            });
        }
        let realization = self
            .service
            .policy_realization(RealizationQuery {
                policies,
                identities: request.identities,
                revision: request.revision,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetPolicyRealizationResponse {
            revision: realization.revision,
            compiler_revision: realization.compiler_revision,
            pending: realization.pending() as u32,
            min_realized_revision: realization.min_realized(),
            endpoints: realization
                .endpoints
                .into_iter()
                .map(|e| pb::EndpointRealization {
                    node_name: e.node,
                    endpoint_id: e.endpoint_id,
                    pod: e
                        .pod
                        .map(|(namespace, name)| kino_api::types::PodRef { namespace, name }),
                    identity: e.identity,
                    realized_revision: e.realized_revision,
                    realized: e.realized,
                    reason: e.reason,
                })
                .collect(),
        }))
    }
}
