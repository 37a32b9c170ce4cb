//! A service as kino-ipam reasons about it: validated domain types made from a request's
//! `kino.service.v1.Service`, every check that needs no datastore (names, ports, protocols,
//! a ClusterIP inside a service CIDR, NodePorts inside the range, duplicates inside the
//! request, limits), each error naming its field (`service.frontends[1].address`) and the
//! fix; and the record written back (`ServiceSpec::to_record`), the shape every agent reads.
//! What needs the datastore (a frontend another service holds, an unknown backend, an
//! external IP inside a pod pool) is `service/lb`'s.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use kino_api::limits::{MAX_SERVICE_BACKENDS, MAX_SERVICE_FRONTENDS};
use kino_api::quote::quote;
use kino_api::service as pb;

use super::network::ServiceNetwork;
use crate::error::InvalidField;
use crate::pool::validate_name;
use crate::records::timestamp;

/// Namespace of a service created without one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Session affinity timeout when none is given (Kubernetes' default, 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);
/// Longest session affinity timeout (a day, as Kubernetes).
pub const MAX_AFFINITY_TIMEOUT: Duration = Duration::from_secs(86400);
/// Longest service name (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest namespace (a DNS label).
pub const MAX_NAMESPACE_LEN: usize = kino_api::limits::MAX_NAMESPACE_LEN;
/// Longest port name (a DNS label).
pub const MAX_PORT_NAME_LEN: usize = 63;

/// A service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceName {
    /// Checks a namespace ("" = [`DEFAULT_NAMESPACE`]) and a name; `field` prefixes the
    /// fields named in errors ("service" → `service.name`; "" → `name`).
    pub fn validate(field: &str, namespace: &str, name: &str) -> Result<ServiceName, InvalidField> {
        let namespace = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        validate_namespace(&join(field, "namespace"), namespace)?;
        validate_name(
            &join(field, "name"),
            "service",
            name,
            MAX_NAME_LEN,
            "-.",
            true,
        )?;
        Ok(ServiceName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// As the API names a service.
    pub fn to_ref(&self) -> pb::ServiceRef {
        pb::ServiceRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// From the API; `None` for UNSPECIFIED.
    pub fn from_proto(protocol: pb::Protocol) -> Option<Protocol> {
        match protocol {
            pb::Protocol::Tcp => Some(Protocol::Tcp),
            pb::Protocol::Udp => Some(Protocol::Udp),
            pb::Protocol::Unspecified => None,
        }
    }

    /// To the API.
    pub fn to_proto(self) -> pb::Protocol {
        match self {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
        }
    }

    /// In datastore names: `tcp`, `udp`.
    pub fn short(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// What must be unique about a frontend cluster-wide: address (none for a NodePort, which
/// is every node's), port and protocol. Its datastore name is the frontend claim's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The address; `None` for a NodePort.
    pub address: Option<IpAddr>,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl FrontendKey {
    /// The key of a frontend as stored in a Service record; `None` if it is unreadable
    /// (then nothing can be claimed under it).
    pub fn of_record(frontend: &pb::Frontend) -> Option<FrontendKey> {
        let protocol = Protocol::from_proto(frontend.protocol())?;
        let port = u16::try_from(frontend.port).ok()?;
        let address = if frontend.address.is_empty() {
            None
        } else {
            Some(frontend.address.parse().ok()?)
        };
        Some(FrontendKey {
            address,
            port,
            protocol,
        })
    }

    /// The datastore name of its claim: `<protocol>-<address>-<port>`, e.g.
    /// `tcp-172.20.0.10-80`, `udp-fd00:ffff::a-53`, `tcp--30080` for a NodePort.
    pub fn record_name(&self) -> String {
        let address = self.address.map(|a| a.to_string()).unwrap_or_default();
        format!("{}-{address}-{}", self.protocol.short(), self.port)
    }
}

impl fmt::Display for FrontendKey {
    /// `172.20.0.10:80/TCP`, `[fd00:ffff::a]:80/TCP`, `*:30080/TCP` (a NodePort).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
            None => write!(f, "*:{}/{}", self.port, self.protocol),
        }
    }
}

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendType {
    /// A VIP inside a service CIDR.
    ClusterIp,
    /// A port on every node address.
    NodePort,
    /// An address outside the cluster's CIDRs.
    ExternalIp,
}

/// One validated frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// Its type.
    pub kind: FrontendType,
    /// What makes it unique.
    pub key: FrontendKey,
    /// The service port it serves.
    pub port_name: String,
}

/// One validated backend (its node is found later, from IPAM's records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The address.
    pub address: IpAddr,
    /// The port.
    pub port: u16,
    /// The protocol; `None` = that of the frontends it serves.
    pub protocol: Option<Protocol>,
    /// The service port it serves.
    pub port_name: String,
    /// Weight, 1..=65535.
    pub weight: u16,
    /// Takes no new connections.
    pub terminating: bool,
}

