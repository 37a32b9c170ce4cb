//! The `kino.ipam.v1` gRPC adapter: validates and converts requests into domain types, runs
//! the [`Ipam`] operation, converts the result back, and maps errors to status codes.
//!
//! Each operation runs in its own task, so a client that gives up half-way (a CNI plugin
//! timing out) does not leave its records half-written: the operation finishes anyway, and
//! the client's retry finds the result.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kino_api::ipam as pb;
use kino_api::ipam::ipam_service_server::{IpamService, IpamServiceServer};
use kino_api::types::IpFamily;
use kino_service_kit::principal::Caller;
use kino_service_kit::records::Spec;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::{InvalidField, IpamError};
use kino_api::quote::quote;

use crate::metrics::ADDRESSES;
use crate::owner::Owner;
use crate::pool::{DEFAULT_POOL, PoolConfig, RawFamily, validate_node_name, validate_pool_name};
use crate::prefix::Family;
use crate::records::{family_from_proto, family_to_proto, owner_from_proto};
use crate::service::{
    AllocateArgs, FamilyUsage, GcArgs, Ipam, ListArgs, NodeUsage, PoolUsage, ReleaseTarget,
};

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::ipam::ipam_service_server::SERVICE_NAME;

/// The `kino.ipam.v1.IpamService` implementation.
#[derive(Debug, Clone)]
pub struct IpamGrpc {
    ipam: Arc<Ipam>,
}

impl IpamGrpc {
    /// Serves `ipam`.
    pub fn new(ipam: Arc<Ipam>) -> Self {
        IpamGrpc { ipam }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> IpamServiceServer<Self> {
        IpamServiceServer::new(self).max_encoding_message_size(64 * 1024 * 1024)
    }
}

/// Maps an error to the status code its callers act on.
pub fn to_status(error: IpamError) -> Status {
    let message = error.to_string();
    match error {
        IpamError::Invalid(_) => Status::invalid_argument(message),
        IpamError::NotFound { .. } => Status::not_found(message),
        IpamError::AlreadyExists(_) => Status::already_exists(message),
        IpamError::FailedPrecondition(_) => Status::failed_precondition(message),
        IpamError::Exhausted(_) | IpamError::NoFreeBlock(_) | IpamError::NoFreeFrontendId(_) => {
            Status::resource_exhausted(message)
        }
        IpamError::Aborted(_) => Status::aborted(message),
        IpamError::Unavailable(_) => Status::unavailable(message),
        IpamError::Corrupt(_) => Status::data_loss(message),
        IpamError::Internal(_) => Status::internal(message),
    }
}

/// Runs an operation in its own task (see the module comment).
pub(crate) async fn detached<T: Send + 'static>(
    operation: impl Future<Output = Result<T, IpamError>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(operation.in_current_span())
        .await
        .map_err(|e| Status::internal(format!("the request's task failed: {e}")))?
        .map_err(to_status)
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    to_status(InvalidField::new(field, reason).into())
}

fn check(result: Result<(), InvalidField>) -> Result<(), Status> {
    result.map_err(|e| to_status(e.into()))
}

/// A pool field: empty means the default pool.
fn pool_or_default(field: &str, pool: String) -> Result<String, Status> {
    if pool.is_empty() {
        return Ok(DEFAULT_POOL.to_owned());
    }
    check(validate_pool_name(field, &pool))?;
    Ok(pool)
}

/// An optional pool filter: empty means every pool.
fn optional_pool(field: &str, pool: String) -> Result<Option<String>, Status> {
    if pool.is_empty() {
        return Ok(None);
    }
    check(validate_pool_name(field, &pool))?;
    Ok(Some(pool))
}

fn required_node(field: &str, node: &str) -> Result<(), Status> {
    check(validate_node_name(field, node))
}

/// An agent calls node-scoped methods only for its own node (as Kubernetes' NodeRestriction
/// holds a kubelet to its node); other callers the table admits act for any node.
fn own_node(caller: &Caller, node: &str, method: &str) -> Result<(), Status> {
    caller
        .check_node(
            node,
            &format!("node {node:?} (kino.ipam.v1.IpamService/{method})"),
        )
        .map_err(Status::permission_denied)
}

