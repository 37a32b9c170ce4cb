//! `kino service create|update|delete|list|get`: load-balanced services as kino-ipam's
//! `kino.service.v1` keeps them (docs/services.md). Flags build the request ([`parse`] has
//! the spellings); tables for people ([`render`], `list` in `cilium service list`'s
//! columns), `-o json` (shaped like the proto) for scripts. kino-ipam's refusals are shown
//! as the other kino-ipam commands show them.

pub mod parse;
pub mod render;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use kino_api::service as pb;
use kino_api::service::load_balancing_service_client::LoadBalancingServiceClient;
use kino_service_kit::ClientTlsArgs;

use self::parse::{
    BackendArg, FrontendArg, parse_affinity_timeout, parse_backend, parse_frontend,
    parse_node_port, socket_of,
};
use crate::ipam::{IpamCliError, connect, refused, within};
use crate::proto_json::{self, ProtoMessage};

/// `kino service ...`.
#[derive(Args, Debug)]
pub struct ServiceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ServiceCommand,
}

/// The `kino service` commands.
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service: ClusterIP frontends (and NodePorts, external IPs) in front of
    /// backends.
    Create {
        /// Service name.
        name: String,
        /// Its frontends and backends.
        #[command(flatten)]
        spec: SpecArgs,
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Change a service: each flag given replaces that part (all frontends, all backends,
    /// the type, the affinity); --add/--remove/--terminate-backend change single backends.
    Update {
        /// Service name.
        name: String,
        /// What to replace.
        #[command(flatten)]
        spec: SpecArgs,
        /// Add a backend (same spelling as --backend).
        #[arg(long, value_name = "IP:PORT[,...]", value_parser = parse_backend)]
        add_backend: Vec<BackendArg>,
        /// Remove the backend at IP:PORT.
        #[arg(long, value_name = "IP:PORT", value_parser = socket_of)]
        remove_backend: Vec<std::net::SocketAddr>,
        /// Mark the backend at IP:PORT terminating: no new connections, existing ones kept.
        #[arg(long, value_name = "IP:PORT", value_parser = socket_of)]
        terminate_backend: Vec<std::net::SocketAddr>,
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Delete a service; its frontends and ids are given back.
    Delete {
        /// Service name.
        name: String,
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Every service's frontends with their backends (`cilium service list`'s columns).
    List {
        /// Only this namespace's services.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// One service in detail: frontends with ids, backends with their nodes.
    Get {
        /// Service name.
        name: String,
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

/// The flags that describe a service.
#[derive(Args, Debug, Clone, Default)]
pub struct SpecArgs {
    /// A ClusterIP frontend: VIP:PORT[/tcp|udp][,name=PORT_NAME] (IPv6 as [fd00:ffff::a]:80;
    /// TCP by default). Repeat for more.
    #[arg(long, value_name = "VIP:PORT/PROTO", value_parser = parse_frontend)]
    pub frontend: Vec<FrontendArg>,
    /// An external IP frontend (an address outside the cluster's CIDRs routed to the
    /// nodes), spelled as --frontend.
    #[arg(long, value_name = "IP:PORT/PROTO", value_parser = parse_frontend)]
    pub external_ip: Vec<FrontendArg>,
    /// A backend: IP:PORT[/PROTO][,weight=N][,terminating][,name=PORT_NAME]. Repeat for more.
    #[arg(long, value_name = "IP:PORT[,...]", value_parser = parse_backend)]
    pub backend: Vec<BackendArg>,
    /// The service type (NodePort when --node-port is given).
    #[arg(long = "type", value_enum)]
    pub kind: Option<TypeArg>,
    /// A NodePort for the --frontend of the same position (same protocol and port name).
    #[arg(long, value_name = "N", value_parser = parse_node_port)]
    pub node_port: Vec<u16>,
    /// Session affinity.
    #[arg(long, value_enum)]
    pub affinity: Option<AffinityArg>,
    /// How long a client keeps its backend (ClientIP affinity): 3h, 30m, 10800s; default 3h.
    #[arg(long, value_name = "DURATION", value_parser = parse_affinity_timeout)]
    pub affinity_timeout: Option<Duration>,
}

/// `--type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    /// Reachable at its ClusterIPs (and external IPs).
    #[value(name = "ClusterIP", alias = "clusterip")]
    ClusterIp,
    /// Also at NodePorts on every node.
    #[value(name = "NodePort", alias = "nodeport")]
    NodePort,
}

/// `--affinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AffinityArg {
    /// Every connection chooses a backend.
    #[value(name = "None", alias = "none")]
    None,
    /// A client IP keeps its backend until idle for the timeout.
    #[value(name = "ClientIP", alias = "clientip")]
    ClientIp,
}

/// How long a write may take at least, whatever --timeout says: it checks every backend.
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a `kino service` command against kino-ipam and returns what to print.
pub async fn run(
    command: &ServiceCommand,
    target: &str,
    tls: &ClientTlsArgs,
    timeout: Duration,
    json: bool,
) -> Result<String, IpamCliError> {
    let timeout = match command {
        ServiceCommand::List { .. } | ServiceCommand::Get { .. } => timeout,
        _ => timeout.max(MIN_WRITE_TIMEOUT),
    };
    let work = async {
        let mut client = LoadBalancingServiceClient::new(connect(target, tls).await?);
        match command {
            ServiceCommand::Create {
                name,
                spec,
                namespace,
            } => {
                let service = spec.build(namespace, name, None)?;
                let response = client
                    .create_service(pb::CreateServiceRequest {
                        service: Some(service),
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(show(json, &response, |r| {
                    render::render_service(r.service.as_ref().unwrap_or(&pb::Service::default()))
                }))
            }
            ServiceCommand::Update {
                name,
                spec,
                add_backend,
                remove_backend,
                terminate_backend,
                namespace,
            } => {
                let current = client
                    .get_service(pb::GetServiceRequest {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .service
                    .unwrap_or_default();
                let mut service = spec.build(namespace, name, Some(&current))?;
                change_backends(&mut service, add_backend, remove_backend, terminate_backend)?;
                let response = client
                    .update_service(pb::UpdateServiceRequest {
                        service: Some(service),
                        expected_revision: current.revision,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(show(json, &response, |r| {
                    render::render_service(r.service.as_ref().unwrap_or(&pb::Service::default()))
                }))
            }
            ServiceCommand::Delete { name, namespace } => {
                let response = client
                    .delete_service(pb::DeleteServiceRequest {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(show(json, &response, |r| {
                    render::render_deleted(r.service.as_ref().unwrap_or(&pb::Service::default()))
                }))
            }
            ServiceCommand::List { namespace } => {
                let response = client
                    .list_services(pb::ListServicesRequest {
                        namespace: namespace.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(show(json, &response, |r| render::render_list(&r.services)))
            }
            ServiceCommand::Get { name, namespace } => {
                let response = client
                    .get_service(pb::GetServiceRequest {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(show(json, &response, |r| {
                    render::render_service(r.service.as_ref().unwrap_or(&pb::Service::default()))
                }))
            }
        }
    };
    within(target, timeout, work).await
}

/// `response` as `-o json` prints it, or as `table` renders it for people.
fn show<M: ProtoMessage>(json: bool, response: &M, table: impl FnOnce(&M) -> String) -> String {
    if json {
        proto_json::to_string(response)
    } else {
        table(response)
    }
}

fn usage(message: String) -> IpamCliError {
    IpamCliError::Usage(message)
}

impl SpecArgs {
    /// The service the flags describe; for an update, on top of `current` (what no flag
    /// names is kept).
    pub fn build(
        &self,
        namespace: &str,
        name: &str,
        current: Option<&pb::Service>,
    ) -> Result<pb::Service, IpamCliError> {
        let mut service = current.cloned().unwrap_or_default();
        service.namespace = namespace.to_owned();
        service.name = name.to_owned();
        let of_type = |t: pb::FrontendType| -> Vec<pb::Frontend> {
            service
                .frontends
                .iter()
                .filter(|f| f.r#type() == t)
                .cloned()
                .collect()
        };
        let mut cluster_ips = of_type(pb::FrontendType::ClusterIp);
        let mut external = of_type(pb::FrontendType::ExternalIp);
        let mut node_ports = of_type(pb::FrontendType::NodePort);
        if !self.frontend.is_empty() {
            cluster_ips = frontends(&self.frontend, pb::FrontendType::ClusterIp);
        }
        if !self.external_ip.is_empty() {
            external = frontends(&self.external_ip, pb::FrontendType::ExternalIp);
        }
        if !self.node_port.is_empty() {
            if self.node_port.len() > cluster_ips.len() {
                return Err(usage(format!(
                    "{} --node-port for {} ClusterIP frontend(s): give one --node-port per --frontend, in order",
                    self.node_port.len(),
                    cluster_ips.len()
                )));
            }
            node_ports = self
                .node_port
                .iter()
                .zip(&cluster_ips)
                .map(|(port, of)| pb::Frontend {
                    r#type: pb::FrontendType::NodePort as i32,
                    address: String::new(),
                    port: u32::from(*port),
                    protocol: of.protocol,
                    port_name: of.port_name.clone(),
                    id: 0,
                })
                .collect();
        }
        service.frontends = cluster_ips
            .into_iter()
            .chain(node_ports)
            .chain(external)
            .collect();
        service.r#type = match (self.kind, self.node_port.is_empty()) {
            (Some(TypeArg::ClusterIp), false) => {
                return Err(usage(
                    "--node-port needs --type NodePort (or no --type)".to_owned(),
                ));
            }
            (Some(TypeArg::NodePort), _) | (None, false) => pb::ServiceType::NodePort as i32,
            (Some(TypeArg::ClusterIp), true) => pb::ServiceType::ClusterIp as i32,
            (None, true) => service.r#type,
        };
        if !self.backend.is_empty() {
            service.backends = self.backend.iter().map(BackendArg::to_proto).collect();
        }
        match (self.affinity, self.affinity_timeout) {
            (Some(AffinityArg::None), Some(_)) => {
                return Err(usage(
                    "--affinity-timeout is for --affinity ClientIP".to_owned(),
                ));
            }
            (Some(AffinityArg::None), None) => service.session_affinity = None,
            (Some(AffinityArg::ClientIp), timeout) => {
                service.session_affinity = Some(pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::ClientIp as i32,
                    timeout: timeout.map(duration),
                });
            }
            (None, Some(timeout)) => {
                let current_is_client_ip = service
                    .session_affinity
                    .as_ref()
                    .is_some_and(|a| a.r#type() == pb::SessionAffinityType::ClientIp);
                if !current_is_client_ip {
                    return Err(usage(
                        "--affinity-timeout is for --affinity ClientIP: add --affinity ClientIP"
                            .to_owned(),
                    ));
                }
                service.session_affinity = Some(pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::ClientIp as i32,
                    timeout: Some(duration(timeout)),
                });
            }
            (None, None) => {}
        }
        Ok(service)
    }
}

fn frontends(args: &[FrontendArg], kind: pb::FrontendType) -> Vec<pb::Frontend> {
    args.iter()
        .map(|f| pb::Frontend {
            r#type: kind as i32,
            address: f.socket.ip().to_string(),
            port: u32::from(f.socket.port()),
            protocol: f.protocol as i32,
            port_name: f.port_name.clone(),
            id: 0,
        })
        .collect()
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: 0,
    }
}

/// Applies --remove-backend, --terminate-backend and --add-backend (in that order); a
/// backend to remove or terminate that the service does not have, or one to add that it
/// has, is an error naming it.
pub fn change_backends(
    service: &mut pb::Service,
    add: &[BackendArg],
    remove: &[std::net::SocketAddr],
    terminate: &[std::net::SocketAddr],
) -> Result<(), IpamCliError> {
    let at = |b: &pb::Backend, socket: &std::net::SocketAddr| {
        b.port == u32::from(socket.port())
            && b.address.parse::<std::net::IpAddr>().ok() == Some(socket.ip())
    };
    let missing = |socket: &std::net::SocketAddr| {
        usage(format!(
            "service {}/{} has no backend {socket} (`kino service get {}` lists them)",
            service.namespace, service.name, service.name
        ))
    };
    for socket in remove {
        let before = service.backends.len();
        service.backends.retain(|b| !at(b, socket));
        if service.backends.len() == before {
            return Err(missing(socket));
        }
    }
    for socket in terminate {
        let mut found = false;
        for backend in service.backends.iter_mut().filter(|b| at(b, socket)) {
            backend.state = pb::BackendState::Terminating as i32;
            found = true;
        }
        if !found {
            return Err(missing(socket));
        }
    }
    for backend in add {
        if service.backends.iter().any(|b| {
            at(b, &backend.socket)
                && b.port_name == backend.port_name
                && b.protocol == backend.protocol as i32
        }) {
            return Err(usage(format!(
                "service {}/{} already has backend {}; use --backend to replace them all",
                service.namespace, service.name, backend.socket
            )));
        }
        service.backends.push(backend.to_proto());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