/// How a client's connections are pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Not at all.
    None,
    /// By client IP, for this long after its last new connection.
    ClientIp(Duration),
}

/// How a service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    /// ClusterIPs (and external IPs).
    ClusterIp,
    /// Also NodePorts.
    NodePort,
}

/// A validated service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Namespace and name.
    pub name: ServiceName,
    /// Its type.
    pub kind: ServiceType,
    /// Its frontends, in the request's order.
    pub frontends: Vec<Frontend>,
    /// Its backends, in the request's order.
    pub backends: Vec<Backend>,
    /// Session affinity.
    pub affinity: Affinity,
}

impl ServiceSpec {
    /// Validates a request's service against `network`; errors name the field under
    /// `service.`. Output-only fields are ignored.
    pub fn from_request(
        service: &pb::Service,
        network: &ServiceNetwork,
    ) -> Result<ServiceSpec, InvalidField> {
        let name = ServiceName::validate("service", &service.namespace, &service.name)?;
        let kind = match pb::ServiceType::try_from(service.r#type) {
            Ok(pb::ServiceType::Unspecified | pb::ServiceType::ClusterIp) => ServiceType::ClusterIp,
            Ok(pb::ServiceType::NodePort) => ServiceType::NodePort,
            Err(_) => {
                return Err(InvalidField::new(
                    "service.type",
                    format!(
                        "{} is not a ServiceType; use SERVICE_TYPE_CLUSTER_IP (1) or SERVICE_TYPE_NODE_PORT (2)",
                        service.r#type
                    ),
                ));
            }
        };
        if service.frontends.is_empty() {
            return Err(InvalidField::new(
                "service.frontends",
                "a service needs at least one frontend (e.g. a ClusterIP 172.20.0.10:80/TCP)",
            ));
        }
        if service.frontends.len() > MAX_SERVICE_FRONTENDS {
            return Err(InvalidField::new(
                "service.frontends",
                format!(
                    "{} frontends; a service has at most {MAX_SERVICE_FRONTENDS}: split it into several services",
                    service.frontends.len()
                ),
            ));
        }
        if service.backends.len() > MAX_SERVICE_BACKENDS {
            return Err(InvalidField::new(
                "service.backends",
                format!(
                    "{} backends; a service has at most {MAX_SERVICE_BACKENDS}: split it into several services",
                    service.backends.len()
                ),
            ));
        }
        let mut frontends: Vec<Frontend> = Vec::with_capacity(service.frontends.len());
        let mut seen: HashMap<FrontendKey, usize> = HashMap::new();
        for (i, raw) in service.frontends.iter().enumerate() {
            let field = format!("service.frontends[{i}]");
            let frontend = frontend(&field, raw, kind, network)?;
            if let Some(first) = seen.insert(frontend.key, i) {
                return Err(InvalidField::new(
                    field,
                    format!(
                        "{} is also service.frontends[{first}]; give each frontend once",
                        frontend.key
                    ),
                ));
            }
            frontends.push(frontend);
        }
        let mut backends: Vec<Backend> = Vec::with_capacity(service.backends.len());
        let mut seen = HashMap::new();
        for (i, raw) in service.backends.iter().enumerate() {
            let field = format!("service.backends[{i}]");
            let backend = backend(&field, raw, &frontends)?;
            let identity = (
                backend.address,
                backend.port,
                backend.protocol,
                backend.port_name.clone(),
            );
            if let Some(first) = seen.insert(identity, i) {
                return Err(InvalidField::new(
                    field,
                    format!(
                        "{} is also service.backends[{first}]; give each backend once (raise its weight instead)",
                        socket(backend.address, backend.port)
                    ),
                ));
            }
            backends.push(backend);
        }
        Ok(ServiceSpec {
            name,
            kind,
            frontends,
            backends,
            affinity: affinity(service.session_affinity.as_ref())?,
        })
    }