fn optional_family(field: &str, value: i32) -> Result<Option<Family>, Status> {
    let family = IpFamily::try_from(value).map_err(|_| {
        invalid(
            field,
            format!("{value} is not an IpFamily (IP_FAMILY_IPV4 = 1, IP_FAMILY_IPV6 = 2)"),
        )
    })?;
    Ok(family_from_proto(family))
}

fn owner(field: &str, owner: Option<pb::Owner>) -> Result<Owner, Status> {
    let owner = owner.ok_or_else(|| {
        invalid(
            field,
            "is required: the container id and interface name (CNI_CONTAINERID, CNI_IFNAME)",
        )
    })?;
    Owner::validate(field, owner_from_proto(owner)).map_err(|e| to_status(e.into()))
}

fn address(field: &str, text: &str) -> Result<IpAddr, Status> {
    text.trim().parse().map_err(|_| {
        invalid(
            field,
            format!(
                "{} is not an IP address (write e.g. 10.0.1.5 or fd00::105, without a prefix length)",
                quote(text)
            ),
        )
    })
}

fn raw_family(family: &pb::PoolFamily) -> RawFamily {
    RawFamily {
        cidrs: family.cidrs.clone(),
        node_mask_size: family.node_mask_size,
    }
}

fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn family_usage(u: FamilyUsage) -> pb::FamilyUsage {
    pb::FamilyUsage {
        family: family_to_proto(u.family) as i32,
        cidrs: u.cidrs.iter().map(ToString::to_string).collect(),
        node_mask_size: u32::from(u.node_mask),
        node_blocks_total: saturate(u.node_blocks_total),
        node_blocks_allocated: saturate(u.node_blocks_allocated),
        size: saturate(u.size),
        allocated: saturate(u.allocated),
        free: saturate(u.size.saturating_sub(u.allocated)),
    }
}

fn node_usage(u: NodeUsage) -> pb::NodeUsage {
    pb::NodeUsage {
        node: u.node,
        family: family_to_proto(u.family) as i32,
        cidrs: u.cidrs.iter().map(ToString::to_string).collect(),
        size: saturate(u.size),
        allocated: saturate(u.allocated),
        free: saturate(u.size.saturating_sub(u.allocated)),
        allocations: u.allocations.iter().map(Spec::to_proto).collect(),
    }
}

fn pool_usage(u: PoolUsage) -> pb::PoolUsage {
    pb::PoolUsage {
        pool: u.pool,
        families: u.families.into_iter().map(family_usage).collect(),
        nodes: u.nodes.into_iter().map(node_usage).collect(),
    }
}

#[tonic::async_trait]
impl IpamService for IpamGrpc {
    async fn create_pool(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let pool = request
            .into_inner()
            .pool
            .ok_or_else(|| invalid("pool", "is required: a name and at least one family"))?;
        let config = PoolConfig::validate(
            "pool",
            &pool.name,
            pool.ipv4.as_ref().map(raw_family).as_ref(),
            pool.ipv6.as_ref().map(raw_family).as_ref(),
        )
        .map_err(|e| to_status(e.into()))?;
        let ipam = self.ipam.clone();
        let created = detached(async move { ipam.create_pool(config).await }).await?;
        tracing::info!(pool = %pool.name, "pool created");
        Ok(Response::new(pb::CreatePoolResponse {
            pool: Some(created.value.to_proto()),
        }))
    }

    async fn get_pool(
        &self,
        request: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::GetPoolResponse>, Status> {
        let name = request.into_inner().name;
        check(validate_pool_name("name", &name))?;
        let ipam = self.ipam.clone();
        let pool = detached(async move { ipam.get_pool(&name).await }).await?;
        Ok(Response::new(pb::GetPoolResponse {
            pool: Some(pool.value.to_proto()),
        }))
    }

    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let pools = self.ipam.list_pools().await.map_err(to_status)?;
        Ok(Response::new(pb::ListPoolsResponse {
            pools: pools.iter().map(|p| p.value.to_proto()).collect(),
        }))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let name = request.into_inner().name;
        check(validate_pool_name("name", &name))?;
        let ipam = self.ipam.clone();
        let deleted = detached(async move { ipam.delete_pool(&name).await }).await?;
        tracing::info!(pool = %deleted.value.config.name, "pool deleted");
        Ok(Response::new(pb::DeletePoolResponse {
            pool: Some(deleted.value.to_proto()),
        }))
    }

