//! The cluster's service network (kino-ipam's `GetServiceNetwork`): the service CIDRs every
//! node routes as unreachable and the NodePort range. An IPAM that does not serve
//! `kino.service.v1` yet (UNIMPLEMENTED, or PERMISSION_DENIED from its authorization table)
//! gives the defaults, with a warning.

use std::net::IpAddr;

use kino_api::service::GetServiceNetworkResponse;
use tonic::{Code, Status};

use crate::cluster::nodes::parse_prefix;

/// The service network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// Service CIDRs, at most one per family: (network, prefix length).
    pub cidrs: Vec<(IpAddr, u8)>,
    /// First NodePort.
    pub node_port_min: u16,
    /// Last NodePort.
    pub node_port_max: u16,
}

impl Default for ServiceNetwork {
    /// kino-ipam's defaults: 172.20.0.0/16, fd00:ffff::/112, NodePorts 30000–32767.
    fn default() -> Self {
        ServiceNetwork {
            cidrs: vec![
                (IpAddr::from([172, 20, 0, 0]), 16),
                ("fd00:ffff::".parse().expect("an IPv6 address"), 112),
            ],
            node_port_min: 30_000,
            node_port_max: 32_767,
        }
    }
}

/// The service network of IPAM's answer; UNIMPLEMENTED gives the defaults; any other
/// failure is returned (to retry).
pub fn from_answer(
    answer: Result<GetServiceNetworkResponse, Status>,
) -> Result<ServiceNetwork, Status> {
    let response = match answer {
        Ok(response) => response,
        // An IPAM from before kino.service.v1 answers UNIMPLEMENTED, or — its authorization
        // table not naming the method — PERMISSION_DENIED.
        Err(status) if matches!(status.code(), Code::Unimplemented | Code::PermissionDenied) => {
            tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "IPAM does not serve GetServiceNetwork (kino.service.v1) to this agent: using the default service network 172.20.0.0/16, fd00:ffff::/112, NodePorts 30000-32767"
            );
            return Ok(ServiceNetwork::default());
        }
        Err(status) => return Err(status),
    };
    let mut cidrs = Vec::new();
    for cidr in &response.service_cidrs {
        match parse_prefix(cidr) {
            Some(prefix) => cidrs.push(prefix),
            None => {
                return Err(Status::internal(format!(
                    "IPAM answered a malformed service CIDR {cidr:?}"
                )));
            }
        }
    }
    let port = |p: u32, default: u16| u16::try_from(p).ok().filter(|p| *p != 0).unwrap_or(default);
    Ok(ServiceNetwork {
        cidrs,
        node_port_min: port(response.node_port_min, 30_000),
        node_port_max: port(response.node_port_max, 32_767),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipam_without_the_service_api_gives_the_defaults() {
        let network = from_answer(Err(Status::unimplemented("no"))).expect("defaults");
        assert_eq!(network, ServiceNetwork::default());
        assert_eq!(network.cidrs.len(), 2);
        assert!(
            from_answer(Err(Status::unavailable("down"))).is_err(),
            "retried"
        );
    }

    #[test]
    fn ipams_answer_is_taken() {
        let network = from_answer(Ok(GetServiceNetworkResponse {
            service_cidrs: vec!["10.96.0.0/12".into()],
            node_port_min: 31_000,
            node_port_max: 31_999,
        }))
        .expect("valid");
        assert_eq!(network.cidrs, vec![(IpAddr::from([10, 96, 0, 0]), 12)]);
        assert_eq!(
            (network.node_port_min, network.node_port_max),
            (31_000, 31_999)
        );
        assert!(
            from_answer(Ok(GetServiceNetworkResponse {
                service_cidrs: vec!["junk".into()],
                ..Default::default()
            }))
            .is_err()
        );
    }
}