    /// The Service record of this spec: frontends with their `ids`, backends with the
    /// nodes holding them (`nodes`, in order), times set; its revision is the store's.
    pub fn to_record(
        &self,
        ids: &[u16],
        nodes: &[String],
        create_time: SystemTime,
        update_time: SystemTime,
    ) -> pb::Service {
        pb::Service {
            namespace: self.name.namespace.clone(),
            name: self.name.name.clone(),
            r#type: match self.kind {
                ServiceType::ClusterIp => pb::ServiceType::ClusterIp,
                ServiceType::NodePort => pb::ServiceType::NodePort,
            } as i32,
            frontends: self
                .frontends
                .iter()
                .zip(ids)
                .map(|(f, id)| pb::Frontend {
                    r#type: match f.kind {
                        FrontendType::ClusterIp => pb::FrontendType::ClusterIp,
                        FrontendType::NodePort => pb::FrontendType::NodePort,
                        FrontendType::ExternalIp => pb::FrontendType::ExternalIp,
                    } as i32,
                    address: f.key.address.map(|a| a.to_string()).unwrap_or_default(),
                    port: u32::from(f.key.port),
                    protocol: f.key.protocol.to_proto() as i32,
                    port_name: f.port_name.clone(),
                    id: u32::from(*id),
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .zip(nodes)
                .map(|(b, node)| pb::Backend {
                    address: b.address.to_string(),
                    port: u32::from(b.port),
                    protocol: b
                        .protocol
                        .map_or(pb::Protocol::Unspecified, Protocol::to_proto)
                        as i32,
                    port_name: b.port_name.clone(),
                    weight: u32::from(b.weight),
                    state: if b.terminating {
                        pb::BackendState::Terminating
                    } else {
                        pb::BackendState::Active
                    } as i32,
                    node_name: node.clone(),
                })
                .collect(),
            session_affinity: Some(match self.affinity {
                Affinity::None => pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::None as i32,
                    timeout: None,
                },
                Affinity::ClientIp(timeout) => pb::SessionAffinity {
                    r#type: pb::SessionAffinityType::ClientIp as i32,
                    timeout: Some(prost_types::Duration {
                        seconds: timeout.as_secs() as i64,
                        nanos: 0,
                    }),
                },
            }),
            revision: 0,
            create_time: Some(timestamp(create_time)),
            update_time: Some(timestamp(update_time)),
        }
    }
}

/// Checks a namespace (a DNS label); `field` names it in errors.
pub fn validate_namespace(field: &str, namespace: &str) -> Result<(), InvalidField> {
    validate_name(field, "namespace", namespace, MAX_NAMESPACE_LEN, "-", true)
}