    async fn allocate_node_cidrs(
        &self,
        request: Request<pb::AllocateNodeCidrsRequest>,
    ) -> Result<Response<pb::AllocateNodeCidrsResponse>, Status> {
        let caller = Caller::of(request.extensions());
        let request = request.into_inner();
        required_node("node", &request.node)?;
        own_node(&caller, &request.node, "AllocateNodeCidrs")?;
        let pool = pool_or_default("pool", request.pool)?;
        // Deprecated: a node's blocks never hang on a lease (a lapsed lease does not mean
        // its pods are gone); the field is still checked, then ignored.
        #[allow(deprecated)]
        let lease_id = request.lease_id;
        if lease_id < 0 {
            return Err(invalid(
                "lease_id",
                format!("{lease_id} is negative; pass 0 (the field is ignored)"),
            ));
        }
        let ipam = self.ipam.clone();
        let node = request.node;
        let record = detached(async move { ipam.allocate_node_cidrs(&pool, &node).await }).await?;
        Ok(Response::new(pb::AllocateNodeCidrsResponse {
            allocation: Some(record.value.to_proto()),
        }))
    }

    async fn release_node_cidrs(
        &self,
        request: Request<pb::ReleaseNodeCidrsRequest>,
    ) -> Result<Response<pb::ReleaseNodeCidrsResponse>, Status> {
        let request = request.into_inner();
        required_node("node", &request.node)?;
        let pool = optional_pool("pool", request.pool)?;
        let ipam = self.ipam.clone();
        let node = request.node;
        let (released, freed) = detached(async move {
            ipam.release_node_cidrs(&node, pool.as_deref(), request.force)
                .await
        })
        .await?;
        Ok(Response::new(pb::ReleaseNodeCidrsResponse {
            released: released.iter().map(Spec::to_proto).collect(),
            freed: freed.iter().map(Spec::to_proto).collect(),
        }))
    }

