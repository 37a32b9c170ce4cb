//! A `Service` record (kino.service.v1.Service, as kino-ipam stores it) turned into the
//! frontends the load balancer programs: each ClusterIP and external-IP frontend with the
//! backends of its port name, protocol and family, weights (0 = 1), terminating backends
//! kept but inactive, and the ClientIP affinity timeout. NodePort frontends are left to the
//! per-packet datapath (tc). A malformed frontend or backend is an error naming it: the
//! service is skipped, never half-programmed.

use std::net::IpAddr;

use kino_api::service::{BackendState, FrontendType, Protocol, Service, SessionAffinityType};

use crate::datapath::lb::{BackendSpec, FrontendKind, FrontendSpec, L4Addr, L4Protocol};

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The `namespace/name` of a service.
pub type ServiceKey = (String, String);

/// A service record this agent cannot program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {namespace}/{name}: {field}: {reason}")]
pub struct ServiceModelError {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The field, as in the API (`frontends[1].address`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn protocol_of(value: i32) -> Option<L4Protocol> {
    match Protocol::try_from(value).ok()? {
        Protocol::Tcp => Some(L4Protocol::Tcp),
        Protocol::Udp => Some(L4Protocol::Udp),
        Protocol::Unspecified => None,
    }
}

/// The frontends of `service` this node's socket load balancer serves.
pub fn frontends_of(service: &Service) -> Result<Vec<FrontendSpec>, ServiceModelError> {
    let error = |field: String, reason: String| ServiceModelError {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        field,
        reason,
    };
    let affinity_timeout = match &service.session_affinity {
        Some(affinity) if affinity.r#type == SessionAffinityType::ClientIp as i32 => Some(
            affinity
                .timeout
                .as_ref()
                .map(|d| d.seconds.clamp(1, 86_400) as u32)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
        ),
        _ => None,
    };
    let mut frontends = Vec::new();
    for (i, frontend) in service.frontends.iter().enumerate() {
        let field = |f: &str| format!("frontends[{i}].{f}");
        let kind = match FrontendType::try_from(frontend.r#type) {
            Ok(FrontendType::ClusterIp) => FrontendKind::ClusterIp,
            Ok(FrontendType::ExternalIp) => FrontendKind::ExternalIp,
            Ok(FrontendType::NodePort) => continue,
            _ => {
                return Err(error(
                    field("type"),
                    format!("unknown type {}", frontend.r#type),
                ));
            }
        };
        let ip: IpAddr = frontend.address.parse().map_err(|e| {
            error(
                field("address"),
                format!("{:?} is not an IP address: {e}", frontend.address),
            )
        })?;
        let port = u16::try_from(frontend.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                error(
                    field("port"),
                    format!("{} is not in 1..65535", frontend.port),
                )
            })?;
        let protocol = protocol_of(frontend.protocol)
            .ok_or_else(|| error(field("protocol"), "not TCP or UDP".into()))?;
        if frontend.id == 0 || frontend.id > 65_535 {
            return Err(error(
                field("id"),
                format!("{} is not in 1..65535", frontend.id),
            ));
        }
        let mut backends = Vec::new();
        for (j, backend) in service.backends.iter().enumerate() {
            let field = |f: &str| format!("backends[{j}].{f}");
            if backend.port_name != frontend.port_name {
                continue;
            }
            let backend_protocol = match protocol_of(backend.protocol) {
                Some(p) => p,
                None if backend.protocol == Protocol::Unspecified as i32 => protocol,
                None => return Err(error(field("protocol"), "not TCP or UDP".into())),
            };
            let backend_ip: IpAddr = backend.address.parse().map_err(|e| {
                error(
                    field("address"),
                    format!("{:?} is not an IP address: {e}", backend.address),
                )
            })?;
            if backend_protocol != protocol || backend_ip.is_ipv4() != ip.is_ipv4() {
                continue;
            }
            let backend_port = u16::try_from(backend.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    error(
                        field("port"),
                        format!("{} is not in 1..65535", backend.port),
                    )
                })?;
            let address = L4Addr {
                ip: backend_ip,
                port: backend_port,
                protocol,
            };
            if backends.iter().any(|b: &BackendSpec| b.address == address) {
                continue;
            }
            backends.push(BackendSpec {
                address,
                weight: backend.weight.clamp(1, 65_535),
                active: backend.state != BackendState::Terminating as i32,
            });
        }
        frontends.push(FrontendSpec {
            id: frontend.id,
            address: L4Addr { ip, port, protocol },
            kind,
            backends,
            affinity_timeout,
        });
    }
    Ok(frontends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_api::service::{Backend, Frontend, SessionAffinity};

    fn service() -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            frontends: vec![
                Frontend {
                    r#type: FrontendType::ClusterIp as i32,
                    address: "172.20.0.10".into(),
                    port: 80,
                    protocol: Protocol::Tcp as i32,
                    id: 7,
                    ..Default::default()
                },
                Frontend {
                    r#type: FrontendType::ClusterIp as i32,
                    address: "fd00:ffff::10".into(),
                    port: 80,
                    protocol: Protocol::Tcp as i32,
                    id: 8,
                    ..Default::default()
                },
                Frontend {
                    r#type: FrontendType::NodePort as i32,
                    port: 30080,
                    protocol: Protocol::Tcp as i32,
                    id: 9,
                    ..Default::default()
                },
            ],
            backends: vec![
                Backend {
                    address: "10.0.1.5".into(),
                    port: 8080,
                    ..Default::default()
                },
                Backend {
                    address: "10.0.2.7".into(),
                    port: 8080,
                    weight: 3,
                    state: BackendState::Terminating as i32,
                    ..Default::default()
                },
                Backend {
                    address: "fd00::5".into(),
                    port: 8080,
                    ..Default::default()
                },
                Backend {
                    address: "10.0.1.6".into(),
                    port: 53,
                    port_name: "dns".into(),
                    ..Default::default()
                },
            ],
            session_affinity: Some(SessionAffinity {
                r#type: SessionAffinityType::ClientIp as i32,
                timeout: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn frontends_get_their_backends_by_family_and_port_name() {
        let frontends = frontends_of(&service()).expect("valid");
        assert_eq!(frontends.len(), 2, "the NodePort is the tc datapath's");
        let v4 = &frontends[0];
        assert_eq!(v4.id, 7);
        assert_eq!(v4.address.to_string(), "172.20.0.10:80/tcp");
        assert_eq!(v4.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        let backends: Vec<String> = v4.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(backends, ["10.0.1.5:8080/tcp", "10.0.2.7:8080/tcp"]);
        assert!(v4.backends[0].active && v4.backends[0].weight == 1);
        assert!(!v4.backends[1].active && v4.backends[1].weight == 3);
        assert_eq!(frontends[1].backends.len(), 1);
        assert_eq!(
            frontends[1].backends[0].address.to_string(),
            "[fd00::5]:8080/tcp"
        );
    }

    #[test]
    fn a_malformed_frontend_names_its_field() {
        let mut bad = service();
        bad.frontends[1].address = "nope".into();
        let e = frontends_of(&bad).unwrap_err();
        assert_eq!(e.field, "frontends[1].address");
        assert!(
            e.to_string()
                .starts_with("service default/web: frontends[1].address")
        );
        let mut bad = service();
        bad.frontends[0].id = 0;
        assert_eq!(frontends_of(&bad).unwrap_err().field, "frontends[0].id");
        let mut bad = service();
        bad.backends[0].port = 70_000;
        assert_eq!(frontends_of(&bad).unwrap_err().field, "backends[0].port");
    }
}
