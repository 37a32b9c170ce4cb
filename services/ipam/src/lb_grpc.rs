//! The `kino.service.v1` gRPC adapter: validates the request into a [`ServiceSpec`] (or a
//! [`ServiceName`]), runs the [`Ipam`] service operation (`service/lb.rs`) and maps errors to
//! status codes as the `kino.ipam.v1` adapter does. Writes run in their own task, so a
//! client that gives up half-way does not stop a request between its claims and its record
//! (it finishes, or removes what it took).

use std::sync::Arc;

use kino_api::service as pb;
use kino_api::service::load_balancing_service_server::{
    LoadBalancingService, LoadBalancingServiceServer,
};
use tonic::{Request, Response, Status};

use crate::error::InvalidField;
use crate::grpc::{detached, to_status};
use crate::lb::model::{ServiceName, ServiceSpec, validate_namespace};
use crate::service::Ipam;

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::service::load_balancing_service_server::SERVICE_NAME;

/// The `kino.service.v1.LoadBalancingService` implementation.
#[derive(Debug, Clone)]
pub struct LoadBalancingGrpc {
    ipam: Arc<Ipam>,
}

impl LoadBalancingGrpc {
    /// Serves the services `ipam` keeps.
    pub fn new(ipam: Arc<Ipam>) -> Self {
        LoadBalancingGrpc { ipam }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> LoadBalancingServiceServer<Self> {
        LoadBalancingServiceServer::new(self).max_encoding_message_size(64 * 1024 * 1024)
    }

    fn spec(&self, service: Option<pb::Service>) -> Result<ServiceSpec, Status> {
        let service = service.ok_or_else(|| {
            invalid(InvalidField::new(
                "service",
                "is required: the service's name, frontends and backends",
            ))
        })?;
        ServiceSpec::from_request(&service, self.ipam.service_network()).map_err(invalid)
    }
}

fn invalid(error: InvalidField) -> Status {
    to_status(error.into())
}

fn name(namespace: &str, name: &str) -> Result<ServiceName, Status> {
    ServiceName::validate("", namespace, name).map_err(invalid)
}

#[tonic::async_trait]
impl LoadBalancingService for LoadBalancingGrpc {
    async fn create_service(
        &self,
        request: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::CreateServiceResponse>, Status> {
        let spec = self.spec(request.into_inner().service)?;
        let ipam = self.ipam.clone();
        let service = detached(async move { ipam.create_service(spec).await }).await?;
        Ok(Response::new(pb::CreateServiceResponse {
            service: Some(service),
        }))
    }

    async fn update_service(
        &self,
        request: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::UpdateServiceResponse>, Status> {
        let request = request.into_inner();
        if request.expected_revision < 0 {
            return Err(invalid(InvalidField::new(
                "expected_revision",
                format!(
                    "{} is negative; give the revision GetService returned, or 0 for any",
                    request.expected_revision
                ),
            )));
        }
        let spec = self.spec(request.service)?;
        let ipam = self.ipam.clone();
        let expected = request.expected_revision;
        let service = detached(async move { ipam.update_service(spec, expected).await }).await?;
        Ok(Response::new(pb::UpdateServiceResponse {
            service: Some(service),
        }))
    }

    async fn delete_service(
        &self,
        request: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let request = request.into_inner();
        let name = name(&request.namespace, &request.name)?;
        let ipam = self.ipam.clone();
        let service = detached(async move { ipam.delete_service(&name).await }).await?;
        Ok(Response::new(pb::DeleteServiceResponse {
            service: Some(service),
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let request = request.into_inner();
        let name = name(&request.namespace, &request.name)?;
        let service = self.ipam.get_service(&name).await.map_err(to_status)?;
        Ok(Response::new(pb::GetServiceResponse {
            service: Some(service),
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let namespace = request.into_inner().namespace;
        if !namespace.is_empty() {
            validate_namespace("namespace", &namespace).map_err(invalid)?;
        }
        let services = self
            .ipam
            .list_services((!namespace.is_empty()).then_some(namespace.as_str()))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service_network(
        &self,
        _request: Request<pb::GetServiceNetworkRequest>,
    ) -> Result<Response<pb::GetServiceNetworkResponse>, Status> {
        let network = self.ipam.service_network();
        Ok(Response::new(pb::GetServiceNetworkResponse {
            service_cidrs: network.cidrs().iter().map(ToString::to_string).collect(),
            node_port_min: u32::from(*network.node_ports().start()),
            node_port_max: u32::from(*network.node_ports().end()),
        }))
    }
}