    async fn get_node_cidrs(
        &self,
        request: Request<pb::GetNodeCidrsRequest>,
    ) -> Result<Response<pb::GetNodeCidrsResponse>, Status> {
        let request = request.into_inner();
        required_node("node", &request.node)?;
        let pool = optional_pool("pool", request.pool)?;
        let records = self
            .ipam
            .get_node_cidrs(&request.node, pool.as_deref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetNodeCidrsResponse {
            allocations: records.iter().map(|r| r.value.to_proto()).collect(),
        }))
    }

    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let caller = Caller::of(request.extensions());
        let request = request.into_inner();
        required_node("node", &request.node)?;
        own_node(&caller, &request.node, "Allocate")?;
        let pool = pool_or_default("pool", request.pool)?;
        let owner = owner("owner", request.owner)?;
        let family = optional_family("family", request.family)?;
        let requested = if request.requested_address.is_empty() {
            None
        } else {
            Some(address("requested_address", &request.requested_address)?)
        };
        let family = match (family, requested) {
            (Some(f), Some(a)) if f != Family::of(a) => {
                return Err(invalid(
                    "family",
                    format!(
                        "is {f} but requested_address {a} is {}; leave family unset to imply it",
                        Family::of(a)
                    ),
                ));
            }
            (_, Some(a)) => Family::of(a),
            (Some(f), None) => f,
            (None, None) => {
                return Err(invalid(
                    "family",
                    "is required: IP_FAMILY_IPV4 or IP_FAMILY_IPV6 (or give requested_address); call once per family for dual-stack",
                ));
            }
        };
        // The allocation's own span, so a pod's trace shows what IPAM gave it.
        let span = tracing::info_span!(
            "ipam.allocate",
            otel.name = "IPAM allocate",
            ipam.pool = %pool,
            ipam.node = %request.node,
            ipam.family = family.name(),
            container.id = %owner.container_id,
            k8s.pod.name = %owner.pod_name,
            k8s.namespace.name = %owner.pod_namespace,
            ipam.address = tracing::field::Empty,
            ipam.existing = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let args = AllocateArgs {
            node: request.node,
            pool,
            family,
            owner,
            requested,
        };
        let ipam = self.ipam.clone();
        let done = match detached(async move { ipam.allocate(args).await })
            .instrument(span.clone())
            .await
        {
            Ok(done) => done,
            Err(status) => {
                span.record("otel.status_description", status.message());
                return Err(status);
            }
        };
        span.record("ipam.address", done.allocation.address.to_string());
        span.record("ipam.existing", done.existing);
        if !done.existing {
            ADDRESSES
                .allocations
                .with_label_values(&[&done.allocation.pool, family.name()])
                .inc();
        }
        tracing::debug!(address = %done.allocation.address, node = %done.allocation.node,
            owner = %done.allocation.owner, existing = done.existing, "allocated");
        Ok(Response::new(pb::AllocateResponse {
            allocation: Some(done.allocation.to_proto()),
            existing: done.existing,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let request = request.into_inner();
        let target = match request.target {
            None => {
                return Err(invalid(
                    "target",
                    "is required: set owner (container id + ifname) or address",
                ));
            }
            Some(pb::release_request::Target::Owner(o)) => ReleaseTarget::Owner {
                owner: owner("owner", Some(o))?,
                family: optional_family("family", request.family)?,
            },
            Some(pb::release_request::Target::Address(text)) => {
                ReleaseTarget::Address(address("address", &text)?)
            }
        };
        let ipam = self.ipam.clone();
        let released = detached(async move { ipam.release(target).await }).await?;
        for allocation in &released {
            ADDRESSES
                .releases
                .with_label_values(&[&allocation.pool, allocation.family().name()])
                .inc();
        }
        Ok(Response::new(pb::ReleaseResponse {
            released: released.iter().map(Spec::to_proto).collect(),
        }))
    }

    async fn gc(
        &self,
        request: Request<pb::GcRequest>,
    ) -> Result<Response<pb::GcResponse>, Status> {
        let caller = Caller::of(request.extensions());
        let request = request.into_inner();
        required_node("node", &request.node)?;
        own_node(&caller, &request.node, "Gc")?;
        let pool = optional_pool("pool", request.pool)?;
        let valid_owners = request
            .valid_owners
            .into_iter()
            .enumerate()
            .map(|(i, o)| owner(&format!("valid_owners[{i}]"), Some(o)).map(|o| o.key()))
            .collect::<Result<Vec<_>, Status>>()?;
        let min_age = match request.min_age {
            None => Duration::ZERO,
            Some(d) => {
                Duration::try_from(d).map_err(|_| invalid("min_age", "must be zero or positive"))?
            }
        };
        let args = GcArgs {
            node: request.node,
            pool,
            valid_owners,
            min_age,
            dry_run: request.dry_run,
        };
        let ipam = self.ipam.clone();
        let freed = detached(async move { ipam.gc(args).await }).await?;
        if !freed.is_empty() {
            tracing::info!(freed = freed.len(), "gc freed allocations");
        }
        Ok(Response::new(pb::GcResponse {
            freed: freed.iter().map(Spec::to_proto).collect(),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let request = request.into_inner();
        let node = if request.node.is_empty() {
            None
        } else {
            required_node("node", &request.node)?;
            Some(request.node)
        };
        let args = ListArgs {
            node,
            pool: optional_pool("pool", request.pool)?,
            family: optional_family("family", request.family)?,
            page_size: request.page_size,
            page_token: request.page_token,
        };
        let page = self.ipam.list_allocations(args).await.map_err(to_status)?;
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations: page.allocations.iter().map(Spec::to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn pool_status(
        &self,
        request: Request<pb::PoolStatusRequest>,
    ) -> Result<Response<pb::PoolStatusResponse>, Status> {
        let request = request.into_inner();
        let pool = optional_pool("pool", request.pool)?;
        let node = if request.node.is_empty() {
            None
        } else {
            required_node("node", &request.node)?;
            Some(request.node)
        };
        let usage = self
            .ipam
            .pool_status(
                pool.as_deref(),
                node.as_deref(),
                request.include_allocations,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PoolStatusResponse {
            pools: usage.into_iter().map(pool_usage).collect(),
        }))
    }
}