fn frontend(
    field: &str,
    raw: &pb::Frontend,
    service: ServiceType,
    network: &ServiceNetwork,
) -> Result<Frontend, InvalidField> {
    let kind = match pb::FrontendType::try_from(raw.r#type) {
        Ok(pb::FrontendType::ClusterIp) => FrontendType::ClusterIp,
        Ok(pb::FrontendType::NodePort) => FrontendType::NodePort,
        Ok(pb::FrontendType::ExternalIp) => FrontendType::ExternalIp,
        Ok(pb::FrontendType::Unspecified) | Err(_) => {
            return Err(InvalidField::new(
                format!("{field}.type"),
                "set the frontend's type: FRONTEND_TYPE_CLUSTER_IP, FRONTEND_TYPE_NODE_PORT or FRONTEND_TYPE_EXTERNAL_IP",
            ));
        }
    };
    let protocol = protocol(&format!("{field}.protocol"), raw.protocol)?.ok_or_else(|| {
        InvalidField::new(
            format!("{field}.protocol"),
            "set the frontend's protocol: PROTOCOL_TCP or PROTOCOL_UDP",
        )
    })?;
    let port = port(&format!("{field}.port"), raw.port)?;
    check_port_name(&format!("{field}.port_name"), &raw.port_name)?;
    let address_field = format!("{field}.address");
    let address = match kind {
        FrontendType::NodePort => {
            if service != ServiceType::NodePort {
                return Err(InvalidField::new(
                    format!("{field}.type"),
                    "a NodePort frontend needs a service of type SERVICE_TYPE_NODE_PORT; set service.type",
                ));
            }
            if !raw.address.is_empty() {
                return Err(InvalidField::new(
                    address_field,
                    format!(
                        "a NodePort is every node's: leave the address empty (not {})",
                        quote(&raw.address)
                    ),
                ));
            }
            let range = network.node_ports();
            if !range.contains(&port) {
                return Err(InvalidField::new(
                    format!("{field}.port"),
                    format!(
                        "NodePort {port} is outside the NodePort range {}-{} (kino-ipam's --node-port-range)",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            None
        }
        FrontendType::ClusterIp => {
            let address = address(&address_field, &raw.address)?;
            let Some(cidr) = network.cidr_of(address) else {
                let cidrs: Vec<String> = network.cidrs().iter().map(ToString::to_string).collect();
                return Err(InvalidField::new(
                    address_field,
                    format!(
                        "ClusterIP {address} is outside the service CIDRs ({}); choose an address inside them, or make it an external IP",
                        cidrs.join(", ")
                    ),
                ));
            };
            if address == cidr.network() {
                return Err(InvalidField::new(
                    address_field,
                    format!(
                        "{address} is the network address of service CIDR {cidr}; choose another address"
                    ),
                ));
            }
            Some(address)
        }
        FrontendType::ExternalIp => {
            let address = address(&address_field, &raw.address)?;
            if let Some(cidr) = network.cidr_of(address) {
                return Err(InvalidField::new(
                    address_field,
                    format!(
                        "external IP {address} is inside service CIDR {cidr}; make it a ClusterIP frontend, or choose an address outside the cluster's CIDRs"
                    ),
                ));
            }
            if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
                return Err(InvalidField::new(
                    address_field,
                    format!(
                        "{address} cannot be an external IP (unspecified, loopback or multicast); give an address routed to the nodes"
                    ),
                ));
            }
            Some(address)
        }
    };
    Ok(Frontend {
        kind,
        key: FrontendKey {
            address,
            port,
            protocol,
        },
        port_name: raw.port_name.clone(),
    })
}

fn backend(
    field: &str,
    raw: &pb::Backend,
    frontends: &[Frontend],
) -> Result<Backend, InvalidField> {
    let address = address(&format!("{field}.address"), &raw.address)?;
    let port = port(&format!("{field}.port"), raw.port)?;
    let protocol = protocol(&format!("{field}.protocol"), raw.protocol)?;
    check_port_name(&format!("{field}.port_name"), &raw.port_name)?;
    let served: Vec<&Frontend> = frontends
        .iter()
        .filter(|f| f.port_name == raw.port_name)
        .collect();
    if served.is_empty() {
        return Err(InvalidField::new(
            format!("{field}.port_name"),
            format!(
                "no frontend has port name {}, so this backend would serve nothing; give it the port name of a frontend",
                quote(&raw.port_name)
            ),
        ));
    }
    if let Some(protocol) = protocol
        && !served.iter().any(|f| f.key.protocol == protocol)
    {
        return Err(InvalidField::new(
            format!("{field}.protocol"),
            format!(
                "no frontend of port name {} is {protocol}; leave the protocol unset (that of its frontends) or fix it",
                quote(&raw.port_name)
            ),
        ));
    }
    let weight = match raw.weight {
        0 => 1,
        w => u16::try_from(w).map_err(|_| {
            InvalidField::new(
                format!("{field}.weight"),
                format!("weight {w} is above 65535; weights are relative, scale them down"),
            )
        })?,
    };
    let terminating = match pb::BackendState::try_from(raw.state) {
        Ok(pb::BackendState::Unspecified | pb::BackendState::Active) => false,
        Ok(pb::BackendState::Terminating) => true,
        Err(_) => {
            return Err(InvalidField::new(
                format!("{field}.state"),
                format!(
                    "{} is not a BackendState; use BACKEND_STATE_ACTIVE (1) or BACKEND_STATE_TERMINATING (2)",
                    raw.state
                ),
            ));
        }
    };
    Ok(Backend {
        address,
        port,
        protocol,
        port_name: raw.port_name.clone(),
        weight,
        terminating,
    })
}

fn affinity(raw: Option<&pb::SessionAffinity>) -> Result<Affinity, InvalidField> {
    let Some(raw) = raw else {
        return Ok(Affinity::None);
    };
    let kind = pb::SessionAffinityType::try_from(raw.r#type).map_err(|_| {
        InvalidField::new(
            "service.session_affinity.type",
            format!(
                "{} is not a SessionAffinityType; use SESSION_AFFINITY_TYPE_NONE (1) or SESSION_AFFINITY_TYPE_CLIENT_IP (2)",
                raw.r#type
            ),
        )
    })?;
    let field = "service.session_affinity.timeout";
    match (kind, raw.timeout) {
        (pb::SessionAffinityType::Unspecified | pb::SessionAffinityType::None, None) => {
            Ok(Affinity::None)
        }
        (pb::SessionAffinityType::Unspecified | pb::SessionAffinityType::None, Some(_)) => {
            Err(InvalidField::new(
                field,
                "a timeout is only for SESSION_AFFINITY_TYPE_CLIENT_IP; set that type or drop the timeout",
            ))
        }
        (pb::SessionAffinityType::ClientIp, None) => {
            Ok(Affinity::ClientIp(DEFAULT_AFFINITY_TIMEOUT))
        }
        (pb::SessionAffinityType::ClientIp, Some(timeout)) => {
            let whole = timeout.nanos == 0
                && timeout.seconds >= 1
                && timeout.seconds as u64 <= MAX_AFFINITY_TIMEOUT.as_secs();
            if !whole {
                let given = if timeout.nanos == 0 {
                    format!("{}s", timeout.seconds)
                } else {
                    format!("{}.{:09}s", timeout.seconds, timeout.nanos)
                };
                return Err(InvalidField::new(
                    field,
                    format!(
                        "{given} is not a whole number of seconds from 1 s to {} s (a day)",
                        MAX_AFFINITY_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(Affinity::ClientIp(Duration::from_secs(
                timeout.seconds as u64,
            )))
        }
    }
}

fn protocol(field: &str, value: i32) -> Result<Option<Protocol>, InvalidField> {
    let protocol = pb::Protocol::try_from(value).map_err(|_| {
        InvalidField::new(
            field,
            format!("{value} is not a Protocol; use PROTOCOL_TCP (1) or PROTOCOL_UDP (2)"),
        )
    })?;
    Ok(Protocol::from_proto(protocol))
}

fn port(field: &str, value: u32) -> Result<u16, InvalidField> {
    match u16::try_from(value) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(InvalidField::new(
            field,
            format!("port {value} is outside 1..65535"),
        )),
    }
}

fn address(field: &str, text: &str) -> Result<IpAddr, InvalidField> {
    if text.is_empty() {
        return Err(InvalidField::new(field, "an IP address is required"));
    }
    text.parse().map_err(|_| {
        InvalidField::new(
            field,
            format!(
                "{} is not an IP address (write 172.20.0.10 or fd00:ffff::a)",
                quote(text)
            ),
        )
    })
}

fn check_port_name(field: &str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Ok(());
    }
    validate_name(field, "port", name, MAX_PORT_NAME_LEN, "-", true)
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// `10.0.1.5:8080`, `[fd00::5]:8080`.
pub fn socket(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

#[cfg(test)]
mod tests;
